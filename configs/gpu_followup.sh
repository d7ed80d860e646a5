#!/usr/bin/env bash
# Follow-up checks in one device call (4 GPUs), each under what is left of a 420 s deadline:
#   start-up before/after the pre-spawned launcher (.before/ = the tree before it; 4 GPUs, beer_can,
#   4,000 images), the per-kernel profile of configs/profile_step.py (fox, 1 GPU), the one-line
#   refusal of more GPUs than visible (ours and ns-train), and a 2-GPU run of the embedded scene
#   whose checkpoint comes back in OUT/gpu2 for the stock tools on a CPU-only machine.
# Usage: source .devicekit/setup.sh && bash configs/gpu_followup.sh OUTDIR
set -u
out=$1
data=$PWD/.devicekit/data
work=/tmp/gpu_followup
mkdir -p "$out" "$work"
deadline=$((SECONDS + 420))
left() { echo $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)); }
for pair in .before:before .:after; do
  tree=${pair%%:*} name=${pair##*:}
  (cd "$tree" && timeout "$(left)" python -m splatfacto_dist.bench --data "$data/beer_can" --budget 4000 --gpus 4 \
    --no-stock --out "$work/startup_$name" $([ "$name" = after ] && echo --eval-every 4000) 2>&1 | grep '^| dist' \
    | sed "s/^/$name /")
done | tee "$out/startup_before_after.txt"
CUDA_VISIBLE_DEVICES=0 PYTHONPATH=configs/lpips_stub:$PYTHONPATH timeout "$(left)" python configs/profile_step.py \
  "$data/fox" > "$out/profile_step.txt" 2>&1
timeout "$(left)" python -m pytest -q tests/test_recovery.py -k "more_gpus or cuda_without" > "$out/one_line.txt" 2>&1
python -c "from pathlib import Path; from splatfacto_dist.scene import generate_scene; generate_scene(Path('/tmp/scene'), n_views=24, width=64, height=48)"
timeout "$(left)" python -m splatfacto_dist.cli splatfacto-dist --vis tensorboard --steps-per-eval-image 0 \
  --steps-per-eval-all-images 0 --steps-per-save 100000 --max-num-iterations 2000 --eval-all-images-at-end True \
  --machine.num-devices 2 --output-dir outputs_gpu2 --timestamp run colmap --data /tmp/scene > "$out/gpu2.log" 2>&1
echo "gpu2 exit $?" >> "$out/gpu2.log"
tar czf "$out/gpu2.tgz" outputs_gpu2
tar czf "$out/logs.tgz" --exclude='events.out*' --exclude='*.ckpt' -C "$work" .
