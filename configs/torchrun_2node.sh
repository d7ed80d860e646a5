#!/usr/bin/env bash
# Two machines: run this on both, with NODE_RANK=0 on the first and MASTER_ADDR its address.
#   MASTER_ADDR=10.0.0.1 NODE_RANK=0 bash configs/torchrun_2node.sh DATA_DIR [options]   # machine 0
#   MASTER_ADDR=10.0.0.1 NODE_RANK=1 bash configs/torchrun_2node.sh DATA_DIR [options]   # machine 1
# DATA_DIR must be readable on both machines (shared file system or a copy at the same path).
set -euo pipefail
data=$1; shift
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
torchrun --nnodes 2 --node-rank "${NODE_RANK:?}" --nproc-per-node "$gpus" --max-restarts 3 \
  --master-addr "${MASTER_ADDR:?}" --master-port "${MASTER_PORT:-29500}" \
  -m splatfacto_dist.cli splatfacto-dist --auto-resume True "$@" colmap --data "$data"
