#!/usr/bin/env bash
# Distributed testing on a Slurm cluster (the interface of mmdet's slurm_test.sh):
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]
# Environment: see tools/slurm_run.sh.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" >&2
  exit 2
fi
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$DIR/slurm_run.sh" "$1" "$2" "$DIR/test.py" "$3" "$4" "${@:5}"
