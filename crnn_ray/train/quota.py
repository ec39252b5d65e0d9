"""Bound a training process to the CPUs it was granted, and measure what it actually used.

Why: unbounded torch thread pools took 2000-4800 % CPU for no speed-up in the seed report; with
`torch.set_num_threads(1)` each run stayed at <= 100 % and trained as fast. Ray grants CPUs as a scheduling
number only — it sets OMP_NUM_THREADS only when unset, and a reused worker keeps the thread count of its
first task — so the training worker sets every knob itself, and the sampler shows the result.
"""

from __future__ import annotations

import math
import os

import psutil
import torch

#: thread-count variables read by the BLAS / OpenMP runtimes (and by any child process)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def apply_cpu_quota(n_cpus: float) -> dict:
    """Limit torch's intra-op and inter-op pools and the BLAS/OpenMP env to `n_cpus` threads.

    A fractional grant (e.g. 0.5 CPU per trial) still needs one thread: the count is ceil(n_cpus), at least 1.
    torch allows the inter-op pool to be sized only once per process, before any parallel work; when that
    already happened the call is reported (`inter_op_applied: False`) instead of failing the run.
    Returns what was set and what is in effect.
    """
    if n_cpus is None or not math.isfinite(float(n_cpus)) or float(n_cpus) <= 0:
        raise ValueError(f"apply_cpu_quota: n_cpus must be a positive number, got {n_cpus!r}")
    n = max(1, math.ceil(float(n_cpus) - 1e-9))
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    inter_op_error = None
    if torch.get_num_interop_threads() == n:
        inter_op_applied = True
    else:
        try:
            torch.set_num_interop_threads(n)
            inter_op_applied = True
        except RuntimeError as exc:  # "cannot set number of interop threads after parallel work has started"
            inter_op_applied = False
            inter_op_error = " ".join(str(exc).split())
    return {
        "n_cpus": float(n_cpus),
        "threads": n,
        "intra_op_threads": torch.get_num_threads(),
        "inter_op_threads": torch.get_num_interop_threads(),
        "inter_op_applied": inter_op_applied,
        "inter_op_error": inter_op_error,
        "env": {var: os.environ[var] for var in THREAD_ENV_VARS},
    }


class CpuSampler:
    """CPU use of one process since the previous sample (100 % = one core busy) and its OS thread count."""

    def __init__(self, pid: int | None = None):
        self.process = psutil.Process(pid if pid is not None else os.getpid())
        self.process.cpu_percent(None)  # prime: the first real sample measures from here

    def sample(self) -> dict:
        with self.process.oneshot():
            return {"cpu_percent": float(self.process.cpu_percent(None)), "threads": int(self.process.num_threads())}
