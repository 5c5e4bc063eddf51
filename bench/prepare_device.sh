#!/usr/bin/env bash
# Fill the git-ignored .device/ that the GPU call carries, and stop if the carry would not fit.
#
#   bash bench/prepare_device.sh [--with-test]
#
# 1. the workplace's prepare script (PREPARE, default ../shared/gpu/prepare.sh): the wheels the GPU
#    image lacks (bitsandbytes, datasets), the IMDB data, the tokenizer and .device/setup.sh;
# 2. the bitsandbytes wheel cut to the one CUDA build the GPU image's torch loads (BNB_CUDA,
#    default 130 for torch 2.11+cu130): 41 of its 43 MB are other CUDA, ROCm and XPU builds;
# 3. .device plus the working tree checked against the call's 64 MiB carry: one line and exit 1
#    when it would not fit (the call would fail only after the machine had started).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash "${PREPARE:-../shared/gpu/prepare.sh}" "$@"
python3 bench/device_carry.py slim .device/whl --cuda "${BNB_CUDA:-130}"
python3 bench/device_carry.py check .device
