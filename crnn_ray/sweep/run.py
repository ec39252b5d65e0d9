"""The sweep run: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

`run_sweep` validates the whole config and the data before any trial starts, joins the cluster at
RAY_ADDRESS (the `ray job submit` path) or starts a local Ray, puts the panel once in the object store, runs
the grid, and writes DIR/NAME/{config.yaml, data/, tune/, train/, trials.parquet, leaderboard.*}.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from crnn_ray.io import CliError, atomic_path
from crnn_ray.sweep import ray_compat
from crnn_ray.sweep.config import SweepConfig, load_config, parse_config, synth_kwargs

__all__ = ["run_sweep", "load_config", "resolve_experiment", "prepare_experiment", "write_experiment", "collect",
           "SweepConfig", "SweepOutcome", "SweepInterrupted"]


class SweepOutcome:
    """What a finished sweep left: its directory and the two tables."""

    def __init__(self, experiment_dir: Path, trials, leaderboard):
        self.experiment_dir = experiment_dir
        self.trials = trials
        self.leaderboard = leaderboard
        self.time: dict = {}  # run_sweep's time_split

    @property
    def n_ranked(self) -> int:
        return int((self.leaderboard["status"] == "ok").sum())


# --------------------------------------------------------------------------------------- before Ray starts
def resolve_experiment(config_path, storage, name, resume: bool, overwrite: bool) -> tuple[SweepConfig, Path, bool]:
    """The config to run, the experiment directory, and whether an existing experiment will be replaced
    (--overwrite). Nothing is written or removed here: that waits until every check has passed."""
    if resume:
        if overwrite:
            raise CliError("--resume and --overwrite exclude each other: continue the experiment, or start it again")
        if name is None and config_path is None:
            raise CliError("--resume needs --name (or --config, whose name is used)")
        given = load_config(config_path) if config_path is not None else None
        exp_dir = Path(storage).resolve() / (name or given.name)
        saved = exp_dir / "config.yaml"
        if not saved.is_file():
            raise CliError(f"{saved}: not found: nothing to resume (start the sweep without --resume)")
        cfg = _saved_config(saved, exp_dir)
        _check_tune_state(exp_dir / "tune")
        if given is not None and not _same_config(given, cfg):
            raise CliError(f"{config_path}: differs from the experiment's {saved}; resume without --config "
                           "or start a new experiment with another --name"
                           + (" (of data.walk_forward only `windows` may change)" if cfg.walk_forward else ""))
        if given is not None and cfg.walk_forward:  # walk_forward.windows may grow: the production path
            given.name = cfg.name
            return given, exp_dir, False
        return cfg, exp_dir, False
    if config_path is None:
        raise CliError("--config is required (or --resume with --name)")
    cfg = load_config(config_path)
    if name is not None:
        cfg.name = parse_config({"name": name, "variants": ["x"]}, source="--name", resolve=False).name
    exp_dir = Path(storage).resolve() / cfg.name
    exists = (exp_dir / "tune").exists() or (exp_dir / "trials.parquet").exists()
    if exists and not overwrite:
        raise CliError(f"{exp_dir}: experiment exists; continue it with --resume, or pass --overwrite "
                       "or another --name")
    return cfg, exp_dir, exists


def _corrupt(path: Path, what: str) -> CliError:
    return CliError(f"{path}: corrupt ({what}); start again with --overwrite")


def _saved_config(saved: Path, exp_dir: Path) -> SweepConfig:
    """The experiment's own config.yaml, checked like any config; a damaged file is named as such."""
    try:
        raw = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _corrupt(saved, f"not valid YAML{f' at line {mark.line + 1}' if mark is not None else ''}") from None
    if not isinstance(raw, dict):
        raise _corrupt(saved, "not a mapping")
    raw.pop("resolved", None)  # what the sweep derived (panel path, split dates, ...): informational
    return parse_config(raw, source=saved.name, default_name=exp_dir.name)


