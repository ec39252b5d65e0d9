"""The cluster path end to end on one machine: an autoscaling Ray cluster with fake GPUs.

cluster/local/fake_gpu_cluster.py starts a head (no GPU) whose autoscaler (Ray's fake_multinode provider)
launches GPU worker nodes on demand. The test submits a job through jobs/submit_sweep.sh (token auth, the
repository upload, jobs/runtime_env.yaml), then runs the tiny sweep with gpus_per_trial: 1 against the
cluster and checks what an operator relies on: GPU nodes come up from zero, the trials land on them, and
the nodes go away once idle. Timings are printed, never asserted. Only this cluster's processes are
stopped (never `ray stop`: teammates' Ray instances share the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "local" / "fake_gpu_cluster.py"
pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def _api_nodes(state: dict, token: str) -> list[dict]:
    """Nodes as the cluster's state API reports them (HTTP + token: no Ray driver in the test process)."""
    request = urllib.request.Request(
        f"{state['dashboard_url']}/api/v0/nodes?limit=100&detail=true",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=20) as resp:
        body = json.loads(resp.read())
    return body["data"]["result"]["result"]


def _gpu_nodes(nodes: list[dict], alive: bool) -> list[dict]:
    return [
        n for n in nodes
        if (n.get("resources_total") or {}).get("GPU", 0) > 0 and (n.get("state") == "ALIVE") == alive
    ]  # fmt: skip


