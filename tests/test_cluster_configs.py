"""Cluster and job configs are checked the way Ray and the operator will use them, without a cloud.

The launcher YAML goes through Ray's own prepare_config + validate_config (schema, defaults merge; no cloud
calls), and broken copies must fail there. The KubeRay manifest is checked for the autoscaling fields that
make a GPU group scale from zero. The job scripts are run for real: bad arguments exit 2 with a usage or a
one-line error, and with RAY_CLI=echo they print the exact `ray job submit` line they would run.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster" / "aws-gpu.yaml"
KUBERAY = ROOT / "cluster" / "kuberay.yaml"
LOCAL = ROOT / "cluster" / "local" / "autoscale.yaml"
RUNTIME_ENV = ROOT / "jobs" / "runtime_env.yaml"
SUBMIT = ROOT / "jobs" / "submit_sweep.sh"
SCORE = ROOT / "jobs" / "score_daily.sh"
TORCH_PIN = re.compile(r"torch==(\d+\.\d+\.\d+)")


def _aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def _validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _tested_torch() -> str:
    """The torch release the project is tested with (the Makefile's pin)."""
    return TORCH_PIN.search((ROOT / "Makefile").read_text()).group(1)


# ------------------------------------------------------------------------------------------- aws launcher
def test_aws_config_passes_rays_own_validation():
    prepared = _validate(_aws())
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # the head runs no trials
    assert head["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    gpus = sorted(t["resources"]["GPU"] for t in workers.values())
    assert gpus[0] == 1 and gpus[-1] > 1, "want a 1-GPU and a multi-GPU worker type"
    for name, t in workers.items():
        assert t["min_workers"] == 0, name  # scale from zero
        assert 1 <= t["max_workers"] <= prepared["max_workers"], name
        assert {"CPU", "GPU", "memory"} <= set(t["resources"]), name
        assert t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4d.", "p5.")), name
    assert 0 < prepared["idle_timeout_minutes"] <= 30


def test_aws_config_installs_the_pinned_cuda_torch_and_the_package():
    config = _aws()
    setup = "\n".join(config["setup_commands"])
    pins = TORCH_PIN.findall(setup)
    assert pins == [_tested_torch()], setup  # PyPI's Linux wheel of that release is the CUDA build
    assert "--index-url" not in setup and "/whl/cpu" not in setup  # not the CPU-only wheel index
    assert "pip install" in setup and "crnn_ray" in setup
    # the cluster runs the Ray release the package pins
    images = [config["docker"]["head_image"], config["docker"]["worker_image"]]
    assert all(image.split(":")[1].startswith(ray.__version__) for image in images), images
    assert config["docker"]["worker_image"].endswith("-gpu")


def test_aws_dashboard_and_job_server_are_not_public():
    text = AWS.read_text()
    assert "0.0.0.0" not in text  # no open security-group rule, no dashboard bound to every interface
    config = _aws()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    # every node type names its security group, so Ray never creates one that opens SSH to the world
    for name, t in config["available_node_types"].items():
        assert t["node_config"].get("SecurityGroupIds"), name
    assert "~/.ray/auth_token" in config["file_mounts"].values()


@pytest.mark.parametrize(
    "breakage, needle",
    [
        (lambda c: c.__setitem__("idle_timeout_minuts", 5), "idle_timeout_minuts"),
        (lambda c: c["available_node_types"]["ray.worker.gpu1"].__setitem__(
            "min_worker", c["available_node_types"]["ray.worker.gpu1"].pop("min_workers")), "min_worker"),
        (lambda c: c["available_node_types"]["ray.worker.gpu1"]["resources"].__setitem__("GPU", 0.5), "0.5"),
        (lambda c: c["available_node_types"]["ray.worker.gpu4"]["resources"].__setitem__("GPU", "4"), "'4'"),
        (lambda c: c["available_node_types"]["ray.worker.gpu1"].pop("resources"), "resources"),
    ],
    ids=["typo-top-level-key", "typo-node-type-key", "fractional-gpu-count", "string-gpu-count",
         "missing-resources"],
)
def test_broken_aws_copies_fail_validation(breakage, needle):
    config = _aws()
    _validate(config)  # the pristine copy passes...
    breakage(config)
    with pytest.raises(jsonschema.ValidationError) as err:  # ...the broken one names what is wrong
        _validate(config)
    assert needle in str(err.value).splitlines()[0]


def test_aws_shared_storage_is_not_world_writable_and_no_s3_is_offered():
    """--resume unpickles Tune state from the storage (docs/operations.md: a code-execution boundary): the
    launcher gives /mnt/crnn to the containers' ray user (uid 1000, gid 100 in the rayproject images), mode 770,
    never 777; and the header offers no s3:// storage, which --storage refuses."""
    commands = " && ".join(_aws()["initialization_commands"])
    assert "777" not in commands and "chmod o+" not in commands
    assert "sudo chown 1000:100 /mnt/crnn" in commands and "sudo chmod 770 /mnt/crnn" in commands
    assert commands.index("mkdir -p /mnt/crnn") < commands.index("chown")  # the mount goes between them
    header = AWS.read_text().split("cluster_name:")[0]
    assert "an S3 bucket" not in header and "s3:// URIs are refused" in header


# ------------------------------------------------------------------------------------------------ kuberay
def _raycluster() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    assert clusters[0]["apiVersion"] == "ray.io/v1"
    return clusters[0]


def test_kuberay_autoscaling_fields():
    spec = _raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # a string, as KubeRay requires
    head_container = head["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head_container.get("env", [])}
    assert env.get("RAY_enable_autoscaler_v2") == "1"  # for operators older than autoscalerOptions.version
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})]
    assert gpu_groups, "no worker group requests nvidia.com/gpu in its limits"
    for group in gpu_groups:
        assert group["minReplicas"] == 0
        assert group["maxReplicas"] >= 1
        assert group.get("replicas", 0) == 0
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["image"].endswith("-gpu")
        assert group["template"]["spec"].get("restartPolicy") == "Never"  # autoscaler v2 replaces pods


