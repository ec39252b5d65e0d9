"""Where the models train: what one Train run asks of the cluster, how many models share a run (a *pack*), which
models go together, and the work stealing between packs.

Why packs: a Train run costs ~15 s of start-up and bookkeeping processes whatever it trains (docs/operations.md);
a pack of K models pays that once (resources.models_per_trial, `pack_size`). Why deal by cost: a pack's wall
time is the sum of its models', and the sweep waits for its slowest pack (crnn_ray.sweep.costs measures each
model). Why steal: those costs are estimates, so a pack that ends early takes the longest model no pack has
started (`PackQueue`) rather than leave its slot idle.

    plan_placement   `auto` resources resolved against the cluster (and its autoscaler node types), checked
    pack_size        models per Train run
    make_packs       the grid dealt into packs (`deal`: by measured cost, else round-robin)
    plan_packs       every generation's packs and the newest generation's placement, on the running cluster
    PackQueue        the work stealing of one generation, its claims appended to a ledger file (`read_ledger`,
                     `ledger_path`) so they survive a driver kill; `PackQueues`: every generation's, one Ray actor

Light on purpose (no torch, no Tune, not the config module): the PackQueue actor imports this module alone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import yaml

from crnn_ray import ray_compat
from crnn_ray.io import CliError

if TYPE_CHECKING:  # annotations only: the config module loads torch, which the PackQueue actor must not pay for
    from crnn_ray.sweep.config import SweepConfig


# ------------------------------------------------------------------------------------------------ placement
#: resources.stack_size "auto" per device type. CPU: 1 (measured: a stack is slower there, docs/training.md,
#: "Stacked members"). CUDA: 8 — not yet measured on a GPU (bench/gpu_check.sh --sections 3 measures it); a
#: stack launches about as many kernels as one model (measured on CPU with torch.profiler), which is what a
#: launch-bound GPU step pays for
STACK_AUTO = {"cpu": 1, "cuda": 8}


@dataclass
class Placement:
    """What each trial asks the cluster for, decided once from the config and the cluster."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent_trials: int
    cpu_quota: bool = True
    driver_memory_mb: int = 1536
    cluster: str = ""                       # one line: what the cluster offers
    stack: Any = "auto"                     # resources.stack_size: models of one spec trained as one stack

    def stack_size(self, device_type: str) -> int:
        """Models of one spec a worker trains as one stacked module: resources.stack_size, `auto` being
        STACK_AUTO[device type] (1 on a CPU, where a vmapped stack measured 0.54-0.63x the throughput of the same
        models in turn for the recurrent nets; more on a GPU, where one small model's step is launch-bound)."""
        return int(STACK_AUTO.get(device_type, 1) if self.stack == "auto" else self.stack)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_trial > 0

    @property
    def threads(self) -> int:
        """The worker's torch thread quota: its CPU grant, at least one thread."""
        return max(1, math.ceil(self.cpus_per_trial - 1e-9))

    def worker_resources(self) -> dict:
        res = {"CPU": float(self.cpus_per_trial)}
        if self.gpus_per_trial > 0:
            res["GPU"] = float(self.gpus_per_trial)
        return res


def cluster_nodes() -> tuple[list[dict], list[tuple[dict, int]]]:
    """(resources of each alive node, [(resources, max_count)] of the autoscaler's node types, if any).

    Node types come from the autoscaler v2 cluster-config record (KubeRay, local fake clusters) or, on a
    cluster-launcher head (autoscaler v1 publishes no such record), from its ~/ray_bootstrap_config.yaml:
    a sweep submitted with `ray job submit` runs its driver on the head, where that file lives.
    """
    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    node_types = ray_compat.autoscaler_node_types()
    if not node_types:
        node_types = launcher_node_types(Path(os.path.expanduser("~/ray_bootstrap_config.yaml")))
    return nodes, node_types


def launcher_node_types(path: Path) -> list[tuple[dict, int]]:
    """[(resources, max_workers)] of the worker node types in a cluster-launcher config; [] if none is there."""
    if not path.is_file():
        return []
    try:
        config = yaml.safe_load(path.read_text()) or {}
        types = config.get("available_node_types") or {}
        head = config.get("head_node_type")
        return [({k: float(v) for k, v in (t.get("resources") or {}).items()}, int(t.get("max_workers", 0)))
                for name, t in types.items() if name != head]
    except Exception:  # unreadable: fall back to the alive nodes only
        return []


