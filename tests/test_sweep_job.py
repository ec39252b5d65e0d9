"""The cluster path: `ray start --head` on free ports + `ray job submit --working-dir .` of the tiny sweep.

The job's driver finds the cluster through RAY_ADDRESS (set by the job server) and joins it instead of
starting a local Ray. Ray 2.60 clusters use token auth: the head and the client share a token through
RAY_AUTH_MODE=token + RAY_AUTH_TOKEN (see conftest.start_ray_head). Only the head this module started is
stopped. A second job checks that the sweep's worker setup hook (ray_compat.quiet_init_kwargs) reaches the
job's workers through the merged runtime_env.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import RAY_BIN, REPO
from crnn_ray.sweep.leaderboard import LEADERBOARD_COLUMNS

pytestmark = pytest.mark.ray


def test_job_submit_runs_the_tiny_sweep_on_the_cluster(ray_head, tmp_path):
    storage = tmp_path / "runs"
    cmd = [RAY_BIN, "job", "submit", f"--address={ray_head.dashboard_url}", "--working-dir", ".", "--",
           sys.executable, "-m", "crnn_ray.sweep", "--config", "configs/sweeps/tiny.yaml",
           "--storage", str(storage), "--name", "job"]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=420)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out
    assert f"experiment: {storage / 'job'}" in out
    assert "Started a local Ray instance" not in out  # it joined the cluster
    trials = pd.read_parquet(storage / "job" / "trials.parquet")
    assert set(trials.status) == {"ok"} and len(trials) == 2
    lb = pd.read_parquet(storage / "job" / "leaderboard.parquet")
    assert list(lb.columns) == LEADERBOARD_COLUMNS and set(lb.family) == {"convgru", "cnn1d", "baseline"}
    assert "| 1 | `" in out  # the leaderboard table printed at the end of the job's log
    assert "[sweep] 2/2 models done" in out  # the status line
    # what the job printed is kept in the experiment too: the workers' epoch lines included, no ANSI codes
    log = (storage / "job" / "sweep.log").read_text()
    assert "\x1b" not in log and "(RayTrainWorker pid=" in log and "epoch 1/1" in log
    assert log.count("[sweep] 2/2 models done") == 1 and "# Leaderboard" in log


HOOK_PROBE = """
import json, logging, threading, ray
from crnn_ray.ray_compat import BENIGN_LOG_RECORDS, quiet_init_kwargs
ray.init(**quiet_init_kwargs(log_to_driver=True))

def hooked():
    log = logging.getLogger(BENIGN_LOG_RECORDS[0][0])
    return bool(log.filters) and getattr(threading.excepthook, "_crnn_quiet", False)

@ray.remote(num_cpus=0)
class Probe:  # an actor started from inside a task: how Train's controller starts its helper actors
    def hooked(self):
        return hooked()

@ray.remote(num_cpus=0)
def nested():
    return hooked(), ray.get(Probe.options(lifetime="detached").remote().hooked.remote())

print("HOOKED", json.dumps(ray.get(nested.remote())))
"""


def test_job_submit_workers_run_the_quiet_hook(ray_head):
    """Under `ray job submit` the driver's ray.init merges the setup hook into the job's runtime_env (here
    jobs/runtime_env.yaml's working_dir and env_vars; its pip list is left out to stay offline), so the job's
    workers and the actors they start, detached ones included, run it."""
    runtime_env = {"working_dir": ".", "excludes": [".venv", "runs", ".git", "**/__pycache__"],
                   "env_vars": {"PYTHONUNBUFFERED": "1"}}
    cmd = [RAY_BIN, "job", "submit", f"--address={ray_head.dashboard_url}", "--runtime-env-json",
           json.dumps(runtime_env), "--", sys.executable, "-c", HOOK_PROBE]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "HOOKED [true, true]" in out, out[-3000:]
