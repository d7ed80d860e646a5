#!/usr/bin/env bash
# Where splatfacto-dist on 1 GPU loses time against stock splatfacto (docs/benchmarks.md, section 11),
# in one call on a 4-GPU machine, side by side:
#   GPU 0: stock splatfacto, GPU 1: splatfacto-dist before (.before/ = the tree before the change),
#   GPU 2: splatfacto-dist after, each on fox for 8,000 images (full resolution from 6,000) under
#   configs/step_times.py (per-step times, cost of every refine);
#   GPU 3: the SSIM loss by input layout and cuDNN autotuning (configs/ssim_layout.py).
# Usage (GPU machine, repo root): source .devicekit/setup.sh && bash configs/gpu_diag.sh OUTDIR [IMAGES]
set -u
out=$1
images=${2:-8000}
root=$PWD
fox=$root/.devicekit/data/fox
work=/tmp/gpu_diag_logs
mkdir -p "$out" "$work"
args=(--vis tensorboard --output-dir /tmp/gpu_diag --max-num-iterations "$images" --steps-per-eval-image 0
  --steps-per-eval-all-images 1000000 --steps-per-save 1000000 --logging.steps-per-log 100)
run() {  # GPU TREE MODE METHOD NAME
  (cd "$2" && CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=$root/configs/lpips_stub:$PYTHONPATH timeout 540 \
    python "$root/configs/step_times.py" "$3" "$work/$5.json" "$4" "${args[@]}" nerfstudio-data --data "$fox" \
    >"$work/$5.log" 2>&1)
}
CUDA_VISIBLE_DEVICES=3 timeout 300 python configs/ssim_layout.py >"$out/ssim_layout.txt" 2>&1 &
run 0 . stock splatfacto stock &
run 1 .before dist splatfacto-dist dist_before &
run 2 . dist splatfacto-dist dist_after &
wait
for name in stock dist_before dist_after; do
  sed -n '/^=== /,$p' "$work/$name.log"
done | tee "$out/summary.txt"
cat "$out/ssim_layout.txt"
tar czf "$out/diag_logs.tgz" -C "$work" .
