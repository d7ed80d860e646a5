"""Where one GPU's training step spends its time, kernel by kernel: stock splatfacto or splatfacto-dist.

torch.profiler records `--active` steps after `--skip` steps of a real one-GPU run (the step ends
are found as in step_times.py: gsplat's `DefaultStrategy.step_post_backward`, which both models
call once per step). Writes OUT.txt: the GPU time per step of the costliest operators and kernels,
and the host's time per step, so a change to the step can be aimed at what costs most, in the
same call as stock's table.

Usage (GPU machine): cd TREE && python PATH/TO/benchmarks/step_profile.py {stock|dist} OUT.txt [--skip N --active N] -- METHOD ARGS...
Stock splatfacto needs the LPIPS stub on PYTHONPATH (splatfacto_dist/benchmarking/lpips_stub), as in the benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
from gsplat.strategy import DefaultStrategy  # noqa: E402
from torch.profiler import ProfilerActivity, profile, schedule  # noqa: E402

_original = DefaultStrategy.step_post_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["stock", "dist"], help="whose launcher trains")
    parser.add_argument("out", help="text file for the tables")
    parser.add_argument("--skip", type=int, default=7000, help="steps before recording (past the coarse levels)")
    parser.add_argument("--active", type=int, default=200, help="steps recorded")
    parser.add_argument("--rows", type=int, default=30)
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parsed = parser.parse_args(sys.argv[1:split])
    args = sys.argv[split + 1 :]  # METHOD and its options
    profiler = profile(
        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
        schedule=schedule(wait=parsed.skip, warmup=5, active=parsed.active, repeat=1),
    )
    marks = {}

    def at_step_end(self: DefaultStrategy, *a, **kw):
        result = _original(self, *a, **kw)
        step = kw["step"]
        if step in (parsed.skip + 5, parsed.skip + 5 + parsed.active):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[step] = time.perf_counter()
        profiler.step()
        return result

    DefaultStrategy.step_post_backward = at_step_end
    if parsed.mode == "stock":
        from nerfstudio.scripts.train import entrypoint
    else:
        from splatfacto_dist.cli import entrypoint
    sys.argv = [parsed.mode, *args]
    profiler.start()
    entrypoint()
    profiler.stop()
    first, last = parsed.skip + 5, parsed.skip + 5 + parsed.active
    wall = 1000 * (marks[last] - marks[first]) / parsed.active if first in marks and last in marks else float("nan")
    events = profiler.key_averages()
    table = events.table(sort_by="self_cuda_time_total", row_limit=parsed.rows)
    total_gpu = sum(e.self_device_time_total for e in events) / 1000 / parsed.active
    with open(parsed.out, "w") as f:
        f.write(
            f"=== {parsed.mode}: {parsed.active} steps after {parsed.skip}; {wall:.2f} ms per step (wall), "
            f"{total_gpu:.2f} ms of GPU kernels per step ===\n"
            f"(the table's totals are over all {parsed.active} steps)\n{table}\n"
        )
    print(open(parsed.out).read(), flush=True)


if __name__ == "__main__":
    main()
