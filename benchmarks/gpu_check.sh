#!/usr/bin/env bash
# One short check for a CUDA machine: ViT-B-16 (random init) at 224 px, bf16 autocast, batch 256,
# FLYP vs TRACER step time / img/s / peak memory, the fused teacher update, and eval throughput.
# Under 5 minutes on one H100/H200. Usage: bash benchmarks/gpu_check.sh [extra step_time.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY
python benchmarks/step_time.py --arch ViT-B-16 --image-size 224 --batch 256 --steps 50 \
    --warmup 5 --device cuda --precision bf16-mixed --eval-images 4096 "$@"
