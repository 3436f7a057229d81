#!/usr/bin/env bash
# Token export with several processes (torchrun).
#   bash tools/dist_export_tokens.sh CONFIG CHECKPOINT GPUS [export_tokens.py args...]
# e.g. bash tools/dist_export_tokens.sh CONFIG CKPT 8 --data train --out DIR
# GPUS is the number of processes on this node (on a machine without GPUs
# they are CPU processes using the gloo backend; with GPUs pass --device
# cuda: each rank uses its local GPU). The result is byte-identical to a
# one-process export, and re-running the command resumes it. Multi-node:
# set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node. PYTHON picks
# the interpreter.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    "$ROOT/tools/export_tokens.py" "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
