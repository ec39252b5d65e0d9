"""The scoring job: top-K sweep members -> per-date ensemble signal -> signals/ + metrics + tear sheet.

    plan_scoring   choose and load members, load the panel, check look-ahead, pick the rows (no writes)
    predict_rows   raw member predictions through the EnsemblePredictor, on Ray Data or in-process
    run_score      the whole command: plan, predict, ensemble, evaluate, then write everything at the end

Everything that can fail on bad input fails before the first byte is written, so a bad checkpoint leaves no
output directory behind. Ray is imported only on the Ray Data path.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import CliError
from crnn_ray.score.config import DEFAULT_CONFIG, merge_config

__all__ = ["DEFAULT_CONFIG", "ScoreOptions", "ScorePlan", "merge_config", "plan_scoring", "choose_path",
           "predict_in_process", "predict_ray", "predict_rows", "signals_metadata", "partition_path",
           "write_signals", "write_labels", "run_score"]

@dataclass
class ScoreOptions:
    experiment: Path
    out: Path
    top_k: int = 5
    select_by: str = "valid_ic"
    method: str = "mean"
    data: Path | None = None
    start: str | None = None
    end: str | None = None
    latest: bool = False            # score only the panel's last date (start = end = it); not with start/end
    allow_in_sample: bool = False
    path: str = "auto"
    config: dict = field(default_factory=lambda: merge_config({}))


@dataclass
class ScorePlan:
    """Everything decided before any prediction: members, panel slice, rows, label."""

    members: list                  # select.Member, loaded
    payloads: list[dict]           # predict.member_payload per member
    inputs: dict[str, np.ndarray]  # normalised features of the slice, per normalisation
    slice_dates: np.ndarray        # dates of the slice (first axis of inputs)
    symbols: np.ndarray
    keys: pd.DataFrame             # rows to score: date (datetime64[D]), symbol; sorted by (date, symbol)
    day_index: np.ndarray          # slice day index of each key row
    stock_index: np.ndarray
    panel: Any                     # data.Panel
    panel_path: Path
    label: str
    horizon: int
    label_values: np.ndarray | None  # label of each key row (NaN unknown); None when the panel has none
    oracle_values: np.ndarray | None  # the synthetic market's planted expected return per key row
    period: tuple[str, str]
    in_sample: dict[str, list]     # member -> overlapping dates (only with allow_in_sample)
    weights: np.ndarray
    weight_note: str | None


# ------------------------------------------------------------------------------------------------- planning
def _resolve_day_range(panel, members, opts: ScoreOptions) -> tuple[int, int]:
    dates = panel.dates
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


def _read_oracle(panel, panel_path: Path, label: str, days: np.ndarray, stocks: np.ndarray) -> np.ndarray | None:
    """The synthetic market's planted expected return for the scored rows (None for real data)."""
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
    return grid[days, stocks]


def plan_scoring(opts: ScoreOptions) -> ScorePlan:
    """Select and load members, load and slice the panel, check look-ahead: all checks, no writes."""
    if opts.latest and (opts.start or opts.end):
        raise CliError("--latest scores the panel's last date: do not combine it with --start/--end")
    from crnn_ray.data import load_panel, normalize_features
    from crnn_ray.score.ensemble import member_weights
    from crnn_ray.score.predict import build_member_model, member_payload
    from crnn_ray.score.select import check_look_ahead, in_sample_overlaps, load_members, select_members

    members = load_members(select_members(opts.experiment, opts.top_k, opts.select_by))
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
    day_lo, day_hi = _resolve_day_range(panel, members, opts)
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

    rel_days, stocks = np.nonzero(mask[first_scorable - s_lo:])
    rel_days = rel_days + (first_scorable - s_lo)
    if len(rel_days) == 0:
        raise CliError(f"{panel_path}: no row with all features finite in {panel.dates[first_scorable]}.."
                       f"{panel.dates[day_hi]}")
    slice_dates = panel.dates[s_lo:day_hi + 1]
    keys = pd.DataFrame({"date": slice_dates[rel_days], "symbol": panel.symbols[stocks].astype(str)})
    order = np.lexsort((keys["symbol"].to_numpy(), rel_days))
    keys = keys.iloc[order].reset_index(drop=True)
    rel_days, stocks = rel_days[order], stocks[order]

    label_values = None
    if label in panel.labels:
        label_values = panel.labels[label][rel_days + s_lo, stocks].astype(np.float64)
    oracle_values = _read_oracle(panel, panel_path, label, rel_days + s_lo, stocks)
    weights, note = member_weights(opts.method, [m.valid_ic for m in members])
    try:
        horizon = panel.horizon(label)
    except CliError:
        horizon = int(members[0].meta.get("horizon") or 1)
    return ScorePlan(
        members=members, payloads=payloads, inputs=inputs, slice_dates=slice_dates, symbols=panel.symbols,
        keys=keys, day_index=rel_days, stock_index=stocks, panel=panel, panel_path=panel_path, label=label,
        horizon=horizon, label_values=label_values, oracle_values=oracle_values,
        period=(str(panel.dates[first_scorable]), str(panel.dates[day_hi])), in_sample=in_sample,
        weights=weights, weight_note=note,
    )


