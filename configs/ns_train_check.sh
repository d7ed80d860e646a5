#!/usr/bin/env bash
# nerfstudio's own launcher with splatfacto-dist: 1 GPU for 2,000 steps, then 4 GPUs for 7,000
# steps with replica checksums every 500 steps. Usage: source .devicekit/setup.sh && bash configs/ns_train_check.sh OUTDIR
set -u
out=${1:-outputs/ns_train_check}
mkdir -p "$out"
common=(--vis tensorboard --steps-per-eval-image 0 --steps-per-save 1000000 --output-dir /tmp/nscheck)
for n in 1 4; do
  start=$(date +%s.%N)
  ns-train splatfacto-dist --machine.num-devices $n --max-num-iterations $((n == 1 ? 2000 : 28000)) \
    --steps-per-eval-all-images $((n == 1 ? 1999 : 27996)) --verify-replicas-every 500 "${common[@]}" \
    --experiment-name ns$n --timestamp run colmap --data .devicekit/data/beer_can > "$out/ns_train_${n}gpu.log" 2>&1
  echo "ns-train splatfacto-dist --machine.num-devices $n: exit $?, wall $(python -c "import time;print(round(time.time()-$start,1))") s"
  python -c "
from splatfacto_dist.bench import _read_events; import json, pathlib
print(json.dumps(_read_events(pathlib.Path('/tmp/nscheck/ns$n/splatfacto-dist/run'))))"
done
gzip -f "$out"/*.log
