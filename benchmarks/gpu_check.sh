#!/usr/bin/env bash
# Run on the lent GPU machine from the repo root, with .whl carried (ray without its Java jars,
# pydantic and friends; the machine has torch, pynvml, pyarrow, typer, rich already).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
nvidia-smi -L
timeout 420 python3 benchmarks/gpu_check.py --out "${OUT:-.}" 2>&1 | grep -v -E "^\s*$|WARNING" | tail -120
