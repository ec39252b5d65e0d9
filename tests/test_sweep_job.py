"""The cluster path: `ray start --head` on free ports + `ray job submit --working-dir .` of the tiny sweep.

The job's driver finds the cluster through RAY_ADDRESS (set by the job server) and joins it instead of
starting a local Ray. Ray 2.60 clusters use token auth: the head and the client share a token through
RAY_AUTH_MODE=token + RAY_AUTH_TOKEN (see conftest.start_ray_head). Only the head this module started is
stopped.
"""

from __future__ import annotations

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
