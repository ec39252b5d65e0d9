#!/usr/bin/env bash
# GPU check (a few minutes on one H100/H200, no Ray needed): aggregate samples/s with 1/2/4 models sharing the
# GPU (separate processes), a convGRU step vs cuDNN nn.GRU, and K = 1/4/16/64 members of convgru/m01 and
# cnn1d/m02 in ONE process, trained in turn and stacked (crnn_ray.train.stacked: one vmapped module): samples/s,
# stacked vs in turn and vs one model, kernel launches per member-step, GPU utilisation. Needs torch (CUDA
# build), numpy, pandas, pyarrow, scipy.
#   bench/gpu_check.sh                       # on a GPU box, from a checkout (no install needed)
#   bench/gpu_check.sh --stack-compile       # also the stacked step under torch.compile reduce-overhead, K=16
#   bench/gpu_check.sh --smoke               # tiny CPU version (what the tests run)
#   bench/gpu_check.sh --device cpu --skip-concurrent   # only sections 2-3, tiny sizes, on CPU
#   bench/gpu_check.sh --device cpu --full-size --sections 3 --stack-models 1,4,8 --stack-steps 6 --repeats 3
#                                            # section 3's CPU figures at the real sizes (minutes)
# PYTHON picks the interpreter (default: the checkout's .venv if present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/bench/gpu_check.py" "$@"
