"""The scoring job: top-K sweep members -> per-date ensemble signal -> signals/ + metrics + tear sheet.

    plan_scoring   choose and load members, load the panel, check look-ahead, pick the rows (no writes)
    predict_rows   raw member predictions through the EnsemblePredictor, on Ray Data or in-process
    run_score      the whole command: plan, predict, ensemble, evaluate, then write everything at the end

Rows are (day, stock) integer indices and results dense [days x stocks] grids from the plan to the end;
dates and symbols come back only where the files are written (signals/, labels.parquet).

Everything that can fail on bad input fails before the first byte is written, so a bad checkpoint leaves no
output directory behind. Ray is imported only on the Ray Data path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import CliError
from crnn_ray.schema import DEFAULT_RANK_METRIC
from crnn_ray.score.config import DEFAULT_CONFIG, merge_config

__all__ = ["DEFAULT_CONFIG", "ScoreOptions", "ScorePlan", "merge_config", "plan_scoring", "choose_path",
           "predict_in_process", "predict_ray", "predict_rows", "signals_metadata", "partition_path",
           "write_signals", "write_labels", "run_score"]

@dataclass
class ScoreOptions:
    experiment: Path
    out: Path
    top_k: int = 5
    select_by: str = DEFAULT_RANK_METRIC
    method: str = "mean"
    seed_average: bool = False      # units = the seeds of one (variant, hparams), averaged (docs/scoring.md)
    selection: str = "top_k"        # top_k | greedy (forward selection on the selection split)
    data: Path | None = None
    start: str | None = None
    end: str | None = None
    latest: bool = False            # score only the panel's last date (start = end = it); not with start/end
    allow_in_sample: bool = False
    path: str = "auto"
    window: int | None = None       # walk-forward: this window's trials only (None: every window, stitched)
    reference: str | None = None    # walk-forward leaderboard: the paired-difference reference (None: the best)
    config: dict = field(default_factory=lambda: merge_config({}))


@dataclass
class ScorePlan:
    """Everything decided before any prediction: members, panel slice, rows, label."""

    members: list                  # select.Member, loaded
    payloads: list[dict]           # predict.member_payload per member
    inputs: dict[str, np.ndarray]  # normalised features of the slice [slice days, S, F], per normalisation
    slice_dates: np.ndarray        # dates of the slice (first axis of inputs)
    symbols: np.ndarray            # [S], sorted (load_panel): (day, stock) order is (date, symbol) order
    first_day: int                 # slice index of the first scored date: row 0 of every grid
    days: np.ndarray               # slice day index of each scored row, rows in (day, stock) order
    stocks: np.ndarray             # stock index of each scored row
    panel: Any                     # data.Panel
    panel_path: Path
    label: str
    horizon: int
    label_grid: np.ndarray | None  # float64 [D, S] over the scored dates, NaN unknown or not scored; None: no label
    oracle_grid: np.ndarray | None  # the synthetic market's planted expected return, same grid; None: real data
    period: tuple[str, str]
    in_sample: dict[str, list]     # member -> overlapping dates (only with allow_in_sample)
    weights: np.ndarray
    weight_note: str | None
    # 1-day forward returns float64 [D, S] over the scored dates, every cell (a held name's return counts
    # whether or not it is scored that day); None: no returns in the panel, no label, or horizon 1
    returns_grid: np.ndarray | None = None
    returns_name: str | None = None   # its column in the panel and in labels.parquet (y1)
    units: list = field(default_factory=list)       # select.Unit: what the ensemble combines (members grouped)
    unit_weights: np.ndarray | None = None          # one weight per unit (`weights`: per member, unit / seeds)
    groups: list = field(default_factory=list)      # member columns of each unit
    # members predicted for the report only, not in the signal (the member selection would pick alone);
    # their columns follow the members' in the prediction grid
    extra: list = field(default_factory=list)
    selected: Any = None            # select.Member ranked first by select_by (in members or extra)
    selection: dict = field(default_factory=dict)   # the rule and, for greedy, its trace on the selection split
    baselines: dict = field(default_factory=dict)   # name -> signal [D, S] (crnn_ray.baselines) on the grid
    # a per-cell liquidity measure float64 [D, S] over the scored dates, aligned like label_grid (the ingested
    # panels' traded_value_med: trailing median close x volume, NaN unknown); None: the panel has none
    liquidity_grid: np.ndarray | None = None
    liquidity_name: str | None = None   # its column in the panel and in labels.parquet
    label_lag: int = 0                  # the panel's label_lag L: the label yH at t is the return close t+L -> t+L+H

    @property
    def predicted(self) -> list:
        """Every member with a column in the prediction grid: the ensemble's, then `extra`."""
        return list(self.members) + list(self.extra)

    @property
    def dates(self) -> np.ndarray:
        """The grids' dates: the scored part of the slice."""
        return self.slice_dates[self.first_day:]

    @property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid (row, stock) of every scored row, for gathering from and scattering into [D, S, ...] grids."""
        return self.days - self.first_day, self.stocks

    @property
    def n_rows(self) -> int:
        return len(self.days)

    @property
    def n_dates(self) -> int:
        """Dates with at least one scored row."""
        return len(np.unique(self.days))


# ------------------------------------------------------------------------------------------------- planning
def _resolve_day_range(panel, members, opts: ScoreOptions, split: str | None = None) -> tuple[int, int]:
    dates = panel.dates
    if split is not None:  # greedy selection: the members' selection split (valid without one), intersected
        parts = [m.meta["splits"].get(split) or m.meta["splits"]["valid"] for m in members]
        lo = int(np.searchsorted(dates, np.datetime64(max(str(p[0]) for p in parts), "D"), side="left"))
        hi = int(np.searchsorted(dates, np.datetime64(min(str(p[1]) for p in parts), "D"), side="right")) - 1
        if hi < lo:
            raise CliError(f"greedy selection: the members' {split} splits do not overlap in the panel")
        return lo, hi
    tests = [m.meta["splits"].get("test") for m in members if m.meta["splits"].get("test")]
    default_start = max(str(t[0]) for t in tests) if tests else None
    default_end = min(str(t[1]) for t in tests) if tests else None
    if opts.data is not None:  # another panel (e.g. with new days): score up to its last date
        default_end = str(dates[-1])
    if opts.latest:  # the daily job: the panel's last date only
        default_start = default_end = str(dates[-1])
    start = opts.start or default_start
    end = opts.end or default_end
    if start is None or end is None:
        raise CliError("members' meta.json has no splits.test: pass --start and --end")
    try:
        lo_date, hi_date = np.datetime64(str(start), "D"), np.datetime64(str(end), "D")
    except ValueError:
        raise CliError(f"--start/--end: not dates ({start!r}, {end!r}); use YYYY-MM-DD") from None
    if hi_date < lo_date:
        raise CliError(f"--end {hi_date} is before --start {lo_date}")
    lo = int(np.searchsorted(dates, lo_date, side="left"))
    hi = int(np.searchsorted(dates, hi_date, side="right")) - 1
    if hi < lo:
        raise CliError(f"{panel.meta.get('path')}: no dates in {lo_date}..{hi_date} "
                       f"(panel covers {dates[0]}..{dates[-1]})")
    return lo, hi


def _panel_path(members, opts: ScoreOptions) -> Path:
    if opts.data is not None:
        return Path(opts.data)
    paths = sorted({str(m.meta.get("panel")) for m in members})
    if len(paths) != 1 or paths[0] in ("None", ""):
        raise CliError(f"members were trained on different panels ({', '.join(paths)}): pass --data")
    path = Path(paths[0])
    if not path.exists():
        local = opts.experiment / "data" / path.name  # the experiment moved: use its own copy
        if local.exists():
            return local
    return path


def _read_oracle(panel, panel_path: Path, label: str) -> np.ndarray | None:
    """The synthetic market's planted expected return, float64 [panel days, S] (None for real data)."""
    if panel.meta.get("source") != "synth":
        return None
    col = ((panel.meta.get("params") or {}).get("oracle_columns") or {}).get(label, f"oracle_{label}")
    try:
        import pyarrow.parquet as pq

        if col not in pq.read_schema(panel_path).names:
            return None
        tab = pq.read_table(panel_path, columns=["date", "symbol", col]).to_pandas()
    except Exception:
        return None
    grid = np.full((len(panel.dates), len(panel.symbols)), np.nan)
    d = np.searchsorted(panel.dates, pd.to_datetime(tab["date"]).to_numpy().astype("datetime64[D]"))
    s = pd.Index(panel.symbols.astype(str)).get_indexer(tab["symbol"].astype(str))
    ok = (d < len(panel.dates)) & (s >= 0)
    grid[d[ok], s[ok]] = tab[col].to_numpy(dtype=np.float64)[ok]
    return grid


