#!/usr/bin/env bash
# GPU check (<= 5 min on one H100/H200, no Ray needed): aggregate samples/s with 1/2/4 models sharing the GPU,
# and a convGRU step vs cuDNN nn.GRU. Needs torch (CUDA build), numpy, pandas, pyarrow, scipy.
#   bench/gpu_check.sh            # on a GPU box, from a checkout (no install needed)
#   bench/gpu_check.sh --smoke    # tiny CPU version (what the tests run)
# PYTHON picks the interpreter (default: the checkout's .venv if present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/bench/gpu_check.py" "$@"
