"""The scaling benchmark: stock splatfacto on 1 GPU against splatfacto-dist on N GPUs, one run.

Every job trains on the same dataset with the same image budget, as its own process (stock
`ns-train`, or `splatfacto-dist-train`), so start-up, image loading and saving are measured as a
user waits for them. All test images are evaluated every --eval-every images and after the last
step, which gives the time-to-PSNR curves. Jobs whose GPU sets are disjoint may run side by side
(--parallel). Arguments the benchmark does not know are passed to every splatfacto-dist job, as
is the Gaussian layout (--layout). Each rank's peak GPU memory is kept, so a sharded layout shows
its fullest and emptiest rank.
Progress is printed while jobs run; `results.json` is rewritten as each job ends, and
`results.md` and `scaling.png` (see `bench_report`) are written at the end.
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

from splatfacto_dist.benchmarking import bench_report
from splatfacto_dist.launching.argv import option
from splatfacto_dist.launching.command import CLI, layout_args, train_argv
from splatfacto_dist.reporting.records import clear_rank_records, read_rank_records

STUB = Path(__file__).resolve().parent / "lpips_stub"
STOCK = (sys.executable, "-m", "splatfacto_dist.benchmarking.bench_stock")  # stock ns-train, LPIPS stubbed
_PROGRESS = re.compile(r"(\d+) \((\d+\.\d+)%\)")
_EVAL_PREFIX = "Eval Images Metrics Dict (all images)/"


@dataclass
class Job:
    name: str
    method: str  # "splatfacto" (stock) or "splatfacto-dist"
    n_gpus: int
    batch: int = 1
    seed: int = 42
    gpus: List[int] = field(default_factory=list)
    result: Dict[str, float] = field(default_factory=dict)
    curve: List[List[float]] = field(default_factory=list)  # [seconds since job start, images seen, test PSNR]
    rank_peak_gpu_mb: List[float] = field(default_factory=list)  # by rank, from the ranks' own records

    @property
    def images_per_step(self) -> int:
        return self.n_gpus * self.batch if self.method == "splatfacto-dist" else 1


def _command(job: Job, args: argparse.Namespace, extra: List[str], out: Path) -> List[str]:
    common = [
        "--vis",
        "tensorboard",
        "--output-dir",
        str(out),
        "--timestamp",
        job.name,
        "--experiment-name",
        "bench",
        "--logging.steps-per-log",
        "10",
        "--steps-per-eval-image",
        "0",
        "--steps-per-save",
        "1000000",
        "--max-num-iterations",
        str(args.budget),
        "--steps-per-eval-all-images",
        str(args.eval_every),
        "--machine.seed",
        str(job.seed),
        "--pipeline.datamanager.train-cameras-sampling-seed",
        str(job.seed),
    ]
    if job.method == "splatfacto":  # stock counts steps of one image: the same numbers, in images
        return train_argv(STOCK, job.method, common, args.dataparser, args.data)
    # splatfacto-dist counts images by default and divides by the images per step itself
    dist = [
        *common,
        "--machine.num-devices",
        str(job.n_gpus),
        "--pipeline.datamanager.cameras-per-rank",
        str(job.batch),
        "--eval-all-images-at-end",
        "True",
        "--profile-phases-every",
        str(args.profile_every),
        *layout_args(args.layout),
        *extra,
    ]
    return train_argv(CLI, job.method, dist, args.dataparser, args.data)


def read_events(run: Path, images_per_step: int, started_at: float) -> tuple:
    """(results, curve) from a job's tensorboard events; curve times count from `started_at`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    tags = acc.Tags()["scalars"]

    def events(tag: str) -> list:
        return sorted(acc.Scalars(tag), key=lambda e: e.step) if tag in tags else []

    res: Dict[str, float] = {}
    iters = [e.value for e in events("Train Iter (time)")]
    if iters:
        res["step_ms_median"] = 1000 * float(np.median(iters))
    for tag in tags:
        key = tag.split("/")[-1]
        if tag.startswith(_EVAL_PREFIX) and key in ("psnr", "ssim", "lpips"):
            res[key] = events(tag)[-1].value
        elif tag.startswith("Step Phases (ms)/"):
            res["phase_" + key] = events(tag)[-1].value
    for key, tag in (("loop_s", "Train Total (time)"), ("gaussians", "Train Metrics Dict/gaussian_count")):
        found = events(tag)
        if found:
            res[key] = found[-1].value
    memory = events("GPU Memory (MB)")
    if memory:
        res["peak_mem_mb"] = max(e.value for e in memory)
    curve = [[e.wall_time - started_at, (e.step + 1) * images_per_step, e.value] for e in events(_EVAL_PREFIX + "psnr")]
    return res, curve


