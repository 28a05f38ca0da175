#!/usr/bin/env bash
# Distributed testing on one machine with torchrun:
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
# Environment: see tools/dist_run.sh.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]" >&2
  exit 2
fi
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$DIR/dist_run.sh" "$3" "$DIR/test.py" "$1" "$2" --launcher pytorch "${@:4}"
