"""Planning: which windows are scored, which members each one uses, and the rows and grids each scores.

    scopes       the windows to score: a static split is one window; a walk-forward experiment is every window's
                 test part (stitched later), or one window (--window N, --latest, dates after every window)
    plan_window  one window: choose its members on its selection part, load them and the panel, slice the
                 panel to the scored days and their lookback, check look-ahead (all checks, no writes)

Rows are (day, stock) integer indices into the window's panel slice, results dense [days x stocks] grids;
dates and symbols come back only where files are written. Everything that can fail on bad input fails here,
before the first prediction, so a bad checkpoint leaves no output behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

from crnn_ray.baselines import baseline_signals
from crnn_ray.data import load_panel, normalize_features
from crnn_ray.data.panel import seen_data_fingerprint
from crnn_ray.data.ingest import LIQUIDITY
from crnn_ray.io import CliError
from crnn_ray.metrics import daily_rank_ic
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.ensemble import member_weights
from crnn_ray.score.predict import build_member_model, member_payload
from crnn_ray.score.select import Member, Unit, check_look_ahead, in_sample_overlaps, load_members, read_trials

__all__ = ["Scope", "ScoredRows", "WindowPlan", "scopes", "plan_window", "build_plan", "walk_forward_windows", "newest_window"]


@dataclass(frozen=True)
class Scope:
    """One window to score: its trials (`window`; None: a static split's) and the dates asked for."""

    window: int | None
    start: str | None = None
    end: str | None = None
    latest: bool = False
    allow_in_sample: bool = False
    bounds: tuple[str, str] | None = None   # a walk-forward window's test part: scored dates must lie inside


class ScoredRows:
    """Counts of the scored rows (`days`, one entry per row) of a window plan or a stitched record."""

    days: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.days)

    @property
    def n_dates(self) -> int:
        """Dates with at least one scored row."""
        return len(np.unique(self.days))


@dataclass
class WindowPlan(ScoredRows):
    """Everything decided for one window before any prediction: members, panel slice, rows, label grids."""

    members: list[Member]          # the ensemble's, loaded
    payloads: list[dict]           # predict.member_payload per predicted member
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
    weights: np.ndarray            # per ensemble member: its unit's weight / the unit's seeds
    weight_note: str | None
    # 1-day forward returns float64 [D, S] over the scored dates, every cell (a held name's return counts
    # whether or not it is scored that day); None: no returns in the panel, no label, or horizon 1
    returns_grid: np.ndarray | None = None
    returns_name: str | None = None   # its column in the panel and in labels.parquet (y1)
    units: list[Unit] = field(default_factory=list)  # what the ensemble combines (members grouped)
    unit_weights: np.ndarray | None = None           # one weight per unit
    groups: list = field(default_factory=list)       # member columns of each unit
    # members predicted beside the ensemble's (the one selection would pick alone; in a walk-forward record
    # every eligible trial): their columns follow the members' in the prediction grid
    extra: list[Member] = field(default_factory=list)
    selected: Member | None = None                   # ranked first by select_by (in members or extra)
    selection: dict = field(default_factory=dict)    # the rule and, for greedy, its trace on the selection split
    baselines: dict = field(default_factory=dict)    # name -> signal [D, S] (crnn_ray.baselines) on the grid
    baseline_select: dict = field(default_factory=dict)  # name -> mean daily RankIC on the selection part
    # a per-cell liquidity measure float64 [D, S] (ingested panels' traded_value_med), aligned like label_grid
    liquidity_grid: np.ndarray | None = None
    liquidity_name: str | None = None
    label_lag: int = 0             # the panel's label_lag L: the label yH at t is the return close t+L -> t+L+H

    @property
    def predicted(self) -> list[Member]:
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



# ----------------------------------------------------------------------------------------------- windows
def walk_forward_windows(exp_dir: Path) -> list[dict]:
    """The experiment's walk-forward windows as dates ({train, valid, select, test: [first, last], embargo}),
    oldest first, from its config.yaml; [] for a static split (or no config.yaml)."""
    path = Path(exp_dir) / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    if not (doc.get("data") or {}).get("walk_forward"):
        return []
    windows = (doc.get("resolved") or {}).get("windows") or []
    if not windows:
        raise CliError(f"{path}: data.walk_forward without resolved.windows (the sweep never started?)")
    return list(windows)