def test_kuberay_images_and_install_match_the_tested_versions():
    spec = _raycluster()["spec"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]
    ]
    for c in containers:
        assert c["image"].split(":")[1].startswith(ray.__version__), c["image"]
        assert TORCH_PIN.findall(" ".join(c.get("command", []))) == [_tested_torch()], c.get("command")


def _head_pod_labels(cluster: dict) -> dict:
    """The labels the head pod will carry: its template's plus the ones KubeRay stamps on every pod it makes
    (ray.io/cluster = the RayCluster's name, ray.io/node-type = head | worker)."""
    template = cluster["spec"]["headGroupSpec"]["template"]
    return {**(template.get("metadata") or {}).get("labels", {}),
            "ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need more than this check
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def test_kuberay_network_policy_limits_the_head_ports_to_clients_and_the_cluster():
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    cluster = _raycluster()
    head = _head_pod_labels(cluster)
    worker = {**head, "ray.io/node-type": "worker"}
    client = {"crnn-ray/client": "true"}
    stranger = {"app": "something-else"}
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    assert policies and all(p["apiVersion"] == "networking.k8s.io/v1" for p in policies)
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress"]
        assert p["spec"]["podSelector"]["matchLabels"], "an empty selector would cover every pod of the namespace"

    def allowed(target: dict, source: dict, port: int) -> bool:
        """Whether the policies that select `target` let `source` in on `port` (NetworkPolicy semantics:
        the union of every rule of every policy selecting the pod; no policy: all allowed)."""
        selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
        if not selecting:
            return True
        for p in selecting:
            for rule in p["spec"].get("ingress", []):
                ports = [q["port"] for q in rule.get("ports", [])]
                assert all(q.get("protocol", "TCP") == "TCP" for q in rule.get("ports", []))
                peers = rule.get("from", [])
                assert all(set(peer) == {"podSelector"} for peer in peers), peers  # same namespace only
                if (not ports or port in ports) and any(_selects(peer["podSelector"], source) for peer in peers):
                    return True
        return False

    head_ports = {c["containerPort"] for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                  ["ports"]}
    assert {8265, 10001, 6379} <= head_ports
    # the two exposed ports: the cluster's own pods and labelled clients only
    for port in (8265, 10001):
        assert allowed(head, client, port) and allowed(head, worker, port) and allowed(head, head, port)
        assert not allowed(head, stranger, port), port
    # the client label opens nothing else
    for port in (6379, 8076, 10002):
        assert not allowed(head, client, port) and not allowed(worker, client, port)
    # Ray's own traffic stays open between the cluster's pods, any port (GCS, object manager, worker ports)
    for port in (6379, 8076, 10002, 20000, 52365):
        assert allowed(head, worker, port) and allowed(worker, head, port) and allowed(worker, worker, port)
        assert not allowed(worker, stranger, port) and not allowed(head, stranger, port)
    # the policy that names the two ports selects the head pod, and lists exactly them
    named = [p for p in policies if any(r.get("ports") for r in p["spec"]["ingress"])]
    assert len(named) == 1 and _selects(named[0]["spec"]["podSelector"], head)
    assert not _selects(named[0]["spec"]["podSelector"], worker)
    assert sorted(q["port"] for r in named[0]["spec"]["ingress"] for q in r["ports"]) == [8265, 10001]
    assert "crnn-ray/client" in (ROOT / "docs" / "operations.md").read_text()


# ------------------------------------------------------------------------------------------- head sizing
# Measured with bench/bookkeeping_placement.py (docs/operations.md, "Sizing the head: bookkeeping per
# concurrent trial"), MiB of RSS per concurrent Train run. Everything but the cleaner lands together on the
# Tune trainable's node (the head or a GPU node: Ray's choice); the cleaner is always on the head.
TRIAL_BOOKKEEPING_RSS_MIB = 1497  # ImplicitFunc 390 + TrainController 389 + SynchronizationActor 195 +
#                                   _QueueActor 129 + PreemptionWatcher 195 + DatasetManager 199
CLEANER_RSS_MIB = 201             # PlacementGroupCleaner, one per running Train run, pinned to the head
HEAD_RESERVE_MIB = 4096           # Ray's own processes (measured ~0.4 GiB), the sweep's driver (~0.5 GiB),
#                                   the AutoscalingCoordinator (0.2 GiB), the panel twice, the OS
FRACTIONAL_TRIALS_PER_GPU = 4     # gpus_per_trial 0.25, the sharing docs/operations.md ("Scale") suggests
MIB = 2**20
#: RAM of the head instance types the launcher config may name (GiB); add a row when choosing another
INSTANCE_RAM_GIB = {"m6i.xlarge": 16, "m6i.2xlarge": 32, "m6i.4xlarge": 64, "r6i.xlarge": 32,
                    "r6i.2xlarge": 64, "r6i.4xlarge": 128, "m7i.2xlarge": 32, "r7i.2xlarge": 64}


def _driver_memory_mib() -> int:
    from crnn_ray.sweep.config import ResourcesConfig

    return int(ResourcesConfig().driver_memory_mb)


def _k8s_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[: -len(suffix)]) * units[suffix])
    return int(quantity)


