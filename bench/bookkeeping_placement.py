"""Where a running sweep's bookkeeping actors land, and what each costs in memory (RSS and USS).

Starts a local multi-node cluster (ray.cluster_utils.Cluster, all on this machine, as
tests/test_sweep_cluster.py does): a head with 0 CPUs — like cluster/aws-gpu.yaml and cluster/kuberay.yaml —
and two worker nodes of 2 CPUs and 1 fake GPU each. The sweep joins that cluster (it did not start Ray, so
Ray's cluster defaults stand: the PreemptionWatcher is on, as on a real cluster). It runs a tiny sweep of
4 models through crnn_ray.sweep.run_sweep, once per `resources.models_per_trial` value (default 1 and 2),
while a sampler thread reads every second

  * the actor table from the GCS (`ray._private.state.actors()`: class name, pid, node id; no dashboard
    needed), which gives each process its role (ImplicitFunc = the Tune trainable, TrainController,
    SynchronizationActor, _QueueActor, PreemptionWatcher, DatasetManager, PlacementGroupCleaner,
    RayTrainWorker; _AutoscalingCoordinatorActor is one per cluster) and node;
  * each such process's memory (psutil `memory_full_info`: RSS, and USS = the pages only it holds) and its
    mean CPU over its life (100 % = one core).

Per process the peak over its life is kept (MB here = MiB, the unit of resources.driver_memory_mb); the table gives, per role and node, how many processes there
were, and the median (and max) of their peaks. Also the Ray system processes of each node (raylet,
gcs_server) and this driver (the sweep's Tune controller). Only the processes of this cluster are read
(the actor table of its own GCS), so other Ray instances on the machine are not counted, and `Cluster`
shuts down only what it started.

    .venv/bin/python bench/bookkeeping_placement.py                 # K = 1 then 2, 4 models
    .venv/bin/python bench/bookkeeping_placement.py --packs 1 --json out.json

Figures measured with it: docs/operations.md, "Sizing the head: bookkeeping per concurrent trial".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import yaml  # noqa: E402

MB = 1024 * 1024
#: what the sizing calls "a trial's bookkeeping" (everything of a Train run except its worker)
BOOKKEEPING = ("ImplicitFunc", "TrainController", "SynchronizationActor", "_QueueActor", "PreemptionWatcher",
               "DatasetManager", "PlacementGroupCleaner")
#: what lands with the trainable, on its node (the controller is pinned there and creates the others)
WITH_TRAINABLE = BOOKKEEPING[:-1]
ORDER = {r: i for i, r in enumerate(BOOKKEEPING + ("RayTrainWorker",))}


def tiny_config(**overrides) -> dict:
    """configs/sweeps/tiny.yaml as a dict, with top-level sections updated (shallowly) by `overrides`."""
    doc = yaml.safe_load((REPO / "configs" / "sweeps" / "tiny.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Sampler(threading.Thread):
    """Every `interval` s: the cluster's alive actors -> (role, node, pid) and each one's RSS / USS."""

    def __init__(self, node_names: dict[str, str], system: dict[int, tuple[str, str]], interval: float = 1.0):
        super().__init__(daemon=True)
        self.node_names, self.system, self.interval = node_names, system, interval
        self.peak: dict[int, dict] = {}            # pid -> {role, node, rss, uss}
        self.concurrent: dict[str, int] = defaultdict(int)   # role -> most alive at once
        self.stop_event = threading.Event()
        self.errors = 0

    def _sample(self) -> None:
        from ray._private import state

        procs: dict[int, tuple[str, str]] = dict(self.system)
        alive: dict[str, int] = defaultdict(int)
        for actor in state.actors().values():
            if actor.get("State") != "ALIVE" or not actor.get("Pid"):
                continue
            role = (actor.get("ActorClassName") or "?").rsplit(".", 1)[-1]  # wrap_function.<locals>.ImplicitFunc
            node = self.node_names.get((actor.get("Address") or {}).get("NodeID", ""), "?")
            procs[int(actor["Pid"])] = (role, node)
            alive[role] += 1
        for role, n in alive.items():
            self.concurrent[role] = max(self.concurrent[role], n)
        for pid, (role, node) in procs.items():
            try:
                proc = psutil.Process(pid)
                mem = proc.memory_full_info()
                cpu = proc.cpu_times()
                created = proc.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen = self.peak.setdefault(pid, {"role": role, "node": node, "rss": 0, "uss": 0, "cpu": 0.0})
            seen["rss"] = max(seen["rss"], mem.rss)
            seen["uss"] = max(seen["uss"], mem.uss)
            # mean CPU over the process's life so far (100 = one core busy)
            seen["cpu"] = 100 * (cpu.user + cpu.system) / max(1e-3, time.time() - created)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a GCS hiccup: skip this sample
                self.errors += 1
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        try:
            self._sample()
        except Exception:  # noqa: BLE001
            pass


def table(peak: dict[int, dict], concurrent: dict[str, int]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in peak.values():
        groups[(p["role"], p["node"])].append(p)
    rows = []
    for (role, node), ps in groups.items():
        rows.append({
            "role": role, "node": node, "processes": len(ps), "most_at_once": concurrent.get(role, 0),
            "rss_mb": statistics.median(p["rss"] for p in ps) / MB, "uss_mb": statistics.median(p["uss"] for p in ps) / MB,
            "max_rss_mb": max(p["rss"] for p in ps) / MB, "max_uss_mb": max(p["uss"] for p in ps) / MB,
            "cpu_percent": statistics.median(p["cpu"] for p in ps),
        })
    rows.sort(key=lambda r: (ORDER.get(r["role"], 99), r["role"], r["node"]))
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'role':<22} {'procs':>5} {'at once':>7} {'node':<9} {'RSS MB':>7} {'USS MB':>7} {'max RSS':>8} {'max USS':>8} {'CPU %':>6}")
    for r in rows:
        at_once = str(r["most_at_once"]) if r["most_at_once"] else "-"
        print(f"{r['role']:<22} {r['processes']:>5} {at_once:>7} {r['node']:<9} {r['rss_mb']:>7.0f} {r['uss_mb']:>7.0f} "
              f"{r['max_rss_mb']:>8.0f} {r['max_uss_mb']:>8.0f} {r['cpu_percent']:>6.1f}")


def summary(rows: list[dict]) -> dict:
    """Per trial: the bookkeeping that lands with the trainable (its node), and what lands on the head."""
    by_role: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_role[r["role"]].append(r)

    def med(role: str, key: str = "rss_mb") -> float:
        rs = by_role.get(role, [])
        return max((r[key] for r in rs), default=0.0)  # the larger median when a role sits on several nodes

    out = {f"{k}_{role}": med(role, k) for role in BOOKKEEPING + ("RayTrainWorker",) for k in ("rss_mb", "uss_mb")}
    out["trainable_node_rss_mb"] = sum(med(r) for r in WITH_TRAINABLE)
    out["trainable_node_uss_mb"] = sum(med(r, "uss_mb") for r in WITH_TRAINABLE)
    out["head_per_run_rss_mb"] = med("PlacementGroupCleaner")
    return out


def run(models_per_trial: list[int], epochs: int, storage: Path, interval: float) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from crnn_ray.sweep import run_sweep

    # as tests/test_sweep_cluster.py: keep /tmp/ray/ray_current_cluster untouched (other Ray users)
    original = ray._private.utils.write_ray_address
    ray._private.utils.write_ray_address = lambda *a, **k: None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    finally:
        ray._private.utils.write_ray_address = original
    results: dict = {"runs": []}
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        names = {cluster.head_node.node_id: "head", **{w.node_id: f"worker-{i + 1}" for i, w in enumerate(workers)}}
        system: dict[int, tuple[str, str]] = {}
        for node, name in [(cluster.head_node, "head"), *[(w, f"worker-{i + 1}") for i, w in enumerate(workers)]]:
            for kind, infos in node.all_processes.items():
                if kind in ("raylet", "gcs_server", "log_monitor", "monitor", "dashboard", "ray_client_server"):
                    for info in infos:
                        system[info.process.pid] = (f"[{kind}]", name)
        import os

        system[os.getpid()] = ("[sweep driver]", "head")  # this process: Tune's controller (the job driver)
        for k in models_per_trial:
            doc = tiny_config(name=f"bk{k}", variants=["convgru/m01", "cnn1d/m01"], seeds=[0, 1],
                              training={"epochs": epochs}, resources={"cpus_per_trial": 1, "models_per_trial": k})
            sampler = Sampler(names, system, interval)
            sampler.start()
            t0 = time.perf_counter()
            outcome = run_sweep(write_yaml(storage / f"bk{k}.yaml", doc), storage=storage)
            wall = time.perf_counter() - t0
            sampler.stop()
            rows = table(sampler.peak, sampler.concurrent)
            results["runs"].append({"models_per_trial": k, "wall_s": wall, "statuses": list(outcome.trials.status),
                                    "trial_nodes": sorted(names.get(n, "?") for n in outcome.trials.node_id),
                                    "rows": rows, "summary": summary(rows), "sample_errors": sampler.errors})
            print_table(f"models_per_trial {k}: 4 models in {-(-4 // k)} Train run(s), sweep {wall:.0f}s (peak per "
                        "process over its life; median / max over the processes of a role on a node)", rows)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packs", default="1,2", help="models_per_trial values, comma list (default 1,2)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--json", default=None)
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crnn_bk_") as tmp:
        results = run([int(k) for k in opts.packs.split(",")], opts.epochs, Path(tmp), opts.interval)
    for r in results["runs"]:
        s = r["summary"]
        print(f"\nmodels_per_trial {r['models_per_trial']}: statuses {r['statuses']}, workers on {r['trial_nodes']}")
        print(f"  with the trainable ({' + '.join(WITH_TRAINABLE)}): RSS {s['trainable_node_rss_mb']:.0f} MB, "
              f"USS {s['trainable_node_uss_mb']:.0f} MB")
        print(f"  on the head per concurrent run (PlacementGroupCleaner): RSS {s['head_per_run_rss_mb']:.0f} MB")
    print("BOOKKEEPING_JSON " + json.dumps(results))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
