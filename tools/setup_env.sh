#!/usr/bin/env bash
# One idempotent set-up entry point for revbifpn_mm.
#
# Installs, into the *currently active* Python environment (${PYTHON:-python}):
#   * torch==2.13.0 only if no torch is installed (an existing torch, e.g. a
#     CUDA build, is never replaced or upgraded),
#   * build tools: setuptools<82 (mmcv's setup.py and mmengine's `mmdet::`
#     config inheritance import pkg_resources), wheel, ninja,
#   * the OpenMMLab stack: mmengine==0.10.7, mmdet==3.3.0,
#     mmsegmentation==1.2.2, plus pycocotools, matplotlib, pytest,
#   * mmcv==2.1.0 *with compiled ops*, from a wheel cached per torch build in
#     ${REVBIFPN_MM_CACHE:-~/.cache/revbifpn_mm}/wheels/torch-<ver>[_ops-cuXYZ]/
#     (built from the sdist once per machine when no wheel is cached),
#   * this project in editable mode (pip install -e .).
# A second run only probes (one python process) and verifies: a few seconds.
#
# Usage: tools/setup_env.sh [--dry-run] [--rebuild-mmcv] [-h]
#   --dry-run       print what would be installed/built, change nothing
#   --rebuild-mmcv  ignore the cached mmcv wheel and build a new one
# Environment:
#   PYTHON             interpreter to set up (default: python)
#   REVBIFPN_MM_CACHE  cache root (default: ~/.cache/revbifpn_mm)
#   MAX_JOBS           parallel compile jobs for mmcv (default: nproc)
set -euo pipefail

readonly TORCH_DEFAULT="2.13.0"
readonly MMCV_VERSION="2.1.0"
readonly STACK=(
  "setuptools<82" "wheel" "ninja"
  "numpy" "pillow" "packaging" "pyyaml" "addict" "yapf" "opencv-python>=3"
  "mmengine==0.10.7" "mmdet==3.3.0" "mmsegmentation==1.2.2"
  "pycocotools" "matplotlib" "pytest" "ftfy" "regex"
)

PY="${PYTHON:-python}"
CACHE="${REVBIFPN_MM_CACHE:-$HOME/.cache/revbifpn_mm}"
WHEELS="$CACHE/wheels"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
REBUILD=0

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --rebuild-mmcv) REBUILD=1 ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_env: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

