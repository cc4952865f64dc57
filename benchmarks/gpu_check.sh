#!/usr/bin/env bash
# GPU acceptance check: runs what users run, on CUDA, and prints one table (exit 1 if any check
# fails, 2 on bad usage). Under 8 minutes on one H100/H200 once the embedded tiny CLIP is in
# TRACER_CACHE (building it adds a few minutes the first time).
#   tracer finetune recipes/quickstart.toml in bf16-mixed and 16-mixed (accuracy vs the CPU run,
#   no non-finite loss); torchrun DDP and FSDP runs on every visible GPU; FLYP vs TRACER step
#   time at ViT-B/16 batch 256 bf16; the largest ViT-L/14 batch without and with activation
#   checkpointing.
# Usage: bash benchmarks/gpu_check.sh [--only STAGES] [--tolerance POINTS] [--out DIR]
#        bash benchmarks/gpu_check.sh --smoke      # every stage at toy size on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
if torch.cuda.is_available():
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} x "
          f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print(f"torch {torch.__version__}, no CUDA device (only --smoke runs here)")
PY
exec python benchmarks/gpu_acceptance.py "$@"
