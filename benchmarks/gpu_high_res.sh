#!/usr/bin/env bash
# Issue 41's GPU measurements in one job on the 1-GPU machine, each stage's results written as it ends:
#   1. the sharded GPU tests (loss by range on CUDA: the fused SSIM on bands);
#   2. each rank's peak GPU memory at 3840x2160 (RESOLUTIONS: "WxH ..."; 4946x3286 is near Grendel's
#      bicycle) for replicated on 1 rank and sharded on 2 / 4 / 8 ranks sharing the GPU, at 1 M
#      Gaussians (per-pixel memory dominates) and 8 M (Gaussians do), no cap (`capacity.py`, 16
#      views: the scene is generated on a pool of processes);
#   3. the per-image time at 800x600 (beer_can) on 1 rank and on 2 sharded ranks sharing the GPU, this
#      tree against .before/ (`gpu_before_after.sh`).
# Usage (GPU machine, repository root): source .devicekit/setup.sh && bash benchmarks/gpu_high_res.sh OUTDIR [IMAGES]
set -u
out=$1 images=${2:-2000}
mkdir -p "$out"
stage() { echo "$(date +%T) $*" >> "$out/stages.txt"; }
capacity=(python benchmarks/capacity.py --cap-gib 0 --views 16 --images 32 --keep-going --cache /tmp/high_res_scenes
  --out "$out/capacity")
sizes=(${SIZES:-1e6 8e6})

stage gpu tests
python -m pytest -q -p no:cacheprovider tests/test_gpu_sharded.py -k two_gpu_ranks_equals > "$out/gpu_tests.txt" 2>&1
for resolution in ${RESOLUTIONS:-3840x2160}; do
  size=(--width "${resolution%x*}" --height "${resolution#*x}")
  stage scenes "$resolution"
  "${capacity[@]}" "${size[@]}" --generate-only --sizes "${sizes[@]}" >> "$out/scenes.log" 2>&1
  stage replicated "$resolution"
  "${capacity[@]}" "${size[@]}" --layout replicated --gpus 1 --sizes "${sizes[@]}" >> "$out/capacity.log" 2>&1
  for n in 2 4 8; do
    stage sharded "$n" ranks "$resolution"
    "${capacity[@]}" "${size[@]}" --layout sharded --gpus "$n" --ranks-per-gpu "$n" --sizes "${sizes[@]}" \
      >> "$out/capacity.log" 2>&1
  done
done
stage speed 800x600
bash benchmarks/gpu_before_after.sh "$out/speed_1" beer_can "$images" 1 > /dev/null 2>&1
bash benchmarks/gpu_before_after.sh "$out/speed_2" beer_can "$images" 2 --layout sharded --ranks-per-gpu 2 \
  > /dev/null 2>&1
stage done
echo done > "$out/DONE"
