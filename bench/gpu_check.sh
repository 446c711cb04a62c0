#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): one call of about 5 minutes on an H100, one table at the end.
#   bench/gpu_check.sh [--tokenizer DIR] [--out FILE] [--compile]
# Needs a CUDA GPU, torch, transformers, accelerate, sqlalchemy and this checkout; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
