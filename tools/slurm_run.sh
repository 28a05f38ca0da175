#!/usr/bin/env bash
# One task per GPU with srun, shared by slurm_train.sh and slurm_test.sh:
#   bash tools/slurm_run.sh PARTITION JOB_NAME SCRIPT [script args...]
# Environment: GPUS (tasks in all, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun
# options), PYTHON (python). The checkout goes on PYTHONPATH (no editable install needed on the nodes).
set -euo pipefail
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
exec srun -p "$1" --job-name="$2" --gres="gpu:${GPUS_PER_NODE:-8}" --ntasks="${GPUS:-8}" \
  --ntasks-per-node="${GPUS_PER_NODE:-8}" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
  "${PYTHON:-python}" -u "${@:3}" --launcher slurm
