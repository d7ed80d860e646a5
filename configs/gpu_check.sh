#!/usr/bin/env bash
# One GPU-machine session (4 GPUs) of the checks in docs/benchmarks.md:
#   - tests marked gpu (reference rasterizer vs gsplat),
#   - stock splatfacto vs splatfacto-dist at 1, 2, 4 GPUs on beer_can (8,000-image budget),
#   - 7,000 steps at 4 GPUs on beer_can (COLMAP init) and fox (random init), replica checksums
#     compared every 500 steps, per-phase timings on.
#   - per-phase step timings at 1 GPU (2,000 steps) for comparison.
# Usage (GPU machine, repo root): source .devicekit/setup.sh && bash configs/gpu_check.sh OUTDIR [all|sync]
set -u
out=${1:-outputs/gpu_check}
what=${2:-all}
work=/tmp/gpu_check
data=.devicekit/data
mkdir -p "$out" "$work"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$work/gpus.txt"
if [ "$what" = all ]; then
  python -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$work/gpu_tests.log" | tail -3
  python -m splatfacto_dist.bench --data "$data/beer_can" --budget 8000 --gpus 1 2 4 --parallel \
    --out "$work/bench_beer_can" 2>&1 | tee "$work/bench.log" | grep '^\[bench\]\|^|'
fi
[ "$what" = all ] && python -m splatfacto_dist.bench --data "$data/beer_can" --budget 2000 --gpus 1 --no-stock --profile-every 1 \
  --out "$work/profile_1gpu" 2>&1 | grep '^|'
for ds in beer_can fox; do
  if [ "$ds" = fox ]; then parser=(nerfstudio-data --data "$data/fox"); init=(--pipeline.model.random-init True);
  else parser=(colmap --data "$data/beer_can"); init=(); fi
  start=$(date +%s.%N)
  python -m splatfacto_dist.cli splatfacto-dist --machine.num-devices 4 --max-num-iterations 28000 \
    --verify-replicas-every 500 --profile-phases-every 1 --vis tensorboard --steps-per-eval-image 0 \
    --steps-per-eval-all-images 27996 --steps-per-save 1000000 --output-dir "$work/runs" --experiment-name "$ds" \
    --timestamp sync4 "${init[@]}" "${parser[@]}" > "$work/sync4_$ds.log" 2>&1
  rc=$?
  echo "$ds 4-GPU 7000 steps: exit $rc, wall $(python -c "import time;print(round(time.time()-$start,1))") s" | tee -a "$work/sync4.txt"
  python -c "
from splatfacto_dist.bench import _read_events; import json, pathlib
print(json.dumps(_read_events(pathlib.Path('$work/runs/$ds/splatfacto-dist/sync4'))))" | tee -a "$work/sync4.txt"
done
tar czf "$out/results.tgz" --exclude='events.out*' --exclude='*.ckpt' -C "$work" .
