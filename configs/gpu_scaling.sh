#!/usr/bin/env bash
# The scaling benchmark of docs/benchmarks.md on one 4-GPU machine, in two device calls of < 10 min:
#   part 1: beer_can (stock, dist-1, dist-2 side by side on GPUs 0 / 1 / 2-3, then dist-4), then
#           dist-4 on fox;
#   part 2: stock, dist-1, dist-2 on fox side by side; the GPU tests (stock ns-export / ns-eval /
#           ns-render on a 2-GPU checkpoint, rasterizer parity) and the one-line refusal of more GPUs
#           than visible; start-up before/after (.before/ = the tree before the change, as in
#           configs/gpu_perf.sh), 4 GPUs, 4,000 images.
# Every step runs under what is left of a 570 s deadline, and the results are always packed.
# Usage (GPU machine, repo root): source .devicekit/setup.sh && bash configs/gpu_scaling.sh OUTDIR {1|2}
set -u
out=$1
part=$2
data=$PWD/.devicekit/data
work=/tmp/gpu_scaling
mkdir -p "$out" "$work"
deadline=$((SECONDS + 570))
left() { echo $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)); }
bench() {  # NAME [bench args]
  timeout "$(left)" python -m splatfacto_dist.bench --budget 30000 --out "$work/$1" "${@:2}" 2>&1 | tee "$work/$1.txt" \
    | grep --line-buffered '^\[bench\] \(start\|done\|failed\)'
  cp "$work/$1/results.json" "$out/$1.json" 2>/dev/null
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpus.txt"
if [ "$part" = 1 ]; then
  bench beer_can --data "$data/beer_can" --gpus 1 2 4 --parallel
  bench fox_4gpu --data "$data/fox" --dataparser nerfstudio-data --gpus 4 --no-stock
else
  bench fox --data "$data/fox" --dataparser nerfstudio-data --gpus 1 2 --parallel
  timeout "$(left)" python -m pytest -q -m gpu tests/test_gpu.py tests/test_gpu_ecosystem.py 2>&1 | tail -4 | tee "$out/gpu_tests.txt"
  timeout "$(left)" python -m pytest -q tests/test_recovery.py -k "more_gpus or cuda_without" 2>&1 | tail -2 | tee -a "$out/gpu_tests.txt"
  for pair in .before:before .:after; do
    tree=${pair%%:*} name=${pair##*:}
    (cd "$tree" && CUDA_VISIBLE_DEVICES=0,1,2,3 timeout "$(left)" python -m splatfacto_dist.bench --data "$data/beer_can" \
      --budget 4000 --gpus 4 --no-stock --out "$work/startup_$name" $([ "$name" = after ] && echo --eval-every 4000) 2>&1 \
      | grep '^| dist' | sed "s/^/$name /")
  done | tee "$out/startup_before_after.txt"
fi
tar czf "$out/logs.tgz" --exclude='events.out*' --exclude='*.ckpt' --exclude='*.ply' --exclude='*.png' -C "$work" .
