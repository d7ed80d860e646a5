"""The tables of docs/benchmarks.md, generated from the raw results under docs/bench/.

Every table this prints appears verbatim in docs/benchmarks.md (tests/test_docs.py checks it), so a
figure there can be traced to the JSON a run wrote, and a changed JSON file shows up as a stale table.

    python benchmarks/bench_tables.py            # every table, each after its name
    python benchmarks/bench_tables.py memory     # one table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"


def _load(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _millions(n: float) -> str:
    return f"{n / 1e6:.1f} M"


# Speed by GPU count: stock splatfacto on 1 GPU and splatfacto-dist on 1, 2 and 4 GPUs in one call.


def _scaling_jobs(root: Path, scene: str) -> List[dict]:
    return _load(root, f"{scene}/results.json")["jobs"]


def scaling(root: Path, scene: str) -> str:
    jobs = _scaling_jobs(root, scene)
    stock = [j["result"] for j in jobs if j["method"] == "splatfacto"]
    base = {k: sum(r[k] for r in stock) / len(stock) for k in ("loop_s", "wall_s", "psnr")}
    rows = []
    for job in jobs:
        r = job["result"]
        rows.append(
            [
                job["name"],
                str(job["n_gpus"]),
                str(int(r["steps"])),
                f"{r['images_per_s']:.0f}",
                f"{r['loop_s']:.1f}",
                f"{r['outside_loop_s']:.1f}",
                f"{r['wall_s']:.1f}",
                f"{base['loop_s'] / r['loop_s']:.2f}x",
                f"{base['wall_s'] / r['wall_s']:.2f}x",
                f"{r['psnr']:.2f}",
                f"{r['psnr'] - base['psnr']:+.2f}",
                f"{r['ssim']:.4f}",
                f"{r['gaussians']:,.0f}",
                f"{r['peak_mem_mb']:.0f}",
            ]
        )
    header = ["job", "GPUs", "steps", "images/s", "loop s", "outside loop s", "wall s", "loop speedup"]
    header += ["wall speedup", "test PSNR", "vs stock dB", "SSIM", "Gaussians", "peak GPU MB/rank"]
    return _table(header, rows)


def phases(root: Path, scene: str) -> str:
    names = ["data", "render+loss", "backward", "all-reduce", "optimizer", "densify", "other", "step"]
    rows = []
    for job in _scaling_jobs(root, scene):
        r = job["result"]
        if "phase_step" in r:
            rows.append([job["name"]] + [f"{r['phase_' + name]:.2f}" for name in names])
    return _table(["job"] + names, rows)


# Speed on one GPU, 30,000 images, stock against ours.


def speed_1gpu(root: Path) -> str:
    data = _load(root, "speed_1gpu/results.json")["scenes"]
    rows = []
    for scene, runs in data.items():
        s, d = runs["stock"], runs["dist"]
        rows.append(
            [
                f"{scene} ({runs['commit']})",
                f"{s['loop_s']:.1f} / {d['loop_s']:.1f}",
                f"**{s['loop_s'] / d['loop_s']:.2f}x**",
                f"{s['wall_s']:.1f} / {d['wall_s']:.1f}",
                f"**{s['wall_s'] / d['wall_s']:.2f}x**",
                f"{s['outside_loop_s']:.1f} / {d['outside_loop_s']:.1f}",
                f"{s['step_ms_median']:.2f} / {d['step_ms_median']:.2f}",
                f"{s['images_per_s']:.1f} / {d['images_per_s']:.1f}",
                f"{s['psnr']:.2f} / {d['psnr']:.2f}",
                f"{s['ssim']:.3f} / {d['ssim']:.3f}",
                f"{s['gaussians']:,.0f} / {d['gaussians']:,.0f}",
                f"{s['peak_mem_mb']:,.0f} / {d['peak_mem_mb']:,.0f}",
            ]
        )
    header = ["scene (commit)", "loop s, stock / ours", "loop", "whole process s", "whole", "outside loop s"]
    header += ["median step ms", "images/s", "test PSNR", "SSIM", "Gaussians at the end", "peak GPU MB"]
    return _table(header, rows)


# Memory per rank and capacity (the capacity benchmark's synthetic scene, densification off).


def _memory_runs(root: Path) -> List[dict]:
    return _load(root, "memory/results.json")["runs"]


def memory(root: Path) -> str:
    runs = _memory_runs(root)
    rows = []
    for scene in ("around", "above"):
        mine = [r for r in runs if r["scene"] == scene]
        replicated = next(r for r in mine if r["layout"] == "replicated")
        row = [scene, f"{replicated['peak_mb_max']:,}"]
        for ranks in (2, 4, 8):
            run = next((r for r in mine if r["layout"] == "sharded" and r["ranks"] == ranks), None)
            if run is None:
                row.append("-")
                continue
            base = run.get("replicated_mb_same_call", replicated["peak_mb_max"])
            cell = f"{run['peak_mb_max']:,} ({run['peak_mb_max'] / base:.3f}x)"
            row.append(cell if run["commit"] == replicated["commit"] else f"{cell}, {run['commit']}")
        rows.append(row)
    return _table(["scene", "replicated, 1 GPU", "2 ranks", "4 ranks", "8 ranks"], rows)


def memory_breakdown(root: Path) -> str:
    rows = []
    for r in _memory_runs(root):
        if r["scene"] != "around":
            continue
        name = "1 (replicated)" if r["layout"] == "replicated" else str(r["ranks"])
        rows.append(
            [
                name,
                f"{r['peak_mb_max']:,}",
                r["peak_phase"],
                f"{r['at_start_mb']:,}",
                f"{r['owned_state_mb']:,}",
                str(r["added_mb"]),
                str(r["gradients_mb"]),
                str(r["added_mb"] - r["gradients_mb"]),
                f"{r['most_received_pct']}%",
            ]
        )
    header = ["ranks", "peak MB", "peak phase", "at its start", "of which owned state", "added in the phase"]
    header += ["of which gradients", "rest of the phase", "most received for one image"]
    return _table(header, rows)


def _capacity_runs(root: Path) -> List[dict]:
    return _load(root, "capacity/results.json")["runs"]


def capacity(root: Path) -> str:
    runs = [r for r in _capacity_runs(root) if r["cap_gib"] == 4]
    replicated = [r for r in runs if r["layout"] == "replicated"]
    rep_trained = max(r["gaussians"] for r in replicated if r["status"] == "trained")
    rep_failed = min(r["gaussians"] for r in replicated if r["status"] != "trained")
    rep_mb = next(r["peak_mb_max"] for r in replicated if r["gaussians"] == rep_trained)
    rows = [["replicated, 1", f"{_millions(rep_trained)} ({rep_mb:,}); {_millions(rep_failed)} out of memory", "1"]]
    for ranks in (2, 4, 8):
        cells = []
        for scene in ("around", "above"):
            mine = [r for r in runs if r["layout"] == "sharded" and r["ranks"] == ranks and r["scene"] == scene]
            best = max((r for r in mine if r["status"] == "trained"), key=lambda r: r["gaussians"])
            cells.append(best)
        largest = min(r["gaussians"] for r in cells)
        text = "; ".join(f"{r['scene']} {_millions(r['gaussians'])} ({r['peak_mb_max']:,})" for r in cells)
        rows.append([f"sharded, {ranks}", text, f">= {largest / rep_trained:.1f}x"])
    return _table(["layout, ranks", "largest tried that trained (fullest rank MB)", "x replicated"], rows)


def card_size(root: Path) -> str:
    runs = [r for r in _capacity_runs(root) if r["cap_gib"] == 24]
    base = next(r for r in runs if r["layout"] == "replicated")["peak_mb_max"]
    rows = [
        [
            r["layout"],
            str(r["ranks"]),
            _millions(r["gaussians"]),
            f"{r['peak_mb_max']:,} / {r['peak_mb_min']:,}",
            f"{r['peak_mb_max'] / base:.2f}x",
            f"{r['most_received_pct']}%",
        ]
        for r in runs
    ]
    header = ["layout", "ranks", "Gaussians", "fullest / emptiest rank MB", "x replicated", "most received"]
    return _table(header, rows)


# Start-up of large scenes (points3D read and the initial neighbour search, per rank).


def startup_points(root: Path) -> str:
    rows = []
    for s in _load(root, "startup_points/results.json")["sizes"]:
        rows.append(
            [
                f"{s['points']:,}",
                f"{s['stock_parse_s']:.2f}",
                f"{s['bulk_parse_s']:.2f}",
                f"{s['stock_knn_s']:.2f}",
                f"{s['tree_knn_all_s']:.2f}",
                f"{s['tree_knn_shard_s']:.2f}",
                f"{s['stock_parse_s'] + s['stock_knn_s']:.2f}",
                f"{s['bulk_parse_s'] + s['tree_knn_all_s']:.2f}",
                f"{s['bulk_parse_s'] + s['tree_knn_shard_s']:.2f}",
            ]
        )
    header = ["points", "stock parse", "bulk parse", "stock k-NN", "tree k-NN, all rows", "tree k-NN, half the rows"]
    header += ["stock total", "ours, replicated", "ours, sharded on 2"]
    return _table(header, rows)


TABLES: Dict[str, Callable[[Path], str]] = {
    "scaling_fox": lambda root: scaling(root, "fox"),
    "phases_fox": lambda root: phases(root, "fox"),
    "scaling_beer_can": lambda root: scaling(root, "beer_can"),
    "phases_beer_can": lambda root: phases(root, "beer_can"),
    "speed_1gpu": speed_1gpu,
    "memory": memory,
    "memory_breakdown": memory_breakdown,
    "capacity": capacity,
    "card_size": card_size,
    "startup_points": startup_points,
}


def generate(root: Path = BENCH) -> Dict[str, str]:
    """Every table, by name, from the JSON under `root` (docs/bench/ by default)."""
    return {name: make(root) for name, make in TABLES.items()}


def missing(doc: str, tables: Dict[str, str]) -> List[str]:
    """The names of the tables that do not appear verbatim in `doc`."""
    return [name for name, table in tables.items() if table not in doc]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"tables to print (default: all): {', '.join(TABLES)}")
    parser.add_argument("--root", type=Path, default=BENCH, help="the folder of raw results (default: docs/bench)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in TABLES]
    if unknown:
        parser.error(f"unknown tables: {', '.join(unknown)}")
    tables = generate(args.root)
    for name in args.names or list(TABLES):
        print(f"{name}:\n\n{tables[name]}\n")


if __name__ == "__main__":
    main()
