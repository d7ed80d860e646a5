"""The scaling benchmark: stock splatfacto on 1 GPU against splatfacto-dist on N GPUs, one run.

Every job trains on the same dataset with the same image budget, as its own `ns-train` /
`splatfacto-dist-train` process (so start-up, image loading and saving are measured as a user
waits for them). Jobs whose GPU sets are disjoint may run side by side (--parallel). Results go to
`results.json` and `results.md` in --out; progress is printed as jobs start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

STUB = Path(__file__).resolve().parent.parent / "configs" / "lpips_stub"
# Runs stock ns-train and reports its peak host memory the way splatfacto-dist's ranks report theirs.
_STOCK = (
    "import atexit, resource, runpy, sys;"
    "atexit.register(lambda: print(f'rank 0: peak host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB'));"
    "sys.argv = ['ns-train', *sys.argv[1:]]; runpy.run_module('nerfstudio.scripts.train', run_name='__main__')"
)
_RANK_LINE = re.compile(r"rank (\d+): (?:start-up ([\d.]+) s, )?peak host (\d+) MB")


@dataclass
class Job:
    name: str
    method: str  # "splatfacto" (stock) or "splatfacto-dist"
    n_gpus: int
    batch: int = 1
    gpus: List[int] = field(default_factory=list)
    extra: List[str] = field(default_factory=list)
    result: Dict[str, float] = field(default_factory=dict)


def _command(job: Job, args: argparse.Namespace, out: Path) -> List[str]:
    budget = args.budget
    common = [
        "--vis", "tensorboard", "--output-dir", str(out), "--timestamp", job.name, "--experiment-name", "bench",
        "--logging.steps-per-log", "10", "--steps-per-eval-image", "0", "--steps-per-save", "1000000",
    ]
    if job.method == "splatfacto":
        cmd = [sys.executable, "-c", _STOCK, "splatfacto", *common,
               "--max-num-iterations", str(budget), "--steps-per-eval-all-images", str(budget - 1)]
    else:
        images_per_step = job.n_gpus * job.batch
        last = budget - images_per_step  # the schedule is in images: this is the last step
        cmd = [sys.executable, "-m", "splatfacto_dist.launch", "splatfacto-dist", *common,
               "--machine.num-devices", str(job.n_gpus), "--pipeline.datamanager.cameras-per-rank", str(job.batch),
               "--max-num-iterations", str(budget), "--steps-per-eval-all-images", str(last)]
        if args.profile:
            cmd += ["--profile-phases", "True"]
    return cmd + job.extra + [*args.dataparser, "--data", str(args.data)]


def _read_events(run: Path) -> Dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = acc.Tags()["scalars"]

    def series(tag: str) -> List[float]:
        return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] if tag in tags else []

    res: Dict[str, float] = {}
    iters = series("Train Iter (time)")
    if iters:
        res["step_ms_median"] = 1000 * float(np.median(iters))
    for tag in tags:
        key = tag.split("/")[-1]
        if tag.startswith("Eval Images Metrics Dict (all images)/") and key in ("psnr", "ssim", "lpips"):
            res[key] = series(tag)[-1]
        elif tag.startswith("Step Phases (ms)/"):
            res["phase_" + key] = series(tag)[-1]
    if series("Train Total (time)"):
        res["loop_s"] = series("Train Total (time)")[-1]
    gauss = series("Train Metrics Dict/gaussian_count")
    if gauss:
        res["gaussians"] = gauss[-1]
    mem = series("GPU Memory (MB)")
    if mem:
        res["peak_mem_mb"] = max(mem)
    return res


def _read_rank_lines(log: Path) -> Dict[str, float]:
    """Largest per-rank start-up time and peak host memory printed in a job's log."""
    res: Dict[str, float] = {}
    for m in _RANK_LINE.finditer(log.read_text(errors="replace")):
        if m.group(2):
            res["startup_s"] = max(res.get("startup_s", 0.0), float(m.group(2)))
        res["peak_host_mb"] = max(res.get("peak_host_mb", 0.0), float(m.group(3)))
    return res