def _choose_units(opts: ScoreOptions) -> tuple[list, list, dict]:
    """(the ensemble's units, every eligible trial ranked by select_by, the selection record) by opts.selection
    (a walk-forward window's trials only when opts.window is set)."""
    from crnn_ray.score.select import select_units

    if int(opts.top_k) != opts.top_k or opts.top_k < 1:
        raise CliError(f"--top-k must be a positive integer, got {opts.top_k}")
    units, ranked = select_units(opts.experiment, opts.select_by, opts.seed_average, window=opts.window)
    info: dict[str, Any] = {"rule": opts.selection, "seed_average": bool(opts.seed_average)}
    if opts.window is not None:
        info["window"] = int(opts.window)
    if opts.selection == "top_k":
        return units[:int(opts.top_k)], ranked, info
    if opts.selection != "greedy":
        raise CliError(f"--selection {opts.selection!r}: unknown (top_k | greedy)")
    from crnn_ray.score.ensemble import greedy_select, unit_standardised

    cfg = opts.config
    pool = units[:int(cfg["pool"])]
    # the pool's predictions on the selection split: chosen there only, never on the scored period
    sel = plan_scoring(replace(opts, start=None, end=None, latest=False, allow_in_sample=True), _units=pool,
                       _split="select")
    if sel.label_grid is None:
        raise CliError(f"greedy selection: no label {sel.label} on the selection split {sel.period[0]}..")
    preds = predict_in_process(sel, cfg)
    scored = ~np.isnan(preds[..., 0])
    unit_z = np.where(scored[..., None], unit_standardised(preds, sel.groups, opts.method), np.nan)
    chosen, trace = greedy_select(unit_z, sel.label_grid, int(opts.top_k), float(cfg["corr_penalty"]),
                                  int(cfg["evaluation"]["min_stocks"]))
    for t in trace:
        t["unit"] = pool[t["unit"]].name
    info.update({"pool": [u.name for u in pool], "corr_penalty": float(cfg["corr_penalty"]),
                 "split": list(sel.period), "trace": trace})
    return [pool[i] for i in chosen], ranked, info


