#!/usr/bin/env bash
# Every GPU figure in BENCHMARKS.md in one run (about 8 minutes on one H100): the Wan2.1 1.3B matrix at
# 81x480x832 (checkpointing on/off, fp8 base, block offload, then regional compilation) and the 14B at 33
# frames (plain bf16 and fp8 base), each through benchmarks/wan_realsize.py. Results: OUT/*.json, OUT/*.log.
#   bash benchmarks/gpu_run.sh [OUT]
# Each part has its own time limit, and the JSON is rewritten after every variant, so a part that runs out of
# time keeps what it measured.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-benchmarks/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
common=(--device cuda --height 480 --width 832 --rank 32 --dtype bf16)

timeout 250 "$PY" benchmarks/wan_realsize.py --size 1.3b --frames 81 "${common[@]}" --both-checkpointing \
  --variant fp8:train.base_storage=fp8,train.gradient_checkpointing=true,sample=false \
  --variant offload:train.offload_blocks=1,train.gradient_checkpointing=true,sample=false \
  --json "$OUT/wan2.1-1.3b.json" 2>&1 | tee "$OUT/wan2.1-1.3b.log"

timeout 140 "$PY" benchmarks/wan_realsize.py --size 14b --frames 33 "${common[@]}" --gradient-checkpointing \
  --steps 2 --sample-steps 1 --set train.parallel=ddp --variant fp8:train.base_storage=fp8,sample=false \
  --json "$OUT/wan2.1-14b.json" 2>&1 | tee "$OUT/wan2.1-14b.log"

timeout 130 "$PY" benchmarks/wan_realsize.py --size 1.3b --frames 81 "${common[@]}" --gradient-checkpointing \
  --sample-steps 0 --variant compile:train.compile_blocks=inductor,warmup=2 \
  --json "$OUT/wan2.1-1.3b-compile.json" 2>&1 | tee "$OUT/wan2.1-1.3b-compile.log"
exit 0
