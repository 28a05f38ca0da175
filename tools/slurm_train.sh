#!/usr/bin/env bash
# Distributed training on a Slurm cluster (the interface of mmdet's slurm_train.sh):
#   GPUS=16 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]
# Environment: see tools/slurm_run.sh.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
  exit 2
fi
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$DIR/slurm_run.sh" "$1" "$2" "$DIR/train.py" "$3" --work-dir "$4" "${@:5}"