def _baseline_grids(panel, member, label: str, lo: int, hi: int) -> dict[str, np.ndarray]:
    """crnn_ray.baselines' signals on the panel days lo..hi, fitted on `member`'s train split (one sweep's
    members share it) with its clip / lookback / rank_label; {} (with a note) when they cannot be fitted."""
    from crnn_ray.baselines import baseline_signals

    tr = member.meta["splits"]["train"]
    a = int(np.searchsorted(panel.dates, np.datetime64(str(tr[0]), "D"), side="left"))
    b = int(np.searchsorted(panel.dates, np.datetime64(str(tr[1]), "D"), side="right")) - 1
    if b <= a or label not in panel.labels:
        print(f"note: baselines skipped (train split {tr[0]}..{tr[1]} or label {label} not in the panel)")
        return {}
    clip = float((member.meta.get("normalisation") or {}).get("clip", 5.0))
    try:
        grids = baseline_signals(panel, (a, b), label, member.lookback, clip=clip,
                                 rank_label=bool(member.meta.get("rank_label", True)), days=(lo, hi))
    except Exception as exc:  # a report extra: never stops the scoring
        print(f"note: baselines skipped ({type(exc).__name__}: {str(exc)[:120]})")
        return {}
    return {name: g[lo:hi + 1] for name, g in grids.items()}


