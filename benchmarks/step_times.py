"""Per-step timings of a real one-GPU training run: stock splatfacto or splatfacto-dist.

Wraps the strategy's `step_post_backward` (gsplat's `DefaultStrategy`'s for stock, splatfacto-dist's
`SynchronizedDefaultStrategy`'s), which each model calls once at the end of every training step, to record when each step ends, and times
each refining call (duplicate / split / prune) between two device syncs. Once the host runs ahead
of the GPU, the time between step ends is the GPU's time per step. Writes every step's end time and
every refine's cost to OUT.json and prints: the median step per 1,000 steps, and per refine its own
time and the excess of it plus the 3 following steps over the median of the 20 steps before.

Usage (GPU machine): cd TREE && python PATH/TO/benchmarks/step_times.py {stock|dist} OUT.json METHOD ARGS...
TREE's splatfacto_dist is the one imported (so a copy of an older tree can be measured). Stock splatfacto
needs the LPIPS stub on PYTHONPATH (splatfacto_dist/benchmarking/lpips_stub), as in the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
from gsplat.strategy import DefaultStrategy  # noqa: E402

ENDS: List[float] = []
STEPS: List[int] = []
REFINES: List[Dict[str, float]] = []
_sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def _refines(strategy: DefaultStrategy, step: int) -> bool:
    return (
        strategy.refine_start_iter < step < strategy.refine_stop_iter
        and step % strategy.refine_every == 0
        and step % strategy.reset_every >= strategy.pause_refine_after_reset
    )


def _timing(original):
    """`original` (a strategy's step_post_backward), recording each call's end and timing refines."""

    def timed(self: DefaultStrategy, *args, **kwargs):
        return _timed(original, self, *args, **kwargs)

    return timed


def _timed(original, self: DefaultStrategy, *args, **kwargs):
    step = kwargs["step"]
    refine = _refines(self, step)
    if refine:
        _sync()
        start = time.perf_counter()
    result = original(self, *args, **kwargs)
    if refine:
        _sync()
        REFINES.append(
            {"step": step, "ms": 1000 * (time.perf_counter() - start), "gaussians": len(kwargs["params"]["means"])}
        )
    ENDS.append(time.perf_counter())
    STEPS.append(step)
    return result


def summarize(ends: List[float], steps: List[int], refines: List[Dict[str, float]]) -> str:
    intervals = {s: 1000 * (b - a) for s, a, b in zip(steps[1:], ends, ends[1:])}
    lines = [f"loop (first to last step end): {ends[-1] - ends[0]:.1f} s over {len(ends)} steps"]
    for start in range(0, max(steps) + 1, 1000):
        window = [intervals[s] for s in range(start, start + 1000) if s in intervals]
        if window:
            lines.append(
                f"steps {start:>6}-{start + 999:<6} median {statistics.median(window):6.2f} ms  mean {statistics.mean(window):6.2f} ms"
            )
    excess = []
    for refine in refines:
        s = int(refine["step"])
        before = [intervals[t] for t in range(s - 20, s) if t in intervals]
        after = [intervals[t] for t in range(s, s + 4) if t in intervals]
        if before and after:
            excess.append(sum(after) - len(after) * statistics.median(before))
    if refines:
        lines.append(
            f"{len(refines)} refines: call {statistics.mean(r['ms'] for r in refines):.1f} ms mean, "
            f"{statistics.median(r['ms'] for r in refines):.1f} ms median; refine + 3 steps over the median step: "
            f"{statistics.mean(excess):.1f} ms mean, {sum(excess) / 1000:.1f} s in all; "
            f"final Gaussians {int(refines[-1]['gaussians'])}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "mode", choices=["stock", "dist"], help="whose launcher trains: ns-train or splatfacto-dist-train"
    )
    parser.add_argument("out", help="JSON file for every step's end time and every refine's cost")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the training command line: METHOD and its options")
    parsed = parser.parse_args()
    mode, out, args = parsed.mode, parsed.out, parsed.args
    if mode == "stock":
        from nerfstudio.scripts.train import entrypoint

        strategy = DefaultStrategy
    else:
        from splatfacto_dist.cli import entrypoint
        from splatfacto_dist.densify.strategy import SynchronizedDefaultStrategy as strategy
    strategy.step_post_backward = _timing(strategy.step_post_backward)
    sys.argv = [mode, *args]
    entrypoint()
    with open(out, "w") as f:
        json.dump({"ends": ENDS, "steps": STEPS, "refines": REFINES}, f)
    print(f"=== {mode} ({os.getcwd()}) ===\n{summarize(ENDS, STEPS, REFINES)}", flush=True)


if __name__ == "__main__":
    main()
