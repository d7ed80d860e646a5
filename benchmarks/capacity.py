"""Capacity benchmark: the largest synthetic scene that trains to the end under a per-GPU memory
cap, for a Gaussian layout and a GPU count; and each rank's peak GPU memory at every size.

A sharded layout exists to train scenes a replicated one cannot hold, so it is judged on what
fits: with every process capped at --cap-gib (24: a 24 GB card, emulated on a larger one), the
sizes are tried from the smallest up; a configuration stops at its first failure (a larger scene
would fail too) unless --keep-going. Runs into the same --out accumulate in one report, so the
layouts can be measured in separate calls:

    python benchmarks/capacity.py --layout replicated --gpus 1 --sizes 4e6 6e6 8e6 12e6 16e6
    python benchmarks/capacity.py --layout sharded --gpus 2 --sizes 8e6 12e6 16e6 24e6 32e6
    python benchmarks/capacity.py --layout replicated --gpus 1 --offload --sizes 16e6 32e6 64e6

--offload trains with --pipeline.model.offload True (colours and their Adam state in host memory,
recorded per run as "offload"): each rank's peak host memory is then the other half of its bytes.

Each size is a `splatfacto_dist.scenes.synthetic` scene whose points3D holds exactly that many points
(generated once, cached under --cache). splatfacto starts from one Gaussian per point, and
densification is off (--pipeline.model.stop-split-at 0: no split, duplicate, prune or opacity
reset; the culling thresholds only act inside a refine), so a run holds exactly that many
Gaussians from start to end. Training renders at full resolution from the first step
(--pipeline.model.num-downscales 0) and reaches SH degree 3 by 3/8 of the --images budget, so
the memory measured is that of a real step. The cap reaches every rank as the environment
variable SPLATFACTO_DIST_MEMORY_CAP_GIB, which the trainer applies (`splatfacto_dist.launching.memcap`);
a run whose rank records (`splatfacto_dist.reporting.records`) lack the cap is marked "uncapped". Arguments the benchmark does not know go
to every training run. Writes results.json (every run, each rank's peak) and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from splatfacto_dist.benchmarking.bench import rank_gpu_memory, read_events, summarize_ranks
from splatfacto_dist.launching.command import CLI, METHOD, layout_args, train_argv
from splatfacto_dist.launching.memcap import ALLOCATOR_ENV, ENV as CAP_ENV, EXPANDABLE
from splatfacto_dist.offload.budget import SHAPE_FLOATS
from splatfacto_dist.reporting.records import clear_rank_records, read_rank_records
from splatfacto_dist.scenes.synthetic import SceneSpec, generate, is_complete, parse_count

OOM = re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)
# Issue 19's bars by rank count: the largest scene sharded trains (final save included) at least this
# many times replicated's; the fullest sharded rank's peak at most this fraction of replicated on 1 GPU.
CAPACITY_TARGET = {2: 1.9, 4: 3.7, 8: 7.0}
MEMORY_TARGET = {2: 0.50, 4: 0.25, 8: 0.15}
# One Gaussian's parameters at SH degree 3 (means 3, scales 3, quats 4, opacity 1, DC 3, rest 45
# floats); its gradient is as large and Adam keeps two moments of it. Offloaded, the GPU keeps the
# shape's floats (offload/budget.SHAPE_FLOATS; offload/working_set.HOST_GROUPS are the colours).
PARAM_BYTES = 4 * (3 + 3 + 4 + 1 + 3 + 45)
GPU_PARAM_BYTES = {False: PARAM_BYTES, True: 4 * SHAPE_FLOATS}
# Offload's bars, at the same cap: Gaussians held against replicated without offload on 1 GPU.
OFFLOAD_TARGET = {1: 5.0, 2: 10.0, 4: 20.0}


def scene_for(size: int, args: argparse.Namespace) -> Path:
    """The cached scene of `size` points, generated when missing or incomplete."""
    spec = SceneSpec(size, args.views, args.width, args.height, args.objects, args.seed, "bin", args.views_from)
    above = "-above" if args.views_from == "above" else ""
    path = args.cache / f"{size}-{args.views}v-{args.width}x{args.height}-{args.objects}o-s{args.seed}{above}"
    if not is_complete(path, spec):
        print(f"[capacity] generating {path}", flush=True)
        stats = generate(path, spec)
        print(
            f"[capacity] {size:,} points in {stats['points_s']:.0f} s, images in {stats['images_s']:.0f} s", flush=True
        )
    return path


def train_command(
    name: str, layout: str, gpus: int, scene: Path, args: argparse.Namespace, extra: List[str]
) -> List[str]:
    """One short training run that keeps its Gaussian count (see the module docstring)."""
    options = [
        "--vis",
        "tensorboard",
        "--output-dir",
        str(args.out / "runs"),
        "--experiment-name",
        "capacity",
        "--timestamp",
        name,
        "--max-num-iterations",
        str(args.images),
        "--steps-per-eval-image",
        "0",
        "--steps-per-eval-batch",
        "0",
        "--steps-per-eval-all-images",
        "0",
        "--steps-per-save",
        "1000000",
        "--logging.steps-per-log",
        "10",
        "--profile-phases-every",
        "5",  # each phase's memory on the sampled steps: where the fullest rank's bytes go
        "--pipeline.model.stop-split-at",
        "0",
        "--pipeline.model.num-downscales",
        "0",
        "--pipeline.model.sh-degree-interval",
        str(max(1, args.images // 8)),
        "--machine.num-devices",
        str(gpus),
        "--machine.device-type",
        args.device,
        *layout_args(layout),
        *(["--pipeline.model.offload", "True"] if getattr(args, "offload", False) else []),
        *extra,
    ]
    # At its own size: nerfstudio's COLMAP parser would otherwise scale images over 1600 px down.
    return train_argv(CLI, METHOD, options, ["colmap", "--downscale-factor", "1"], scene)


def status_of(returncode: Optional[int], ranks: List[Dict], capped: bool) -> str:
    """'trained', 'OOM', 'timeout' or 'failed (exit N)' from the run's exit and its rank records; a
    run that trained without the cap in force says so, since its size proves nothing about a capped
    card."""
    if returncode is None:
        return "timeout"
    if returncode == 0:
        return "trained" if capped else "trained (uncapped)"
    return "OOM" if any(OOM.search(r.get("failed", "")) for r in ranks) else f"failed (exit {returncode})"


def run_one(layout: str, gpus: int, size: int, args: argparse.Namespace, extra: List[str]) -> Dict:
    """Train one configuration at one size; its record for results.json."""
    scene = scene_for(size, args)
    name = f"{layout}-{gpus}gpu-{size}" + ("-offload" if args.offload else "")
    log_path = args.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    cap = args.cap_gib if args.device == "cuda" and args.cap_gib > 0 else 0.0
    env.pop(CAP_ENV, None)
    if cap:
        env[CAP_ENV] = f"{cap:g}"
    run = args.out / "runs" / "capacity" / "splatfacto-dist" / name
    clear_rank_records(run)  # a rerun into the same folder
    print(f"[capacity] train {name}", flush=True)
    started, started_epoch = time.perf_counter(), time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            train_command(name, layout, gpus, scene, args, extra),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a timeout ends every rank it started, and nothing else
        )
        try:
            returncode: Optional[int] = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    ranks = read_rank_records(run)
    capped = not cap or sum(r.get("memory_cap_gib") is not None for r in ranks) >= gpus
    record = {
        "layout": layout,
        "gpus": gpus,
        "offload": bool(args.offload),
        "size": size,
        "width": args.width,
        "height": args.height,
        "cap_gib": cap,
        "images": args.images,
        "status": status_of(returncode, ranks, capped),
        "wall_s": time.perf_counter() - started,
        "rank_peak_gpu_mb": rank_gpu_memory(ranks),
        "log": str(log_path),
    }
    record.update({k: v for k, v in summarize_ranks(ranks).items() if k in ("peak_host_mb", "startup_s")})
    if record["rank_peak_gpu_mb"]:
        fullest = max(ranks, key=lambda r: r.get("peak_gpu_mb") or 0.0)
        record["fullest"] = {
            "peak_mb": fullest["peak_gpu_mb"],
            "owned": fullest.get("owned", size),  # a replicated rank owns the whole model
            "phases": fullest.get("phase_memory_mb", {}),
        }
    received = [r["most_received"] for r in ranks if "most_received" in r]
    if received:  # what the fullest rank's render buffers held, against the model's size
        record["most_rendered"] = max(received)
    if run.exists():
        events, _ = read_events(run, gpus, started_epoch)
        if "gaussians" in events:
            record["gaussians"] = events["gaussians"]
        if not args.keep_checkpoints:
            shutil.rmtree(run / "nerfstudio_models", ignore_errors=True)  # tens of GB at these sizes
    print(f"[capacity] {name}: {record['status']}, peak GPU MB by rank {record['rank_peak_gpu_mb']}", flush=True)
    if record["status"] == "trained (uncapped)":
        print(
            f"[capacity] the ranks never applied {CAP_ENV}: the trainer must call memcap.apply_memory_cap()", flush=True
        )
    return record


def _key(record: Dict) -> tuple:
    resolution = (record.get("width", 320), record.get("height", 240))  # runs recorded before the fields: the default
    return (
        record["layout"],
        record["gpus"],
        record["size"],
        record["cap_gib"],
        record["images"],
        _offload(record),
        resolution,
    )


def _offload(record: Dict) -> bool:
    return bool(record.get("offload", False))  # runs recorded before the option trained without it


def _config(layout: str, gpus: int, offload: bool) -> str:
    return f"{layout}{' + offload' if offload else ''}"


def largest_trained(records: List[Dict]) -> Dict[tuple, Dict]:
    """Per (layout, GPUs, cap, offload): the largest size that trained to the end, and the smallest that
    did not."""
    out: Dict[tuple, Dict] = {}
    for r in records:
        entry = out.setdefault((r["layout"], r["gpus"], r["cap_gib"], _offload(r)), {"trained": 0, "failed": None})
        if r["status"] == "trained":
            entry["trained"] = max(entry["trained"], r["size"])
        elif entry["failed"] is None or r["size"] < entry["failed"]:
            entry["failed"] = r["size"]
    return out


def markdown(records: List[Dict], environment: Dict[str, str]) -> str:
    """The table of every run, the largest size per configuration, and the two targets."""
    lines = [
        "### Capacity: largest synthetic scene that trains to the end",
        "",
        f"Machine: {environment.get('gpus', 'CPU')}; torch {environment.get('torch')}, gsplat {environment.get('gsplat')}; allocator {environment.get('allocator', 'default')}. "
        "Densification off (Gaussians = points3D); peak GPU memory is each rank's torch.cuda.max_memory_allocated.",
        "",
        "| layout | GPUs | cap GiB | Gaussians | images | status | peak GPU MB/rank (max / min) | most rendered "
        "in one render (% of model) | peak host MB/rank | start-up s | wall s |",
        "|---" * 11 + "|",
    ]
    for r in sorted(records, key=_key):
        ranks = r["rank_peak_gpu_mb"]
        memory = f"{max(ranks):.0f} / {min(ranks):.0f}" if ranks else "-"
        if "most_rendered" in r:
            rendered = f"{100 * r['most_rendered'] / r['size']:.0f}"
        else:  # a replicated rank renders every Gaussian; a sharded run that failed never said
            rendered = "100" if r["layout"] == "replicated" else "-"
        host = f"{r['peak_host_mb']:.0f}" if "peak_host_mb" in r else "-"
        startup = f"{r['startup_s']:.0f}" if "startup_s" in r else "-"
        lines.append(
            f"| {_config(r['layout'], r['gpus'], _offload(r))} | {r['gpus']} | {r['cap_gib']:g} | {r['size']:,} | "
            f"{r['images']} | {r['status']} | {memory} | {rendered} | {host} | {startup} | {r['wall_s']:.0f} |"
        )
    summary = largest_trained(records)
    lines += ["", "| layout | GPUs | cap GiB | largest trained | smallest failed |", "|---" * 5 + "|"]
    for (layout, gpus, cap, offload), entry in sorted(summary.items()):
        failed = f"{entry['failed']:,}" if entry["failed"] else "-"
        lines.append(f"| {_config(layout, gpus, offload)} | {gpus} | {cap:g} | {entry['trained']:,} | {failed} |")
    lines += ["", *targets(records, summary), "", *breakdown(records)]
    return "\n".join(lines) + "\n"


def breakdown(records: List[Dict]) -> List[str]:
    """Where the fullest rank's bytes go at its peak: the phase it peaked in, what was allocated when
    that phase began (of which the owned parameters and Adam moments, and their gradients, follow
    from the rank's share), and what the phase itself added (render buffers, the exchange's
    received rows and their gradients, the optimizer's temporaries)."""
    lines = [
        "#### Where the fullest rank's bytes go at its peak",
        "",
        "Phases of every 5th step; 'at start' is what was allocated when the peak's phase began, 'added' what "
        f"that phase allocated on top. Owned state = owned Gaussians x {3 * PARAM_BYTES} B (parameters and two "
        f"Adam moments; offloaded {3 * GPU_PARAM_BYTES[True]} B), gradients x {PARAM_BYTES} B "
        f"(offloaded {GPU_PARAM_BYTES[True]} B); the rest of an offloaded Gaussian is in host memory.",
        "",
        "| layout | GPUs | Gaussians | peak MB | peak phase | at start MB | added MB | owned state MB | "
        "gradients MB | most received (% of model) | peak of each phase MB |",
        "|---" * 11 + "|",
    ]
    for r in sorted(records, key=_key):
        fullest = r.get("fullest")
        if not fullest or not fullest["phases"]:
            continue
        phases = fullest["phases"]
        name = max(phases, key=lambda k: phases[k]["peak_mb"])
        owned = fullest["owned"]
        received = f"{100 * r['most_rendered'] / r['size']:.0f}" if "most_rendered" in r else "100"
        each = ", ".join(f"{k} {v['peak_mb']:.0f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]["peak_mb"]))
        param_bytes = GPU_PARAM_BYTES[_offload(r)]
        lines.append(
            f"| {_config(r['layout'], r['gpus'], _offload(r))} | {r['gpus']} | {r['size']:,} | {fullest['peak_mb']:.0f} | "
            f"{name} | {phases[name]['start_mb']:.0f} | {phases[name]['peak_mb'] - phases[name]['start_mb']:.0f} | "
            f"{owned * 3 * param_bytes / 2**20:.0f} | {owned * param_bytes / 2**20:.0f} | {received} | {each} |"
        )
    return lines


def targets(records: List[Dict], summary: Dict[tuple, Dict]) -> List[str]:
    """The issue's two bars, wherever both sides were measured."""
    lines = []
    for (layout, gpus, cap, offload), entry in sorted(summary.items()):
        replicated = [
            e["trained"] for (lay, _, c, off), e in summary.items() if lay == "replicated" and c == cap and not off
        ]
        if not replicated or not max(replicated):
            continue
        if offload:
            ratio, bar = entry["trained"] / max(replicated), OFFLOAD_TARGET.get(gpus)
            verdict = "" if bar is None else f"; {'meets' if ratio >= bar else 'misses'} >= {bar}x"
            lines.append(
                f"- Capacity, {_config(layout, gpus, offload)} on {gpus} GPU(s) at {cap:g} GiB: {ratio:.2f}x the largest "
                f"replicated scene without offload (a lower bound at this grid of sizes{verdict})."
            )
            continue
        if layout != "sharded":
            continue
        ratio = entry["trained"] / max(replicated)
        bar = CAPACITY_TARGET.get(gpus)
        verdict = "" if bar is None else f"; {'meets' if ratio >= bar else 'misses'} >= {bar}x"
        lines.append(
            f"- Capacity, sharded on {gpus} GPUs at {cap:g} GiB: {ratio:.2f}x the largest replicated scene "
            f"(a lower bound on the true ratio at this grid of sizes{verdict})."
        )
    by_key = {_key(r): r for r in records if r["status"] == "trained" and r["rank_peak_gpu_mb"]}
    for (layout, gpus, size, cap, images, offload, resolution), r in sorted(by_key.items()):
        base = by_key.get(("replicated", 1, size, cap, images, False, resolution))
        if layout != "sharded" or base is None or offload:
            continue
        ratio = max(r["rank_peak_gpu_mb"]) / max(base["rank_peak_gpu_mb"])
        bar = MEMORY_TARGET.get(gpus)
        verdict = "" if bar is None else f" ({'meets' if ratio <= bar else 'misses'} <= {bar})"
        lines.append(
            f"- Memory, {size:,} Gaussians: fullest rank sharded on {gpus} GPUs / replicated on 1 GPU = {ratio:.2f}"
            f"{verdict}."
        )
    return lines


def save(out: Path, records: List[Dict], environment: Dict[str, str]) -> None:
    """results.json and results.md, merged with the runs already there (a re-run replaces its own)."""
    path = out / "results.json"
    merged: Dict[tuple, Dict] = {}
    if path.exists():
        previous = json.loads(path.read_text())
        environment = {**previous["environment"], **environment}
        merged = {_key(r): r for r in previous["runs"]}
    merged.update({_key(r): r for r in records})
    runs = sorted(merged.values(), key=_key)
    path.write_text(json.dumps({"environment": environment, "runs": runs}, indent=1))
    (out / "results.md").write_text(markdown(runs, environment))


def _environment() -> Dict[str, str]:
    import gsplat
    import torch

    env = {"torch": torch.__version__, "gsplat": gsplat.__version__, "python": sys.version.split()[0]}
    # The ranks' allocator: theirs if the user set one, else the trainer's expandable segments (`memcap`).
    env["allocator"] = os.environ.get(ALLOCATOR_ENV, EXPANDABLE)
    if torch.cuda.is_available():
        env["gpus"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return env


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", nargs="+", choices=["replicated", "sharded"], default=["replicated"])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1], help="GPU counts (processes on CPU)")
    parser.add_argument("--sizes", type=parse_count, nargs="+", required=True, help="Gaussians, e.g. 2e6 4e6 8e6")
    parser.add_argument("--cap-gib", type=float, default=24.0, help="GPU memory per process (0: no cap)")
    parser.add_argument("--images", type=int, default=300, help="training budget in images")
    parser.add_argument("--views", type=int, default=200)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--objects", type=int, default=256)
    parser.add_argument(
        "--views-from", choices=["around", "above"], default="around",
        help="cameras overlooking the field (each sees much of it) or looking down on a patch (with many objects: a small share)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--offload", action="store_true", help="train with --pipeline.model.offload True")
    parser.add_argument("--keep-going", action="store_true", help="try larger sizes after a failure")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per training run")
    parser.add_argument("--cache", type=Path, default=Path("outputs/capacity/scenes"))
    parser.add_argument("--out", type=Path, default=Path("outputs/capacity"))
    parser.add_argument("--generate-only", action="store_true", help="make the scenes of --sizes, train nothing")
    args, extra = parser.parse_known_args(argv)
    if args.generate_only:  # runs side by side then share the cached scenes instead of racing to make them
        for size in sorted(set(args.sizes)):
            print(scene_for(size, args))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    environment = _environment()
    records: List[Dict] = []
    for layout in args.layout:
        for gpus in args.gpus:
            for size in sorted(set(args.sizes)):
                records.append(run_one(layout, gpus, size, args, extra))
                save(args.out, records, environment)
                if records[-1]["status"] != "trained" and not args.keep_going:
                    break
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
