#!/usr/bin/env bash
# The 30,000-image scaling benchmark of docs/benchmarks.md for one scene on a 4-GPU machine: stock,
# splatfacto-dist on 1 and 2 GPUs side by side (GPUs 0 / 1 / 2-3), then on 4 GPUs. It stops at the
# deadline with what finished (results.json is rewritten after every job) and packs the logs.
# Usage (GPU machine, repo root): source .devicekit/setup.sh &&
#   bash configs/gpu_bench30k.sh OUTDIR SCENE SECONDS [more splatfacto-dist-bench arguments]
set -u
out=$1 scene=$2 seconds=$3
data=$PWD/.devicekit/data/$scene
parser=()
[ "$scene" = fox ] && parser=(--dataparser nerfstudio-data)
work=/tmp/bench_$scene
mkdir -p "$out" "$work"
timeout "$seconds" python -m splatfacto_dist.bench --data "$data" "${parser[@]}" --budget 30000 --gpus 1 2 4 \
  --parallel --out "$work" "${@:4}" 2>&1 | grep --line-buffered '^\[bench\] \(start\|done\|failed\)'
cp "$work/results.json" "$out/$scene.json"
tar czf "$out/${scene}_logs.tgz" --exclude='events.out*' --exclude='*.ckpt' --exclude='*.ply' --exclude='*.png' -C "$work" .
