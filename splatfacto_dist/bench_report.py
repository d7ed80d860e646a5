"""Tables and plots of a scaling benchmark, from its results.json (one or several, merged).

Separate from `bench` so a report can be redrawn, or assembled from runs made in several calls,
without training again: python -m splatfacto_dist.bench_report OUT RESULTS.json [RESULTS.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

PSNR_TOLERANCE_DB = 0.1  # the quality bar: no more than this below stock splatfacto's final test PSNR
PHASES = ("data", "render+loss", "backward", "all-reduce", "optimizer", "densify", "other", "step")


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
    order = sorted(jobs.values(), key=lambda j: (j["method"] != "splatfacto", j["n_gpus"], j["batch"]))
    return order, environment


def derive(jobs: List[dict]) -> Optional[dict]:
    """Add speedups and time-to-PSNR against the stock job (when there is one); return the stock job."""
    stock = next((j for j in jobs if j["method"] == "splatfacto" and "psnr" in j["result"]), None)
    for job in jobs:
        r = job["result"]
        if stock is None:
            continue
        base = stock["result"]
        if "loop_s" in r and "loop_s" in base:
            r["loop_speedup"] = base["loop_s"] / r["loop_s"]
        r["wall_speedup"] = base["wall_s"] / r["wall_s"]
        if "psnr" in r:
            r["psnr_vs_stock_db"] = r["psnr"] - base["psnr"]
        target = base["psnr"] - PSNR_TOLERANCE_DB
        reached = [t for t, _, psnr in job["curve"] if psnr >= target]
        if reached:
            r["time_to_psnr_s"] = reached[0]
    return stock


def markdown(jobs: List[dict], environment: Dict[str, str], title: str) -> str:
    stock = derive(jobs)
    target = f"{stock['result']['psnr'] - PSNR_TOLERANCE_DB:.2f} dB" if stock else "-"
    lines = [
        f"### {title}: {environment.get('budget_images', '?')}-image budget",
        "",
        f"Machine: {environment.get('gpus', 'CPU')}, {environment.get('cpus', '?')} CPUs; torch {environment.get('torch')}, "
        f"nerfstudio {environment.get('nerfstudio')}, gsplat {environment.get('gsplat')}, Python {environment.get('python')}.",
        f"Time to PSNR: seconds from process start to the first evaluation at or above stock's final test PSNR "
        f"- {PSNR_TOLERANCE_DB} dB ({target}).",
        "",
        "| job | GPUs | batch | steps | images/s | loop s | outside loop s | wall s | loop speedup | wall speedup | "
        "time to PSNR s | test PSNR | vs stock dB | SSIM | LPIPS | Gaussians | peak GPU MB/rank | peak host MB/rank | "
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
            f"{f('ssim', '{:.4f}')} | {f('lpips', '{:.3f}')} | {f('gaussians', '{:,.0f}')} | {f('peak_mem_mb', '{:.0f}')} | "
            f"{f('peak_host_mb', '{:.0f}')} | {f('startup_s')} |"
        )
    profiled = [j for j in jobs if any(k.startswith("phase_") for k in j["result"])]
    if profiled:
        lines += ["", "Per-step breakdown (ms, mean over the sampled steps; the slowest rank waits in all-reduce):", "",
                  "| job | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
        for job in profiled:
            lines.append(f"| {job['name']} | " + " | ".join(
                f"{job['result']['phase_' + p]:.2f}" if "phase_" + p in job["result"] else "-" for p in PHASES) + " |")
    return "\n".join(lines) + "\n"


def plot(jobs: List[dict], path: Path, title: str) -> None:
    """Three panels: time vs GPUs, test PSNR vs GPUs, test PSNR over time (time-to-PSNR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stock = derive(jobs)
    dist = [j for j in jobs if j["method"] == "splatfacto-dist" and "loop_s" in j["result"]]
    fig, (ax_t, ax_q, ax_c) = plt.subplots(1, 3, figsize=(13, 3.8))
    gpus = [j["n_gpus"] for j in dist]
    ax_t.plot(gpus, [j["result"]["wall_s"] for j in dist], "o-", label="splatfacto-dist, whole process")
    ax_t.plot(gpus, [j["result"]["loop_s"] for j in dist], "s-", label="splatfacto-dist, training loop")
    if stock:
        for key, style in (("wall_s", "-"), ("loop_s", "--")):
            ax_t.axhline(stock["result"][key], color="gray", ls=style, lw=1)
        ax_t.plot(gpus, [stock["result"]["loop_s"] / g for g in gpus], ":", color="gray", label="stock loop / GPUs (ideal)")
        ax_t.text(max(gpus), stock["result"]["wall_s"], "stock 1 GPU", va="bottom", ha="right", fontsize=8, color="gray")
    ax_t.set(xlabel="GPUs", ylabel="seconds", title="time", xticks=gpus)
    ax_t.legend(fontsize=7)
    ax_q.plot(gpus, [j["result"].get("psnr", float("nan")) for j in dist], "o-", label="splatfacto-dist")
    if stock:
        psnr = stock["result"]["psnr"]
        ax_q.axhline(psnr, color="gray", lw=1, label="stock 1 GPU")
        ax_q.axhspan(psnr - PSNR_TOLERANCE_DB, psnr, color="gray", alpha=0.2, label=f"-{PSNR_TOLERANCE_DB} dB")
    ax_q.set(xlabel="GPUs", ylabel="test PSNR (dB)", title="quality", xticks=gpus)
    ax_q.legend(fontsize=7)
    for job in ([stock] if stock else []) + dist:
        if job["curve"]:
            t, _, psnr = zip(*job["curve"])
            ax_c.plot(t, psnr, ".-", label=job["name"])
    if stock:
        ax_c.axhline(stock["result"]["psnr"] - PSNR_TOLERANCE_DB, color="gray", ls="--", lw=1)
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