def summarize_ranks(records: List[Dict]) -> Dict[str, float]:
    """Largest per-rank start-up time (with that rank's stages, as "startup:STAGE"), peak host and
    GPU memory of a job's rank records (`records.py`)."""
    res: Dict[str, float] = {}
    for record in records:
        startup = record.get("startup_s")
        if startup is not None and startup >= res.get("startup_s", 0.0):
            res = {k: v for k, v in res.items() if not k.startswith("startup:")}
            res["startup_s"] = float(startup)
            res.update({f"startup:{name}": float(s) for name, s in record.get("startup_stages", {}).items()})
        if record.get("peak_host_mb") is not None:
            res["peak_host_mb"] = max(res.get("peak_host_mb", 0.0), float(record["peak_host_mb"]))
        if record.get("peak_gpu_mb") is not None:
            res["peak_mem_mb"] = max(res.get("peak_mem_mb", 0.0), float(record["peak_gpu_mb"]))
    return res


def rank_gpu_memory(records: List[Dict]) -> List[float]:
    """Peak GPU memory (MB) of each rank that recorded one, in rank order (none on CPU). A sharded
    layout is judged by its fullest rank, and by how evenly the ranks share the load."""
    return [float(r["peak_gpu_mb"]) for r in records if r.get("peak_gpu_mb") is not None]


def _progress(log: Path) -> str:
    found = _PROGRESS.findall(log.read_text(errors="replace")[-20000:]) if log.exists() else []
    return f"step {found[-1][0]} ({found[-1][1]}%)" if found else "starting"


def _finish(job: Job, returncode: int, wall_s: float, started_at: float, out: Path, budget: int) -> None:
    steps = budget // job.images_per_step
    job.result = {"wall_s": wall_s, "returncode": float(returncode), "steps": steps}
    run = out / "bench" / job.method / job.name
    if run.exists():
        res, job.curve = read_events(run, job.images_per_step, started_at)
        job.result.update(res)
    records = read_rank_records(run)
    job.result.update(summarize_ranks(records))
    job.rank_peak_gpu_mb = rank_gpu_memory(records)
    if "loop_s" in job.result:
        job.result["outside_loop_s"] = wall_s - job.result["loop_s"]
        job.result["loop_ms_per_step"] = 1000 * job.result["loop_s"] / steps
        job.result["images_per_s"] = budget / job.result["loop_s"]


