#!/usr/bin/env bash
# Issue 39's GPU measurements in one job on the 1-GPU machine: the offload GPU tests; capacity under
# a 4 GiB cap on the `above` scene, replicated without and with offload (`capacity.py`); the per-image
# time with offload on (dense and sparse Adam) and off (this tree against .before/, `gpu_before_after.sh`),
# on beer_can.
# Usage (GPU machine, repository root): source .devicekit/setup.sh && bash benchmarks/gpu_offload.sh OUTDIR [IMAGES]
set -u
out=$1 images=${2:-2000}
mkdir -p "$out"
capacity=(python benchmarks/capacity.py --layout replicated --gpus 1 --cap-gib 4 --views-from above --images 40
  --cache /tmp/capacity_scenes --out "$out/capacity")
off_sizes=(3e6 4e6) on_sizes=(12e6 20e6)
"${capacity[@]}" --generate-only --sizes "${off_sizes[@]}" "${on_sizes[@]}" > "$out/scenes.log" 2>&1 &  # beside the tests
python -m pytest -q -p no:cacheprovider tests/test_gpu_offload.py ${GPU_TESTS:-} > "$out/gpu_tests.txt" 2>&1
wait
"${capacity[@]}" --sizes "${off_sizes[@]}" > "$out/capacity_off.log" 2>&1
"${capacity[@]}" --offload --sizes "${on_sizes[@]}" > "$out/capacity_on.log" 2>&1
for adam in dense sparse; do
  python -m splatfacto_dist.benchmarking.bench --data .devicekit/data/beer_can --budget "$images" --gpus 1 --no-stock \
    --out /tmp/offload_$adam --pipeline.model.offload True --pipeline.model.offload-adam $adam 2>&1 | grep '^|' \
    > "$out/speed_offload_$adam.txt"
done
bash benchmarks/gpu_before_after.sh "$out/off" beer_can "$images" 1 > /dev/null 2>&1
echo done > "$out/DONE"
