"""Stitching: the windows' prediction grids concatenated by date into one record, evaluated and written once.

A static split is a record of one window. A walk-forward record concatenates every window's test part, the
way Qlib's RollingEnsemble merges its rolling predictions before evaluating once: each date is scored by the
models of the window whose test part holds it, so the record is out-of-sample end to end. Its columns are
model lines (`variant@seedS`: the same variant, seed and hyperparameters retrained in every window), a
column holding on each window's dates that window's trial of the line; a static record's columns are its
members, then the trials predicted beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.io import CliError
from crnn_ray.score.plan import ScoredRows, WindowPlan
from crnn_ray.score.select import Member, read_trials

__all__ = ["Part", "Column", "Record", "stitch", "line_names"]


@dataclass
class Part:
    """One scored window: its plan, raw member predictions [D, S, K], ensemble signal [D, S] and timing."""

    window: int | None
    plan: WindowPlan
    preds: np.ndarray
    signal: np.ndarray
    timing: dict
    path: str


@dataclass
class Column:
    """One prediction column of a record: a member (static), or a model line over the windows."""

    name: str
    trial_id: str             # the member's trial, or the line (`t005`)
    variant_id: str
    spec: str
    seed: int
    valid_ic: float           # mean over the line's trials
    select_value: float       # mean over the line's trials
    weight: float             # mean ensemble weight over the windows (0 outside the ensembles)
    info: dict                # metrics.json's member_info


@dataclass
class Record(ScoredRows):
    """What is evaluated and written: every scored date of every window, oldest first."""

    parts: list[Part]
    walk_forward: bool            # every window of a walk-forward experiment (its leaderboard is written too)
    columns: list[Column]         # prediction columns: the members first (`n_members`), then the others
    n_members: int
    preds: np.ndarray             # float32 [D, S, len(columns)], NaN where a column has no prediction
    signal: np.ndarray            # float64 [D, S]
    dates: np.ndarray
    symbols: np.ndarray
    days: np.ndarray              # grid row of each scored row, rows in (date, symbol) order
    stocks: np.ndarray
    label: str
    horizon: int
    label_lag: int
    label_grid: np.ndarray | None
    oracle_grid: np.ndarray | None
    returns_grid: np.ndarray | None
    returns_name: str | None
    liquidity_grid: np.ndarray | None
    liquidity_name: str | None
    baselines: dict
    baseline_select: dict                            # name -> mean over windows of its selection-part RankIC
    panel_meta: dict
    panel_path: Path
    period: tuple[str, str]
    in_sample: dict
    weight_note: str | None
    selection: dict
    trial_column: dict = field(default_factory=dict)  # trial_id -> its column's index (a line's: every window's)
    units: list = field(default_factory=list)        # (static) select.Unit of the ensemble
    unit_weights: np.ndarray | None = None
    selected: Column | None = None                   # (static) the column selection would pick alone
    # (walk-forward) the ex-ante single pick: in each window the line selection ranked first by select_by on
    # that window's selection part, its predictions stitched [D, S]; picks: (window, line) in order
    pick_grid: np.ndarray | None = None
    picks: list = field(default_factory=list)

    @property
    def members(self) -> list[Column]:
        return self.columns[:self.n_members]

    @property
    def weights(self) -> np.ndarray:
        return np.array([c.weight for c in self.members])

    @property
    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        return self.days, self.stocks


    def column_of(self, member: Member) -> Column:
        """The column that holds `member`'s predictions (its own, or its model line's)."""
        return self.columns[self.trial_column[member.trial_id]]

    def part_of_row(self, row: int) -> Part:
        """The window part whose dates hold grid row `row`."""
        starts = np.cumsum([0] + [len(p.plan.dates) for p in self.parts])
        return self.parts[int(np.searchsorted(starts, row, side="right")) - 1]


def line_names(trials: pd.DataFrame) -> dict[str, str]:
    """Model line (`t005`) -> its column name in a walk-forward record: `variant@seedS`, with `#t005` where
    a hyperparameter grid gives one (variant, seed) several lines."""
    first = trials.sort_values("trial_id").drop_duplicates("line")
    base = {r.line: f"{r.variant_id}@seed{int(r.seed)}" for r in first.itertuples()}
    counts = pd.Series(list(base.values())).value_counts()
    return {line: (name if counts[name] == 1 else f"{name}#{line}") for line, name in base.items()}


def _concat(grids: list):
    return None if any(g is None for g in grids) else np.concatenate(grids)


def _member_column(m: Member, weight: float) -> Column:
    return Column(m.name, m.trial_id, m.variant_id, m.spec, m.seed, m.valid_ic, m.select_value, weight, m.info())


def _line_columns(parts: list[Part], exp_dir: Path) -> tuple[list[Column], dict[str, str]]:
    """(one column per model line predicted in any window, sorted; trial_id -> line)."""
    trials = read_trials(exp_dir)
    if "line" not in trials.columns:
        raise CliError(f"{Path(exp_dir) / 'trials.parquet'}: no column 'line' (rerun the sweep)")
    line_of = dict(zip(trials["trial_id"].astype(str), trials["line"].astype(str)))
    names = line_names(trials)
    lines = sorted({line_of[m.trial_id] for p in parts for m in p.plan.predicted})
    weight = dict.fromkeys(lines, 0.0)
    valid, chosen = {line: [] for line in lines}, {line: [] for line in lines}
    for p in parts:  # a line's figures: its trials' mean selection figures, its mean weight in the ensembles
        for m, w in zip(p.plan.members, p.plan.weights):
            weight[line_of[m.trial_id]] += float(w) / len(parts)
        for m in p.plan.predicted:
            valid[line_of[m.trial_id]].append(m.valid_ic)
            chosen[line_of[m.trial_id]].append(m.select_value)
    rows = trials.sort_values("trial_id").drop_duplicates("line").set_index("line")
    columns = []
    for line in lines:
        v = float(np.nanmean(valid[line])) if valid[line] else math.nan
        s = float(np.nanmean(chosen[line])) if chosen[line] else math.nan
        r = rows.loc[line]
        info = {"trial_id": line, "variant_id": str(r["variant_id"]), "spec": str(r["spec"]), "seed": int(r["seed"]),
                "checkpoint": ".", "valid_ic": v, "select_value": s, "lookback": None, "label": None,
                "splits": None, "best_epoch": None}  # a line has one checkpoint per window (signals' metadata)
        columns.append(Column(names[line], line, info["variant_id"], info["spec"], info["seed"], v, s,
                              weight[line], info))
    return columns, line_of


def stitch(parts: list[Part], walk_forward: bool, exp_dir: Path) -> Record:
    """The windows' parts (oldest first) -> one Record over their scored dates."""
    plans = [p.plan for p in parts]
    for a, b in zip(plans, plans[1:]):
        if not a.dates[-1] < b.dates[0]:
            raise CliError(f"walk-forward windows overlap: {a.period} and {b.period}")
    if any(not np.array_equal(plans[0].symbols, p.symbols) for p in plans):
        raise CliError("walk-forward windows were scored on different panels")
    if walk_forward:
        columns, line_of = _line_columns(parts, exp_dir)
        key_of = lambda m: line_of[m.trial_id]  # noqa: E731
        n_members = len(columns)
    else:
        only = plans[0]
        weights = list(only.weights) + [0.0] * len(only.extra)
        columns = [_member_column(m, float(w)) for m, w in zip(only.predicted, weights)]
        key_of = lambda m: m.trial_id  # noqa: E731
        n_members = len(only.members)
    col = {c.trial_id: k for k, c in enumerate(columns)}
    trial_column = {m.trial_id: col[key_of(m)] for p in parts for m in p.plan.predicted}
    stacked = []
    for p in parts:
        grid = np.full(p.preds.shape[:2] + (len(columns),), np.nan, dtype=np.float32)
        for k, m in enumerate(p.plan.predicted):
            grid[..., trial_column[m.trial_id]] = p.preds[..., k]
        stacked.append(grid)
    preds = np.concatenate(stacked)
    picks = _ex_ante_picks(parts, trial_column, columns, preds) if walk_forward else {}
    return Record(parts=parts, walk_forward=walk_forward, columns=columns, n_members=n_members,
                  trial_column=trial_column, preds=preds, signal=np.concatenate([p.signal for p in parts]),
                  **_stitched_grids(plans), **_stitched_choices(plans, walk_forward, columns), **picks)


