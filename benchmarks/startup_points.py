"""Start-up of large scenes before the first step: reading points3D and the initial scales'
neighbour search, stock nerfstudio against splatfacto-dist, per scene size.

Every rank does both before it trains, so at tens of millions of points they decide how long a
large run takes to start (and how much of a capacity benchmark's device time is spent idle).

    python benchmarks/startup_points.py --sizes 1e6 4e6 --out docs/bench/startup_points

Each size is a `splatfacto_dist.scenes.synthetic` scene (cached under --cache). Timed, in this process,
with the threads a rank would have (--threads, default: all cores over --ranks):
- stock's COLMAP parser (`ColmapDataParser`, points3D through nerfstudio's per-point reader) and
  ours (`BulkPointsColmapDataParser`), whole `get_dataparser_outputs`;
- stock's `k_nearest_sklearn` over every point, and ours (`nearest_distances`) for every point
  (replicated) and for one rank's rows of a sharded run on --ranks ranks.
Outputs are checked equal before any time is reported. Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from splatfacto_dist.scenes.synthetic import SceneSpec, generate, is_complete, parse_count


def _timed(fn: Callable[[], object]) -> Tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(scene: Path, ranks: int) -> Dict[str, float]:
    """Seconds of each stage for one scene (see the module docstring)."""
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
    from nerfstudio.models.splatfacto import SplatfactoModel

    from splatfacto_dist.models.model import nearest_distances
    from splatfacto_dist.scenes.colmap_points import BulkPointsColmapDataParser

    config = ColmapDataParserConfig(data=scene)
    theirs, stock_parse = _timed(lambda: config.setup().get_dataparser_outputs("train"))
    ours, bulk_parse = _timed(lambda: BulkPointsColmapDataParser(config).get_dataparser_outputs("train"))
    for key in ("points3D_xyz", "points3D_rgb", "points3D_error", "points3D_num_points2D"):
        if not torch.equal(ours.metadata[key], theirs.metadata[key]):  # type: ignore[union-attr]
            raise SystemExit(f"{scene}: {key} differs from stock's")
    means = ours.metadata["points3D_xyz"].float()  # type: ignore[union-attr]
    (expected, _), stock_knn = _timed(lambda: SplatfactoModel.k_nearest_sklearn(None, means, 3))  # type: ignore[arg-type]
    everything, tree_all = _timed(lambda: nearest_distances(means, means, 3))
    rows = slice(0, len(means) // ranks)
    shard, tree_shard = _timed(lambda: nearest_distances(means, means[rows], 3))
    if not (torch.equal(everything, torch.from_numpy(expected)) and torch.equal(shard, everything[rows])):
        raise SystemExit(f"{scene}: neighbour distances differ from stock's")
    return {
        "points": len(means),
        "stock_parse_s": stock_parse,
        "bulk_parse_s": bulk_parse,
        "stock_knn_s": stock_knn,
        "tree_knn_all_s": tree_all,
        "tree_knn_shard_s": tree_shard,
    }


def write_report(results: Dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    ranks, threads = results["ranks"], results["threads"]
    lines = [
        f"Seconds per rank, {threads} threads ({os.cpu_count()} cores, {ranks} ranks' share each).",
        "",
        "| points | stock parse | bulk parse | stock k-NN | tree k-NN, all rows | tree k-NN, 1/"
        f"{ranks} rows | stock total | ours replicated | ours sharded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        stock = r["stock_parse_s"] + r["stock_knn_s"]
        lines.append(
            f"| {r['points']:,} | {r['stock_parse_s']:.2f} | {r['bulk_parse_s']:.2f} | {r['stock_knn_s']:.2f} | "
            f"{r['tree_knn_all_s']:.2f} | {r['tree_knn_shard_s']:.2f} | {stock:.2f} | "
            f"{r['bulk_parse_s'] + r['tree_knn_all_s']:.2f} | {r['bulk_parse_s'] + r['tree_knn_shard_s']:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_count, nargs="+", default=[1_000_000])
    parser.add_argument("--ranks", type=int, default=2, help="ranks on one machine (threads and sharded rows)")
    parser.add_argument("--threads", type=int, default=0, help="threads per rank (default: cores / ranks)")
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/splatfacto_dist_scenes"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    torch.set_num_threads(threads)
    results = {"ranks": args.ranks, "threads": threads, "sizes": []}
    for size in args.sizes:
        spec = SceneSpec(gaussians=size, views=args.views, width=64, height=48)
        scene = args.cache / f"startup-{size}-{args.views}v"
        if not is_complete(scene, spec):
            generate(scene, spec)
        results["sizes"].append(measure(scene, args.ranks))
        print(json.dumps(results["sizes"][-1]), flush=True)
    write_report(results, args.out)


if __name__ == "__main__":
    main()
