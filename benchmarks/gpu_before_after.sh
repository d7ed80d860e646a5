#!/usr/bin/env bash
# Before/after of a change in one device call: splatfacto-dist from .before/ (the tree before the change,
# `git worktree add --detach .before COMMIT`, carried along) against this tree, same scene and image
# budget, no stock job. Each tree's benchmark runs from that tree's root with it first on PYTHONPATH, so
# that its own splatfacto_dist is the one imported (also by the ranks it starts). 1-GPU jobs of both
# trees run side by side (GPUs 0 and 1); jobs on more GPUs run alone, before first, so that neither shares the machine. On a 1-GPU machine the 1-GPU jobs run one
# after the other on GPU 0.
# Usage (GPU machine, repository root; GPU_COUNTS like 1,4; SCENE is a folder of .devicekit/data):
#   source .devicekit/setup.sh && bash benchmarks/gpu_before_after.sh OUTDIR SCENE IMAGES GPU_COUNTS [bench arguments]
set -u
out=$1 scene=$2 images=$3 counts=$4
data=$PWD/.devicekit/data/$scene
parser=()
[ -f "$data/transforms.json" ] && parser=(--dataparser nerfstudio-data)
work=/tmp/before_after
mkdir -p "$out" "$work"
bench() {  # TREE NAME GPUS COUNT
  local module=splatfacto_dist.benchmarking.bench  # splatfacto_dist.bench before the package layout (741fc27)
  [ -f "$1/splatfacto_dist/benchmarking/bench.py" ] || module=splatfacto_dist.bench
  (cd "$1" && PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} CUDA_VISIBLE_DEVICES=$3 python -m $module --data "$data" "${parser[@]}" --budget "$images" \
    --gpus "$4" --no-stock --out "$work/$2_$4gpu" "${@:5}" 2>&1 | grep '^|' | sed "s/^/$2 /")
}
for n in ${counts//,/ }; do
  if [ "$n" = 1 ] && [ "$(nvidia-smi -L | wc -l)" = 1 ]; then
    bench .before before 0 1 "${@:5}"
    bench . after 0 1 "${@:5}"
  elif [ "$n" = 1 ]; then
    bench .before before 0 1 "${@:5}" &
    bench . after 1 1 "${@:5}" &
    wait
  else
    gpus=$(seq -s, 0 $((n - 1)))
    bench .before before "$gpus" "$n" "${@:5}"
    bench . after "$gpus" "$n" "${@:5}"
  fi
done | tee "$out/before_after.txt"
tar czf "$out/before_after_logs.tgz" --exclude='events.out*' --exclude='*.ckpt' --exclude='*.ply' -C "$work" .