def newest_window(exp_dir: Path) -> int:
    """The newest window with a trained trial (the daily job's models: trained on the most recent data)."""
    trials = read_trials(exp_dir)
    trained = sorted(set(trials.loc[trials["status"].isin(["ok", "pruned"]), "window"].astype(int)))
    if not trained:
        raise CliError(f"{Path(exp_dir) / 'trials.parquet'}: no window has a trained trial")
    return trained[-1]


def _test_part(window: dict, cfg: ScoreConfig) -> tuple[str, str] | None:
    """A walk-forward window's test dates within --start / --end (None: outside them)."""
    a, b = str(window["test"][0]), str(window["test"][1])
    if cfg.start:
        a = max(a, str(np.datetime64(str(cfg.start), "D")))
    if cfg.end:
        b = min(b, str(np.datetime64(str(cfg.end), "D")))
    return (a, b) if a <= b else None


def scopes(cfg: ScoreConfig) -> tuple[list[Scope], bool]:
    """(the windows to score, oldest first; whether they form a walk-forward record of every window).

    A static split is one window. A walk-forward experiment is scored window by window on each test part and
    stitched, unless one window is asked for: --window N, --latest or dates after every test part (the
    newest window: the daily job's models)."""
    one = Scope(cfg.window, cfg.start, cfg.end, cfg.latest, cfg.allow_in_sample)
    windows = walk_forward_windows(cfg.experiment)
    if not windows:
        if cfg.window is not None:
            raise CliError(f"--window {cfg.window}: {cfg.experiment} is not a walk-forward experiment")
        return [one], False
    if cfg.window is not None:
        return [one], False
    after = cfg.start is not None and str(cfg.start) > str(windows[-1]["test"][1])
    if cfg.latest or after:
        w = newest_window(cfg.experiment)
        why = "--latest uses" if cfg.latest else "dates after every window's test part use"
        print(f"walk-forward: {why} the newest window w{w:02d} "
              f"(trained through {windows[w]['select' if 'select' in windows[w] else 'valid'][1]})")
        return [Scope(w, cfg.start, cfg.end, cfg.latest, cfg.allow_in_sample)], False
    if cfg.allow_in_sample:
        raise CliError("--allow-in-sample: a walk-forward record is out-of-sample by construction; score one "
                       "window with --window N to look in-sample")
    out = [Scope(w, *rng, bounds=(str(win["test"][0]), str(win["test"][1])))
           for w, win in enumerate(windows) if (rng := _test_part(win, cfg)) is not None]
    if not out:
        raise CliError(f"--start/--end: no walk-forward test day in {cfg.start}..{cfg.end}")
    return out, True


# ---------------------------------------------------------------------------------------------------- plan
def plan_window(cfg: ScoreConfig, scope: Scope, units: list[Unit], ranked: list[Member], selection: dict,
                every_trial: bool = False) -> WindowPlan:
    """One window's plan: the chosen units (choose.choose_units), the member selection would pick alone
    beside them (`ranked[0]`), and (`every_trial`: a walk-forward record's leaderboard) every other eligible
    trial."""
    selected = ranked[0]
    in_ensemble = {m.trial_id for u in units for m in u.members}
    extra = [] if selected.trial_id in in_ensemble else [selected]
    if every_trial:
        extra += [m for m in ranked if m.trial_id not in in_ensemble and m not in extra]
    plan = build_plan(cfg, units, extra, scope, selected=selected, selection=selection)
    if scope.bounds and (plan.period[0] < scope.bounds[0] or plan.period[1] > scope.bounds[1]):
        raise CliError(f"window w{scope.window:02d}: scored {plan.period[0]}..{plan.period[1]} outside its test "
                       f"part {scope.bounds[0]}..{scope.bounds[1]}")
    return plan


def _common_label(members: list[Member]) -> str:
    labels = sorted({str(m.meta["label"]) for m in members})
    if len(labels) != 1:
        raise CliError(f"members predict different labels ({', '.join(labels)}): select one sweep's members")
    return labels[0]


