"""Shared Ray helpers for the tests: free ports, a local Ray per module, a `ray start --head` of our own.

Everything here stops only what it started: a local Ray is shut down only if this fixture started it, and
a `ray start --head` runs in a session of its own whose processes (and only those) are stopped at the end —
never `ray stop`, which would stop every Ray on the machine, including other tests'.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module (2 CPUs, no dashboard); reused by its tests."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@dataclass
class RayHead:
    """A `ray start --head` cluster on free ports with a private temp dir and its own auth token."""

    gcs_address: str
    dashboard_url: str
    env: dict                      # what a client needs: RAY_AUTH_MODE=token + the token
    temp_dir: Path
    session_id: int
    log: str = ""
    pids: list = field(default_factory=list)

    def stop(self) -> None:
        """Terminate every process of the head's session (gcs, raylet, dashboard, workers), then kill stragglers."""
        import psutil

        procs = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) == self.session_id and proc.pid != os.getpid():
                    procs.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass


def start_ray_head(num_cpus: int = 2, num_gpus: int = 0) -> RayHead:
    """`ray start --head` on free ports; token auth (Ray 2.60 local clusters) with a token of our own.

    The token goes to the head and to every client through RAY_AUTH_TOKEN (RAY_AUTH_MODE=token), so the
    test neither reads nor overwrites ~/.ray/auth_token. `--temp-dir` keeps this cluster out of
    /tmp/ray/ray_current_cluster, so nobody's plain `ray.init()` attaches to it.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="crnn_head_", dir="/tmp"))
    (gcs, dash, nm, om, me, al, ag, re_, rc) = free_ports(9)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY_BIN, "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
           f"--num-gpus={num_gpus}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--metrics-export-port={me}", f"--dashboard-agent-listen-port={al}",
           f"--dashboard-agent-grpc-port={ag}", f"--runtime-env-agent-port={re_}",
           f"--ray-client-server-port={rc}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    head = RayHead(gcs_address=f"127.0.0.1:{gcs}", dashboard_url=f"http://127.0.0.1:{dash}",
                   env=env, temp_dir=temp_dir, session_id=proc.pid)
    try:
        head.log, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        head.stop()
        raise
    if proc.returncode != 0:
        head.stop()
        raise RuntimeError(f"ray start --head failed ({proc.returncode}):\n{head.log[-3000:]}")
    deadline = time.monotonic() + 60  # the job server answers a little after `ray start` returns
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{head.dashboard_url}/api/version", timeout=5):
                break
        except urllib.error.HTTPError:  # it answers (e.g. 401 without the token): it is up
            break
        except Exception:
            time.sleep(1.0)
    return head


@pytest.fixture(scope="module")
def ray_head():
    head = start_ray_head()
    yield head
    head.stop()


HOOKS = Path(__file__).resolve().parent / "hooks"


def init_ray_with_kill_hook(epoch: int, marker_dir: Path, log_to_driver: bool = False, trial: str = "") -> None:
    """ray.init a local Ray whose workers load tests/hooks/sitecustomize.py: each Train worker SIGKILLs itself
    once, right after reporting `epoch` (of model `trial` only, when given; the raylet, and so every worker,
    inherits the environment of init)."""
    import ray

    assert not ray.is_initialized(), "the kill hook must be in the environment the workers start from"
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH", "")) if p))
    mp.setenv("CRNN_RAY_TEST_KILL_AFTER_EPOCH", str(epoch))
    mp.setenv("CRNN_RAY_TEST_KILL_MARKER_DIR", str(marker_dir))
    mp.setenv("CRNN_RAY_TEST_KILL_TRIAL", trial)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=log_to_driver)
    finally:
        mp.undo()


def read_results_json(trial_dir: Path) -> list[dict]:
    """Every result a Tune trial reported, in order (its result.json: one JSON object per line)."""
    import json

    path = Path(trial_dir) / "result.json"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def stop_session(sid: int) -> None:
    """SIGKILL what is left of the session a test started (a sweep's own local Ray), and only that."""
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid:
                proc.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue


def write_yaml(path: Path, doc: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): bit-equal
    comparisons of two training paths need one reduction order, and two suites share the 2 CPUs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synth_file(directory: Path, n_symbols: int, n_days: int, seed: int) -> tuple[Path, object, dict]:
    """A synthetic market written as `directory`/panel.parquet: (its path, the long frame, the metadata)."""
    from crnn_ray.data import save_panel, synthesize

    df, meta = synthesize(n_symbols=n_symbols, n_days=n_days, seed=seed)
    path = Path(directory) / "panel.parquet"
    save_panel(df, path, meta)
    return path, df, meta


def saved_panel(directory: Path, n_symbols: int, n_days: int, seed: int):
    """A synthetic market written as a panel file in `directory` and loaded back (what the sweep trains on)."""
    from crnn_ray.data import load_panel

    return load_panel(synth_file(directory, n_symbols, n_days, seed)[0])


def tiny_config(**overrides) -> dict:
    """configs/sweeps/tiny.yaml as a dict, with top-level sections updated (shallowly) by `overrides`."""
    import yaml

    doc = yaml.safe_load((REPO / "configs" / "sweeps" / "tiny.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc
