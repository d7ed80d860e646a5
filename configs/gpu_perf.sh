#!/usr/bin/env bash
# Before/after of a performance change in one device call (4 GPUs), beer_can, 8,000-image budget.
# `.before/` holds the tree before the change (`git worktree add --detach .before <commit>`, carried
# along); it runs from inside `.before/` so that its own `splatfacto_dist` is the one imported.
# 1-GPU jobs of both trees run side by side on GPUs 0 and 1, then each tree's 4-GPU job alone.
# Usage: source .devicekit/setup.sh && bash configs/gpu_perf.sh OUTDIR
set -u
out=${1:-outputs/gpu_perf}
work=/tmp/gpu_perf
data=$PWD/.devicekit/data/beer_can
mkdir -p "$out" "$work"
bench() {  # TREE GPUS OUT [bench args]
  (cd "$1" && CUDA_VISIBLE_DEVICES=$2 python -m splatfacto_dist.bench --data "$data" --budget 8000 --no-stock \
    --out "$3" "${@:4}" 2>&1 | grep '^|')
}
bench .before 0 "$work/before_1gpu" --gpus 1 &
bench . 1 "$work/after_1gpu" --gpus 1 &
wait
bench .before 0,1,2,3 "$work/before_4gpu" --gpus 4
bench . 0,1,2,3 "$work/after_4gpu" --gpus 4
tar czf "$out/results.tgz" --exclude='events.out*' --exclude='*.ckpt' -C "$work" .