def plan_scoring(opts: ScoreOptions, _units: list | None = None, _split: str | None = None,
                 predict_all: bool = False) -> ScorePlan:
    """Select and load members, load and slice the panel, check look-ahead: all checks, no writes.

    `_units` / `_split` (greedy selection's own plan): these units, on the members' `_split` dates.
    `predict_all`: every eligible trial is predicted too (as `extra`), for a leaderboard of all of them."""
    if opts.latest and (opts.start or opts.end):
        raise CliError("--latest scores the panel's last date: do not combine it with --start/--end")
    from crnn_ray.data import load_panel, normalize_features
    from crnn_ray.data.ingest import LIQUIDITY
    from crnn_ray.score.ensemble import member_weights
    from crnn_ray.score.predict import build_member_model, member_payload
    from crnn_ray.score.select import check_look_ahead, in_sample_overlaps, load_members

    if _units is None:
        units, ranked, selection = _choose_units(opts)
        selected = ranked[0]
    else:
        units, ranked, selected, selection = _units, [], None, {}
    ens_members = [m for u in units for m in u.members]
    groups, k = [], 0
    for u in units:
        groups.append(list(range(k, k + len(u.members))))
        k += len(u.members)
    in_ensemble = {m.trial_id for m in ens_members}
    extra = [] if selected is None or selected.trial_id in in_ensemble else [selected]
    if predict_all:
        extra += [m for m in ranked if m.trial_id not in in_ensemble and m not in extra]
    members = ens_members + extra
    load_members([m for m in members if m.state_dict is None])
    labels = sorted({str(m.meta["label"]) for m in members})
    if len(labels) != 1:
        raise CliError(f"members predict different labels ({', '.join(labels)}): select one sweep's members")
    label = labels[0]
    features: list[str] = []
    for m in members:
        features += [f for f in m.features if f not in features]
        norm = m.meta.get("normalisation") or {}
        if norm.get("method", "robust_z") != "robust_z":
            raise CliError(f"{m.checkpoint}/meta.json: normalisation.method {norm.get('method')!r} unsupported "
                           f"(member {m.name}; the scorer implements robust_z)")
    panel_path = _panel_path(members, opts)
    panel = load_panel(panel_path, features=features)
    day_lo, day_hi = _resolve_day_range(panel, members, opts, _split)
    if opts.allow_in_sample:
        in_sample = in_sample_overlaps(members, panel.dates, day_lo, day_hi)
    else:
        check_look_ahead(members, panel.dates, day_lo, day_hi)
        in_sample = {}

    max_lb = max(m.lookback for m in members)
    first_scorable = max(day_lo, max_lb - 1)
    if first_scorable > day_hi:
        raise CliError(f"{panel_path}: the scored dates {panel.dates[day_lo]}..{panel.dates[day_hi]} have fewer "
                       f"than lookback={max_lb} days of history in the panel")
    s_lo = first_scorable - max_lb + 1  # the slice holds each scored day's lookback history
    X = panel.X[s_lo:day_hi + 1]
    mask = panel.mask[s_lo:day_hi + 1]
    inputs: dict[str, np.ndarray] = {}
    payloads = []
    for m in members:
        clip = float((m.meta.get("normalisation") or {}).get("clip", 5.0))
        key = f"robust_z:clip={clip:g}"
        if key not in inputs:
            inputs[key] = normalize_features(X, mask, clip=clip)
        payload = member_payload(m.name, m.meta, m.state_dict, [features.index(f) for f in m.features], key)
        try:
            build_member_model(payload)
        except CliError:
            raise
        except Exception as exc:  # weights that do not fit the spec: one line naming the checkpoint
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise CliError(f"{m.checkpoint}/best.pt: does not fit spec {m.spec!r} "
                           f"(member {m.name}: {type(exc).__name__}: {first})") from None
        payloads.append(payload)

    first_day = first_scorable - s_lo
    scored = mask[first_day:]  # the scored cells: rows present with all features finite
    grid_days, stocks = np.nonzero(scored)  # (date, symbol) order: the panel's symbols are sorted
    if len(grid_days) == 0:
        raise CliError(f"{panel_path}: no row with all features finite in {panel.dates[first_scorable]}.."
                       f"{panel.dates[day_hi]}")
    label_grid = oracle_grid = None
    if label in panel.labels:
        label_grid = np.where(scored, panel.labels[label][first_scorable:day_hi + 1].astype(np.float64), np.nan)
    oracle = _read_oracle(panel, panel_path, label)
    if oracle is not None:
        oracle_grid = np.where(scored, oracle[first_scorable:day_hi + 1], np.nan)
    unit_weights, note = member_weights(opts.method, [u.valid_ic for u in units])
    weights = np.array([w / len(u.members) for u, w in zip(units, unit_weights) for _ in u.members])
    baselines = _baseline_grids(panel, members[0], label, first_scorable, day_hi) \
        if _units is None and label_grid is not None else {}
    try:
        horizon = panel.horizon(label)
    except CliError:
        horizon = int(members[0].meta.get("horizon") or 1)
    # the realised pnl of the H overlapping books (metrics.evaluate(returns=...)) needs the 1-day returns
    forward = panel.returns() if label_grid is not None and horizon > 1 else None
    returns_grid = None if forward is None else forward[first_scorable:day_hi + 1].astype(np.float64)
    returns_name = None if forward is None else str(panel.meta.get("returns") or "y1")
    liquidity = (getattr(panel, "aux", None) or {}).get(LIQUIDITY)  # ingested panels with a volume column
    liquidity_grid = None if liquidity is None else np.asarray(liquidity[first_scorable:day_hi + 1], dtype=np.float64)
    if selected is not None:
        selected = next(m for m in members if m.trial_id == selected.trial_id)
    return ScorePlan(
        members=ens_members, payloads=payloads, inputs=inputs, slice_dates=panel.dates[s_lo:day_hi + 1],
        symbols=panel.symbols, first_day=first_day, days=grid_days + first_day, stocks=stocks, panel=panel,
        panel_path=panel_path, label=label, horizon=horizon, label_grid=label_grid, oracle_grid=oracle_grid,
        period=(str(panel.dates[first_scorable]), str(panel.dates[day_hi])), in_sample=in_sample,
        weights=weights, weight_note=note, returns_grid=returns_grid, returns_name=returns_name,
        units=units, unit_weights=unit_weights, groups=groups, extra=extra, selected=selected,
        selection=selection, baselines=baselines, liquidity_grid=liquidity_grid,
        liquidity_name=None if liquidity_grid is None else LIQUIDITY, label_lag=int(panel.label_lag),
    )