class _Lines:
    """Collect a child's output lines with the time each arrived (to time the trials' placement)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def first(self, needle: str) -> float | None:
        return next((t for t, line in list(self.lines) if needle in line), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def join(self):
        self._thread.join(timeout=30)


@pytest.fixture
def cluster():
    # a short path: Ray's unix sockets live under it (pytest's tmp_path would exceed the 107-byte limit)
    state_dir = Path(tempfile.mkdtemp(prefix="crc", dir="/tmp"))
    cmd = [sys.executable, str(SCRIPT), "--dir", str(state_dir), "autoscale",
           "--max-workers", "2", "--idle-timeout-minutes", "0.1"]  # fmt: skip
    t0 = time.monotonic()
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(f"\nlocal autoscaling cluster up in {time.monotonic() - t0:.1f}s")
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        state = json.loads((state_dir / "cluster.json").read_text())
        yield state_dir, state
    finally:
        if (state_dir / "cluster.json").exists():  # the test failed before its own `down`
            down = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(state_dir), "down"],
                                  capture_output=True, text=True, timeout=120)
            print(down.stdout.strip(), down.stderr.strip()[-500:])
        shutil.rmtree(state_dir, ignore_errors=True)


def _client_env(state: dict) -> dict:
    env = dict(os.environ)
    env.pop("RAY_AUTH_TOKEN", None)
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": state["token_path"],
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    return env


def test_gpu_nodes_scale_up_for_a_sweep_and_back_down(cluster, tmp_path):
    state_dir, state = cluster
    token = Path(state["token_path"]).read_text().strip()
    env = _client_env(state)

    # -- the cluster starts with no GPU node at all
    nodes = _api_nodes(state, token)
    assert len(nodes) == 1 and not _gpu_nodes(nodes, alive=True), nodes

    # -- token auth is enforced: the job server refuses a wrong token (and answered the right one above)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _api_nodes(state, "not-the-token")
    assert refused.value.code in (401, 403)

    # -- the job path: jobs/submit_sweep.sh uploads the repository with jobs/runtime_env.yaml and runs the
    #    sweep's entrypoint on the head (--check: validate and print the grid; no trial, no GPU node needed)
    job_env = dict(env, RAY_ADDRESS=state["dashboard_url"], CRNN_STORAGE=str(tmp_path / "jobs_runs"))
    t0 = time.monotonic()
    job = subprocess.run([str(ROOT / "jobs" / "submit_sweep.sh"), "configs/sweeps/tiny.yaml", "jobcheck", "--check"],
                         env=job_env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    job_s = time.monotonic() - t0
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    assert "ok, 2 trial(s)" in job.stdout + job.stderr
    assert "succeeded" in job.stdout + job.stderr

    # -- a sweep whose trials each ask for one GPU, run against the cluster (the driver on this machine)
    config = yaml.safe_load((ROOT / "configs" / "sweeps" / "tiny.yaml").read_text())
    config.setdefault("resources", {})["gpus_per_trial"] = 1
    config_path = tmp_path / "tiny_gpu.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    storage = tmp_path / "runs"
    sweep_env = dict(env, RAY_ADDRESS=state["gcs_address"])
    t_start = time.monotonic()
    sweep = subprocess.Popen(
        [sys.executable, "-m", "crnn_ray.sweep", "--config", str(config_path), "--storage", str(storage),
         "--name", "autoscale"],
        env=sweep_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = _Lines(sweep)
    t_up = None
    max_gpu_nodes = 0
    gpu_node_ids: set[str] = set()
    while sweep.poll() is None and time.monotonic() - t_start < 420:
        alive = _gpu_nodes(_api_nodes(state, token), alive=True)
        if alive and t_up is None:
            t_up = time.monotonic()
        max_gpu_nodes = max(max_gpu_nodes, len(alive))
        gpu_node_ids |= {n["node_id"] for n in alive}
        time.sleep(1.0)
    if sweep.poll() is None:
        sweep.kill()
    sweep.wait(timeout=60)
    out.join()
    t_end = time.monotonic()
    assert sweep.returncode == 0, out.text()[-4000:]
    t_placed = out.first("(RayTrainWorker")

    # -- GPU nodes came up from zero, within the cap
    assert t_up is not None, "no GPU node was launched"
    assert 1 <= max_gpu_nodes <= 2

    # -- every trial ran with a GPU grant; the head has none, so they ran on the launched GPU nodes
    trials = pd.read_parquet(storage / "autoscale" / "trials.parquet")
    assert len(trials) == 2
    assert set(trials["status"]) == {"ok"}, trials[["trial_id", "status", "reason"]]
    for gpu_ids in trials["gpu_ids"]:
        assert len(json.loads(gpu_ids) if isinstance(gpu_ids, str) else list(gpu_ids)) == 1, gpu_ids
    assert t_placed is not None, out.text()[-3000:]

    # -- meanwhile the daily scoring job (jobs/score_daily.sh) scores the panel's latest date on the head
    signals = tmp_path / "signals"
    score_env = dict(job_env, CRNN_STORAGE=str(storage), CRNN_SIGNALS=str(signals))
    score = subprocess.Popen([str(ROOT / "jobs" / "score_daily.sh"), "autoscale"], env=score_env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    score_out = _Lines(score)

    # -- idle GPU nodes are removed again (idle timeout 6 s)
    t_down = None
    while time.monotonic() - t_end < 120:
        nodes = _api_nodes(state, token)
        if not _gpu_nodes(nodes, alive=True):
            t_down = time.monotonic()
            break
        time.sleep(1.0)
    assert t_down is not None, "GPU nodes still alive 120 s after the sweep ended"
    dead_ids = {n["node_id"] for n in _gpu_nodes(nodes, alive=False)}
    assert gpu_node_ids <= dead_ids

    score.wait(timeout=300)
    score_s = time.monotonic() - t_end
    score_out.join()
    assert score.returncode == 0, score_out.text()[-3000:]
    last = pd.read_parquet(storage / "autoscale" / "data" / "panel.parquet", columns=["date"])["date"].max()
    day = pd.Timestamp(last).strftime("%Y-%m-%d")
    assert f"latest date in {storage / 'autoscale' / 'data' / 'panel.parquet'}: {day}" in score_out.text()
    partitions = sorted(p.name for p in (signals / "autoscale" / "signals").iterdir())
    assert partitions == [f"date={day}"]
    # one day of the dataset: the date comes from its date=YYYY-MM-DD folder, not from inside the file
    scored = pd.read_parquet(signals / "autoscale" / "signals", filters=[("date", "==", day)])
    assert len(scored) > 0 and {"date", "symbol", "signal"} <= set(scored.columns)

    print(
        f"\nautoscale timings: job submit+check {job_s:.1f}s; sweep start -> first GPU node up "
        f"{t_up - t_start:.1f}s, -> first trial worker placed {t_placed - t_start:.1f}s, "
        f"sweep done {t_end - t_start:.1f}s; sweep end -> GPU nodes gone {t_down - t_end:.1f}s; "
        f"peak GPU nodes {max_gpu_nodes}; score_daily job {score_s:.1f}s"
    )

    # -- `down` stops exactly this cluster: nothing carrying its marker survives
    marker = state["marker"]
    down = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(state_dir), "down"],
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    survivors = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("CRNN_RAY_LOCAL_CLUSTER") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                survivors.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    assert survivors == []