def _slots(node: dict, cpus: float, gpus: float) -> int:
    """How many trial workers fit on one node of these resources."""
    by_cpu = math.floor(node.get("CPU", 0.0) / cpus + 1e-9)
    if gpus <= 0:
        return by_cpu
    return min(by_cpu, math.floor(node.get("GPU", 0.0) / gpus + 1e-9))


def _describe(res: dict) -> str:
    return "{" + ", ".join(f"{k}: {res.get(k, 0):g}" for k in ("CPU", "GPU") if k in res or k == "CPU") + "}"


def plan_placement(resources, n_trials: int, nodes: list[dict], node_types: list[tuple[dict, int]],
                   source: str = "config.yaml") -> Placement:
    """Resolve `auto` values and check that one trial's worker fits on some node, now or after autoscaling.

    Fails fast with a CliError naming the key: Train V2 would otherwise wait for resources that never come.
    """
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    scalable_gpus = any(t.get("GPU", 0.0) > 0 and count != 0 for t, count in node_types)
    gpus = resources.gpus_per_trial
    if gpus == "auto":
        gpus = 1.0 if (total_gpus > 0 or scalable_gpus) else 0.0
    cpus = float(resources.cpus_per_trial)
    need = {"CPU": cpus, **({"GPU": float(gpus)} if gpus > 0 else {})}
    offered = [n for n in nodes] + [t for t, count in node_types if count != 0]
    if not any(_slots(n, cpus, gpus) >= 1 for n in offered):
        largest = max(offered, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        key = "resources.gpus_per_trial" if gpus > 0 and largest.get("GPU", 0.0) < gpus else "resources.cpus_per_trial"
        raise CliError(
            f"{source}: {key}: a trial needs {_describe(need)} on one node, but no node of the cluster"
            f"{' or its autoscaler node types' if node_types else ''} has that "
            f"(largest: {_describe(largest)}; {len(nodes)} node(s), {total_gpus:g} GPU(s) in all)")
    slots = sum(_slots(n, cpus, gpus) for n in nodes)
    for t, count in node_types:
        if count == -1:
            slots = max(slots, n_trials)
        elif count > 0:
            slots += _slots(t, cpus, gpus) * count
    if resources.max_concurrent_trials == "auto":
        concurrent = max(1, min(slots, n_trials))
    else:
        concurrent = int(resources.max_concurrent_trials)
    cluster = (f"{len(nodes)} node(s), {sum(n.get('CPU', 0.0) for n in nodes):g} CPU(s), {total_gpus:g} GPU(s)"
               + (f", autoscaler node types: {len(node_types)}" if node_types else ""))
    return Placement(cpus_per_trial=cpus, gpus_per_trial=float(gpus), max_concurrent_trials=concurrent,
                     cpu_quota=bool(getattr(resources, "cpu_quota", True)),
                     driver_memory_mb=int(resources.driver_memory_mb), cluster=cluster,
                     stack=getattr(resources, "stack_size", "auto"))


# -------------------------------------------------------------------------------------------------- packs
def pack_size(models_per_trial, n_models: int, slots: int) -> int:
    """Models per Train run. `auto`: as few packs as fill the concurrent slots evenly — K = ceil(n / slots),
    so the packs number ceil(n / K) <= slots and the longest holds one model more than the shortest at most.
    (A cluster that autoscales without a bound has a slot per model: K = 1.)"""
    if models_per_trial == "auto":
        return max(1, math.ceil(n_models / max(1, slots)))
    return max(1, min(int(models_per_trial), n_models))


def make_packs(grid: list[dict], k: int, prefix: str = "p", costs: dict[str, float] | None = None) -> list[dict]:
    """The grid's trials dealt into ceil(n / k) packs of at most k: by `costs` (crnn_ray.sweep.costs; the
    longest model first onto the least loaded pack, so the packs end together), else round-robin (so each pack
    mixes variants and seeds rather than holding one slow family). A pack is `{"key", "models": [trial, ...]}`
    in grid order; one model's pack has that model's key, a larger one `p000`, `p001`, ... (`prefix`: a later
    generation's packs are `g2p000`, so their Train runs never meet an earlier generation's)."""
    n_packs = math.ceil(len(grid) / max(1, k))
    packs = []
    for i, models in enumerate(deal(grid, n_packs, max(1, k), costs)):
        packs.append({"key": models[0]["key"] if len(models) == 1 else f"{prefix}{i:03d}", "models": models})
    return packs


def deal(grid: list[dict], n_packs: int, k: int, costs: dict[str, float] | None) -> list[list[dict]]:
    """The grid dealt into n_packs packs of at most k models, longest first onto the least loaded pack (LPT;
    ties to the lower pack, so equal costs deal round-robin); each pack keeps grid order. Without costs:
    round-robin."""
    if not costs:
        return [grid[i::n_packs] for i in range(n_packs)]
    order = sorted(range(len(grid)), key=lambda i: -costs.get(grid[i]["key"], 0.0))  # stable: grid order on ties
    load, members = [0.0] * n_packs, [[] for _ in range(n_packs)]
    for i in order:
        open_ = [p for p in range(n_packs) if len(members[p]) < k]
        p = min(open_, key=lambda q: (load[q], q))
        members[p].append(i)
        load[p] += costs.get(grid[i]["key"], 0.0)
    return [[grid[i] for i in sorted(m)] for m in members]


def pack_models(trial: dict) -> list[dict]:
    """The models of a Tune trial's `trial` config (a pack; an older single-trial config is a pack of one)."""
    return list(trial["models"]) if "models" in trial else [trial]


class PackQueue:
    """Work stealing between the packs of one generation (a Ray actor of the driver, no CPU): a pack claims each
    of its own models before training it, and once its own are done it takes the longest model no pack has
    started. Why: the dealing by measured cost is an estimate (a net's validation cost at large batches, another
    process on the core), and a pack that ends early would leave its slot idle while the others still hold
    models nobody has started. A model is trained by exactly one pack: the first to claim it.

    Each generation has its own queue, holding that generation's models only, so a restored pack can never take
    a model of another generation. Every new claim is appended to `ledger` (a JSON-lines file in the experiment)
    before the model trains, and `claimed` starts from that ledger and the packs' checkpoints (trial.started_models)
    on --resume: a claim survives a driver SIGKILL, so what a pack had claimed stays its own (`mine`: a restarted
    pack finishes the models it had taken over, even those it had not checkpointed yet). Claims by a pack not
    managed here always succeed."""

    def __init__(self, packs: dict[str, list[dict]], costs: dict[str, float] | None = None,
                 claimed: dict[str, str] | None = None, ledger: str | None = None):
        self.models = {m["key"]: m for models in packs.values() for m in models}
        self.packs = set(packs)
        self.costs = dict(costs or {})
        self.claimed = dict(claimed or {})
        self.ledger = ledger

    def claim(self, pack: str, key: str) -> bool:
        if key not in self.models or pack not in self.packs:
            return True
        if key not in self.claimed:
            self.claimed[key] = pack
            self._record(key, pack)
        return self.claimed[key] == pack

    def steal(self, pack: str) -> dict | None:
        if pack not in self.packs:
            return None
        free = [k for k in self.models if k not in self.claimed]
        if not free:
            return None
        key = max(free, key=lambda k: self.costs.get(k, 0.0))  # ties: the first in grid order
        self.claimed[key] = pack
        self._record(key, pack)
        return self.models[key]

    def mine(self, pack: str) -> list[dict]:
        """Every model this pack has claimed (its own and those it took over), in grid order."""
        return [m for k, m in self.models.items() if self.claimed.get(k) == pack]

    def owners(self) -> dict[str, str]:
        return dict(self.claimed)

    def _record(self, key: str, pack: str) -> None:
        """Append the claim to the ledger. Best effort: when the storage cannot take a line (a full disk), the
        claim still holds in memory, and the pack's next checkpoint fails and stops the sweep anyway."""
        if not self.ledger:
            return
        try:
            with open(self.ledger, "a") as f:
                f.write(json.dumps({"model": key, "pack": pack}) + "\n")
        except OSError:
            pass


class PackQueues:
    """Every generation's PackQueue in one actor of the driver (an actor per generation would cost a Ray worker
    process each, and a walk-forward experiment grows a generation per added window). A pack's calls go to its
    own generation's queue (pack keys are unique across generations: p000, g2p000, ...); a pack without one (a
    generation of one pack, or of one-model packs) claims freely and takes over nothing."""

    def __init__(self, queues: dict[str, PackQueue]):
        self.of = {pack: q for q in queues.values() for pack in q.packs}

    def claim(self, pack: str, key: str) -> bool:
        return self.of[pack].claim(pack, key) if pack in self.of else True

    def steal(self, pack: str) -> dict | None:
        return self.of[pack].steal(pack) if pack in self.of else None

    def mine(self, pack: str) -> list[dict]:
        return self.of[pack].mine(pack) if pack in self.of else []


def read_ledger(path: Path) -> dict[str, str]:
    """{model key: pack key} of a PackQueue ledger, first claim first (a line torn by a kill is skipped)."""
    claimed: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return claimed
    for line in lines:
        try:
            entry = json.loads(line)
            claimed.setdefault(str(entry["model"]), str(entry["pack"]))
        except (ValueError, KeyError, TypeError):
            continue
    return claimed


def ledger_path(exp_dir: Path, generation: str) -> Path:
    """Where a generation's PackQueue appends its claims: `DIR/NAME/train/queue-<tune dir>.jsonl`."""
    return Path(exp_dir) / "train" / f"queue-{generation}.jsonl"


# ------------------------------------------------------------------------------------ the plan of this run
@dataclass
class PackPlan:
    """Every generation's packs, and what each Train run of the newest generation (the one this run starts)
    asks of the cluster."""

    packs: dict[str, list[dict]]            # generation's Tune directory name -> its packs
    newest: str                             # the newest generation's Tune directory name
    k: int                                  # models per pack, at most
    placement: Placement                    # of the newest generation's packs

    @property
    def newest_packs(self) -> list[dict]:
        return self.packs[self.newest]

    def describe(self, cfg: SweepConfig, models: list[dict]) -> str:
        """The cluster line: the newest generation's models, how they are packed, and each run's resources."""
        p = self.placement
        n_win = len({t.get("window") for t in models})
        n_hp = len(models) // max(1, len(cfg.resolved_variants) * len(cfg.seeds) * n_win)
        return (f"cluster: {p.cluster}; {len(models)} model(s) ("
                + (f"{n_win} window(s) x " if cfg.walk_forward else "")
                + f"{len(cfg.resolved_variants)} variant(s) x {len(cfg.seeds)} seed(s) x {max(1, n_hp)} hyperparameter "
                f"setting(s)) in {len(self.newest_packs)} Train run(s) of up to {self.k} model(s) "
                f"(resources.models_per_trial {cfg.resources.models_per_trial}); per run "
                f"{p.worker_resources()} (torch threads "
                f"{p.threads if p.cpu_quota else 'unbounded'}), up to "
                f"{p.max_concurrent_trials} at once")


def plan_packs(cfg: SweepConfig, grid: list[dict], generations: list[dict], probe) -> PackPlan:
    """Pack each generation's models on the running cluster. The pack size follows the slots the newest
    generation's models could fill; its packs are dealt by measured cost (`probe`: a costs.CostProbe, or None)
    when there are several packs of several models, and the placement is then planned for those packs.

    A generation that ran before keeps the packs it was dealt (`packs` of its record in config.yaml, written
    here into each generation dict): Tune restores its trials with those packs, and its PackQueue and the
    claims on disk must speak of the same ones (a re-deal on another cluster could differ).
    Raises CliError when one Train run's worker fits no node."""
    nodes, node_types = cluster_nodes()
    newest = [t for t in grid if t["key"] in set(generations[-1]["trials"])]
    slots = plan_placement(cfg.resources, len(newest), nodes, node_types, source=cfg.source)
    k = pack_size(cfg.models_per_trial, len(newest), slots.max_concurrent_trials)
    packs = {}
    for i, g in enumerate(generations):
        trials_g = [t for t in grid if t["key"] in set(g["trials"])]
        if g.get("packs"):
            by_key = {t["key"]: t for t in trials_g}
            packs[g["tune"]] = [{"key": p, "models": [by_key[m] for m in keys if m in by_key]}
                                for p, keys in g["packs"].items()]
            continue
        # several packs of several models: deal by cost (the probe timed the newest generation's specs)
        costs = probe.result() if probe is not None and i == len(generations) - 1 and 1 < k < len(trials_g) \
            else None
        packs[g["tune"]] = make_packs(trials_g, k, prefix="p" if i == 0 else f"g{i + 1}p", costs=costs)
        if costs:
            loads = [sum(costs[m["key"]] for m in p["models"]) for p in packs[g["tune"]]]
            print(f"packs dealt by measured cost ({probe.seconds:.1f}s to time {len({t['spec'] for t in trials_g})} "
                  "spec(s), while Ray started): estimated load per pack "
                  + ", ".join(f"{p['key']} {100 * x / max(loads):.0f} %" for p, x in zip(packs[g['tune']], loads)),
                  flush=True)
        g["packs"] = {p["key"]: [m["key"] for m in p["models"]] for p in packs[g["tune"]]}
    placement = plan_placement(cfg.resources, len(packs[generations[-1]["tune"]]), nodes, node_types,
                               source=cfg.source)
    return PackPlan(packs, generations[-1]["tune"], k, placement)