# ---------------------------------------------------------------------------------------------- prediction
def choose_path(plan: ScorePlan, requested: str, cfg: dict) -> tuple[str, str]:
    """(path, why): a forced path, or in-process for small jobs (Ray Data's start-up costs seconds)."""
    if requested not in ("auto", "in_process", "ray"):
        raise CliError(f"score config: path {requested!r} unknown (auto | in_process | ray)")
    if requested != "auto":
        return requested, "forced"
    n_days, n_rows = plan.n_dates, plan.n_rows
    max_days, max_rows = int(cfg["in_process_max_days"]), int(cfg["in_process_max_rows"])
    if n_days <= max_days:
        return "in_process", f"auto: {n_days} dates <= in_process_max_days {max_days}"
    if n_rows <= max_rows:
        return "in_process", f"auto: {n_rows:,} rows <= in_process_max_rows {max_rows:,}"
    return "ray", f"auto: {n_days} dates > {max_days} and {n_rows:,} rows > {max_rows:,}"


def _predictor_kwargs(plan: ScorePlan, cfg: dict) -> dict:
    chunk = cfg["chunk_rows"]  # "auto": each predictor picks its device's size (predict.CHUNK_ROWS)
    return {"members": plan.payloads, "inputs": plan.inputs, "chunk_rows": chunk if chunk == "auto" else int(chunk)}


