#!/usr/bin/env bash
# The prepared GPU run for a lent CUDA machine: one call of at most about 6 minutes on a bare machine with
# torch and timm (with the mm stack, the baselines come from mmdet's configs instead of timm). Each step has
# its own time limit and writes its results as soon as it has them. Results under $OUT (default work_dirs/gpu):
#   backbones/       S0-S6 backbones, 2x800x1344, frozen BN: reversible, plain, plain_segments=2
#   overhead.json    the seed's recomputation-overhead table (training BN, 224x224, batch 4)
#   throughput/      largest batch and images/s under 12 and 24 GiB caps, 800x1344 then 512x1024
#   graphs.json      the S3 backbone + neck step under CUDA graphs: captured?, time, gradients vs eager
#   compiled/        S0/S3/S6 backbones, 2x800x1344, frozen BN: reversible eager vs compile_transforms
#                    (first step = compile time), then the S3 compiled step under CUDA graphs
#                    (graphs_compiled.json) and throughput of S3 compiled at the 12/24 GiB caps
#   checks.json      RNG replay and bf16/fp16 steps on CUDA
# Usage: OUT=/some/dir bash tools/gpu_measurements.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work_dirs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"  # run from the checkout, no install needed
MODELS="revbifpn_s3,revbifpn_s3@plain_segments=2,revbifpn_s6,revbifpn_s6@plain_segments=2,hrnetv2p_w18,hrnetv2p_w18+cp"
MODELS="$MODELS,hrnetv2p_w32,hrnetv2p_w32+cp,r50_fpn,r50_fpn+cp,r101_fpn,r101_fpn+cp"
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  printf '== %s (limit %ss, %s)\n' "$name" "$limit" "$(date +%T)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  printf '   exit %s (%s)\n' "$?" "$(date +%T)"
}
{ nvidia-smi -L; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import timm; print('timm', timm.__version__)"; } > "$OUT/env.txt" 2>&1
step backbones 60 python tools/benchmark_memory.py backbones --device cuda --archs s0,s1,s2,s3,s4,s5,s6 \
  --plain-segments 2,plain --input 2x800x1344 --pass all --out "$OUT/backbones"
step overhead 30 python tools/gpu_experiments.py overhead --out "$OUT/overhead.json"
step throughput_800 70 python tools/benchmark_memory.py throughput --device cuda --models "$MODELS" \
  --caps 12,24 --sizes 800x1344 --out "$OUT/throughput"
step graphs 25 python tools/gpu_experiments.py graphs --out "$OUT/graphs.json"
step throughput_512 25 python tools/benchmark_memory.py throughput --device cuda --models "$MODELS" \
  --caps 12,24 --sizes 512x1024 --out "$OUT/throughput"
step checks 15 python tools/gpu_experiments.py checks --out "$OUT/checks.json"
# compiled transforms (compile_transforms=True): 70 + 30 + 20 s; the compile of the first steps is
# most of it (inductor + triton on the host's cores), which is why the steps above were cut
step compiled 70 python tools/benchmark_memory.py backbones --device cuda --archs s0,s3,s6 \
  --plain-segments compiled --input 2x800x1344 --pass time --out "$OUT/compiled"
step graphs_compiled 30 python tools/gpu_experiments.py graphs --compile-transforms --out "$OUT/graphs_compiled.json"
step throughput_compiled 20 python tools/benchmark_memory.py throughput --device cuda --caps 12,24 --sizes 800x1344 \
  --models "revbifpn_s3,revbifpn_s3@compile_transforms=true" --out "$OUT/throughput_compiled"