def _check_tune_state(tune_dir: Path) -> None:
    """Tune's state files must be whole before Ray is asked to restore them (it would fail mid-start with a
    raw traceback). tuner.pkl is parsed opcode by opcode (pickletools), never unpickled here."""
    import pickletools

    for state in sorted(tune_dir.glob("experiment_state-*.json")):
        try:
            doc = json.loads(state.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _corrupt(state, f"{type(exc).__name__}: {str(exc)[:80]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("trial_data"), list):
            raise _corrupt(state, "no trial_data list")
    pickled = tune_dir / "tuner.pkl"
    if pickled.exists():
        try:
            for _ in pickletools.genops(pickled.read_bytes()):
                pass
        except Exception as exc:  # truncated or not a pickle at all
            raise _corrupt(pickled, f"{type(exc).__name__}: {str(exc)[:80]}") from None


def _same_config(a: SweepConfig, b: SweepConfig) -> bool:
    """Equal as resolved configs, whatever the names and however data.path was written."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["name"] = ""
        if d["data"].get("walk_forward"):  # windows may be added to a walk-forward experiment
            d["data"]["walk_forward"] = {k: v for k, v in d["data"]["walk_forward"].items() if k != "windows"}
        if d["data"]["path"]:
            d["data"]["path"] = str(Path(d["data"]["path"]).expanduser().resolve())
    return da == db


@dataclass
class Prepared:
    """The checked data of a sweep, not yet written anywhere (see write_experiment)."""

    panel: object
    splits: object                  # the (static) split; with walk_forward the newest window's
    panel_path: Path                # where the panel lives (once written, for a synthetic one)
    new_panel: Path | None          # a freshly synthesised panel in a temporary file, to move into place
    resolved: dict                  # config.yaml's contents
    windows: list = None            # walk_forward: every window's Splits, oldest first; else [splits]


def _reusable_synth(path: Path, want: dict) -> bool:
    """An existing synthetic panel is reused only if it was made with exactly the config's parameters."""
    from crnn_ray.data import read_panel_meta

    if not path.is_file():
        return False
    try:
        params = (read_panel_meta(path) or {}).get("params") or {}
    except CliError:
        return False
    return all(params.get(k) == v for k, v in want.items())


def prepare_experiment(cfg: SweepConfig, exp_dir: Path, resume: bool = False) -> Prepared:
    """Make or find the data, load the panel, cut and check the splits: every data check, no write.

    A synthetic panel already in the experiment is reused only when its stored parameters are the config's;
    a stale one (say, left by a failed run of another config) is regenerated — except on --resume, where the
    trained models depend on it, so a mismatch is an error.
    """
    from crnn_ray.data import load_panel, save_panel, synthesize
    from crnn_ray.data.synth import summary

    src = cfg.source
    new_panel = None
    if cfg.data.synth is not None:
        panel_path = exp_dir / "data" / "panel.parquet"
        kwargs = synth_kwargs(cfg.data.synth)
        if not _reusable_synth(panel_path, kwargs):
            if resume and panel_path.exists():
                raise CliError(f"{src}: data.synth: {panel_path} was made with other parameters than the "
                               "config's; start again with --overwrite")
            df, meta = synthesize(**kwargs)
            new_panel = Path(tempfile.mkdtemp(prefix="crnn_panel_")) / "panel.parquet"
            save_panel(df, new_panel, meta)
            print(summary(df, meta), flush=True)
    else:
        panel_path = Path(cfg.data.path).expanduser().resolve()
        if not panel_path.is_file():
            raise CliError(f"{src}: data.path: file not found: {panel_path}")
    try:
        try:
            panel = load_panel(new_panel or panel_path, features=cfg.data.features, labels=[cfg.data.label])
        except CliError as exc:
            raise CliError(f"{src}: data: {exc}") from None
        windows = _checked_windows(cfg, panel, panel_path.name)
    except BaseException:
        if new_panel is not None:
            shutil.rmtree(new_panel.parent, ignore_errors=True)
        raise
    if new_panel is not None:
        panel.meta["path"] = str(panel_path)  # where it will be: checkpoints record this path
    resolved = cfg.to_dict()
    if cfg.data.path is not None:  # absolute, so --resume works from any directory
        resolved["data"]["path"] = str(panel_path)
    resolved["resolved"] = {"panel": str(panel_path), "splits": windows[-1].dates(panel.dates),
                            "variants": [list(v) for v in cfg.resolved_variants],
                            "n_trials": len(cfg.grid(len(windows)))}
    if cfg.walk_forward:
        resolved["resolved"]["windows"] = [w.dates(panel.dates) for w in windows]
    return Prepared(panel, windows[-1], panel_path, new_panel, resolved, windows)


def _checked_windows(cfg: SweepConfig, panel, panel_name: str) -> list:
    """The static split as a list of one, or every walk-forward window; each checked by _check_parts."""
    from crnn_ray.data import make_splits, walk_forward_splits

    src = cfg.source
    horizon = panel.horizon(cfg.data.label)
    try:
        if cfg.walk_forward:
            windows = walk_forward_splits(panel.dates, cfg.data.walk_forward, horizon)
        else:
            windows = [make_splits(panel.dates, cfg.data.splits, horizon)]
    except CliError as exc:
        raise CliError(f"{src}: data.{exc}") from None
    for w, splits in enumerate(windows):
        _check_parts(cfg, panel, splits, panel_name, f"window w{w:02d}: " if cfg.walk_forward else "")
    return windows


def _check_parts(cfg: SweepConfig, panel, splits, panel_name: str, where: str = "") -> None:
    """Every part long enough and every feature present where the models learn."""
    from crnn_ray.data import sample_index

    src, key = cfg.source, "data.walk_forward" if cfg.walk_forward else "data.splits"
    for part in ("valid", "select"):
        lo_hi = getattr(splits, part)
        if lo_hi is not None and lo_hi[1] - lo_hi[0] + 1 < cfg.data.min_part_days:
            raise CliError(f"{src}: {key}: {where}the {part} part has {lo_hi[1] - lo_hi[0] + 1} days, fewer than "
                           f"data.min_part_days ({cfg.data.min_part_days}): its IC would rest on too few days")
    lo, hi = splits.train
    for j, feature in enumerate(panel.features):
        if not np.isfinite(panel.X[lo:hi + 1, :, j]).any():
            raise CliError(f"{src}: data.features: {where}column {feature!r} has no finite value in the train "
                           f"part ({panel.dates[lo]}..{panel.dates[hi]}) of {panel_name}")
    label = panel.label(cfg.data.label)
    for part in ("train", "valid", "select"):
        lo_hi = getattr(splits, part)
        if lo_hi is not None and len(sample_index(panel.mask, label, cfg.data.lookback, *lo_hi)) == 0:
            raise CliError(f"{src}: data.lookback: {where}{cfg.data.lookback} leaves no {part} sample in days "
                           f"{lo_hi[0]}..{lo_hi[1]} of {panel_name}")


def write_experiment(prep: Prepared, exp_dir: Path, replace: bool) -> None:
    """After every check: replace an old experiment (--overwrite), move the new panel in, write config.yaml."""
    if replace and exp_dir.exists():
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if prep.new_panel is not None:
        prep.panel_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(prep.new_panel, prep.panel_path)
        shutil.rmtree(prep.new_panel.parent, ignore_errors=True)
    with atomic_path(exp_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(prep.resolved, sort_keys=False))


# ------------------------------------------------------------------------------------------------- the run
def _connect_ray():
    """Join RAY_ADDRESS when set (`ray job submit`, a cluster), else start a local Ray. Returns started?

    Either way Ray's known-benign messages are silenced (ray_compat.quiet_init_kwargs: a driver-side line
    filter and a worker setup hook, merged into a job's runtime_env; docs/operations.md lists them).
    """
    import ray

    from crnn_ray.sweep.ray_compat import quiet_init_kwargs

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet_init_kwargs(log_to_driver=True))
    else:  # "local": never attach to another `ray start` cluster found on this machine
        ray.init(**quiet_init_kwargs(address="local", include_dashboard=False, log_to_driver=True))
    return True


def _dirname(trial) -> str:
    return trial.config["trial"]["key"]


def run_sweep(config_path=None, storage: str | os.PathLike = "runs", name: str | None = None,
              resume: bool = False, overwrite: bool = False) -> SweepOutcome:
    """Validate, run the grid, write trials + leaderboard; returns the outcome (tables + directory)."""
    t0 = time.perf_counter()
    cfg, exp_dir, replace = resolve_experiment(config_path, storage, name, resume, overwrite)
    print(f"experiment: {exp_dir}", flush=True)
    prep = prepare_experiment(cfg, exp_dir, resume)
    panel, splits, windows = prep.panel, prep.splits, prep.windows
    grid = cfg.grid(len(windows))
    if cfg.walk_forward:
        from crnn_ray.data import describe_windows

        print(f"panel: {panel.n_days} days x {panel.n_stocks} stocks x {len(panel.features)} features, "
              f"label {cfg.data.label}; walk-forward, {len(windows)} window(s):", flush=True)
        for line in describe_windows(windows, panel.dates):
            print(f"  {line}", flush=True)
    else:
        print(f"panel: {panel.n_days} days x {panel.n_stocks} stocks x {len(panel.features)} features, "
              f"label {cfg.data.label}; splits {json.dumps(splits.dates(panel.dates))}", flush=True)
    generations = plan_generations(cfg, exp_dir, grid, prep, resume)
    prep.resolved["resolved"]["generations"] = generations

    import ray
    from ray import tune

    from crnn_ray.sweep.trial import TrialContext, cluster_nodes, make_packs, pack_size, plan_placement, trial_driver

    started = False
    newest = [t for t in grid if t["key"] in set(generations[-1]["trials"])]
    # packs are dealt by each model's measured cost (crnn_ray.sweep.costs); timing the specs takes a second or
    # two of single-threaded torch, so it runs while Ray starts
    probe = _CostProbe(newest, panel, windows) if cfg.models_per_trial != 1 and len(newest) > 1 else None
    try:
        started = _connect_ray()
        nodes, node_types = cluster_nodes()
        slots = plan_placement(cfg.resources, len(newest), nodes, node_types, source=cfg.source)
        k = pack_size(cfg.models_per_trial, len(newest), slots.max_concurrent_trials)
        packs = {}
        for i, g in enumerate(generations):
            trials_g = [t for t in grid if t["key"] in set(g["trials"])]
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
        placement = plan_placement(cfg.resources, len(packs[generations[-1]["tune"]]), nodes, node_types,
                                   source=cfg.source)
        write_experiment(prep, exp_dir, replace)  # every check passed: now the experiment may change
        n_win = len({t.get("window") for t in newest})
        n_hp = len(newest) // max(1, len(cfg.resolved_variants) * len(cfg.seeds) * n_win)
        print(f"cluster: {placement.cluster}; {len(newest)} model(s) ("
              + (f"{n_win} window(s) x " if cfg.walk_forward else "")
              + f"{len(cfg.resolved_variants)} variant(s) x {len(cfg.seeds)} seed(s) x {max(1, n_hp)} hyperparameter "
              f"setting(s)) in {len(packs[generations[-1]['tune']])} Train run(s) of up to {k} model(s) "
              f"(resources.models_per_trial {cfg.resources.models_per_trial}); per run "
              f"{placement.worker_resources()} (torch threads "
              f"{placement.threads if placement.cpu_quota else 'unbounded'}), up to "
              f"{placement.max_concurrent_trials} at once", flush=True)
        queue = _pack_queue(cfg, exp_dir, packs[generations[-1]["tune"]], probe, resume)
        ctx = TrialContext(
            experiment=cfg.name,
            experiment_dir=str(exp_dir),
            panel_refs=[ray.put(panel)],  # read once; trials on a node share the object store copy
            splits={k: v for k, v in asdict(splits).items()},
            placement=placement,
            max_failures=cfg.fault_tolerance.max_failures,
            start_timeout_s=cfg.fault_tolerance.start_timeout_s,
            start_retries=cfg.fault_tolerance.start_retries,
            private_ray=started,
            window_splits=[asdict(w) for w in windows] if cfg.walk_forward else None,
            queue=queue,
        )
        trainable = tune.with_resources(
            tune.with_parameters(trial_driver, ctx=ctx),
            {"cpu": 0, "memory": placement.driver_memory_mb * 1024 * 1024},
        )
        results, fit_s, fits = [], 0.0, []
        with _graceful_stop() as stopped, ray_compat.tune_silent():
            for gen in generations:  # one Tune experiment per generation (walk-forward windows added later)
                if stopped.is_set():
                    break
                tune_dir = exp_dir / gen["tune"]
                if resume and tune.Tuner.can_restore(str(tune_dir)):
                    print(f"resuming {tune_dir} (finished trials are kept; errored ones continue from their "
                          "checkpoints)", flush=True)
                    tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
                else:
                    tuner = _new_tuner(cfg, exp_dir, gen["tune"], trainable, packs[gen["tune"]], placement)
                t_fit, wall0 = time.perf_counter(), time.time()
                got = list(tuner.fit())
                fit_s += time.perf_counter() - t_fit
                results.extend(got)
                fits.append((got, wall0, time.time()))
        if stopped.is_set():
            raise SweepInterrupted(f"sweep interrupted; Tune saved its state. Resume with: python -m crnn_ray.sweep "
                                   f"--storage {exp_dir.parent} --name {exp_dir.name} --resume")
        outcome = collect(cfg, exp_dir, grid, results, _baselines(cfg, panel, windows))
        outcome.time = time_split(fits, min(placement.max_concurrent_trials, len(packs[generations[-1]["tune"]])))
    finally:
        if prep.new_panel is not None and prep.new_panel.exists():  # a check failed before it was moved in
            shutil.rmtree(prep.new_panel.parent, ignore_errors=True)
        if started:
            ray.shutdown()
    n_variants = int((outcome.leaderboard["family"] != "baseline").sum())
    print(f"sweep finished in {time.perf_counter() - t0:.0f}s: {outcome.n_ranked}/{n_variants} "
          f"variant(s) ranked; {exp_dir / 'leaderboard.md'}", flush=True)
    t = outcome.time
    print(f"time: Tune {t['fit_s']:.0f}s x {t['slots']} slot(s) = {t['slot_s']:.0f} slot-s; model epochs "
          f"{t['epoch_s']:.0f}s (training {t['train_s']:.0f}s + validation {t['valid_s']:.0f}s); overhead "
          f"{100 * t['overhead']:.0f} %: start-up {t['startup_s']:.0f} slot-s (Tune trial {t['startup_tune_s']:.0f} + "
          f"Train run {t['startup_s'] - t['startup_tune_s']:.0f}), per-model set-up, checkpoints "
          f"and reports {t['model_overhead_s']:.0f}, idle slots {t['idle_s']:.0f}", flush=True)
    return outcome


def _pack_queue(cfg: SweepConfig, exp_dir: Path, packs: list[dict], probe, resume: bool):
    """The PackQueue actor (work stealing) when several packs of several models share the newest generation;
    on --resume it starts from what each pack's newest checkpoint says it had started. None otherwise."""
    import ray

    from crnn_ray.sweep.trial import PACK_FILE, PackQueue, run_name

    if len(packs) < 2 or all(len(p["models"]) < 2 for p in packs):
        return None
    claimed: dict[str, str] = {}
    if resume:
        for p in packs:
            run_dir = exp_dir / "train" / run_name(cfg.name, p["key"])
            newest = sorted(d for d in run_dir.glob("checkpoint_*") if d.is_dir())[-1:] if run_dir.is_dir() else []
            for ckpt in newest:
                try:
                    info = json.loads((ckpt / PACK_FILE).read_text())
                except (OSError, ValueError):
                    info = {}
                started = list(info.get("over") or []) + list(info.get("failed") or {}) + \
                    [d.name for d in ckpt.iterdir() if d.is_dir()]
                claimed.update({k: p["key"] for k in started})
    costs = probe.result() if probe is not None else None
    return ray.remote(num_cpus=0)(PackQueue).remote({p["key"]: p["models"] for p in packs}, costs, claimed)


class _CostProbe:
    """crnn_ray.sweep.costs.model_costs in a background thread (torch releases the GIL): result() waits for
    it; a probe that failed deals round-robin instead (with one line saying why)."""

    def __init__(self, trials: list[dict], panel, windows: list):
        self._out: dict = {}
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(trials, panel, windows), daemon=True)
        self._thread.start()

    def _run(self, trials, panel, windows) -> None:
        from crnn_ray.sweep.costs import model_costs

        t0 = time.perf_counter()
        try:
            self._out["costs"] = model_costs(trials, panel, windows)
        except Exception as exc:  # noqa: BLE001 - an estimate only: never stops the sweep
            self._out["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        self.seconds = time.perf_counter() - t0

    def result(self) -> dict | None:
        self._thread.join()
        if "error" in self._out and not self._out.get("said"):
            self._out["said"] = True
            print(f"note: packs dealt round-robin (timing the specs failed: {self._out['error']})", flush=True)
        return self._out.get("costs")


def _new_tuner(cfg: SweepConfig, exp_dir: Path, name: str, trainable, packs: list[dict], placement):
    from ray import tune

    from crnn_ray.sweep.trial import TrialProgress

    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(packs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=placement.max_concurrent_trials,
            scheduler=_scheduler(cfg),
            trial_dirname_creator=_dirname,
            trial_name_creator=_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(exp_dir),
            failure_config=tune.FailureConfig(max_failures=cfg.fault_tolerance.trial_max_failures),
            callbacks=[TrialProgress()],
            verbose=0,  # TrialProgress prints one line per trial event instead of Tune's tables
        ),
    )


