#!/usr/bin/env bash
# One machine, all its GPUs, through torchrun (elastic agent restarts nothing: a failure ends the job).
#   bash configs/torchrun_1node.sh DATA_DIR [more ns-train options]
set -euo pipefail
data=$1; shift
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
torchrun --standalone --nproc-per-node "$gpus" -m splatfacto_dist.cli splatfacto-dist "$@" colmap --data "$data"