def _check_head(name: str, concurrent: int, head_memory: int, head_ram: int) -> None:
    """The head fits the bookkeeping of `concurrent` Train runs (one per GPU) when every trainable lands on it,
    and the cleaners of the fractional-GPU concurrency besides."""
    driver = _driver_memory_mib()
    need_memory = concurrent * driver * MIB
    assert head_memory >= need_memory, (
        f"{name}: head memory resource {head_memory / MIB:.0f} MiB < {concurrent} concurrent trials x "
        f"driver_memory_mb {driver} = {need_memory / MIB:.0f} MiB: resize the head")
    for runs in (concurrent, concurrent * FRACTIONAL_TRIALS_PER_GPU):
        need_ram = head_memory + (runs * CLEANER_RSS_MIB + HEAD_RESERVE_MIB) * MIB
        assert head_ram >= need_ram, (
            f"{name}: head RAM {head_ram / MIB:.0f} MiB < memory resource {head_memory / MIB:.0f} + {runs} "
            f"cleaners x {CLEANER_RSS_MIB} + reserve {HEAD_RESERVE_MIB} = {need_ram / MIB:.0f} MiB: resize the head")


def test_driver_memory_default_covers_the_measured_bookkeeping():
    driver = _driver_memory_mib()
    assert TRIAL_BOOKKEEPING_RSS_MIB <= driver <= 1.25 * TRIAL_BOOKKEEPING_RSS_MIB, driver
    assert f"driver_memory_mb: {driver} " in (ROOT / "docs" / "sweep.md").read_text()  # the config reference


