#!/usr/bin/env bash
# Issue 20's figures on a 1-GPU machine: splatfacto-dist against stock splatfacto at 30,000 images on
# one scene (one after the other on GPU 0), then where each one's step goes, kernel by kernel
# (benchmarks/step_profile.py, 200 steps at full resolution). Started detached, so that it outlives
# one device call; every result lands in RESULTS as it is written.
# Usage (GPU machine, repository root; SCENE is a folder of .devicekit/data):
#   source .devicekit/setup.sh && bash benchmarks/gpu_speed_1gpu.sh RESULTS SCENE [--no-profile]
set -u
res=$1 scene=$2
mkdir -p "$res"
data=/tmp/data_$scene
[ -d "$data" ] || cp -r ".devicekit/data/$scene" "$data"  # a later call may carry another dataset
parser=(colmap)
bench_parser=()
[ -f "$data/transforms.json" ] && parser=(nerfstudio-data) && bench_parser=(--dataparser nerfstudio-data)
# Ours, then stock, as two benchmark runs merged into one report: the pair outlasts one device call
# (fox: ~700 s), so each result is kept as soon as its run ends.
bench=(python3 -m splatfacto_dist.benchmarking.bench --data "$data" "${bench_parser[@]}" --budget 30000)
for part in dist stock; do
  flags=(--gpus 1 --no-stock) && [ $part = stock ] && flags=(--stock-only)
  "${bench[@]}" "${flags[@]}" --out "/tmp/bench_${scene}_$part" 2>&1 \
    | grep --line-buffered '^\[bench\] \(start\|done\|failed\)' >> "$res/${scene}_progress.txt"
  cp "/tmp/bench_${scene}_$part/results.json" "$res/${scene}_$part.json"
done
python3 -m splatfacto_dist.benchmarking.bench_report "/tmp/bench_$scene" "$res/${scene}_dist.json" \
  "$res/${scene}_stock.json" --title "$scene" > /dev/null
cp "/tmp/bench_$scene/results.md" "$res/${scene}_results.md"
if [ "${3:-}" != "--no-profile" ]; then
  common=(--vis tensorboard --max-num-iterations 7300 --steps-per-eval-image 0 --steps-per-eval-all-images 0
    --steps-per-save 1000000 --pipeline.model.num-downscales 0)
  python3 benchmarks/step_profile.py dist "$res/${scene}_profile_dist.txt" --skip 7000 --active 200 -- \
    splatfacto-dist "${common[@]}" --output-dir /tmp/profile_dist "${parser[@]}" --data "$data" > /dev/null 2>&1
  PYTHONPATH=$PWD/splatfacto_dist/benchmarking/lpips_stub:$PYTHONPATH python3 benchmarks/step_profile.py stock \
    "$res/${scene}_profile_stock.txt" --skip 7000 --active 200 -- \
    splatfacto "${common[@]}" --output-dir /tmp/profile_stock "${parser[@]}" --data "$data" > /dev/null 2>&1
fi
echo finished > "$res/${scene}_done"
