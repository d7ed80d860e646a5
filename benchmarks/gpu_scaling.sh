#!/usr/bin/env bash
# The 30,000-image scaling benchmark of docs/benchmarks.md on one scene of a 4-GPU machine, then the GPU
# tests. Stock splatfacto and splatfacto-dist on 1 and 2 GPUs run side by side (GPUs 0 / 1 / 2-3), then
# splatfacto-dist on 4 GPUs. One deadline covers the call: the benchmark stops there with the jobs that
# finished (it rewrites results.json after every job), and the tests run only in the time left.
# Usage (GPU machine, repository root; SCENE is a folder of .devicekit/data):
#   source .devicekit/setup.sh && bash benchmarks/gpu_scaling.sh OUTDIR SCENE SECONDS [splatfacto-dist-bench arguments]
set -u
out=$1 scene=$2 seconds=$3
deadline=$((SECONDS + seconds))
data=$PWD/.devicekit/data/$scene
parser=()
[ -f "$data/transforms.json" ] && parser=(--dataparser nerfstudio-data)
work=/tmp/bench_$scene
mkdir -p "$out/$scene" "$work"
timeout "$seconds" python -m splatfacto_dist.benchmarking.bench --data "$data" "${parser[@]}" --budget 30000 --gpus 1 2 4 \
  --parallel --out "$work" "${@:4}" 2>&1 | grep --line-buffered '^\[bench\] \(start\|done\|failed\)'
cp "$work"/results.json "$work"/results.md "$work"/scaling.png "$out/$scene/" 2>/dev/null
left=$((deadline - SECONDS))
if [ "$left" -gt 60 ]; then
  timeout "$left" python -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_ecosystem.py 2>&1 | tail -4 \
    | tee "$out/gpu_tests.txt"
fi
tar czf "$out/${scene}_logs.tgz" --exclude='events.out*' --exclude='*.ckpt' --exclude='*.ply' --exclude='*.png' -C "$work" .
