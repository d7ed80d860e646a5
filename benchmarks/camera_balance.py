"""The step's spread (slowest rank minus fastest, over the mean) of a cameras' deal, by rank count:
the seeded order, cameras ranked by cost within shards dealt at random, and shards dealt by cost
too (what `--pipeline.datamanager.balance-cameras` runs). Costs are drawn log-normal (sd 25%), as
views that see more or less of a scene; each row is the mean over --tables drawn tables.

    python benchmarks/camera_balance.py   # the table in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import random
from statistics import mean
from typing import List, Optional, Sequence

from splatfacto_dist.data.datamanager import CameraSchedule

CASES = [(2, 61, 1), (4, 61, 1), (2, 200, 1), (4, 300, 1), (2, 48, 3)]  # ranks, cameras, cameras per rank


def drawn_costs(n: int, seed: int) -> List[int]:
    rng = random.Random(seed)
    return [int(5000 * rng.lognormvariate(0, 0.25)) for _ in range(n)]


def spread(
    n: int,
    world: int,
    per_rank: int,
    costs: Sequence[int],
    order: Optional[Sequence[int]],
    deal: Optional[Sequence[int]],
) -> float:
    """Mean over the second epoch's steps of (max - min) / mean of the ranks' summed costs."""
    schedules = [CameraSchedule(n, world, r, world, per_rank, seed=5, deal=deal) for r in range(world)]
    steps = schedules[0].steps_per_epoch
    out = []
    for step in range(steps, 2 * steps):
        per = [sum(costs[c] for c in s.cameras_for_step(step, order)) for s in schedules]
        out.append((max(per) - min(per)) / mean(per))
    return mean(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, default=20)
    args = parser.parse_args()
    print(
        "| ranks, training cameras | seeded order | ranked within shards dealt at random | shards dealt by cost too |"
    )
    print("|---|---|---|---|")
    for world, n, per_rank in CASES:
        rows = [[], [], []]
        for seed in range(args.tables):
            costs = drawn_costs(n, seed)
            rows[0].append(spread(n, world, per_rank, costs, None, None))
            rows[1].append(spread(n, world, per_rank, costs, costs, None))
            rows[2].append(spread(n, world, per_rank, costs, costs, costs))
        label = f"{world}, {n}" + (f", {per_rank} cameras per rank" if per_rank > 1 else "")
        print(f"| {label} | " + " | ".join(f"{mean(r):.3f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