def _features(members: list[Member]) -> list[str]:
    """Every member's features, first-seen order; refuses a normalisation the scorer does not implement."""
    features: list[str] = []
    for m in members:
        features += [f for f in m.features if f not in features]
        norm = m.meta.get("normalisation") or {}
        if norm.get("method", "robust_z") != "robust_z":
            raise CliError(f"{m.checkpoint}/meta.json: normalisation.method {norm.get('method')!r} unsupported "
                           f"(member {m.name}; the scorer implements robust_z)")
    return features


def _panel_path(members: list[Member], cfg: ScoreConfig) -> Path:
    """The panel to score: --data, else the experiment's own copy (`DIR/NAME/data/`, found relative to the
    experiment, so a copied or moved experiment scores its own data), else the path the members recorded.
    Unless --data says otherwise, the data the members saw must be in it unchanged (_check_seen_data)."""
    if cfg.data is not None:  # another panel on purpose (e.g. with new days)
        return Path(cfg.data)
    paths = sorted({str(m.meta.get("panel")) for m in members})
    if len(paths) != 1 or paths[0] in ("None", ""):
        raise CliError(f"members were trained on different panels ({', '.join(paths)}): pass --data")
    recorded = Path(paths[0])
    own = Path(cfg.experiment) / "data" / recorded.name
    return own if own.is_file() else recorded


def _check_seen_data(panel, panel_path: Path, members: list[Member]) -> None:
    """Each member's training data (its recorded dates, features and label) must be in the panel unchanged:
    another market under the same path is refused in one line; a panel that grew (new days, new listings)
    passes. Checkpoints made before the fingerprint existed are not checked."""
    for m in members:
        seen = m.meta.get("seen_data")
        if not seen:
            continue
        now = seen_data_fingerprint(panel, seen["first"], seen["last"], m.features, str(m.meta["label"]))
        if now != seen["fingerprint"]:
            raise CliError(f"{panel_path}: not the data member {m.name} was trained on ({seen['first']}.."
                           f"{seen['last']} fingerprint {now}, its checkpoint recorded {seen['fingerprint']}); "
                           "pass the right panel with --data")


def _selection_days(panel, members: list[Member], split: str) -> tuple[int, int]:
    """Day range of the members' `split` part (valid without one), intersected: greedy selection's rows."""
    dates = panel.dates
    parts = [m.meta["splits"].get(split) or m.meta["splits"]["valid"] for m in members]
    lo = int(np.searchsorted(dates, np.datetime64(max(str(p[0]) for p in parts), "D"), side="left"))
    hi = int(np.searchsorted(dates, np.datetime64(min(str(p[1]) for p in parts), "D"), side="right")) - 1
    if hi < lo:
        raise CliError(f"greedy selection: the members' {split} splits do not overlap in the panel")
    return lo, hi


def _scored_days(panel, members: list[Member], scope: Scope, other_panel: bool) -> tuple[int, int]:
    """Day range to score: --start/--end, else the members' common test part (with another panel: up to its
    last date; --latest: the last date only)."""
    dates = panel.dates
    tests = [m.meta["splits"].get("test") for m in members if m.meta["splits"].get("test")]
    default_start = max(str(t[0]) for t in tests) if tests else None
    default_end = min(str(t[1]) for t in tests) if tests else None
    if other_panel:  # another panel (e.g. with new days): score up to its last date
        default_end = str(dates[-1])
    if scope.latest:  # the daily job: the panel's last date only
        default_start = default_end = str(dates[-1])
    start, end = scope.start or default_start, scope.end or default_end
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


#: the panel a scoring run reads, loaded once (_load_once): {"key", "panel", "normalised": {clip: features}}
_LOADED: dict = {}


def _load_once(path: Path, features: list[str]):
    """load_panel, once per scoring run: a walk-forward's windows (and each window's selection-split plans) share
    one copy of the panel instead of loading one each, and every window's plan keeps its panel until the record
    is stitched, so W windows held W copies. Keyed by the file's path, size and mtime and the features (a
    rewritten file is read again); job.run_score releases it at the end (release_panels)."""
    if not path.is_file():
        return load_panel(path, features=features)  # its one-line error
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, tuple(features))
    if _LOADED.get("key") != key:
        _LOADED.clear()
        _LOADED.update(key=key, panel=load_panel(path, features=features), normalised={})
    return _LOADED["panel"]