# ---------------------------------------------------------------------------------------------- prediction
def choose_path(plan: ScorePlan, requested: str, cfg: dict) -> tuple[str, str]:
    """(path, why): a forced path, or in-process for small jobs (Ray Data's start-up costs seconds)."""
    if requested not in ("auto", "in_process", "ray"):
        raise CliError(f"score config: path {requested!r} unknown (auto | in_process | ray)")
    if requested != "auto":
        return requested, "forced"
    n_days, n_rows = int(plan.keys["date"].nunique()), len(plan.keys)
    max_days, max_rows = int(cfg["in_process_max_days"]), int(cfg["in_process_max_rows"])
    if n_days <= max_days:
        return "in_process", f"auto: {n_days} dates <= in_process_max_days {max_days}"
    if n_rows <= max_rows:
        return "in_process", f"auto: {n_rows:,} rows <= in_process_max_rows {max_rows:,}"
    return "ray", f"auto: {n_days} dates > {max_days} and {n_rows:,} rows > {max_rows:,}"


def _predictor_kwargs(plan: ScorePlan, cfg: dict) -> dict:
    return {"members": plan.payloads, "inputs": plan.inputs, "dates": plan.slice_dates,
            "symbols": plan.symbols, "chunk_rows": int(cfg["chunk_rows"])}


def _batch_rows(cfg: dict) -> int:
    chunk = int(cfg["chunk_rows"])
    return max(chunk, int(cfg["batch_rows"]) // chunk * chunk)


def predict_in_process(plan: ScorePlan, cfg: dict) -> pd.DataFrame:
    """The same callable over fixed-size batches of the keys, in this process."""
    from crnn_ray.score.predict import EnsemblePredictor

    predictor = EnsemblePredictor(**_predictor_kwargs(plan, cfg), device=str(cfg.get("device", "auto")))
    step = _batch_rows(cfg)
    parts = [pd.DataFrame(predictor(plan.keys.iloc[i:i + step])) for i in range(0, len(plan.keys), step)]
    return pd.concat(parts, ignore_index=True)


def _write_keys(keys: pd.DataFrame, directory: Path, rows_per_file: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True)
    for i, lo in enumerate(range(0, len(keys), rows_per_file)):
        part = keys.iloc[lo:lo + rows_per_file]
        table = pa.table({"date": pa.array(part["date"].to_numpy().astype("datetime64[D]"), type=pa.date32()),
                          "symbol": pa.array(part["symbol"].to_numpy(dtype=object), type=pa.string())})
        pq.write_table(table, directory / f"keys-{i:05d}.parquet")
    return i + 1


def predict_ray(plan: ScorePlan, cfg: dict, staging_parent: Path) -> tuple[pd.DataFrame, dict]:
    """Ray Data: read_parquet(keys) -> map_batches(EnsemblePredictor actors) -> rows back to the driver."""
    import ray

    from crnn_ray.score.predict import EnsemblePredictor

    rcfg = cfg["ray"]
    connected_here = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is left as it was
    if connected_here:
        address = rcfg.get("address") or os.environ.get("RAY_ADDRESS")
        if address:  # a cluster (e.g. under `ray job submit`): join it, disconnect at the end
            ray.init(address=address, log_to_driver=False)
        else:  # "local": never attach to somebody else's Ray on this machine
            ray.init(address="local", num_cpus=rcfg.get("num_cpus"), include_dashboard=False, log_to_driver=False)
    staging = staging_parent / f".score-keys-{uuid.uuid4().hex[:8]}"
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
        n_files = _write_keys(plan.keys, staging, batch)
        actors = max(1, min(actors, n_files))  # no idle actors on a small job
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # the reader coalesces small files into one block, which one actor would take alone: re-cut into
        # blocks of one batch each so the pool shares the work
        ds = ray.data.read_parquet(str(staging)).repartition(target_num_rows_per_block=batch)
        ds = ds.map_batches(
            EnsemblePredictor,
            fn_constructor_kwargs={**_predictor_kwargs(plan, cfg), "device": device,
                                   "threads": max(1, int(actor_cpus))},
            batch_size=batch, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **remote,
        )
        df = ds.to_pandas()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if connected_here:
            ray.shutdown()
    df["date"] = pd.to_datetime(df["date"]).to_numpy().astype("datetime64[D]")
    df["symbol"] = df["symbol"].astype(str)
    df = df.sort_values(["date", "symbol"], kind="mergesort").reset_index(drop=True)
    return df, {"actors": actors, **remote, "cluster_cpus": cpus, "cluster_gpus": gpus}


def predict_rows(plan: ScorePlan, path: str, cfg: dict, staging_parent: Path) -> tuple[pd.DataFrame, dict]:
    """Raw member predictions for plan.keys (same order), on the chosen path, with timing figures."""
    t0 = time.perf_counter()
    if path == "ray":
        df, info = predict_ray(plan, cfg, staging_parent)
    else:
        df, info = predict_in_process(plan, cfg), {}
        df["date"] = pd.to_datetime(df["date"]).to_numpy().astype("datetime64[D]")
    seconds = time.perf_counter() - t0
    same_keys = len(df) == len(plan.keys) and (df["symbol"].to_numpy() == plan.keys["symbol"].to_numpy()).all() \
        and (df["date"].to_numpy() == plan.keys["date"].to_numpy().astype("datetime64[D]")).all()
    if not same_keys:
        raise RuntimeError(f"scoring returned {len(df)} rows for {len(plan.keys)} keys")
    names = [m.name for m in plan.members]
    bad = [n for n in names if not np.isfinite(df[n].to_numpy()).all()]
    if bad:
        raise CliError(f"member {bad[0]} predicts non-finite values on {plan.period[0]}..{plan.period[1]} "
                       f"(checkpoint {plan.members[names.index(bad[0])].checkpoint})")
    return df, {"path": path, "seconds": seconds, "rows_per_s": len(df) / max(seconds, 1e-9), **info}


# ------------------------------------------------------------------------------------------------- outputs
def signals_metadata(plan: ScorePlan, opts: ScoreOptions) -> dict:
    """Self-description stored in every partition's schema (no timestamps: reruns give identical bytes)."""
    return {"method": opts.method, "select_by": opts.select_by, "label": plan.label, "horizon": plan.horizon,
            "members": [{"name": m.name, "trial_id": m.trial_id, "spec": m.spec, "seed": m.seed,
                         "weight": float(w), "valid_ic": m.valid_ic} for m, w in zip(plan.members, plan.weights)],
            "in_sample": sorted(plan.in_sample)}


def partition_path(out: Path, date: Any) -> Path:
    return Path(out) / "signals" / f"date={str(np.datetime64(date, 'D'))}" / "part-0.parquet"


def write_signals(out: Path, scored: pd.DataFrame, plan: ScorePlan, opts: ScoreOptions) -> list[Path]:
    """One file per scored date, each written to a temporary name and renamed; other dates are untouched."""
    import pyarrow as pa

    from crnn_ray.io import write_parquet_atomic

    names = [m.name for m in plan.members]
    dates = scored["date"].to_numpy().astype("datetime64[D]")
    columns = {"date": pa.array(dates, type=pa.date32()),
               "symbol": pa.array(scored["symbol"].to_numpy(dtype=object), type=pa.string()),
               "signal": pa.array(scored["signal"].to_numpy(dtype=np.float64), type=pa.float64())}
    for n in names:
        columns[n] = pa.array(scored[n].to_numpy(dtype=np.float32), type=pa.float32())
    table = pa.table(columns)
    meta = {"crnn_ray_signals": signals_metadata(plan, opts)}
    starts = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
    ends = np.r_[starts[1:], len(dates)]
    written = []
    for a, b in zip(starts, ends):
        path = partition_path(out, dates[a])
        write_parquet_atomic(table.slice(int(a), int(b - a)), path, metadata=meta)
        written.append(path)
    return written


def write_labels(out: Path, labels: pd.DataFrame, label: str) -> None:
    """labels.parquet: (date, symbol, <label>) of the scored rows whose label is known."""
    import pyarrow as pa

    from crnn_ray.io import write_parquet_atomic

    table = pa.table({"date": pa.array(labels["date"].to_numpy().astype("datetime64[D]"), type=pa.date32()),
                      "symbol": pa.array(labels["symbol"].to_numpy(dtype=object), type=pa.string()),
                      label: pa.array(labels[label].to_numpy(dtype=np.float64), type=pa.float64())})
    write_parquet_atomic(table, Path(out) / "labels.parquet")


# ------------------------------------------------------------------------------------------------- command
def run_score(opts: ScoreOptions) -> dict:
    """The whole scoring command; returns the metrics dict it wrote (or would have, without labels)."""
    from crnn_ray.score import report as rep
    from crnn_ray.score.ensemble import combine

    cfg = opts.config
    plan = plan_scoring(opts)
    if opts.latest:
        print(f"latest date in {plan.panel_path}: {plan.period[1]}")
    rep.print_plan(plan, opts)
    path, why = choose_path(plan, opts.path, cfg)
    print(f"path: {path.replace('_', '-')} ({why})")
    staging_parent = Path(opts.out).resolve().parent
    if path == "ray":
        staging_parent.mkdir(parents=True, exist_ok=True)
    preds, timing = predict_rows(plan, path, cfg, staging_parent)
    names = [m.name for m in plan.members]
    dates = preds["date"].to_numpy()
    signal = combine(dates, preds[names].to_numpy(), opts.method, plan.weights)
    scored = preds.assign(signal=signal)[["date", "symbol", "signal", *names]]
    print(f"scored {len(scored)} rows ({scored['date'].nunique()} dates) on the {path.replace('_', '-')} path "
          f"in {timing['seconds']:.2f}s = {timing['rows_per_s']:,.0f} rows/s"
          + (f" ({timing['actors']} actors x {timing['num_cpus']} CPU"
             + (f" + {timing['num_gpus']:g} GPU" if timing.get("num_gpus") else "") + ")" if path == "ray" else ""))

    evaluation = rep.evaluate_all(plan, scored, cfg["evaluation"])   # None when labels are absent
    metrics = rep.metrics_document(plan, opts, timing, evaluation)
    figures = rep.render_figures(plan, scored, evaluation, cfg["evaluation"]) if evaluation else {}
    html = rep.render_html(plan, opts, metrics, evaluation, figures) if evaluation else None

    # ---- everything computed: write (each file atomically; other dates' partitions are never touched)
    out = Path(opts.out)
    write_signals(out, scored, plan, opts)
    if evaluation:
        write_labels(out, evaluation["labels"], plan.label)
        rep.write_report(out, metrics, figures, html)
        rep.print_evaluation(plan, evaluation, metrics)
    else:
        print("labels absent for the scored dates: wrote signals only (no metrics.json / report.html)")
    print(f"wrote {out / 'signals'} ({scored['date'].nunique()} partitions)"
          + (f", {out / 'metrics.json'}, {out / 'labels.parquet'}, {out / 'report.html'}" if evaluation else ""))
    return metrics