T0=$SECONDS
log()  { printf '[setup_env %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die()  { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
# run CMD...: execute, or only show it under --dry-run.
run()  {
  if (( DRY_RUN )); then printf '[setup_env] (dry-run) would run:'; printf ' %q' "$@"; printf '\n'; return 0; fi
  "$@"
}
pip_() { run "$PY" -m pip "$@"; }

command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (set PYTHON=...)"
"$PY" -m pip --version >/dev/null 2>&1 || die "'$PY -m pip' does not work; install pip for this interpreter first"

# --------------------------------------------------------------------------- #
# Probe: one python process reports everything the decisions below need.
# --------------------------------------------------------------------------- #
read -r -d '' PROBE_PY <<'PYEOF' || true
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # fresh environment: pip's vendored copy
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

repo_root, mmcv_version = sys.argv[1], sys.argv[2]
wanted = sys.argv[3:]
out = {}


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""


def satisfied(req, seen):
    """Whether req and (recursively) its non-extra requirements are installed."""
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return True
    key = re.sub(r"[-_.]+", "-", req.name).lower()
    have = version(req.name)
    if not have or (req.specifier and not req.specifier.contains(have, prereleases=True)):
        return False
    if key in seen:
        return True
    seen.add(key)
    for sub in md.requires(req.name) or []:
        sub_req = Requirement(sub)
        if sub_req.marker is not None and "extra" in str(sub_req.marker):
            continue
        if not satisfied(sub_req, seen):
            return False
    return True


seen = set()
out["need"] = [spec for spec in wanted if not satisfied(Requirement(spec), seen)]
out["pytag"] = "cp%d%d" % sys.version_info[:2]
out["platform"] = sysconfig.get_platform().replace("-", "_").replace(".", "_")
# torch counts as installed when importable, even without pip metadata (conda).
out["torch_dist"] = version("torch")
out["torch"] = ""
out["torch_cuda"] = ""
if importlib.util.find_spec("torch") is not None:
    import torch

    out["torch"] = str(torch.__version__)
    out["torch_cuda"] = torch.version.cuda or ""
out["nvcc"] = bool(shutil.which("nvcc") or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")))
out["mmcv"] = version("mmcv")
out["mmcv_lite"] = version("mmcv-lite")
out["mmcv_ops"] = False
out["mmcv_ops_error"] = ""
if out["mmcv"] == mmcv_version and out["torch"]:
    try:
        from mmcv.ops import nms, roi_align  # noqa: F401  (needs the compiled mmcv._ext)

        out["mmcv_ops"] = True
    except Exception as exc:  # ImportError, undefined symbol after a torch change, ...
        out["mmcv_ops_error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

# Is this repository installed in editable mode, and newer than its metadata?
# (A revbifpn_mm.egg-info in the current directory is also a "distribution";
# only an installed one carries direct_url.json.)
project = "missing"
for dist in md.distributions(name="revbifpn_mm"):
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    if not direct:
        continue
    project = "foreign"
    url = direct.get("url", "")
    editable = direct.get("dir_info", {}).get("editable", False)
    if editable and url.startswith("file://") and os.path.realpath(url[7:]) == os.path.realpath(repo_root):
        project = "ok"
        meta = getattr(dist, "_path", None)  # the .dist-info directory
        try:
            stamp = os.path.getmtime(os.path.join(str(meta), "METADATA")) if meta else 0.0
        except OSError:
            stamp = 0.0
        for name in ("setup.py", "setup.cfg", "pyproject.toml"):
            path = os.path.join(repo_root, name)
            if os.path.exists(path) and os.path.getmtime(path) > stamp:
                project = "stale"
        break
out["project"] = project
for key, value in out.items():
    if isinstance(value, list):
        value = " ".join(value)
    elif isinstance(value, bool):
        value = "1" if value else ""
    print("%s=%s" % (key, str(value).replace("\n", " ")))
PYEOF

# probe: run the probe and load its fields into shell variables P_<name>.
probe() {
  local lines key value
  lines="$("$PY" -c "$PROBE_PY" "$REPO_ROOT" "$MMCV_VERSION" "${STACK[@]}")" \
    || die "environment probe failed (see the traceback above)"
  while IFS='=' read -r key value; do
    case "$key" in
      need|pytag|platform|torch|torch_dist|torch_cuda|nvcc|mmcv|mmcv_lite|mmcv_ops|mmcv_ops_error|project)
        printf -v "P_$key" '%s' "$value" ;;
    esac
  done <<< "$lines"
}

log "python: $(command -v "$PY") ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
probe

# --------------------------------------------------------------------------- #
# 1. torch: keep whatever is installed; install the default only if missing.
# --------------------------------------------------------------------------- #
if [[ -z "$P_torch" ]]; then
  log "torch is not installed: installing torch==$TORCH_DEFAULT (install your own CUDA build first to use a GPU)"
  pip_ install "torch==$TORCH_DEFAULT"
  if (( ! DRY_RUN )); then probe; fi
else
  log "torch $P_torch (cuda: ${P_torch_cuda:-none}) is installed and will be kept"
fi

# Never let a later pip call replace the installed torch.
CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/revbifpn_mm_constraints.XXXXXX")"
TMP_DIRS=("$CONSTRAINTS")
cleanup() { rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT
if [[ -n "${P_torch_dist:-}" ]]; then echo "torch==$P_torch_dist" > "$CONSTRAINTS"; fi

# --------------------------------------------------------------------------- #
# 2. build tools + OpenMMLab stack (one pip call, only when something is missing).
# --------------------------------------------------------------------------- #
if [[ -n "$P_need" ]]; then
  read -r -a NEED <<< "$P_need"
  log "installing/upgrading: ${NEED[*]}"
  pip_ install -c "$CONSTRAINTS" "${STACK[@]}"
else
  log "build tools and mmengine/mmdet/mmsegmentation stack already satisfied"
fi

# --------------------------------------------------------------------------- #
# 3. mmcv 2.1.0 with compiled ops, via a wheel cached per torch build.
# --------------------------------------------------------------------------- #
if [[ -n "$P_torch_cuda" && "$P_nvcc" == "1" ]]; then FLAVOUR="cu${P_torch_cuda//./}"; else FLAVOUR="cpu"; fi
# Cache key: the torch build (its version carries +cpu/+cuXYZ when it has a local
# tag) plus, when CUDA kernels are compiled, the CUDA version they target.
KEY="torch-${P_torch:-$TORCH_DEFAULT}"
if [[ "$FLAVOUR" != "cpu" ]]; then KEY="${KEY}_ops-${FLAVOUR}"; fi
KEY="${KEY//\//_}"
WHEEL_DIR="$WHEELS/$KEY"
WHEEL_GLOB="mmcv-${MMCV_VERSION}-${P_pytag}-${P_pytag}-${P_platform}.whl"

# A usable wheel: right name, readable zip containing the compiled extension.
wheel_ok() {
  "$PY" - "$1" <<'PYEOF'
import sys, zipfile
try:
    with zipfile.ZipFile(sys.argv[1]) as z:
        names = z.namelist()
except (OSError, zipfile.BadZipFile):
    sys.exit(1)
sys.exit(0 if any(n.startswith("mmcv/_ext") and n.endswith((".so", ".pyd")) for n in names) else 1)
PYEOF
}

write_stamp() {  # write_stamp WHEEL ORIGIN
  cat > "$WHEEL_DIR/mmcv-${MMCV_VERSION}.stamp" <<EOF
wheel=$(basename "$1")
torch=${P_torch}
torch_cuda=${P_torch_cuda:-none}
flavour=${FLAVOUR}
python=${P_pytag}
platform=${P_platform}
origin=$2
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
}

# One-time migration: a wheel written directly into wheels/ (no stamp) is
# assumed to have been built against the torch installed now.
ADOPTED=""  # only set under --dry-run, where nothing is moved
adopt_loose_wheels() {
  local w
  shopt -s nullglob
  for w in "$WHEELS"/$WHEEL_GLOB; do
    if [[ ! -f "$w" || -e "$WHEEL_DIR/$(basename "$w")" ]]; then continue; fi
    if ! wheel_ok "$w"; then log "ignoring $w (incomplete, or built without ops)"; continue; fi
    log "adopting $w as the build for $KEY (no stamp: assuming it was built against torch $P_torch)"
    if (( DRY_RUN )); then ADOPTED="$w"; continue; fi
    mkdir -p "$WHEEL_DIR"
    mv "$w" "$WHEEL_DIR/"
    write_stamp "$WHEEL_DIR/$(basename "$w")" "adopted from $WHEELS"
  done
  shopt -u nullglob
}

find_cached_wheel() {
  local w
  shopt -s nullglob
  for w in "$WHEEL_DIR"/$WHEEL_GLOB; do
    [[ -f "$w" ]] || continue
    if wheel_ok "$w"; then shopt -u nullglob; echo "$w"; return 0; fi
    log "cached wheel $w is unusable; ignoring it" >&2
  done
  shopt -u nullglob
  return 1
}

build_wheel() {
  local jobs="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  local env_cuda=()
  if [[ "$FLAVOUR" != "cpu" ]]; then env_cuda=(FORCE_CUDA=1); fi
  log "no cached mmcv $MMCV_VERSION wheel for $KEY ($P_pytag, $P_platform)"
  log "building mmcv $MMCV_VERSION from source with compiled ops (${FLAVOUR} ops, MAX_JOBS=$jobs)."
  log "This takes about 35-70 minutes on 2 cores (longer with CUDA) and happens once per machine"
  log "and torch build; the wheel is cached in $WHEEL_DIR"
  local sdist_dir="$CACHE/sdist"
  local sdist="$sdist_dir/mmcv-${MMCV_VERSION}.tar.gz"
  if [[ ! -s "$sdist" ]]; then
    log "downloading the mmcv $MMCV_VERSION sdist"
    if (( ! DRY_RUN )); then mkdir -p "$sdist_dir"; fi
    pip_ download --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$sdist_dir"
  fi
  if (( DRY_RUN )); then
    run env MMCV_WITH_OPS=1 MAX_JOBS="$jobs" "${env_cuda[@]}" "$PY" -m pip wheel --no-build-isolation --no-deps -w "<tmpdir>" "$sdist"
    return 0
  fi
  local out
  out="$(mktemp -d "${TMPDIR:-/tmp}/revbifpn_mm_mmcv.XXXXXX")"
  TMP_DIRS+=("$out")
  env MMCV_WITH_OPS=1 MAX_JOBS="$jobs" "${env_cuda[@]}" \
    "$PY" -m pip wheel --no-build-isolation --no-deps -w "$out" "$sdist"
  local built
  built="$(ls "$out"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1)"
  [[ -n "$built" ]] || die "mmcv build produced no wheel"
  wheel_ok "$built" || die "the built wheel $built has no compiled mmcv._ext"
  mkdir -p "$WHEEL_DIR"
  mv "$built" "$WHEEL_DIR/"
  write_stamp "$WHEEL_DIR/$(basename "$built")" "built from $(basename "$sdist")"
  log "built and cached $WHEEL_DIR/$(basename "$built")"
}

# Keep the cache keyed even when nothing needs installing (cheap: a glob).
adopt_loose_wheels

if [[ "$P_mmcv" == "$MMCV_VERSION" && "$P_mmcv_ops" == "1" && $REBUILD -eq 0 ]]; then
  log "mmcv $P_mmcv with compiled ops is installed"
else
  if [[ -n "$P_mmcv" ]]; then
    log "mmcv ${P_mmcv} is installed but not usable as mmcv $MMCV_VERSION with ops${P_mmcv_ops_error:+ ($P_mmcv_ops_error)}"
  fi
  # Serialise builds/installs between concurrent runs of this script.
  if (( ! DRY_RUN )); then
    mkdir -p "$WHEELS"
    exec 9>"$WHEELS/.lock"
    if command -v flock >/dev/null 2>&1; then
      flock -n 9 || { log "another setup_env.sh holds $WHEELS/.lock; waiting for it"; flock 9; }
    fi
  fi
  WHEEL=""
  if (( ! REBUILD )); then WHEEL="$(find_cached_wheel || true)"; WHEEL="${WHEEL:-$ADOPTED}"; fi
  if [[ -z "$WHEEL" ]]; then
    build_wheel
    WHEEL="$(find_cached_wheel || true)"
    if (( DRY_RUN )); then WHEEL="${WHEEL:-$WHEEL_DIR/$WHEEL_GLOB}"; fi
  else
    log "using cached wheel $WHEEL"
  fi
  [[ -n "$WHEEL" ]] || die "no mmcv wheel available after the build"
  if [[ -n "$P_mmcv_lite" ]]; then
    log "removing mmcv-lite $P_mmcv_lite (it has no compiled ops and shadows mmcv)"
    pip_ uninstall -y mmcv-lite
  fi
  log "installing $(basename "$WHEEL")"
  pip_ install --no-deps --force-reinstall "$WHEEL"
  # mmcv's runtime requirements (addict, mmengine, numpy, packaging, Pillow,
  # pyyaml, yapf, opencv-python) are all part of the stack installed above.
fi

# --------------------------------------------------------------------------- #
# 4. this project, editable.
# --------------------------------------------------------------------------- #
case "$P_project" in
  ok) log "revbifpn_mm is installed in editable mode from $REPO_ROOT" ;;
  *)
    if [[ ! -f "$REPO_ROOT/setup.py" && ! -f "$REPO_ROOT/pyproject.toml" ]]; then
      die "$REPO_ROOT has neither setup.py nor pyproject.toml"
    fi
    log "installing revbifpn_mm in editable mode (state: $P_project)"
    pip_ install --no-deps --no-build-isolation -e "$REPO_ROOT"
    ;;
esac

# --------------------------------------------------------------------------- #
# 5. verify.
# --------------------------------------------------------------------------- #
if (( DRY_RUN )); then
  log "dry run finished; nothing was changed"
  exit 0
fi
log "verifying the installation"
"$PY" - <<'PYEOF' || die "verification failed (see above)"
import importlib.metadata as md

import torch
import mmcv
import mmcv.ops  # noqa: F401  (requires the compiled mmcv._ext)
from mmcv.ops import RoIAlign, nms  # noqa: F401
import mmengine
import mmdet
import mmseg
import revbifpn_mm  # noqa: F401

boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
_, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
assert keep.tolist() == [0, 2], keep
print("  torch          %s (cuda %s, available: %s)" % (torch.__version__, torch.version.cuda, torch.cuda.is_available()))
print("  mmcv           %s (compiled ops: ok)" % mmcv.__version__)
print("  mmengine       %s" % mmengine.__version__)
print("  mmdet          %s" % mmdet.__version__)
print("  mmsegmentation %s" % mmseg.__version__)
for name in ("numpy", "opencv-python", "pycocotools", "setuptools"):
    try:
        print("  %-14s %s" % (name, md.version(name)))
    except md.PackageNotFoundError:
        pass
PYEOF
log "environment ready"