def _normalised_once(panel, clip: float) -> np.ndarray | None:
    """The loaded panel's features normalised for the baselines, once per clip for every window (per date, so
    the same cube serves them all); None for a panel _load_once did not load (baseline_signals normalises it)."""
    if _LOADED.get("panel") is not panel:
        return None
    cache = _LOADED["normalised"]
    if clip not in cache:
        cache[clip] = normalize_features(panel.X, panel.mask, clip=clip)
    return cache[clip]


def release_panels() -> None:
    """Drop the panel _load_once keeps (the end of a scoring run)."""
    _LOADED.clear()


def build_plan(cfg: ScoreConfig, units: list[Unit], extra: list[Member], scope: Scope, *, split: str | None = None,
               selected: Member | None = None, selection: dict | None = None) -> WindowPlan:
    """Load the members of `units` and `extra`, load and slice the panel, check look-ahead, lay out the rows
    and grids. `split` (greedy selection's own plan): the members' `split` part instead of the scored dates,
    without baselines."""
    ensemble = [m for u in units for m in u.members]
    members = ensemble + list(extra)
    load_members([m for m in members if m.state_dict is None])
    label, features = _common_label(members), _features(members)
    panel_path = _panel_path(members, cfg)
    panel = _load_once(panel_path, features)
    if cfg.data is None:  # --data: another panel on purpose (the daily job's); its history may be restated
        _check_seen_data(panel, panel_path, members)
    day_lo, day_hi = (_selection_days(panel, members, split) if split else
                      _scored_days(panel, members, scope, cfg.data is not None))
    if scope.allow_in_sample:
        in_sample = in_sample_overlaps(members, panel.dates, day_lo, day_hi)
    else:
        check_look_ahead(members, panel.dates, day_lo, day_hi)
        in_sample = {}
    max_lb = max(m.lookback for m in members)
    first = max(day_lo, max_lb - 1)
    if first > day_hi:
        raise CliError(f"{panel_path}: the scored dates {panel.dates[day_lo]}..{panel.dates[day_hi]} have fewer "
                       f"than lookback={max_lb} days of history in the panel")
    s_lo = first - max_lb + 1  # the slice holds each scored day's lookback history
    inputs, payloads = _member_inputs(members, features, panel.X[s_lo:day_hi + 1], panel.mask[s_lo:day_hi + 1])
    scored = panel.mask[first:day_hi + 1]  # the scored cells: rows present with all features finite
    grid_days, stocks = np.nonzero(scored)  # (date, symbol) order: the panel's symbols are sorted
    if len(grid_days) == 0:
        raise CliError(f"{panel_path}: no row with all features finite in {panel.dates[first]}..{panel.dates[day_hi]}")
    grids = _grids(panel, panel_path, label, scored, first, day_hi, int(members[0].meta.get("horizon") or 1))
    if cfg.method == "stack" and (selection or {}).get("stack_weights"):  # fitted on the selection split
        unit_weights, note = np.asarray(selection["stack_weights"], dtype=np.float64), selection.get("stack_note")
    else:
        unit_weights, note = member_weights(cfg.method, [u.select_value for u in units])
    weights = np.array([w / len(u.members) for u, w in zip(units, unit_weights) for _ in u.members])
    baselines, baseline_select = _baseline_grids(panel, members[0], label, first, day_hi) \
        if split is None and grids["label_grid"] is not None else ({}, {})
    groups, k = [], 0
    for u in units:
        groups.append(list(range(k, k + len(u.members))))
        k += len(u.members)
    return WindowPlan(
        members=ensemble, payloads=payloads, inputs=inputs, slice_dates=panel.dates[s_lo:day_hi + 1],
        symbols=panel.symbols, first_day=first - s_lo, days=grid_days + first - s_lo, stocks=stocks, panel=panel,
        panel_path=panel_path, label=label, period=(str(panel.dates[first]), str(panel.dates[day_hi])),
        in_sample=in_sample, weights=weights, weight_note=note, units=units, unit_weights=unit_weights,
        groups=groups, extra=list(extra), selection=selection or {}, baselines=baselines,
        baseline_select=baseline_select,
        selected=None if selected is None else next(m for m in members if m.trial_id == selected.trial_id),
        label_lag=int(panel.label_lag), **grids)