def test_aws_head_fits_the_bookkeeping_of_the_largest_concurrency():
    config = _aws()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    # one trial per GPU on every GPU node the types allow (the top-level max_workers may cap lower: ignored)
    concurrent = sum(int(t["max_workers"]) * int(t["resources"].get("GPU", 0))
                     for name, t in types.items() if name != config["head_node_type"])  # 8 x 1 + 2 x 4
    instance = head["node_config"]["InstanceType"]
    assert instance in INSTANCE_RAM_GIB, f"{instance}: add its RAM to INSTANCE_RAM_GIB"
    _check_head("cluster/aws-gpu.yaml", concurrent, int(head["resources"]["memory"]), INSTANCE_RAM_GIB[instance] * 2**30)


def test_aws_head_check_fails_when_a_gpu_type_grows_without_the_head():
    config = _aws()
    head = config["available_node_types"][config["head_node_type"]]
    ram = INSTANCE_RAM_GIB[head["node_config"]["InstanceType"]] * 2**30
    with pytest.raises(AssertionError, match="resize the head"):
        _check_head("aws", 16 + 2 * 4 * 2, int(head["resources"]["memory"]), ram)  # gpu4 max_workers 2 -> 6


def test_kuberay_head_fits_the_bookkeeping_of_the_largest_concurrency():
    spec = _raycluster()["spec"]
    concurrent = sum(int(g["maxReplicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                                 .get("nvidia.com/gpu", 0)) for g in spec["workerGroupSpecs"])  # 8
    head = spec["headGroupSpec"]
    limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    requests = head["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert _k8s_bytes(requests["memory"]) == _k8s_bytes(limits["memory"])  # guaranteed, never evicted first
    # KubeRay advertises the pod's whole limit as Ray's memory unless rayStartParams names it
    memory = head["rayStartParams"].get("memory")
    assert isinstance(memory, str), "set the head's memory resource (a string) below the pod limit"
    _check_head("cluster/kuberay.yaml", concurrent, int(memory), _k8s_bytes(limits["memory"]))


# -------------------------------------------------------------------------------------------- local config
def test_local_fake_multinode_config_is_complete():
    # The wheel lacks the provider's example.yaml, so nothing can be filled in from defaults: the file must
    # pass the schema exactly as written.
    config = yaml.safe_load(LOCAL.read_text())
    validate_config(config)
    assert config["provider"]["type"] == "fake_multinode"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for n, t in config["available_node_types"].items()
                 if n != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)
    assert config["idle_timeout_minutes"] <= 0.5


# ---------------------------------------------------------------------------------------------- jobs/
def test_runtime_env_uploads_the_repo_and_lists_the_small_deps():
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert env["working_dir"] == "."
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    packages = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    names = {re.split(r"[<>=\[ ]", p, maxsplit=1)[0].lower() for p in packages}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=\[ ]", d, maxsplit=1)[0].lower() for d in deps} - {"torch", "ray"}
    assert names == wanted  # torch and Ray come with the cluster image, everything else with the job


def _run(script: Path, *args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CRNN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(env_overrides)
    return subprocess.run(["bash", str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("script", [SUBMIT, SCORE], ids=["submit_sweep", "score_daily"])
def test_job_scripts_are_strict_bash_and_print_usage(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = _run(script)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: jobs/")


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "auth_token"
    path.write_text("0" * 64)
    return str(path)


def test_submit_sweep_rejects_bad_input_with_one_line(tmp_path, token_file):
    ok = dict(RAY_ADDRESS="http://127.0.0.1:8265", RAY_AUTH_TOKEN_PATH=token_file, RAY_CLI="echo")
    outside = tmp_path / "sweep.yaml"
    outside.write_text("name: x\n")
    cases = [
        (("configs/sweeps/nope.yaml", "n1"), ok, "nope.yaml: no such file"),
        ((str(outside), "n1"), ok, "must be inside"),
        (("configs/sweeps/tiny.yaml", "bad name"), ok, "NAME 'bad name'"),
        (("configs/sweeps/tiny.yaml", "n1"), {**ok, "RAY_ADDRESS": ""}, "RAY_ADDRESS"),
        (("configs/sweeps/tiny.yaml", "n1"), {**ok, "CRNN_STORAGE": "runs"}, "CRNN_STORAGE 'runs'"),
        (("configs/sweeps/tiny.yaml", "n1"),
         {**ok, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none"), "HOME": str(tmp_path)}, "no Ray auth token"),
        # the extra arguments may not set again what the script checked: a second --name would win unchecked
        (("configs/sweeps/tiny.yaml", "n1", "--resume", "--name", "../x"), ok, "--name: the script sets --name"),
        (("configs/sweeps/tiny.yaml", "n1", "--storage=/tmp/elsewhere"), ok, "the script sets --storage"),
        (("configs/sweeps/tiny.yaml", "n1", "--config", "other.yaml"), ok, "the script sets --config"),
    ]  # fmt: skip
    for args, env, needle in cases:
        done = _run(SUBMIT, *args, **env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, done.stderr)


def test_submit_sweep_builds_the_job_submission(token_file):
    done = _run(SUBMIT, "configs/sweeps/tiny.yaml", "exp1", "--resume",
                RAY_ADDRESS="http://127.0.0.1:8265", RAY_AUTH_TOKEN_PATH=token_file, RAY_CLI="echo",
                CRNN_STORAGE="/mnt/crnn/runs")  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("job submit --address http://127.0.0.1:8265 --submission-id crnn-sweep-exp1-")
    # the working directory is set once, in runtime_env.yaml: a --working-dir flag too makes Ray warn
    assert "--working-dir" not in line
    assert "--submission-id crnn-sweep-exp1-" in line
    assert " --runtime-env jobs/runtime_env.yaml -- python -m crnn_ray.sweep" in line
    assert line.endswith("--config configs/sweeps/tiny.yaml --storage /mnt/crnn/runs --name exp1 --resume")
    # an absolute path inside the repository is sent as the relative path the job will see
    done = _run(SUBMIT, str(ROOT / "configs" / "sweeps" / "tiny.yaml"), "exp1",
                RAY_ADDRESS="http://x:8265", RAY_AUTH_TOKEN="t", RAY_CLI="echo")  # fmt: skip
    assert "--config configs/sweeps/tiny.yaml --storage /mnt/crnn/runs --name exp1" in done.stdout


def test_local_cluster_script_refuses_down_without_a_cluster(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "cluster" / "local" / "fake_gpu_cluster.py"),
                           "--dir", str(tmp_path), "down"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no cluster recorded in {tmp_path.resolve() / 'cluster.json'}"


def test_score_daily_rejects_bad_input_and_builds_the_job(token_file):
    ok = dict(RAY_ADDRESS="http://127.0.0.1:8265", RAY_AUTH_TOKEN_PATH=token_file, RAY_CLI="echo")
    cases = [
        (("exp1", "2024-13-01"), ok, "DATE '2024-13-01'"),
        (("exp1", "yesterday"), ok, "DATE 'yesterday'"),
        (("../exp1",), ok, "NAME '../exp1'"),
        (("exp1",), {**ok, "CRNN_DATA": "panels/today.parquet"}, "CRNN_DATA 'panels/today.parquet'"),
        (("exp1",), {**ok, "RAY_ADDRESS": ""}, "RAY_ADDRESS"),
    ]
    for args, env, needle in cases:
        done = _run(SCORE, *args, **env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, done.stderr)
    assert _run(SCORE, "a", "2024-06-03", "extra", **ok).stderr.startswith("usage: ")

    done = _run(SCORE, "exp1", "2024-06-03", **ok, CRNN_DATA="/mnt/crnn/panels/today.parquet")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("job submit --address http://127.0.0.1:8265 --submission-id crnn-score-exp1-2024-06-03-")
    # the scorer itself, one date: experiment, output, panel, --start = --end = DATE
    assert "--working-dir" not in line
    assert line.endswith(" --runtime-env jobs/runtime_env.yaml -- python -m crnn_ray.score "
                         "--experiment /mnt/crnn/runs/exp1 --out /mnt/crnn/signals/exp1 "
                         "--data /mnt/crnn/panels/today.parquet --start 2024-06-03 --end 2024-06-03")

    # no DATE: the scorer finds the panel's last date on the cluster (--latest); no CRNN_DATA: no --data
    done = _run(SCORE, "exp1", **ok, CRNN_NO_WAIT="1")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("job submit --address http://127.0.0.1:8265 --submission-id crnn-score-exp1-latest-")
    assert line.endswith(" --runtime-env jobs/runtime_env.yaml --no-wait -- python -m crnn_ray.score "
                         "--experiment /mnt/crnn/runs/exp1 --out /mnt/crnn/signals/exp1 --latest")
