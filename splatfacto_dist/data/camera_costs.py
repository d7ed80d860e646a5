"""Cameras dealt to steps by their measured cost, so that the ranks of a step finish together.

Why: every rank of a step waits for the slowest one (in the gradient all-reduce when replicated),
and a rank's time is its cameras' render and backward, which grows with how much of the model a
camera sees. Measured at 2 GPUs on fox, the all-reduce phase (0.9-1.6 ms a step) was mostly that
wait. Cameras of like cost in one step make the ranks finish together.

How: each rank times its own cameras' render and backward (CUDA events, read once completed: the
host never waits for them within an epoch; the host clock on the CPU). At each epoch's start the
ranks add up their tables (every camera is one rank's), so every rank holds the same costs.
- Once every camera has been measured (after the first epoch), the static camera shards are dealt
  again, by cost (`deal_by_cost`): a rank loads the images of the cameras it gains and drops
  those it gives away, once a run (most cameras stay where they are). Shards dealt at random differ in cost (measured on a
  log-normal spread of 25%: 24 cameras a shard left rank totals 15% apart), and no order within
  a shard makes up for that.
- Every epoch, each shard's cameras are ranked by cost: position j of every shard's epoch is the
  camera at that shard's j-th cost quantile, and the steps take the positions in one shared,
  seeded random order. A step's cameras are then of like cost, every camera is still seen once
  an epoch (twice for the few that fill out a smaller shard, as before), and which step sees
  which quantile stays random. Neighbouring positions (`NEIGHBOURS` steps' worth) are shuffled
  among themselves per epoch and shard, so the same cameras are not averaged together every epoch.

Costs are times: two runs deal alike in their first epoch (no camera measured yet) and differ after
it. `--pipeline.datamanager.balance-cameras False` keeps the seeded order throughout. The table, the
costs the shards and the current epoch were dealt by are checkpointed, so a resumed run holds the
same shards and finishes the epoch as the saving run would have.
"""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence, Tuple

from splatfacto_dist import comm
from splatfacto_dist.reporting.profiling import DeviceTimer

NEIGHBOURS = 2  # steps whose quantile positions are shuffled among themselves each epoch


def cost_ranked(shard: Sequence[int], costs: Sequence[int], need: int, per_step: int, rng: random.Random) -> List[int]:
    """`need` cameras of `shard` by cost quantile: position j holds the camera at quantile j / need
    of the shard (a shard smaller than `need` repeats cameras evenly over its quantiles), then each
    run of `NEIGHBOURS * per_step` positions is shuffled by `rng`; a camera repeated within one
    step's `per_step` positions trades places with a neighbouring step's camera."""
    ranked = sorted(shard, key=lambda c: (costs[c], c))
    spread = [ranked[j * len(ranked) // need] for j in range(need)]
    run = NEIGHBOURS * per_step
    for start in range(0, need, run):
        part = spread[start : start + run]
        rng.shuffle(part)
        spread[start : start + run] = part
    steps = [spread[k : k + per_step] for k in range(0, need, per_step)]
    for k, step in enumerate(steps):
        for i, camera in enumerate(step):
            if step.index(camera) != i:
                _trade(steps, k, i)
    return [camera for step in steps for camera in step]


def _trade(steps: List[List[int]], k: int, i: int) -> None:
    """Swap step k's repeated camera at i with the nearest other step's camera that neither step holds."""
    camera = steps[k][i]
    for distance in range(1, len(steps)):
        for other in (k + distance, k - distance):
            if not 0 <= other < len(steps) or camera in steps[other]:
                continue
            for j, swap in enumerate(steps[other]):
                if swap not in steps[k]:
                    steps[k][i], steps[other][j] = swap, camera
                    return


def deal_by_cost(costs: Sequence[int], shards: Sequence[Sequence[int]]) -> List[List[int]]:
    """`shards` dealt again by cost, each keeping its size: the cameras ranked by cost, each run of
    S like costs (S shards) gives every shard one, so the shards' costs are alike quantile by
    quantile; within a run a camera stays in its shard where it can, so few images move (about
    a quarter of them at 2 shards, a third at 4 and 8, against 1 - 1/S dealt afresh)."""
    home = {camera: s for s, shard in enumerate(shards) for camera in shard}
    ranked = sorted(range(len(costs)), key=lambda c: (costs[c], c))
    dealt: List[List[int]] = [[] for _ in shards]
    for start in range(0, len(ranked), len(shards)):
        run = ranked[start : start + len(shards)]
        room = [s for s, shard in enumerate(shards) if len(dealt[s]) < len(shard)]
        movers = []
        for camera in run:
            if home[camera] in room:
                room.remove(home[camera])
                dealt[home[camera]].append(camera)
            else:
                movers.append(camera)
        for camera, s in zip(movers, room):
            dealt[s].append(camera)
    return dealt


def step_order(steps: int, seed: int, epoch: int) -> List[int]:
    """Which quantile slot each step of `epoch` takes: one seeded permutation shared by every shard."""
    slots = list(range(steps))
    random.Random(f"{seed}/{epoch}/steps").shuffle(slots)
    return slots


class CameraCosts:
    """This rank's measured cost (µs of render and backward) per training camera, and the sharing
    of the table at epoch starts (see the module docstring). The datamanager holds it."""

    def __init__(self, num_cameras: int) -> None:
        self.num_cameras = num_cameras
        self.measured: Dict[int, int] = {}  # this rank's cameras: the latest cost
        self._pending: List[Tuple[List[int], DeviceTimer]] = []

    def add(self, cameras: List[int], timer: DeviceTimer) -> None:
        """One step's `cameras` and the (stopped) timer of their render and backward."""
        self._read(wait=False)
        self._pending.append((cameras, timer))

    def _read(self, wait: bool) -> None:
        """Record the timers that have completed (all of them when `wait`), in step order."""
        while self._pending and (wait or self._pending[0][1].done()):
            cameras, timer = self._pending.pop(0)
            each = timer.microseconds() // len(cameras)
            for camera in cameras:
                self.measured[camera] = max(each, 1)  # 0 means "not measured"

    def share(self) -> List[int]:
        """Every camera's latest cost (0: never measured), the same list on every rank; a collective."""
        self._read(wait=True)
        table = [0] * self.num_cameras
        for camera, cost in self.measured.items():
            table[camera] = cost
        return comm.all_reduce_ints(table)

    def load(self, table: Sequence[int], owned: Sequence[int]) -> None:
        """Take a shared (or checkpointed) table: this rank keeps its `owned` cameras' costs (the
        sum at the next share needs each camera on one rank only, whatever rank held it before)."""
        self.measured = {c: int(table[c]) for c in owned if table[c] > 0}


def dealt_by(costs: Optional[Sequence[int]]) -> Optional[Sequence[int]]:
    """The costs an epoch is dealt by: only a table in which every camera has been measured."""
    return costs if costs is not None and all(c > 0 for c in costs) else None