def run_jobs(jobs: List[Job], args: argparse.Namespace, total_gpus: int) -> None:
    """Run `jobs` in order; with --parallel a job starts as soon as enough GPUs are free."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: List[tuple] = []
    busy: set = set()
    while pending or running:
        for job in list(pending):
            free = [g for g in range(total_gpus) if g not in busy]
            if len(free) < job.n_gpus or (running and not args.parallel):
                break
            job.gpus = free[: job.n_gpus]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(total_gpus)))).split(",")
            devices = ",".join(visible[g] for g in job.gpus)  # job GPUs are indices into what this process sees
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=devices, NCCL_NVLS_ENABLE="0")
            if job.method == "splatfacto":
                env["PYTHONPATH"] = f"{STUB}{os.pathsep}{env.get('PYTHONPATH', '')}"
            log = open(out / f"{job.name}.log", "w")
            proc = subprocess.Popen(_command(job, args, out), env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"[bench] start {job.name} on GPUs {job.gpus}", flush=True)
            running.append((job, proc, time.perf_counter(), log))
            busy |= set(job.gpus)
            pending.remove(job)
        time.sleep(1)
        for item in list(running):
            job, proc, start, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            busy -= set(job.gpus)
            steps = args.budget // (job.n_gpus * job.batch) if job.method == "splatfacto-dist" else args.budget
            job.result = {"wall_s": time.perf_counter() - start, "returncode": float(proc.returncode), "steps": steps}
            run = out / "bench" / job.method / job.name
            if run.exists():
                job.result.update(_read_events(run))
            job.result.update(_read_rank_lines(out / f"{job.name}.log"))
            if "loop_s" in job.result:
                job.result["outside_loop_s"] = job.result["wall_s"] - job.result["loop_s"]
                job.result["loop_ms_per_step"] = 1000 * job.result["loop_s"] / steps
            print(f"[bench] done  {job.name}: {json.dumps(job.result)}", flush=True)


def write_report(jobs: List[Job], args: argparse.Namespace) -> None:
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps([asdict(j) for j in jobs], indent=1))
    base = next((j.result for j in jobs if j.method == "splatfacto"), None)
    rows = ["| job | GPUs | batch | steps | loop ms/step | loop s | outside loop s | wall s | loop speedup | "
            "wall speedup | PSNR | SSIM | LPIPS | Gaussians | peak GPU MB/rank | peak host MB/rank | rank start-up s |",
            "|---|" * 1 + "---|" * 16]
    for j in jobs:
        r = j.result

        def f(key: str, fmt: str = "{:.1f}") -> str:
            return fmt.format(r[key]) if key in r else "-"

        loop_x = f"{base['loop_s'] / r['loop_s']:.2f}x" if base and "loop_s" in base and "loop_s" in r else "-"
        wall_x = f"{base['wall_s'] / r['wall_s']:.2f}x" if base and "wall_s" in r else "-"
        rows.append(f"| {j.name} | {len(j.gpus)} | {j.batch} | {f('steps', '{:.0f}')} | {f('loop_ms_per_step', '{:.2f}')} | "
                    f"{f('loop_s')} | {f('outside_loop_s')} | {f('wall_s')} | {loop_x} | {wall_x} | {f('psnr', '{:.2f}')} | "
                    f"{f('ssim', '{:.4f}')} | {f('lpips', '{:.3f}')} | {f('gaussians', '{:.0f}')} | {f('peak_mem_mb', '{:.0f}')} | "
                    f"{f('peak_host_mb', '{:.0f}')} | {f('startup_s')} |")
    phase_keys = sorted({k for j in jobs for k in j.result if k.startswith("phase_")})
    if phase_keys:
        rows += ["", "| job | " + " | ".join(k[6:] for k in phase_keys) + " |", "|---|" + "---|" * len(phase_keys)]
        for j in jobs:
            rows.append(f"| {j.name} | " + " | ".join(f"{j.result.get(k, float('nan')):.2f}" for k in phase_keys) + " |")
    (out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--dataparser", nargs="+", default=["colmap"], help="dataparser subcommand and its options")
    parser.add_argument("--budget", type=int, default=30000, help="training images (stock: steps of one image)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="GPU counts for splatfacto-dist")
    parser.add_argument("--batch", type=int, default=1, help="cameras per rank per step")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock splatfacto 1-GPU baseline")
    parser.add_argument("--parallel", action="store_true", help="run jobs on disjoint GPUs side by side")
    parser.add_argument("--profile", action="store_true", help="per-phase timings (adds device syncs)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    jobs: List[Job] = [] if args.no_stock else [Job("stock-1gpu", "splatfacto", 1)]
    for n in args.gpus:
        jobs.append(Job(f"dist-{n}gpu", "splatfacto-dist", n, args.batch))
    total_gpus = _visible_gpus() or max(args.gpus)
    if max(args.gpus) > total_gpus:
        parser.error(f"--gpus asks for {max(args.gpus)} GPUs but {total_gpus} are visible")
    run_jobs(jobs, args, total_gpus)
    write_report(jobs, args)


if __name__ == "__main__":
    main()
