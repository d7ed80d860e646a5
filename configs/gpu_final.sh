#!/usr/bin/env bash
# Last call of docs/benchmarks.md section 12 on a 4-GPU machine, under one deadline:
#   1. start-up before/after the short command-line parse: beer_can, 4 GPUs, 2,000 images, the tree
#      before the change (.before/) then this one; each rank prints its start-up by stage;
#   2. the 30,000-image beer_can run on 4 GPUs again, after the change;
#   3. the GPU tests.
# Usage (GPU machine, repo root): source .devicekit/setup.sh && bash configs/gpu_final.sh OUTDIR SECONDS
set -u
out=$1
deadline=$((SECONDS + $2))
left() { echo $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)); }
data=$PWD/.devicekit/data/beer_can
mkdir -p "$out" /tmp/final
for pair in .before:before .:after; do
  tree=${pair%%:*} name=${pair##*:}
  (cd "$tree" && timeout "$(left)" python -m splatfacto_dist.bench --data "$data" --budget 2000 --eval-every 2000 --gpus 4 \
    --no-stock --out "/tmp/final/startup_$name" >/dev/null 2>&1)
  cp "/tmp/final/startup_$name/results.json" "$out/startup_$name.json"
  sed -n '/^| job | imports/,/^$/p' "/tmp/final/startup_$name/results.md" | sed "s/^/$name /"
done | tee "$out/startup_before_after.txt"
timeout "$(left)" python -m splatfacto_dist.bench --data "$data" --budget 30000 --gpus 4 --no-stock --out /tmp/final/dist4 2>&1 \
  | grep --line-buffered '^\[bench\] \(start\|done\|failed\)'
cp /tmp/final/dist4/results.json "$out/beer_can_dist4.json"
timeout "$(left)" python -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_ecosystem.py 2>&1 | tail -4 | tee "$out/gpu_tests.txt"