def _saved_resolved(exp_dir: Path) -> dict:
    try:
        return (yaml.safe_load((exp_dir / "config.yaml").read_text()) or {}).get("resolved") or {}
    except (OSError, yaml.YAMLError):
        return {}


def plan_generations(cfg: SweepConfig, exp_dir: Path, grid: list[dict], prep: Prepared, resume: bool) -> list[dict]:
    """The Tune experiments of this sweep, `[{"tune": dir name, "trials": [keys]}]`, oldest first.

    A fresh sweep is one generation (`tune/`). `--resume` after walk_forward gained windows adds one for the
    new windows' trials only (`tune-2/`, ...): Tune cannot add trials to a restored grid, and the trained
    windows stay as they were — which is checked here, since a moved window would leave its models trained on
    other dates than the experiment records.
    """
    keys = [t["key"] for t in grid]
    if not resume:
        return [{"tune": "tune", "trials": keys}]
    saved = _saved_resolved(exp_dir)
    generations = [dict(g) for g in saved.get("generations") or [{"tune": "tune", "trials": keys}]]
    old = saved.get("windows") or []
    if cfg.walk_forward and old:
        now = [w.dates(prep.panel.dates) for w in prep.windows]
        if len(now) < len(old):
            raise CliError(f"{cfg.source}: data.walk_forward.windows: {len(now)} window(s), fewer than the "
                           f"experiment's {len(old)}: windows may be added, not removed")
        for w, (a, b) in enumerate(zip(old, now)):
            if w == len(old) - 1 and a.get("test") and b.get("test") and a["test"][0] == b["test"][0] \
                    and b["test"][1] >= a["test"][1]:
                # the newest trained window's test part may have been cut by the panel's end: it grows with
                # the panel (its models and their data are the same)
                a, b = {**a, "test": None}, {**b, "test": None}
            if a != b:
                raise CliError(f"{cfg.source}: data.walk_forward: window w{w:02d} moved ({json.dumps(a)} -> "
                               f"{json.dumps(b)}): trained windows must stay as they were (give first_test as a "
                               "date, and only add days at the panel's end)")
    known = {k for g in generations for k in g["trials"]}
    unknown = sorted(known - set(keys))
    if unknown:
        raise CliError(f"{exp_dir / 'config.yaml'}: trial(s) {', '.join(unknown[:3])} of the experiment are not "
                       "in the config's grid; start a new experiment with another --name")
    new = [k for k in keys if k not in known]
    if new:
        windows = sorted({t["window"] for t in grid if t["key"] in set(new) and "window" in t})
        generations.append({"tune": f"tune-{len(generations) + 1}", "trials": new})
        print(f"resume: {len(new)} new trial(s)"
              + (f" for window(s) {', '.join(f'w{w:02d}' for w in windows)}" if windows else "")
              + f" in {generations[-1]['tune']}/; the experiment's {len(known)} earlier trial(s) are kept", flush=True)
    return generations


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the sweep; Tune saved its state (the CLI exits 130 with the hint)."""


@contextlib.contextmanager
def _graceful_stop():
    """SIGINT and SIGTERM (e.g. `ray job stop`) stop Tune gracefully (it saves its state) and are remembered,
    so the caller can say how to resume. Tune's own SIGINT handler would only name Tuner.restore."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def stop(signum, frame):
        first = not stopped.is_set()
        stopped.set()
        ray_compat.STOPPING.set()
        if first:  # Tune's graceful path listens on SIGUSR1; a second signal acts at once
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards to Tune's SIGUSR1 handler instead
    ray_compat.STOPPING.clear()
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def _baselines(cfg: SweepConfig, panel, windows: list) -> list[dict]:
    """Leaderboard rows of the ridge and reversal baselines on the nets' valid / select rows (walk-forward:
    fitted in each window, their figures averaged over the windows like the nets')."""
    import pandas as pd

    from crnn_ray.sweep.leaderboard import baseline_rows

    t = cfg.training
    per_window = [baseline_rows(panel, w, cfg.data.label, cfg.data.lookback, float(t.clip), bool(t.rank_label))
                  for w in windows]
    if len(per_window) == 1:
        return per_window[0]
    rows = []
    for same in zip(*per_window):
        row = dict(same[0])
        for key in [k for k in row if k.endswith("_mean")]:
            vals = pd.to_numeric(pd.Series([r.get(key) for r in same]), errors="coerce")
            row[key] = float(vals.mean()) if vals.notna().any() else math.nan
            row[key[:-5] + "_std"] = float(vals.std(ddof=1)) if vals.notna().sum() >= 2 else math.nan
        row["n_seeds"] = len(same)
        rows.append(row)
    return rows


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.type == "asha":
        # time axis = epochs (every report is an epoch's, so the last epoch is the last report)
        return ASHAScheduler(time_attr="epoch", metric=cfg.schedule_metric, mode="max",
                             max_t=cfg.training.epochs, grace_period=cfg.scheduler.grace_period,
                             reduction_factor=cfg.scheduler.reduction_factor)
    return FIFOScheduler()


