#!/usr/bin/env bash
# What a GPU owner runs first: the paper-path bench figures on the GPU, then a 2-epoch run of
# every paper suite's tasks on synthetic data of the real shapes, printing images/s per model
# and precision. Needs torch with CUDA and this repository installed (`pip install -e .`); no
# datasets, no MLflow. DEVICE=cpu rehearses it on a CPU (slowly).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
"$PYTHON" bench/run.py --only paper-path --device "$DEVICE" --repeats 9
"$PYTHON" bench/gpu_smoke.py --device "$DEVICE" "$@"
