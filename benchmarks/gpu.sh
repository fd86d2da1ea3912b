#!/bin/sh
# The GPU measurements of issue 13 in one script (never in CI): CRP throughput with all 8,512
# ResNet-34 maps, the per-layer table, and the demo end to end (exact and fast), on CUDA.
#   sh benchmarks/gpu.sh [OUTDIR]      (default: benchmarks/results)
# Needs the project installed with zennit-crp (see .ci/run) and a CUDA build of torch.
set -eu
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu_device.csv"
python benchmarks/crp_throughput.py --device cuda --full --out "$OUT/crp_throughput_cuda.json"
python benchmarks/layer_times.py --device cuda --out "$OUT/layer_times_cuda.json"
python benchmarks/explain_end_to_end.py --device cuda --cases demo --out "$OUT/explain_end_to_end_cuda.json"