def relative_checkpoint(path: str | None) -> str | None:
    """A persisted checkpoint as a path relative to the experiment folder (`train/<run>/checkpoint_...`).

    Tune keeps the absolute paths it was given; stored relative, a copied or moved experiment points into
    itself, and readers resolve the path against the folder they opened.
    """
    if not path:
        return None
    parts = Path(str(path)).parts
    if "train" not in parts:
        return str(path)
    start = len(parts) - 1 - parts[::-1].index("train")
    return str(Path(*parts[start:]))


def _reports(result) -> list[dict]:
    """Every epoch report of one trial, in order, from Tune's Result (the last one as Tune holds it)."""
    frame = getattr(result, "metrics_dataframe", None)
    rows = frame.to_dict("records") if frame is not None and len(frame) else []
    if result.metrics:
        rows = rows[:-1] + [dict(result.metrics)]
    return rows


def time_split(fits: list, slots: int) -> dict:
    """Where the sweep's slot-seconds went, from each Tune fit's results and wall-clock span
    [(results, t0, t1)]: the models' epochs (training + validation, as each epoch timed itself) against Tune's
    wall time x the concurrent slots. The rest, `overhead`, splits into
      startup_s         from the fit's start to each pack's worker entering train_worker (Tune scheduling, the
                        TrainController, the worker group; a restarted worker's start-up counts again)
      model_overhead_s  each model's active time (its start to its last report) minus its epochs: its data and
                        model set-up, checkpoint writes and Train's report / checkpoint persistence
      idle_s            the remainder: slots with no pack (fewer packs than slots, uneven packs finishing at
                        different times) and whatever the three above do not see."""
    epochs, startup, tune_part, active, fit_s = [], 0.0, 0.0, 0.0, 0.0
    for results, t0, t1 in fits:
        fit_s += t1 - t0
        for result in results:
            reports = _reports(result)
            epochs += [r for r in reports if r.get("epoch_s") is not None]
            workers = sorted({(float(r["worker_t0"]), float(r.get("driver_t0") or r["worker_t0"]))
                              for r in reports if r.get("worker_t0")})
            if workers:
                startup += max(0.0, workers[0][0] - t0)
                tune_part += max(0.0, min(workers[0][1], workers[0][0]) - t0)
            by_model: dict = {}
            for r in reports:
                if r.get("model_t0") and r.get("report_t"):
                    key = (r.get("trial_key"), float(r["model_t0"]))
                    by_model[key] = max(by_model.get(key, 0.0), float(r["report_t"]) - float(r["model_t0"]))
            active += sum(by_model.values())
    total = lambda key: float(sum(float(r.get(key) or 0.0) for r in epochs if r.get(key) == r.get(key)))  # noqa: E731
    slot_s = fit_s * max(1, slots)
    epoch_s = total("epoch_s")
    model_overhead = max(0.0, active - epoch_s) if active else 0.0
    return {"fit_s": fit_s, "slots": max(1, slots), "slot_s": slot_s, "epoch_s": epoch_s,
            "train_s": total("train_s"), "valid_s": total("valid_s"), "startup_s": startup,
            "startup_tune_s": tune_part,
            "model_overhead_s": model_overhead,
            "idle_s": max(0.0, slot_s - epoch_s - startup - model_overhead),
            "overhead": max(0.0, 1.0 - epoch_s / slot_s) if slot_s > 0 else math.nan}


