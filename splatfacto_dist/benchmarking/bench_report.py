"""Tables and plots of a scaling benchmark, from its results.json (one or several, merged).

Separate from `bench` so a report can be redrawn, or assembled from runs made in several calls,
without training again: python -m splatfacto_dist.benchmarking.bench_report OUT RESULTS.json [RESULTS.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

PSNR_TOLERANCE_DB = 0.1  # the quality bar: no more than this below stock splatfacto's final test PSNR
PHASES = ("data", "render+loss", "range wait", "backward", "all-reduce", "optimizer", "densify", "other", "step")


def save(path: Path, jobs: List[dict], environment: Dict[str, str]) -> None:
    path.write_text(json.dumps({"environment": environment, "jobs": jobs}, indent=1))


def load(paths: List[Path]) -> tuple:
    """Jobs and environment of one or more results.json; a later file's job replaces an earlier one's."""
    jobs: Dict[str, dict] = {}
    environment: Dict[str, str] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        environment.update(data["environment"])
        jobs.update({job["name"]: job for job in data["jobs"] if job["result"]})
    order = sorted(
        jobs.values(), key=lambda j: (j["method"] != "splatfacto", j["n_gpus"], j["batch"], j.get("seed", 0))
    )
    return order, environment


def groups(jobs: List[dict]) -> Dict[tuple, List[dict]]:
    """Runs of the same configuration (method, GPUs, batch), with different seeds or repeated, in job order."""
    out: Dict[tuple, List[dict]] = {}
    for job in jobs:
        out.setdefault((job["method"], job["n_gpus"], job["batch"]), []).append(job)
    return out


def _mean(runs: List[dict], key: str) -> float:
    values = [r["result"][key] for r in runs if key in r["result"]]
    return float(np.mean(values)) if values else float("nan")


def derive(jobs: List[dict]) -> Optional[Dict[str, float]]:
    """Add speedups and time-to-PSNR against stock splatfacto (the mean over its runs, when there
    are several); return that baseline, or None without a stock run."""
    stock = [j for j in jobs if j["method"] == "splatfacto" and "psnr" in j["result"]]
    if not stock:
        return None
    base = {key: _mean(stock, key) for key in ("loop_s", "wall_s", "psnr")}
    target = base["psnr"] - PSNR_TOLERANCE_DB
    for job in jobs:
        r = job["result"]
        if "loop_s" in r:
            r["loop_speedup"] = base["loop_s"] / r["loop_s"]
        if "wall_s" in r:
            r["wall_speedup"] = base["wall_s"] / r["wall_s"]
        if "psnr" in r:
            r["psnr_vs_stock_db"] = r["psnr"] - base["psnr"]
        reached = [t for t, _, psnr in job["curve"] if psnr >= target]
        if reached:
            r["time_to_psnr_s"] = reached[0]
    return base


def _seed_summary(jobs: List[dict], base: Optional[Dict[str, float]]) -> List[str]:
    """Mean and standard deviation over runs, per configuration (only when some configuration ran several times)."""
    grouped = groups(jobs)
    if all(len(runs) == 1 for runs in grouped.values()):
        return []
    lines = [
        "",
        "Over runs of one configuration (seeds or repeats; mean ± standard deviation; speedups and PSNR difference against stock's mean):",
        "",
        "| configuration | runs | loop s | wall s | loop speedup | wall speedup | test PSNR | vs stock dB |",
        "|---" * 8 + "|",
    ]
    for (method, gpus, batch), runs in grouped.items():

        def ms(key: str, fmt: str) -> str:
            values = [r["result"][key] for r in runs if key in r["result"]]
            return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}" if values else "-"

        loop, wall, psnr = _mean(runs, "loop_s"), _mean(runs, "wall_s"), _mean(runs, "psnr")
        speed = f"{base['loop_s'] / loop:.2f}x | {base['wall_s'] / wall:.2f}x | " if base else "- | - | "
        diff = f"{psnr - base['psnr']:+.2f}" if base else "-"
        lines.append(
            f"| {method} {gpus} GPU x {batch} | {len(runs)} | {ms('loop_s', '{:.1f}')} | {ms('wall_s', '{:.1f}')} | "
            f"{speed}{ms('psnr', '{:.2f}')} | {diff} |"
        )
    return lines


def gpu_memory_per_rank(job: dict) -> str:
    """Peak GPU memory of the fullest and the emptiest rank ("max / min" MB): a sharded layout is
    only as large as its fullest rank allows. Results written before ranks were listed give the max."""
    ranks = job.get("rank_peak_gpu_mb") or []
    if len(ranks) > 1:
        return f"{max(ranks):.0f} / {min(ranks):.0f}"
    peak = job["result"].get("peak_mem_mb")
    return "-" if peak is None or np.isnan(peak) else f"{peak:.0f}"


def markdown(jobs: List[dict], environment: Dict[str, str], title: str) -> str:
    base = derive(jobs)
    target = f"{base['psnr'] - PSNR_TOLERANCE_DB:.2f} dB" if base else "-"
    lines = [
        f"### {title}: {environment.get('budget_images', '?')}-image budget",
        "",
        f"Machine: {environment.get('gpus', 'CPU')}, {environment.get('cpus', '?')} CPUs; torch {environment.get('torch')}, "
        f"nerfstudio {environment.get('nerfstudio')}, gsplat {environment.get('gsplat')}, Python {environment.get('python')}; "
        f"Gaussian layout {environment.get('layout', 'replicated')}.",
        f"Time to PSNR: seconds from process start to the first evaluation at or above stock's final test PSNR "
        f"(mean over its runs) - {PSNR_TOLERANCE_DB} dB ({target}).",
        "",
        "| job | GPUs | batch | steps | images/s | loop s | outside loop s | wall s | loop speedup | wall speedup | "
        "time to PSNR s | test PSNR | vs stock dB | SSIM | LPIPS | Gaussians | peak GPU MB/rank (max / min) | "
        "peak host MB/rank | "
        "rank start-up s |",
        "|---" * 19 + "|",
    ]
    for job in jobs:
        r = job["result"]

        def f(key: str, fmt: str = "{:.1f}") -> str:
            return fmt.format(r[key]) if key in r and r[key] == r[key] else "-"  # NaN: not measured

        failed = f" (exit {r['returncode']:.0f})" if r.get("returncode") else ""
        lines.append(
            f"| {job['name']}{failed} | {job['n_gpus']} | {job['batch']} | {f('steps', '{:.0f}')} | {f('images_per_s', '{:.0f}')} | "
            f"{f('loop_s')} | {f('outside_loop_s')} | {f('wall_s')} | {f('loop_speedup', '{:.2f}x')} | "
            f"{f('wall_speedup', '{:.2f}x')} | {f('time_to_psnr_s')} | {f('psnr', '{:.2f}')} | {f('psnr_vs_stock_db', '{:+.2f}')} | "
            f"{f('ssim', '{:.4f}')} | {f('lpips', '{:.3f}')} | {f('gaussians', '{:,.0f}')} | {gpu_memory_per_rank(job)} | "
            f"{f('peak_host_mb', '{:.0f}')} | {f('startup_s')} |"
        )
    lines += _seed_summary(jobs, base)
    profiled = [j for j in jobs if any(k.startswith("phase_") for k in j["result"])]
    if profiled:
        lines += [
            "",
            "Per-step breakdown (ms, mean over the sampled steps; the slowest rank waits in all-reduce; range wait: the part"
            " of render+loss a rank waited for the slowest rank's pixel ranges, measured on their rasterization):",
            "",
            "| job | " + " | ".join(PHASES) + " |",
            "|---" * (len(PHASES) + 1) + "|",
        ]
        for job in profiled:
            lines.append(
                f"| {job['name']} | "
                + " | ".join(
                    f"{job['result']['phase_' + p]:.2f}" if "phase_" + p in job["result"] else "-" for p in PHASES
                )
                + " |"
            )
    per_job = [[k for k in j["result"] if k.startswith("startup:")] for j in jobs]
    stages = list(
        dict.fromkeys(k for keys in sorted(per_job, key=len, reverse=True) for k in keys)
    )  # fullest order first
    if stages:
        lines += [
            "",
            "Start-up of the slowest rank (s; each stage since the previous one, the first since the process started):",
            "",
            "| job | " + " | ".join(k.split(":", 1)[1] for k in stages) + " | total |",
            "|---" * (len(stages) + 2) + "|",
        ]
        for job in (j for j in jobs if "startup_s" in j["result"]):
            r = job["result"]
            lines.append(
                f"| {job['name']} | "
                + " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in stages)
                + f" | {r['startup_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def plot(jobs: List[dict], path: Path, title: str) -> None:
    """Three panels: time vs GPUs, test PSNR vs GPUs, test PSNR over time (time-to-PSNR). Without a
    splatfacto-dist job (`bench --stock-only`) the first two show stock's lines alone, at 1 GPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = derive(jobs)
    dist = [runs for (method, _, _), runs in groups(jobs).items() if method == "splatfacto-dist"]
    dist = [[j for j in runs if "loop_s" in j["result"]] for runs in dist]
    dist = [runs for runs in dist if runs]
    fig, (ax_t, ax_q, ax_c) = plt.subplots(1, 3, figsize=(13, 3.8))
    gpus = [runs[0]["n_gpus"] for runs in dist]
    ticks = gpus or [1]  # stock's 1 GPU when no splatfacto-dist job ran

    def band(ax, key: str, style: str, label: str) -> None:
        if not dist:
            return
        values = [[j["result"].get(key, float("nan")) for j in runs] for runs in dist]
        ax.errorbar(
            gpus, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], fmt=style, capsize=3, label=label
        )

    band(ax_t, "wall_s", "o-", "splatfacto-dist, whole process")
    band(ax_t, "loop_s", "s-", "splatfacto-dist, training loop")
    if base:
        for key, style in (("wall_s", "-"), ("loop_s", "--")):
            ax_t.axhline(base[key], color="gray", ls=style, lw=1)
        ax_t.plot(ticks, [base["loop_s"] / g for g in ticks], ":", color="gray", label="stock loop / GPUs (ideal)")
        ax_t.text(max(ticks), base["wall_s"], "stock 1 GPU", va="bottom", ha="right", fontsize=8, color="gray")
    ax_t.set(xlabel="GPUs", ylabel="seconds", title="time", xticks=ticks)
    ax_t.legend(fontsize=7)
    band(ax_q, "psnr", "o-", "splatfacto-dist")
    if base:
        ax_q.axhline(base["psnr"], color="gray", lw=1, label="stock 1 GPU")
        ax_q.axhspan(
            base["psnr"] - PSNR_TOLERANCE_DB, base["psnr"], color="gray", alpha=0.2, label=f"-{PSNR_TOLERANCE_DB} dB"
        )
    ax_q.set(xlabel="GPUs", ylabel="test PSNR (dB)", title="quality", xticks=ticks)
    ax_q.legend(fontsize=7)
    for job in jobs:
        if job["curve"]:
            t, _, psnr = zip(*job["curve"])
            ax_c.plot(t, psnr, ".-", label=job["name"])
    if base:
        ax_c.axhline(base["psnr"] - PSNR_TOLERANCE_DB, color="gray", ls="--", lw=1)
    ax_c.set(xlabel="seconds since process start", ylabel="test PSNR (dB)", title="time to PSNR")
    ax_c.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def write(out: Path, jobs: List[dict], environment: Dict[str, str], title: str) -> None:
    """results.json, results.md and scaling.png in `out`; the table is also printed."""
    out.mkdir(parents=True, exist_ok=True)
    save(out / "results.json", jobs, environment)
    done = [j for j in jobs if j["result"]]
    table = markdown(done, environment, title)
    (out / "results.md").write_text(table)
    plot(done, out / "scaling.png", title)
    print(table)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--title", default="benchmark")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.exists()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    jobs, environment = load(args.results)
    write(args.out, jobs, environment, args.title)


if __name__ == "__main__":
    main()
