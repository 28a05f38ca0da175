#!/usr/bin/env bash
# Set up the active Python environment (${PYTHON:-python}) for revbifpn_mm, idempotently:
#   * torch==2.13.0 only if no torch is installed (an installed one, e.g. a CUDA build, is kept);
#   * the OpenMMLab stack of requirements/mm.txt and the tools' requirements/tools.txt;
#   * mmcv (requirements/mmcv.txt) with its compiled ops, from a wheel cached per torch build in
#     ${REVBIFPN_MM_CACHE:-~/.cache/revbifpn_mm}/wheels/, built from source once when absent
#     (once per machine: the README gives the time it took on 2 cores; CUDA ops need nvcc and take longer);
#   * this checkout in editable mode; then it runs mmcv's nms on the CPU (and on the GPU if any).
# Usage: tools/setup_env.sh [--dry-run] [--rebuild-mmcv] [--cpu-ops]
#   --dry-run       print what would run, change nothing
#   --rebuild-mmcv  ignore the cached mmcv wheel and build a new one
#   --cpu-ops       with a CUDA torch but no nvcc, build CPU-only ops anyway (then train on the CPU)
# Environment: PYTHON, REVBIFPN_MM_CACHE, MAX_JOBS (parallel compile jobs, default: the cores).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
PY="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REVBIFPN_MM_CACHE:-$HOME/.cache/revbifpn_mm}"
DRY=0 REBUILD=0 CPU_OPS=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;; --rebuild-mmcv) REBUILD=1 ;; --cpu-ops) CPU_OPS=1 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_env: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
T0=$SECONDS
log() { printf '[setup_env %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
run() { if ((DRY)); then printf '[setup_env] (dry-run)'; printf ' %q' "$@"; printf '\n'; else "$@"; fi; }
pyval() { "$PY" -c "$1" 2>/dev/null || true; }
command -v "$PY" >/dev/null || die "python interpreter '$PY' not found (set PYTHON=...)"

# 1. torch: keep the installed one; pin it for every later pip call.
if [[ -z "$(pyval 'import torch; print(torch.__version__)')" ]]; then
  log "no torch installed: installing torch==2.13.0 (install your CUDA build of torch first to train on a GPU)"
  run "$PY" -m pip install -q "torch==2.13.0"
fi
TORCH="$(pyval 'import torch; print(torch.__version__)')"; TORCH="${TORCH:-2.13.0}"
TORCH_CUDA="$(pyval 'import torch; print(torch.version.cuda or "")')"
CONSTRAINTS="$(mktemp)"; BUILD=""
trap 'rm -rf "$CONSTRAINTS" $BUILD' EXIT
echo "torch==${TORCH%%+*}" > "$CONSTRAINTS"
log "torch $TORCH (cuda: ${TORCH_CUDA:-none}) is kept"

# 2. the stack (pip checks what is there: seconds when nothing is missing).
run "$PY" -m pip install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/mm.txt" -r "$ROOT/requirements/tools.txt" wheel ninja

# 3. mmcv with compiled ops, from the wheel cache.
MMCV="$(grep -v '^#' "$ROOT/requirements/mmcv.txt")"; MMCV_VERSION="${MMCV#mmcv==}"
if ((REBUILD)) || [[ "$(pyval 'import mmcv, mmcv.ops; print(mmcv.__version__)')" != "$MMCV_VERSION" ]]; then
  FLAVOUR=cpu
  if [[ -n "$TORCH_CUDA" ]]; then
    if command -v nvcc >/dev/null || [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then FLAVOUR="cu${TORCH_CUDA//./}"
    elif ((CPU_OPS)); then log "WARNING: no nvcc: mmcv gets CPU-only ops (--cpu-ops); GPU training will fail at the first RoIAlign"
    else die "torch $TORCH is a CUDA build, but nvcc (the CUDA $TORCH_CUDA toolkit) is not found, so mmcv's ops would be \
CPU-only and GPU training would fail at the first RoIAlign. Fix: install the CUDA $TORCH_CUDA toolkit and set CUDA_HOME \
(or put nvcc on PATH), then rerun; or rerun with --cpu-ops to train on the CPU only"; fi
  fi
  WHEEL_DIR="$CACHE/wheels/torch-${TORCH//\//_}$([[ $FLAVOUR == cpu ]] || echo "_ops-$FLAVOUR")"
  has_ops() { "$PY" -c "import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); \
sys.exit(not any(x.startswith('mmcv/_ext') for x in n))" "$1" 2>/dev/null; }
  WHEEL=""
  if ((!REBUILD)); then
    for w in "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl; do if [[ -f "$w" ]] && has_ops "$w"; then WHEEL="$w"; fi; done
  fi
  if [[ -z "$WHEEL" ]]; then
    log "building $MMCV with $FLAVOUR ops from source (once per machine and torch build; cached in $WHEEL_DIR)"
    BUILD="$(mktemp -d)"
    run "$PY" -m pip download -q --no-deps --no-binary :all: "$MMCV" -d "$BUILD"
    run env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" $([[ $FLAVOUR == cpu ]] || echo FORCE_CUDA=1) \
      "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$BUILD/out" "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz
    if ((!DRY)); then
      WHEEL="$(ls "$BUILD"/out/mmcv-"$MMCV_VERSION"-*.whl)" && has_ops "$WHEEL" || die "the mmcv build produced no wheel with ops"
      mkdir -p "$WHEEL_DIR" && mv "$WHEEL" "$WHEEL_DIR/" && WHEEL="$WHEEL_DIR/$(basename "$WHEEL")"
    fi
  fi
  log "installing ${WHEEL:-the built mmcv wheel}"
  run "$PY" -m pip uninstall -q -y mmcv-lite 2>/dev/null || true
  run "$PY" -m pip install -q --no-deps --force-reinstall "${WHEEL:-$WHEEL_DIR/mmcv.whl}"
fi

# 4. this checkout, editable; 5. verify on every device torch sees.
run "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
((DRY)) && { log "dry run: nothing was changed"; exit 0; }
"$PY" - <<'PYEOF' || die "verification failed (see above)"
import torch, mmcv, mmengine, mmdet, mmseg, revbifpn_mm
from revbifpn_mm.mm import check_mmcv_ops
for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
    check_mmcv_ops(device)
print(f"  torch {torch.__version__} (cuda {torch.version.cuda}, GPU: {torch.cuda.is_available()}), mmcv "
      f"{mmcv.__version__} (ops checked on {'cpu, cuda' if torch.cuda.is_available() else 'cpu'}), mmengine "
      f"{mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
PYEOF
log "environment ready"
