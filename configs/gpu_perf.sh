#!/usr/bin/env bash
# Before/after, one device call (4 GPUs), beer_can, 8,000-image budget: `.before/` holds the tree
# before a performance change (e.g. `git worktree add --detach .before <commit>`, carried along).
# Usage: source .devicekit/setup.sh && bash configs/gpu_perf.sh OUTDIR
set -u
out=${1:-outputs/gpu_perf}
work=/tmp/gpu_perf
data=.devicekit/data/beer_can
mkdir -p "$out" "$work"
PYTHONPATH="$PWD/.before:$PYTHONPATH" python -m splatfacto_dist.bench --data "$data" --budget 8000 --gpus 1 4 \
  --no-stock --parallel --out "$work/before" 2>&1 | grep '^|'
python -m splatfacto_dist.bench --data "$data" --budget 8000 --gpus 1 2 4 --parallel --out "$work/after" 2>&1 | grep '^|'
tar czf "$out/results.tgz" --exclude='events.out*' --exclude='*.ckpt' -C "$work" .
