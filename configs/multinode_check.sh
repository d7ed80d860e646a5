#!/usr/bin/env bash
# "Two machines" on one 4-GPU host: two launches of 2 GPUs each (CUDA_VISIBLE_DEVICES split),
# --machine.num-machines 2, ranks 0 and 1, one model; then the 2-GPU per-phase breakdown.
# Usage: source .devicekit/setup.sh && bash configs/multinode_check.sh OUTDIR
set -u
out=${1:-outputs/multinode_check}
data=.devicekit/data/beer_can
mkdir -p "$out"
port=29611
common=(splatfacto-dist --machine.num-machines 2 --machine.num-devices 2 --machine.dist-url "tcp://127.0.0.1:$port"
  --max-num-iterations 4000 --verify-replicas-every 100 --vis tensorboard --steps-per-eval-image 0
  --steps-per-eval-all-images 3996 --steps-per-save 1000000 --output-dir /tmp/mn --experiment-name mn --timestamp run)
CUDA_VISIBLE_DEVICES=0,1 python -m splatfacto_dist.cli "${common[@]}" --machine.machine-rank 0 colmap --data "$data" > "$out/machine0.log" 2>&1 &
m0=$!
CUDA_VISIBLE_DEVICES=2,3 python -m splatfacto_dist.cli "${common[@]}" --machine.machine-rank 1 colmap --data "$data" > "$out/machine1.log" 2>&1 &
m1=$!
wait $m0; rc0=$?; wait $m1; rc1=$?
echo "2 machines x 2 GPUs: machine 0 exit $rc0, machine 1 exit $rc1"
grep -h "^rank .: start" "$out"/machine*.log
python -c "from splatfacto_dist.bench import _read_events; import pathlib; print(_read_events(pathlib.Path('/tmp/mn/mn/splatfacto-dist/run')))"
python -m splatfacto_dist.cli splatfacto-dist --machine.num-devices 2 --max-num-iterations 4000 --profile-phases-every 1 \
  --vis tensorboard --steps-per-eval-image 0 --steps-per-save 1000000 --output-dir /tmp/p2 --experiment-name p2 \
  --timestamp run colmap --data "$data" > "$out/profile_2gpu.log" 2>&1
echo "2-GPU profile exit $?"
python -c "from splatfacto_dist.bench import _read_events; import pathlib; print(_read_events(pathlib.Path('/tmp/p2/p2/splatfacto-dist/run')))"
gzip -f "$out"/*.log
