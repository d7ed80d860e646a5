#!/usr/bin/env bash
# The GPU machines' kit for every figure in docs/benchmarks.md: ../shared/device/stage.sh (nerfstudio,
# gsplat, datasets) plus the wheels that kit lacks for this project (fussim, the fused SSIM loss),
# downloaded for the GPU machines' Python 3.12 from the registry. Run from the repository root:
#   bash benchmarks/stage_kit.sh [DATASET ...]
set -euo pipefail
../shared/device/stage.sh "$@"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d .devicekit "fussim==0.3.15"
du -sh .devicekit