def _batch_rows(cfg: dict) -> int:
    """Rows per Ray Data batch: a multiple of the chunk (with "auto", of every device's, so CPU and GPU actors
    both cut it into whole chunks)."""
    from crnn_ray.score.predict import CHUNK_ROWS

    chunk = max(CHUNK_ROWS.values()) if cfg["chunk_rows"] == "auto" else int(cfg["chunk_rows"])
    return max(chunk, int(cfg["batch_rows"]) // chunk * chunk)


def _empty_grid(plan: ScorePlan) -> np.ndarray:
    """float32 [D, S, K], NaN: the prediction grid before any row is scored."""
    return np.full((len(plan.dates), len(plan.symbols), len(plan.predicted)), np.nan, dtype=np.float32)


def predict_in_process(plan: ScorePlan, cfg: dict) -> np.ndarray:
    """The predictor over every scored row in this process -> [D, S, K].

    One call: the predictor cuts the rows into the same fixed chunks as the Ray Data batches (a multiple of
    chunk_rows), so both paths give the same values."""
    return _predict_in_process(plan, cfg)[0]


def _member_rates(plan: ScorePlan, member_seconds: np.ndarray) -> dict[str, float]:
    """rows/s of each member's forward passes alone: which member the scoring time goes to."""
    return {m.name: plan.n_rows / max(float(s), 1e-9) for m, s in zip(plan.predicted, member_seconds)}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's or taskset's share)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _predict_in_process(plan: ScorePlan, cfg: dict) -> tuple[np.ndarray, dict]:
    """(grid, timing figures): chunks on one worker thread per usable CPU, each op single-threaded (see
    EnsemblePredictor's `workers`: torch's own threads stall each other on a shared machine)."""
    from crnn_ray.score.predict import EnsemblePredictor

    predictor = EnsemblePredictor(**_predictor_kwargs(plan, cfg), device=str(cfg.get("device", "auto")),
                                  workers=_usable_cpus())
    grid = _empty_grid(plan)
    grid[plan.cells] = predictor.predict_indices(plan.days, plan.stocks)
    return grid, {"member_rows_per_s": _member_rates(plan, predictor.member_seconds),
                  "chunk_rows": predictor.chunk_rows, "device": predictor.device.type,
                  "workers": min(predictor.workers, -(-plan.n_rows // predictor.chunk_rows))}


class _SharedPredictor:
    """Ray Data actor: an EnsemblePredictor on the object store's one copy of the features and weights.

    The driver ray.put()s them once; the reference arrives wrapped in a list, so Ray hands it over as is
    (instead of resolving it into each actor's constructor arguments) and the actor reads the shared copy.
    """

    def __init__(self, shared: list, device: str, threads: int):
        import ray

        from crnn_ray.score.predict import EnsemblePredictor

        self.predictor = EnsemblePredictor(**ray.get(shared[0]), device=device, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The predictions plus `_seconds_<k>`: member k's forward time on this batch spread over its rows
        (summed over every batch by the driver: the per-member figures of the log line)."""
        before = self.predictor.member_seconds.copy()
        out = self.predictor(batch)
        n = max(1, len(out["day"]))
        for k, spent in enumerate(self.predictor.member_seconds - before):
            out[f"_seconds_{k}"] = np.full(len(out["day"]), spent / n)
        return out


def predict_ray(plan: ScorePlan, cfg: dict) -> tuple[np.ndarray, dict]:
    """Ray Data: blocks of (day, stock) indices -> map_batches(predictor actors) -> scattered into [D, S, K]."""
    import pyarrow as pa
    import ray

    from crnn_ray.sweep.ray_compat import quiet_init_kwargs

    rcfg = cfg["ray"]
    connected_here = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is left as it was
    if connected_here:
        address = rcfg.get("address") or os.environ.get("RAY_ADDRESS")
        if address:  # a cluster (e.g. under `ray job submit`): join it, disconnect at the end
            ray.init(**quiet_init_kwargs(address=address, log_to_driver=False))
        else:  # "local": never attach to somebody else's Ray on this machine
            ray.init(**quiet_init_kwargs(address="local", num_cpus=rcfg.get("num_cpus"), include_dashboard=False,
                                         log_to_driver=False))
    names = [m.name for m in plan.predicted]
    grid = _empty_grid(plan)
    hit = np.zeros(grid.shape[:2], dtype=bool)
    returned = 0
    member_seconds = np.zeros(len(names))  # summed over the actors: per-actor member throughput
    try:
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        actor_cpus = float(rcfg["actor_cpus"])
        if gpus >= 1:
            actors = int(gpus // float(rcfg["gpus_per_actor"])) if rcfg["actors"] is None else int(rcfg["actors"])
            remote = {"num_cpus": actor_cpus, "num_gpus": float(rcfg["gpus_per_actor"])}
            device = "cuda"
        else:
            actors = int(rcfg["actors"]) if rcfg["actors"] is not None else \
                min(8, max(1, int((cpus - 1) // actor_cpus)))
            remote = {"num_cpus": actor_cpus}
            device = "cpu"
        batch = _batch_rows(cfg)
        starts = range(0, plan.n_rows, batch)
        actors = max(1, min(actors, len(starts)))  # no idle actors on a small job
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        shared = ray.put(_predictor_kwargs(plan, cfg))  # the features and weights, once for every actor
        # one block per batch, so the pool shares the work
        blocks = [pa.table({"day": plan.days[i:i + batch], "stock": plan.stocks[i:i + batch]}) for i in starts]
        ds = ray.data.from_arrow(blocks).map_batches(
            _SharedPredictor,
            fn_constructor_kwargs={"shared": [shared], "device": device, "threads": max(1, int(actor_cpus))},
            batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **remote,
        )
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):  # any order: each row knows its cell
            cells = (out["day"] - plan.first_day, out["stock"])
            grid[cells] = np.column_stack([out[n] for n in names])
            hit[cells] = True
            returned += len(out["day"])
            member_seconds += [float(out[f"_seconds_{k}"].sum()) for k in range(len(names))]
    finally:
        if connected_here:
            ray.shutdown()
    if returned != plan.n_rows or int(hit.sum()) != plan.n_rows:
        raise RuntimeError(f"scoring returned {returned} rows for {plan.n_rows} scored rows")
    return grid, {"actors": actors, **remote, "cluster_cpus": cpus, "cluster_gpus": gpus,
                  "member_rows_per_s": _member_rates(plan, member_seconds)}


def predict_rows(plan: ScorePlan, path: str, cfg: dict) -> tuple[np.ndarray, dict]:
    """Raw member predictions [D, S, K] (NaN where not scored) on the chosen path, with timing figures."""
    t0 = time.perf_counter()
    if path == "ray":
        preds, info = predict_ray(plan, cfg)
    else:
        preds, info = _predict_in_process(plan, cfg)
    seconds = time.perf_counter() - t0
    finite = np.isfinite(preds[plan.cells]).all(axis=0)
    if not finite.all():
        bad = plan.predicted[int(np.flatnonzero(~finite)[0])]
        raise CliError(f"member {bad.name} predicts non-finite values on {plan.period[0]}..{plan.period[1]} "
                       f"(checkpoint {bad.checkpoint})")
    return preds, {"path": path, "seconds": seconds, "rows_per_s": plan.n_rows / max(seconds, 1e-9), **info}


# ------------------------------------------------------------------------------------------------- outputs
def signals_metadata(plan: ScorePlan, opts: ScoreOptions) -> dict:
    """Self-description stored in every partition's schema (no timestamps: reruns give identical bytes)."""
    return {"method": opts.method, "select_by": opts.select_by, "label": plan.label, "horizon": plan.horizon,
            "members": [{"name": m.name, "trial_id": m.trial_id, "spec": m.spec, "seed": m.seed,
                         "weight": float(w), "valid_ic": m.valid_ic} for m, w in zip(plan.members, plan.weights)],
            "in_sample": sorted(plan.in_sample), "seed_average": bool(opts.seed_average), "selection": opts.selection,
            "units": [{"name": u.name, "members": [m.name for m in u.members], "weight": float(w)}
                      for u, w in zip(plan.units, plan.unit_weights)]}


def partition_path(out: Path, date: Any) -> Path:
    return Path(out) / "signals" / f"date={str(np.datetime64(date, 'D'))}" / "part-0.parquet"


def _key_columns(plan: ScorePlan, rows: np.ndarray, stocks: np.ndarray) -> dict:
    """`date` (date32) and `symbol` (string) Arrow columns of grid cells: labels only where files are written."""
    import pyarrow as pa

    return {"date": pa.array(plan.dates[rows], type=pa.date32()),
            "symbol": pa.array(np.asarray(plan.symbols[stocks], dtype=object), type=pa.string())}


def write_signals(out: Path, plan: ScorePlan, opts: ScoreOptions, signal: np.ndarray, preds: np.ndarray,
                  metadata_of=None) -> list[Path]:
    """One file per scored date, each written to a temporary name and renamed; other dates are untouched.

    The scored cells of the signal [D, S] and prediction [D, S, K] grids, in (date, symbol) order. The date
    is the folder's only (signals/date=YYYY-MM-DD/): a `date` column repeated inside the files clashes with
    the one hive readers take from the folder names (pyarrow / pandas refuse to merge date32 with the
    partition's string), so every reader -- pandas, pyarrow, duckdb, polars -- gets the date from the
    partition in one plain call (docs/scoring.md, "Reading the signals"). `metadata_of(grid row)`: each date's
    own metadata (a walk-forward record: which window and members produced it) instead of the plan's."""
    import pyarrow as pa

    from crnn_ray.io import write_parquet_atomic

    rows, stocks = plan.cells
    columns = {"symbol": _key_columns(plan, rows, stocks)["symbol"],
               "signal": pa.array(signal[rows, stocks], type=pa.float64())}
    values = preds[rows, stocks]
    for k, m in enumerate(plan.members):
        columns[m.name] = pa.array(np.ascontiguousarray(values[:, k]), type=pa.float32())
    table = pa.table(columns)
    meta = {"crnn_ray_signals": signals_metadata(plan, opts)}
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    written = []
    for a, b in zip(starts, ends):
        path = partition_path(out, plan.dates[rows[a]])
        own = meta if metadata_of is None else {"crnn_ray_signals": metadata_of(int(rows[a]))}
        write_parquet_atomic(table.slice(int(a), int(b - a)), path, metadata=own)
        written.append(path)
    return written


def write_labels(out: Path, plan: ScorePlan) -> None:
    """labels.parquet: (date, symbol, <label>) of the scored rows whose label is known, in (date, symbol) order;
    with 1-day returns also their column (y1), on those rows and on every other cell of the evaluated dates and
    symbols whose return is known (label NaN there): `python -m crnn_ray.evaluate --returns y1` then builds the
    very grids report.evaluate_all evaluates. With a liquidity grid also its column (traded_value_med) on the
    same rows, for `--liquidity traded_value_med`."""
    import pyarrow as pa

    from crnn_ray.io import write_parquet_atomic

    keep = labelled = np.isfinite(plan.label_grid)
    if plan.returns_grid is not None:
        inside = labelled.any(axis=1)[:, None] & labelled.any(axis=0)[None, :]  # evaluate_all's cut
        keep = labelled | (inside & np.isfinite(plan.returns_grid))
    rows, stocks = np.nonzero(keep)
    columns = {plan.label: pa.array(plan.label_grid[rows, stocks], type=pa.float64())}
    if plan.returns_grid is not None:
        columns[plan.returns_name] = pa.array(plan.returns_grid[rows, stocks], type=pa.float64())
    if plan.liquidity_grid is not None:
        columns[plan.liquidity_name] = pa.array(plan.liquidity_grid[rows, stocks], type=pa.float64())
    table = pa.table({**_key_columns(plan, rows, stocks), **columns})
    write_parquet_atomic(table, Path(out) / "labels.parquet")


# ------------------------------------------------------------------------------------------------- command
def run_score(opts: ScoreOptions) -> dict:
    """The whole scoring command; returns the metrics dict it wrote (or would have, without labels)."""
    from crnn_ray.score import report as rep
    from crnn_ray.score.ensemble import ensemble_units

    from crnn_ray.score.walk_forward import newest_window, walk_forward_windows

    cfg = opts.config
    windows = walk_forward_windows(opts.experiment)
    after = bool(windows) and opts.start is not None and str(opts.start) > str(windows[-1]["test"][1])
    if windows and opts.window is None:
        if not opts.latest and not after:  # every window's test part, stitched into one out-of-sample record
            from crnn_ray.score.walk_forward import run_walk_forward

            return run_walk_forward(opts, windows)
        opts = replace(opts, window=newest_window(opts.experiment, windows))
        why = "--latest uses" if opts.latest else "dates after every window's test part use"
        print(f"walk-forward: {why} the newest window w{opts.window:02d} "
              f"(trained through {windows[opts.window]['select' if 'select' in windows[opts.window] else 'valid'][1]})")
    elif opts.window is not None and not windows:
        raise CliError(f"--window {opts.window}: {opts.experiment} is not a walk-forward experiment")
    plan = plan_scoring(opts)
    if opts.latest:
        print(f"latest date in {plan.panel_path}: {plan.period[1]}")
    rep.print_plan(plan, opts)
    path, why = choose_path(plan, opts.path, cfg)
    print(f"path: {path.replace('_', '-')} ({why})")
    preds, timing = predict_rows(plan, path, cfg)
    signal = ensemble_units(preds, plan.groups, opts.method, plan.unit_weights)
    print(f"scored {plan.n_rows} rows ({plan.n_dates} dates) on the {path.replace('_', '-')} path "
          f"in {timing['seconds']:.2f}s = {timing['rows_per_s']:,.0f} rows/s"
          + (f" ({timing['actors']} actors x {timing['num_cpus']} CPU"
             + (f" + {timing['num_gpus']:g} GPU" if timing.get("num_gpus") else "") + ")" if path == "ray" else
             f" ({timing['device']}, chunks of {timing['chunk_rows']} rows on {timing['workers']} threads)"))
    print("  rows/s per member (its forward passes alone, per thread / per actor): "
          + ", ".join(f"{name} {rate:,.0f}" for name, rate in timing["member_rows_per_s"].items()))

    evaluation = rep.evaluate_all(plan, signal, preds, cfg["evaluation"])   # None when labels are absent
    metrics = rep.metrics_document(plan, opts, timing, evaluation)
    figures = rep.render_figures(plan, evaluation, cfg["evaluation"]) if evaluation else {}
    html = rep.render_html(plan, opts, metrics, evaluation, figures) if evaluation else None

    # ---- everything computed: write (each file atomically; other dates' partitions are never touched)
    out = Path(opts.out)
    write_signals(out, plan, opts, signal, preds)
    if evaluation:
        write_labels(out, plan)
        rep.write_report(out, metrics, figures, html)
        rep.print_evaluation(plan, evaluation, metrics)
    else:
        print("labels absent for the scored dates: wrote signals only (no metrics.json / report.html)")
    print(f"wrote {out / 'signals'} ({plan.n_dates} partitions)"
          + (f", {out / 'metrics.json'}, {out / 'labels.parquet'}, {out / 'report.html'}" if evaluation else ""))
    return metrics
