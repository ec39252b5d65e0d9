"""CPU quota: a process bounded with apply_cpu_quota(1) really stays near one core, and the sampler sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from crnn_ray.train import CpuSampler, apply_cpu_quota

# a child that bounds itself, then runs a torch matmul loop (which would use every core unbounded) and
# reports what the sampler measured over that loop
_CHILD = r"""
import json, sys, time, torch
from crnn_ray.train import CpuSampler, apply_cpu_quota
quota = apply_cpu_quota(1)
sampler = CpuSampler()
a = torch.randn(384, 384)
t0 = time.perf_counter()
while time.perf_counter() - t0 < 2.0:
    b = a @ a
sample = sampler.sample()
print(json.dumps({"quota": quota, "sample": sample, "torch_threads": torch.get_num_threads()}))
"""


def _run_child(env_extra: dict) -> dict:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quota_bounds_a_matmul_loop_to_one_core():
    # start with a large OMP count in the env, as an unbounded worker would inherit it
    report = _run_child({"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"})
    print("quota child:", report)
    assert report["torch_threads"] == 1
    assert report["quota"]["intra_op_threads"] == 1
    assert report["quota"]["inter_op_threads"] == 1 and report["quota"]["inter_op_applied"] is True
    assert report["quota"]["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # generous margins: the machine is shared, but a 1-thread loop cannot exceed ~one core
    assert 0.0 < report["sample"]["cpu_percent"] < 150.0
    assert report["sample"]["threads"] >= 1


def test_quota_rounds_fractional_grants_up_and_reports_a_late_interop_call():
    # in-process: pytest's process has already run parallel work, so the inter-op pool can no longer change
    # unless it already has the requested size; either way the call reports instead of raising
    import torch

    before = torch.get_num_threads()
    env_before = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    try:
        result = apply_cpu_quota(0.5)
        assert result["threads"] == 1 and torch.get_num_threads() == 1
        assert result["env"]["OPENBLAS_NUM_THREADS"] == "1"
        assert isinstance(result["inter_op_applied"], bool)
        assert result["inter_op_applied"] == (torch.get_num_interop_threads() == 1)
        if not result["inter_op_applied"]:
            assert result["inter_op_error"]
        assert apply_cpu_quota(2.2)["threads"] == 3
    finally:  # leave the pytest process (and the Ray clusters other tests start from it) as it was
        torch.set_num_threads(before)
        for var, value in env_before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    with pytest.raises(ValueError):
        apply_cpu_quota(0)


def test_sampler_measures_since_the_previous_sample():
    sampler = CpuSampler()
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < 0.5:  # busy
        x += 1
    busy = sampler.sample()
    time.sleep(0.5)  # idle
    idle = sampler.sample()
    assert busy["cpu_percent"] > idle["cpu_percent"]
    assert idle["cpu_percent"] < 50.0
    assert busy["threads"] >= 1 and isinstance(busy["threads"], int)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        child = CpuSampler(other.pid)
        time.sleep(0.3)
        assert child.sample()["cpu_percent"] < 50.0
    finally:
        other.kill()
        other.wait()
