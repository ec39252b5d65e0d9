"""A Ray cluster with FAKE GPUs on this machine, for developing and testing the cluster path without a cloud.

Two shapes, both with a CPU head that has no GPU (like cluster/aws-gpu.yaml), so GPU trials must leave it:
  static     head + N worker nodes started with `ray start --num-gpus G` (fixed size)
  autoscale  head only, with Ray's fake_multinode provider: GPU worker nodes are launched from zero when
             work asks for GPUs and removed when idle (cluster/local/autoscale.yaml)

Why a script and not `ray start` by hand: the machine is shared, so every port is picked free, the session
lives in its own temp dir (a second cluster never clobbers /tmp/ray), token auth uses a token file of its
own (never ~/.ray/auth_token), and `down` stops exactly the processes this cluster started (the head's
process group, the fake nodes the autoscaler spawned, found by an environment marker) instead of
`ray stop`, which would kill every Ray on the machine.

    python cluster/local/fake_gpu_cluster.py up --workers 2 --gpus-per-node 1
    eval "$(python cluster/local/fake_gpu_cluster.py env)"      # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
    jobs/submit_sweep.sh configs/sweeps/tiny.yaml try1
    python cluster/local/fake_gpu_cluster.py down

The "GPUs" are logical Ray resources: torch sees no CUDA, and the CUDA code paths fall back to CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
AUTOSCALE_CONFIG = HERE / "autoscale.yaml"
DEFAULT_DIR = os.environ.get("CRNN_LOCAL_CLUSTER_DIR", "/tmp/crnn_ray_local")
MARKER_ENV = "CRNN_RAY_LOCAL_CLUSTER"
STATE_FILE = "cluster.json"


class ClusterError(Exception):
    """A one-line operator error (bad arguments, a cluster already up, a head that did not start)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    # the address Ray itself advertises for this machine (what fake nodes and drivers will use)
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def ray_bin() -> str:
    """The `ray` CLI of this interpreter's environment (so the venv's Ray runs, whatever PATH says)."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load_state(state_dir: Path) -> dict | None:
    path = _state_path(state_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _write_state(state_dir: Path, state: dict) -> None:
    tmp = _state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, _state_path(state_dir))


def _base_env(marker: str, token_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        {
            MARKER_ENV: marker,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    env.pop("RAY_AUTH_TOKEN", None)  # the file above is this cluster's token, not one from the caller
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # own session: the whole process tree of this node can be signalled as one group
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_line(proc: subprocess.Popen, log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ClusterError(f"ray start exited with {proc.returncode}: {' | '.join(tail)} (log {log})")
        time.sleep(0.5)
    raise ClusterError(f"ray start did not report '{needle}' within {timeout:.0f}s (log {log})")


def _wait_for_job_server(url: str, token: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # not listening yet
            last = exc
        time.sleep(0.5)
    raise ClusterError(f"job server at {url} did not answer within {timeout:.0f}s ({last})")


def start(
    state_dir: Path,
    *,
    autoscale: bool,
    workers: int = 2,
    cpus_per_node: int = 1,
    gpus_per_node: int = 1,
    head_cpus: int = 1,
    max_workers: int | None = None,
    idle_timeout_minutes: float | None = None,
    port: int | None = None,
    timeout: float = 120.0,
) -> dict:
    """Start the cluster and return its state (also written to STATE_DIR/cluster.json)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if load_state(state_dir):
        raise ClusterError(f"a cluster is already recorded in {_state_path(state_dir)}: run `down` first")
    marker = uuid.uuid4().hex
    token_path = state_dir / "auth_token"
    token = secrets.token_hex(32)
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = _base_env(marker, token_path)
    ip = node_ip()
    port = port or free_port()
    dashboard_port = free_port()
    temp_dir = state_dir / "ray"
    head_cmd = [
        ray_bin(), "start", "--head", "--block",
        f"--port={port}",
        f"--num-cpus={head_cpus}", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--object-store-memory=100000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    if autoscale:
        config = yaml.safe_load(AUTOSCALE_CONFIG.read_text())
        config["provider"]["gcs_address"] = f"{ip}:{port}"
        config["available_node_types"]["ray.head.default"]["resources"] = {"CPU": head_cpus, "GPU": 0}
        gpu_type = config["available_node_types"]["ray.worker.gpu"]
        gpu_type["resources"].update({"CPU": cpus_per_node, "GPU": gpus_per_node})
        if max_workers is not None:
            gpu_type["max_workers"] = max_workers
            config["max_workers"] = max(config["max_workers"], max_workers)
        if idle_timeout_minutes is not None:
            config["idle_timeout_minutes"] = idle_timeout_minutes
        config_path = state_dir / "autoscale.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        head_cmd.append(f"--autoscaling-config={config_path}")
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    state = {
        "kind": "autoscale" if autoscale else "static",
        "marker": marker,
        "gcs_address": f"{ip}:{port}",
        "dashboard_url": f"http://127.0.0.1:{dashboard_port}",
        "token_path": str(token_path),
        "temp_dir": str(temp_dir),
        "pids": [],
        "started_at": time.time(),
    }
    head_log = state_dir / "head.log"
    head = _spawn(head_cmd, env, head_log)
    state["pids"].append(head.pid)
    _write_state(state_dir, state)  # written early, so `down` can clean up a half-started cluster
    try:
        _wait_for_line(head, head_log, "Ray runtime started", timeout)
        if not autoscale:
            for i in range(workers):
                log = state_dir / f"worker{i}.log"
                worker_cmd = [
                    ray_bin(), "start", "--block", f"--address={ip}:{port}",
                    f"--num-cpus={cpus_per_node}", f"--num-gpus={gpus_per_node}",
                    "--object-store-memory=100000000", "--disable-usage-stats",
                ]  # fmt: skip
                proc = _spawn(worker_cmd, env, log)
                state["pids"].append(proc.pid)
                _write_state(state_dir, state)
                _wait_for_line(proc, log, "Ray runtime started", timeout)
        _wait_for_job_server(state["dashboard_url"], token, timeout)
        if autoscale:
            publish_node_types(state, config, env, timeout)
    except BaseException:
        stop(state_dir)
        raise
    return state


def publish_node_types(state: dict, config: dict, env: dict, timeout: float) -> None:
    """Put the autoscaler's node types into the GCS, where autoscaler v2 (KubeRay) publishes them.

    The local cluster must run autoscaler v1: v2 reads the fake provider's example.yaml, which the Ray wheel
    does not ship. v1 keeps its node types to itself, so a driver could not tell that GPU nodes can be
    launched while none is up; the sweep (crnn_ray.sweep.placement.cluster_nodes) reads this record to plan GPU
    trials on a cluster that starts with zero GPU nodes, exactly as on KubeRay.
    """
    from ray.core.generated import autoscaler_pb2

    cluster_config = autoscaler_pb2.ClusterConfig()
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        group = cluster_config.node_group_configs.add()
        group.name = name
        group.min_count = int(node_type.get("min_workers", 0))
        group.max_count = int(node_type.get("max_workers", config["max_workers"]))
        for key, value in node_type["resources"].items():
            group.resources[key] = int(value)
    script = (
        "import sys, ray, ray._raylet as r\n"
        "from ray.experimental.internal_kv import _internal_kv_put\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
        "_internal_kv_put(r.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, bytes.fromhex(sys.argv[2]),"
        " namespace=r.GCS_AUTOSCALER_STATE_NAMESPACE)\n"
    )
    cmd = [sys.executable, "-c", script, state["gcs_address"], cluster_config.SerializeToString().hex()]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ClusterError(f"could not publish the node types to the GCS: {tail}")


def _marked_processes(marker: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(MARKER_ENV) == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _alive(procs: list) -> list:
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def _wait_gone(marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(_marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)


def stop(state_dir: Path, grace_s: float = 20.0) -> int:
    """Stop exactly this cluster's processes; returns how many had to be SIGKILLed."""
    import psutil

    state = load_state(state_dir)
    if state is None:
        return 0
    # SIGTERM to each `ray start --block` (workers first, the head last): it shuts its own node down in
    # order. Signalling the whole group at once instead leaves raylets and the GCS waiting on each other.
    for pid in reversed(state["pids"]):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    psutil.wait_procs([p for p in _marked_processes(state["marker"]) if p.pid in state["pids"]], timeout=grace_s / 2)
    # fake nodes the autoscaler spawned live outside the head's process group: SIGTERM them by pid, then
    # SIGKILL whatever still holds on
    for proc in _alive(_marked_processes(state["marker"])):
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(state["marker"], grace_s / 2)
    leftovers = _alive(_marked_processes(state["marker"]))
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)
    _state_path(state_dir).unlink(missing_ok=True)
    return len(leftovers)


def env_lines(state: dict) -> list[str]:
    """Shell lines that point `ray job submit`, jobs/*.sh and drivers at this cluster."""
    return [
        f"export RAY_ADDRESS={state['dashboard_url']}",
        f"export RAY_GCS_ADDRESS={state['gcs_address']}",
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={state['token_path']}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=DEFAULT_DIR, help="state + logs + Ray session dir (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="head + N fake-GPU worker nodes (fixed size)")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--cpus-per-node", type=int, default=1)
    up.add_argument("--gpus-per-node", type=int, default=1)
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--port", type=int, default=None, help="GCS port (default: a free one)")
    auto = sub.add_parser("autoscale", help="head + fake_multinode autoscaler (GPU nodes from zero)")
    auto.add_argument("--max-workers", type=int, default=None, help="cap on GPU nodes (autoscale.yaml: 2)")
    auto.add_argument("--cpus-per-node", type=int, default=1)
    auto.add_argument("--gpus-per-node", type=int, default=1)
    auto.add_argument("--head-cpus", type=int, default=1)
    auto.add_argument("--idle-timeout-minutes", type=float, default=None)
    auto.add_argument("--port", type=int, default=None, help="GCS port (default: a free one)")
    sub.add_parser("down", help="stop this cluster's processes (only them)")
    sub.add_parser("env", help="print export lines for RAY_ADDRESS and token auth")
    sub.add_parser("status", help="`ray status` of this cluster")
    args = parser.parse_args(argv)
    state_dir = Path(args.dir).resolve()
    try:
        if args.command in ("up", "autoscale"):
            kw = dict(cpus_per_node=args.cpus_per_node, gpus_per_node=args.gpus_per_node, head_cpus=args.head_cpus)
            if args.command == "up":
                state = start(state_dir, autoscale=False, workers=args.workers, port=args.port, **kw)
            else:
                state = start(
                    state_dir, autoscale=True, max_workers=args.max_workers,
                    idle_timeout_minutes=args.idle_timeout_minutes, port=args.port, **kw,
                )  # fmt: skip
            print(f"cluster up ({state['kind']}): GCS {state['gcs_address']}, jobs {state['dashboard_url']}")
            print(f"  logs and Ray session: {state_dir}")
            print("  point clients at it with:")
            for line in env_lines(state):
                print(f"    {line}")
            return 0
        state = load_state(state_dir)
        if state is None:
            raise ClusterError(f"no cluster recorded in {_state_path(state_dir)}")
        if args.command == "down":
            killed = stop(state_dir)
            print(f"cluster stopped ({killed} process(es) needed SIGKILL)")
        elif args.command == "env":
            print("\n".join(env_lines(state)))
        elif args.command == "status":
            env = _base_env(state["marker"], Path(state["token_path"]))
            return subprocess.call([ray_bin(), "status", f"--address={state['gcs_address']}"], env=env)
        return 0
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