def _member_inputs(members: list[Member], features: list[str], X: np.ndarray, mask: np.ndarray):
    """(normalised features per normalisation key, one predictor payload per member); CliError naming the
    checkpoint whose weights do not fit its spec."""
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
    return inputs, payloads


def _grids(panel, panel_path: Path, label: str, scored: np.ndarray, first: int, last: int,
           fallback_horizon: int) -> dict[str, Any]:
    """The label, oracle, 1-day return and liquidity grids over the scored dates (WindowPlan's fields);
    the horizon from the panel, else `fallback_horizon` (the members' meta)."""
    label_grid = oracle_grid = None
    if label in panel.labels:
        label_grid = np.where(scored, panel.labels[label][first:last + 1].astype(np.float64), np.nan)
    oracle = _read_oracle(panel, panel_path, label)
    if oracle is not None:
        oracle_grid = np.where(scored, oracle[first:last + 1], np.nan)
    try:
        horizon = panel.horizon(label)
    except CliError:
        horizon = fallback_horizon
    # the realised pnl of the H overlapping books (metrics.evaluate(returns=...)) needs the 1-day returns
    forward = panel.returns() if label_grid is not None and horizon > 1 else None
    liquidity = (getattr(panel, "aux", None) or {}).get(LIQUIDITY)  # ingested panels with a volume column
    return {"label_grid": label_grid, "oracle_grid": oracle_grid, "horizon": horizon,
            "returns_grid": None if forward is None else forward[first:last + 1].astype(np.float64),
            "returns_name": None if forward is None else str(panel.meta.get("returns") or "y1"),
            "liquidity_grid": None if liquidity is None else np.asarray(liquidity[first:last + 1], dtype=np.float64),
            "liquidity_name": None if liquidity is None else LIQUIDITY}


def _read_oracle(panel, panel_path: Path, label: str) -> np.ndarray | None:
    """The synthetic market's planted expected return, float64 [panel days, S] (None for real data)."""
    if panel.meta.get("source") != "synth":
        return None
    col = ((panel.meta.get("params") or {}).get("oracle_columns") or {}).get(label, f"oracle_{label}")
    try:
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


def _baseline_grids(panel, member: Member, label: str, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict]:
    """(crnn_ray.baselines' signals on the panel days lo..hi, {name: its mean daily RankIC on `member`'s selection
    part}), fitted on `member`'s train split (one sweep's members share it) with its clip / lookback /
    rank_label. The selection figures choose the best baseline ex ante (never on the scored days); ({}, {}) with
    a note when they cannot be fitted."""
    splits = member.meta["splits"]
    day = lambda d, side: int(np.searchsorted(panel.dates, np.datetime64(str(d), "D"), side=side))  # noqa: E731
    a, b = day(splits["train"][0], "left"), day(splits["train"][1], "right") - 1
    if b <= a or label not in panel.labels:
        print(f"note: baselines skipped (train split {splits['train'][0]}..{splits['train'][1]} or label {label} "
              "not in the panel)")
        return {}, {}
    chooser = splits.get("select") or splits.get("valid")
    s_lo, s_hi = (day(chooser[0], "left"), day(chooser[1], "right") - 1) if chooser else (lo, lo - 1)
    clip = float((member.meta.get("normalisation") or {}).get("clip", 5.0))
    try:
        grids = baseline_signals(panel, (a, b), label, member.lookback, clip=clip,
                                 rank_label=bool(member.meta.get("rank_label", True)),
                                 normalised=_normalised_once(panel, clip),
                                 days=(min(lo, s_lo) if s_hi >= s_lo else lo, hi))
    except Exception as exc:  # a report extra: never stops the scoring
        print(f"note: baselines skipped ({type(exc).__name__}: {str(exc)[:120]})")
        return {}, {}
    chosen_on = {}
    if s_hi >= s_lo:
        truth = panel.label(label)[s_lo:s_hi + 1]
        for name, g in grids.items():
            ic = daily_rank_ic(g[s_lo:s_hi + 1], truth)
            chosen_on[name] = float(ic[np.isfinite(ic)].mean()) if np.isfinite(ic).any() else math.nan
    return {name: g[lo:hi + 1] for name, g in grids.items()}, chosen_on