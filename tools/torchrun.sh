#!/usr/bin/env bash
# torchrun one of our tools on GPUS processes per node; used by dist_train.sh
# and dist_test.sh. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT.
#   bash tools/torchrun.sh TOOL.py GPUS [tool arguments]
set -euo pipefail
TOOL=$1
GPUS=$2
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python )}

PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" "$ROOT/tools/$TOOL" "$@" --launcher pytorch
