#!/usr/bin/env bash
# Distributed training with torchrun (NNODES, NODE_RANK, MASTER_ADDR, PORT
# for several nodes):
#   bash tools/dist_train.sh CONFIG GPUS [train.py options]
set -euo pipefail
CONFIG=$1
GPUS=$2
shift 2
exec bash "$(dirname "$0")/torchrun.sh" train.py "$GPUS" "$CONFIG" "$@"
