#!/usr/bin/env bash
# torchrun on one machine (or one node of several), shared by dist_train.sh and dist_test.sh:
#   bash tools/dist_run.sh GPUS SCRIPT [script args...]
# Environment: PORT (default 29500), NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PYTHON (python).
# The checkout goes on PYTHONPATH, so it runs on a node without an editable install (as mmdet's scripts).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --nproc_per_node="$1" --master_port="${PORT:-29500}" "${@:2}"
