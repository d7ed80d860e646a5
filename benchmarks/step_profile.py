"""Where one GPU's training step spends its time, kernel by kernel: stock splatfacto or splatfacto-dist.

torch.profiler records `--active` steps after `--skip` steps of a real one-GPU run (the step ends
are found as in step_times.py: gsplat's `DefaultStrategy.step_post_backward`, which both models
call once per step). Writes OUT.txt: the GPU time per step of the costliest operators and kernels,
and the host's time per step, so a change to the step can be aimed at what costs most, in the
same call as stock's table. A step that takes longer than its kernels waits on the host: `--host`
records the same steps with cProfile instead (Python functions by own and by cumulative time), to
find where.

Usage (GPU machine): cd TREE && python PATH/TO/benchmarks/step_profile.py {stock|dist} OUT.txt [--skip N --active N] -- METHOD ARGS...
Stock splatfacto needs the LPIPS stub on PYTHONPATH (splatfacto_dist/benchmarking/lpips_stub), as in the benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.getcwd())

import torch  # noqa: E402
from gsplat.strategy import DefaultStrategy  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile, schedule  # noqa: E402

_original = DefaultStrategy.step_post_backward


class HostProfile:
    """cProfile over the steps [first, last), stepped like torch's profiler (one call per step)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.calls, self.profile = first, last, 0, cProfile.Profile()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def step(self) -> None:
        self.calls += 1
        if self.calls == self.first:
            self.profile.enable()
        elif self.calls == self.last:
            self.profile.disable()

    def write(self, f, rows: int) -> None:
        for order in ("tottime", "cumulative"):
            pstats.Stats(self.profile, stream=f).sort_stats(order).print_stats(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["stock", "dist"], help="whose launcher trains")
    parser.add_argument("out", help="text file for the tables")
    parser.add_argument("--skip", type=int, default=7000, help="steps before recording (past the coarse levels)")
    parser.add_argument("--active", type=int, default=200, help="steps recorded")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--host", action="store_true", help="profile the host's Python (cProfile), not the kernels")
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parsed = parser.parse_args(sys.argv[1:split])
    args = sys.argv[split + 1 :]  # METHOD and its options
    profiler = (
        HostProfile(parsed.skip + 5, parsed.skip + 5 + parsed.active)
        if parsed.host
        else profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
            schedule=schedule(wait=parsed.skip, warmup=5, active=parsed.active, repeat=1),
        )
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
    with open(parsed.out, "w") as f:
        f.write(f"=== {parsed.mode}: {parsed.active} steps after {parsed.skip}; {wall:.2f} ms per step (wall) ")
        if parsed.host:
            f.write("under cProfile ===\n")
            profiler.write(f, parsed.rows)
        else:
            events = profiler.key_averages()
            kernels = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
            f.write(f"{kernels / 1000 / parsed.active:.2f} ms of GPU kernels per step ===\n")
            f.write(f"(the table's totals are over all {parsed.active} steps)\n")
            f.write(events.table(sort_by="self_cuda_time_total", row_limit=parsed.rows) + "\n")
    print(open(parsed.out).read(), flush=True)


if __name__ == "__main__":
    main()
