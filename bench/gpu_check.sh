#!/usr/bin/env bash
# The GPU check for a lent device (H100/H200, torch and transformers preinstalled, no network):
# installs the wheels carried in .whl/ (build them here with `make gpu-wheels`), then runs
# bench/gpu_check.py from the working tree. About 5-10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/spark-vl-site
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/gpu_check.py "$@"