def run_jobs(
    jobs: List[Job], args: argparse.Namespace, extra: List[str], total_gpus: int, environment: Dict[str, str]
) -> None:
    """Run `jobs` in order; with --parallel a job starts as soon as enough GPUs are free."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: List[tuple] = []
    busy: set = set()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(total_gpus)))).split(",")
    t0 = last_report = time.perf_counter()
    while pending or running:
        for job in list(pending):
            free = [g for g in range(total_gpus) if g not in busy]
            if len(free) < job.n_gpus or (running and not args.parallel):
                break
            job.gpus = free[: job.n_gpus]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(visible[g] for g in job.gpus), NCCL_NVLS_ENABLE="0")
            if job.method == "splatfacto":
                env["PYTHONPATH"] = f"{STUB}{os.pathsep}{env.get('PYTHONPATH', '')}"
            clear_rank_records(out / "bench" / job.method / job.name)  # a rerun into the same folder
            log = open(out / f"{job.name}.log", "w")
            started = (time.perf_counter(), time.time())
            proc = subprocess.Popen(_command(job, args, extra, out), env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"[bench] start {job.name} on GPUs {job.gpus}", flush=True)
            running.append((job, proc, started, log))
            busy |= set(job.gpus)
            pending.remove(job)
        time.sleep(1)
        if time.perf_counter() - last_report >= args.progress_every:
            last_report = time.perf_counter()
            states = ", ".join(f"{job.name} {_progress(out / f'{job.name}.log')}" for job, *_ in running)
            print(f"[bench] {last_report - t0:.0f} s: {states}", flush=True)
        for item in list(running):
            job, proc, (start, start_epoch), log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            busy -= set(job.gpus)
            _finish(job, proc.returncode, time.perf_counter() - start, start_epoch, out, args.budget)
            print(f"[bench] done  {job.name}: {json.dumps(job.result)}", flush=True)
            bench_report.save(out / "results.json", [asdict(j) for j in jobs], environment)


def _environment(args: argparse.Namespace) -> Dict[str, str]:
    """What the numbers were measured on (written next to them)."""
    import gsplat
    import nerfstudio
    import torch

    env = {
        "data": str(args.data),
        "budget_images": str(args.budget),
        "torch": torch.__version__,
        "gsplat": gsplat.__version__,
        "nerfstudio": getattr(nerfstudio, "__version__", "1.1.5"),
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
        "layout": args.layout,
    }
    if torch.cuda.is_available():
        env["gpus"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return env


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--dataparser", nargs="+", default=["colmap"], help="dataparser subcommand and its options")
    parser.add_argument("--budget", type=int, default=30000, help="training images (stock: steps of one image)")
    parser.add_argument("--eval-every", type=int, default=2500, help="evaluate all test images every this many images")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="GPU counts for splatfacto-dist")
    parser.add_argument("--batch", type=int, default=1, help="cameras per rank per step")
    parser.add_argument(
        "--layout",
        choices=["replicated", "sharded"],
        default="replicated",
        help="Gaussian layout of every splatfacto-dist job (--pipeline.model.gaussian-layout)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42],
        help="run every job once per seed (quality and Gaussian growth vary from seed to seed)",
    )
    parser.add_argument("--no-stock", action="store_true", help="skip the stock splatfacto 1-GPU baseline")
    parser.add_argument(
        "--stock-only",
        action="store_true",
        help="only the stock baseline (a pair longer than one device call runs as two; bench_report merges them)",
    )
    parser.add_argument("--parallel", action="store_true", help="run jobs on disjoint GPUs side by side")
    parser.add_argument(
        "--profile-every",
        type=int,
        default=53,
        help="time the phases of every this many steps (prime: not in step with densification)",
    )
    parser.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--title", default=None, help="report title (default: the data folder's name)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args, extra = parser.parse_known_args(argv)
    if args.stock_only and args.no_stock:
        parser.error("--stock-only and --no-stock leave nothing to run")
    if args.stock_only:
        args.gpus = []
    if not args.data.exists():
        parser.error(f"--data {args.data} does not exist")
    widest = max(args.gpus, default=1)
    if args.budget < widest * args.batch:
        parser.error(f"--budget {args.budget} is less than one step of {widest * args.batch} images")
    cpu = option(extra, "--machine.device-type", "--machine.device_type") == "cpu"  # ranks are processes
    total_gpus = widest if cpu else _visible_gpus()
    if widest > total_gpus:
        parser.error(f"--gpus asks for {widest} GPUs but {total_gpus} are visible")
    if cpu and not args.no_stock:
        parser.error("stock splatfacto needs CUDA: add --no-stock to benchmark CPU processes")
    jobs: List[Job] = []
    for seed in args.seeds:
        suffix = f"-s{seed}" if len(args.seeds) > 1 else ""
        if not args.no_stock:
            jobs.append(Job(f"stock-1gpu{suffix}", "splatfacto", 1, seed=seed))
        jobs += [Job(f"dist-{n}gpu{suffix}", "splatfacto-dist", n, args.batch, seed=seed) for n in args.gpus]
    environment = _environment(args)
    run_jobs(jobs, args, extra, total_gpus, environment)
    records = [asdict(j) for j in jobs]
    bench_report.write(args.out, records, environment, args.title or args.data.name)
    if any(j.result.get("returncode") for j in jobs):
        sys.exit(
            f"[bench] failed jobs: {[j.name for j in jobs if j.result.get('returncode')]}; see their logs in {args.out}"
        )


if __name__ == "__main__":
    main()
