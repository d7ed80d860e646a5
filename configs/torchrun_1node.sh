#!/usr/bin/env bash
# One machine, all its GPUs, through torchrun. A failed or preempted job restarts (up to 3 times) and
# continues from its newest checkpoint (--auto-resume).
#   bash configs/torchrun_1node.sh DATA_DIR [more ns-train options]
set -euo pipefail
data=$1; shift
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
torchrun --standalone --max-restarts 3 --nproc-per-node "$gpus" \
  -m splatfacto_dist.cli splatfacto-dist --auto-resume True "$@" colmap --data "$data"