def _ex_ante_picks(parts: list[Part], trial_column: dict, columns: list[Column], preds: np.ndarray) -> dict:
    """The walk-forward reference selection gives without hindsight: in each window the line ranked first on that
    window's selection part (plan.selected), its predictions over that window's dates. Empty when a window has no
    pick (no eligible trial ranked)."""
    if any(p.plan.selected is None for p in parts):
        return {}
    grid = np.full(preds.shape[:2], np.nan, dtype=np.float32)
    start, picks = 0, []
    for p in parts:
        k = trial_column[p.plan.selected.trial_id]
        grid[start:start + len(p.plan.dates)] = preds[start:start + len(p.plan.dates), :, k]
        picks.append((p.window, columns[k].name))
        start += len(p.plan.dates)
    return {"pick_grid": grid, "picks": picks}


def _stitched_grids(plans: list[WindowPlan]) -> dict[str, Any]:
    """The Record's dates, rows and label-side grids: the windows' concatenated by date."""
    offsets = np.cumsum([0] + [len(p.dates) for p in plans])
    first = plans[0]
    common = set.intersection(*[set(p.baselines) for p in plans]) if all(p.baselines for p in plans) else set()
    return {"dates": np.concatenate([p.dates for p in plans]), "symbols": first.symbols,
            "days": np.concatenate([p.days - p.first_day + o for p, o in zip(plans, offsets)]),
            "stocks": np.concatenate([p.stocks for p in plans]),
            "label": first.label, "horizon": first.horizon, "label_lag": first.label_lag,
            "label_grid": _concat([p.label_grid for p in plans]), "oracle_grid": _concat([p.oracle_grid for p in plans]),
            "returns_grid": _concat([p.returns_grid for p in plans]), "returns_name": first.returns_name,
            "liquidity_grid": _concat([p.liquidity_grid for p in plans]), "liquidity_name": first.liquidity_name,
            "baselines": {n: np.concatenate([p.baselines[n] for p in plans]) for n in first.baselines if n in common},
            "baseline_select": {n: float(np.nanmean([p.baseline_select.get(n, math.nan) for p in plans]))
                                for n in first.baselines if n in common
                                and any(np.isfinite(p.baseline_select.get(n, math.nan)) for p in plans)},
            "panel_meta": first.panel.meta, "panel_path": first.panel_path,
            "period": (first.period[0], plans[-1].period[1])}


def _stitched_choices(plans: list[WindowPlan], walk_forward: bool, columns: list[Column]) -> dict[str, Any]:
    """What the Record says about its ensembles: one window's selection, units and in-sample dates as they are;
    a walk-forward record's per window (signals' metadata, the windows table), summarised here."""
    first = plans[0]
    if walk_forward:
        return {"in_sample": {}, "weight_note": None, "unit_weights": np.zeros(0),
                "selection": {"rule": first.selection.get("rule", "top_k"), "walk_forward": True,
                              "seed_average": first.selection.get("seed_average", False)}}
    selected = None if first.selected is None else next(c for c in columns if c.trial_id == first.selected.trial_id)
    return {"in_sample": first.in_sample, "weight_note": first.weight_note, "selection": first.selection,
            "units": first.units, "unit_weights": first.unit_weights, "selected": selected}
