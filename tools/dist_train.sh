#!/usr/bin/env bash
# Distributed training on one machine with torchrun:
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py args...]
# Environment: see tools/dist_run.sh.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash tools/dist_train.sh CONFIG GPUS [train.py args...]" >&2
  exit 2
fi
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$DIR/dist_run.sh" "$2" "$DIR/train.py" "$1" --launcher pytorch "${@:3}"
