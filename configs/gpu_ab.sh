#!/usr/bin/env bash
# A/B runs behind docs/benchmarks.md section 10 (one device call, 4 GPUs, beer_can, 10,000 images):
#   1 GPU each, side by side: stock seed 42, stock seed 43 (stock's own run-to-run spread),
#   splatfacto-dist seed 42, splatfacto-dist with torch's unfused Adam;
#   then 4 GPUs: splatfacto-dist with Grendel's sqrt optimizer scaling (default) and with none.
# Usage: source .devicekit/setup.sh && bash configs/gpu_ab.sh OUTDIR
set -u
out=$1
data=$PWD/.devicekit/data/beer_can
work=/tmp/gpu_ab
mkdir -p "$out" "$work"
common=(--vis tensorboard --output-dir "$work" --experiment-name ab --logging.steps-per-log 100 --steps-per-eval-image 0
        --steps-per-save 1000000 --max-num-iterations 10000 --steps-per-eval-all-images 2500)
run() {  # NAME GPUS COMMAND...
  CUDA_VISIBLE_DEVICES=$2 "${@:3}" "${common[@]}" --timestamp "$1" colmap --data "$data" > "$work/$1.log" 2>&1
  echo "$1 exit $?"
}
stock=(env PYTHONPATH=configs/lpips_stub:$PYTHONPATH python -m splatfacto_dist.bench_stock splatfacto)
dist=(python -m splatfacto_dist.cli splatfacto-dist --eval-all-images-at-end True)
run stock-s42 0 "${stock[@]}" --machine.seed 42 &
run stock-s43 1 "${stock[@]}" --machine.seed 43 &
run dist1-s42 2 "${dist[@]}" --machine.seed 42 &
run dist1-unfused 3 "${dist[@]}" --fused-adam False &
wait
run dist4-sqrt 0,1,2,3 "${dist[@]}" --machine.num-devices 4
run dist4-off 0,1,2,3 "${dist[@]}" --machine.num-devices 4 --batch-optimizer-scaling off
python - "$work" <<'PY' | tee "$out/ab.txt"
import sys
from pathlib import Path
from splatfacto_dist.bench import read_events
for run in sorted(Path(sys.argv[1], "ab").glob("*/*")):
    ips = 4 if run.name.startswith("dist4") else 1
    res, curve = read_events(run, ips, 0.0)
    print(f"{run.name:14s} loop {res.get('loop_s', float('nan')):6.1f} s  step {res.get('step_ms_median', float('nan')):5.2f} ms  "
          f"Gaussians {res.get('gaussians', 0):8.0f}  PSNR " + " ".join(f"{i}:{p:.2f}" for _, i, p in curve))
PY
tar czf "$out/logs.tgz" --exclude='events.out*' --exclude='*.ckpt' -C "$work" .
