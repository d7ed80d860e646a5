#!/usr/bin/env bash
# Issue 39's GPU measurements in one job on the 1-GPU machine, each stage's results written as it ends:
#   1. the offload and sharded GPU tests (GPU_TESTS_K: a pytest -k expression to run some);
#   2. capacity under a 4 GiB cap on the `above` scene (`capacity.py`): replicated without offload
#      (OFF_SIZES), with it (ON_SIZES), and sharded with it on 2 ranks sharing the GPU (SHARDED_SIZES);
#   3. the per-image time on beer_can: offload on with dense and sparse Adam, and off (this tree
#      against .before/, `gpu_before_after.sh`);
#   4. the per-image time on the `above` scene of the smallest OFF_SIZES, offload off and on.
# Usage (GPU machine, repository root): source .devicekit/setup.sh && bash benchmarks/gpu_offload.sh OUTDIR [IMAGES]
set -u
out=$1 images=${2:-2000}
mkdir -p "$out"
off_sizes=(${OFF_SIZES:-3.3e6 3.6e6}) on_sizes=(${ON_SIZES:-17e6 19e6}) sharded_sizes=(${SHARDED_SIZES:-34e6})
capacity=(python benchmarks/capacity.py --cap-gib 4 --views-from above --images 40 --cache /tmp/capacity_scenes
  --out "$out/capacity")
stage() { echo "$(date +%T) $*" >> "$out/stages.txt"; }

stage scenes
"${capacity[@]}" --generate-only --sizes "${off_sizes[@]}" "${on_sizes[@]}" "${sharded_sizes[@]}" > "$out/scenes.log" 2>&1 &
stage gpu tests
tests=(tests/test_gpu_offload.py tests/test_gpu_sharded.py)  # the sharded one: loss by range on CUDA
[ -n "${GPU_TESTS_K:-}" ] && tests+=(-k "$GPU_TESTS_K")
python -m pytest -q -p no:cacheprovider "${tests[@]}" > "$out/gpu_tests.txt" 2>&1
wait
stage capacity replicated
"${capacity[@]}" --layout replicated --gpus 1 --sizes "${off_sizes[@]}" > "$out/capacity_off.log" 2>&1
stage capacity replicated offload
"${capacity[@]}" --layout replicated --gpus 1 --offload --sizes "${on_sizes[@]}" > "$out/capacity_on.log" 2>&1
bench() {  # NAME DATA [bench arguments]
  python -m splatfacto_dist.benchmarking.bench --data "$2" --budget "$images" --gpus 1 --no-stock \
    --out "/tmp/offload_speed/$1" "${@:3}" 2>&1 | grep '^|' | sed "s/^/$1 /" >> "$out/speed.txt"
}
for adam in dense sparse; do
  stage speed beer_can offload $adam
  bench "beer_can-offload-$adam" .devicekit/data/beer_can --pipeline.model.offload True --pipeline.model.offload-adam $adam
done
stage speed beer_can before/after
bash benchmarks/gpu_before_after.sh "$out/off" beer_can "$images" 1 > /dev/null 2>&1
above=$(ls -d /tmp/capacity_scenes/*-above | sort -n | head -1)
stage speed above "$above"
bench above-off "$above"
bench above-offload-dense "$above" --pipeline.model.offload True
stage capacity sharded offload
"${capacity[@]}" --layout sharded --gpus 2 --ranks-per-gpu 2 --offload --sizes "${sharded_sizes[@]}" \
  > "$out/capacity_sharded_on.log" 2>&1
stage done
echo done > "$out/DONE"