def collect(cfg: SweepConfig, exp_dir: Path, grid: list[dict], results, baselines: list[dict] = ()) -> SweepOutcome:
    """trials.parquet + leaderboard.{parquet,md} from the Tune results; prints the leaderboard."""
    from crnn_ray.sweep.leaderboard import (build_leaderboard, leaderboard_markdown, trial_row, trials_frame,
                                            write_results)
    from crnn_ray.zoo import family_of, load_zoo

    from crnn_ray.sweep.trial import pack_models

    zoo = load_zoo()
    grid_by_key = {t["key"]: t for t in grid}
    by_key = {}
    for result in results:
        pack = (result.config or {}).get("trial")
        if pack is None:
            continue
        reports = _reports(result)
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {result.error}"
        # the pack's newest checkpoint carries every model that reported: each model's directory in it
        newest = next((r["checkpoint_path"] for r in reversed(reports) if r.get("checkpoint_path")), None)
        models = pack_models(pack)
        # with work stealing (trial.PackQueue) a pack may train models dealt to another: every model it
        # reported on is its own, and a model is some pack's only where that pack reported on it
        dealt = {m["key"] for m in models}
        models += [grid_by_key[k] for k in dict.fromkeys(r.get("trial_key") for r in reports)
                   if k in grid_by_key and k not in dealt]
        for trial in models:
            own = [r for r in reports if r.get("trial_key", trial["key"] if len(models) == 1 else None) == trial["key"]]
            if not own and trial["key"] in by_key:
                continue
            # a model that raised is not carried in the pack's checkpoints: it has none
            raised = bool(own) and own[-1].get("status") == "failed"
            checkpoint = (f"{newest}/{trial['key']}" if newest and not raised
                          and any(r.get("checkpoint_path") for r in own) else None)
            by_key[trial["key"]] = (trial, own, error if own or trial["key"] in dealt else None, checkpoint)
    rows = []
    for trial in grid:  # every trial of the grid gets a row, even one Tune never started
        t, results_rows, error, checkpoint = by_key.get(trial["key"], (trial, [], "not run", None))
        entry = zoo.get(t["variant_id"])
        family = entry.family if entry is not None else family_of(t["spec"])
        row = trial_row(t, results_rows, error, family, checkpoint)
        row["checkpoint"] = relative_checkpoint(row["checkpoint"])
        rows.append(row)
    trials = trials_frame(rows)
    lb = build_leaderboard(trials, zoo, cfg.rank_metric, baselines)
    grid_keys = sorted({k for t in grid for k in t.get("grid", {})})
    md = leaderboard_markdown(lb, f"Leaderboard — {cfg.name}", cfg.rank_metric, grid_keys=grid_keys,
                              note=f"Experiment: `{exp_dir}`; {len(trials)} trial(s); "
                                   f"{int(trials.status.isin(['ok', 'pruned']).sum())} ranked, "
                                   f"{int((trials.status == 'diverged').sum())} diverged, "
                                   f"{int((trials.status == 'failed').sum())} failed.")
    write_results(exp_dir, trials, lb, md)
    for _, r in trials.iterrows():
        ic = "" if math.isnan(r.valid_ic) else (
            f" valid IC {r.valid_ic:+.4f}" + ("" if math.isnan(r.select_ic) else f", select IC {r.select_ic:+.4f}")
            + f" (epoch {r.best_epoch})")
        print(f"  {r.trial_id} {r.variant_id} seed {r.seed}: {r.status}{ic}"
              f"{' — ' + r.reason if r.reason else ''}", flush=True)
    print(md, flush=True)
    return SweepOutcome(exp_dir, trials, lb)
