#!/usr/bin/env bash
# GPU check (<= 5 min on one H100/H200, no Ray needed): aggregate samples/s with 1/2/4 models sharing the GPU
# (separate processes), a convGRU step vs cuDNN nn.GRU, and K = 1/4/16 models of convgru/m01 and cnn1d/m02
# trained in turn in ONE process (aggregate samples/s vs one model, the ratio). Needs torch (CUDA build),
# numpy, pandas, pyarrow, scipy.
#   bench/gpu_check.sh            # on a GPU box, from a checkout (no install needed)
#   bench/gpu_check.sh --smoke    # tiny CPU version (what the tests run)
#   bench/gpu_check.sh --device cpu --skip-concurrent   # only sections 2-3, tiny sizes, on CPU
# PYTHON picks the interpreter (default: the checkout's .venv if present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/bench/gpu_check.py" "$@"
