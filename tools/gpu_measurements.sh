#!/usr/bin/env bash
# The prepared GPU measurement run for a lent CUDA machine (issue #4 figures), in one go:
#   1. reversible vs plain activation memory and step time for S0-S6 at 800x1344, batch 2:
#      fp64 and fp32 streams, with and without lean_recompute, 3 warm-up and 10 timed steps,
#      plus the depth sweep (mmdet baselines/detectors only where the mm stack is installed);
#      no kernel counts (they do not depend on the device: `--suite kernels` on any CPU);
#   2. the CUDA correctness checks of tools/device_checks.py (RNG replay, AMP steps).
# Needs only torch with CUDA. Writes everything under $OUT (default work_dirs/gpu).
#   OUT=/some/dir bash tools/gpu_measurements.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work_dirs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # run from the checkout, no install needed
{
  nvidia-smi -L || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python tools/benchmark_memory.py --device cuda --archs s0,s1,s2,s3,s4,s5,s6 --amp fp32 \
    --streams float64,float32 --no-necks --no-detectors --no-kernels --warmup 3 --steps 10 --out "$OUT/fp32"
  python tools/device_checks.py --out "$OUT/checks"
} 2>&1 | tee "$OUT/all.log"
