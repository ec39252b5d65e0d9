"""The turnover control, chosen where nothing is tested: the ensemble signal smoothed over N days.

A signal that reshuffles its top and bottom buckets every day pays for it: on real data every signal broke
even at 4-14 bps per unit traded at a turnover of ~0.5 a day. Averaging each name's per-date z-score over its
last N days keeps the books' names longer, so they trade less, at some cost in freshness. Which N pays is an
empirical question, answered on each window's **selection split** (predicted here with the window's own
ensemble, as greedy selection does) by the net Sharpe at the stated cost, on the stated returns basis --
never on the test days the result is reported on (docs/metrics.md, "Turnover control").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crnn_ray.io import CliError
from crnn_ray.metrics import SMOOTH_DAYS, Neutral, evaluate
from crnn_ray.score.ensemble import ensemble_units
from crnn_ray.score.exposures import exposure_grids
from crnn_ray.score.inference import predict_in_process
from crnn_ray.score.plan import Scope, build_plan

__all__ = ["smooth_signal", "choose_smoothing", "smoothed_record_signal"]


def smooth_signal(signal: np.ndarray, days: int) -> np.ndarray:
    """[D, S]: the mean of each name's per-date z-scores over its last `days` rows that have one, where the
    name has a signal today (NaN elsewhere: the universe stays today's). `days` = 1: the z-scores."""
    signal = np.asarray(signal, dtype=np.float64)
    have = np.isfinite(signal)
    n = have.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(have, signal, 0.0).sum(axis=1, keepdims=True) / n
        centred = np.where(have, signal - mean, 0.0)
        sd = np.sqrt((centred ** 2).sum(axis=1, keepdims=True) / n)
        z = np.where(have & (sd > 0), centred / sd, np.where(have, 0.0, np.nan))
    if days <= 1:
        return z
    zero = np.where(have, z, 0.0)
    csum = np.concatenate([np.zeros((1, signal.shape[1])), np.cumsum(zero, axis=0)])
    ccnt = np.concatenate([np.zeros((1, signal.shape[1])), np.cumsum(have, axis=0)])
    hi = np.arange(1, signal.shape[0] + 1)
    lo = np.maximum(hi - int(days), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[hi] - csum[lo]) / (ccnt[hi] - ccnt[lo])
    return np.where(have, out, np.nan)


def _net_sharpes(signal: np.ndarray, plan, ecfg, candidates: tuple[int, ...]) -> dict[int, float]:
    """{N: net long-short Sharpe of the signal smoothed over N days} on a plan's grid (its labelled cut)."""
    labelled = np.isfinite(plan.label_grid)
    days, stocks = labelled.any(axis=1), labelled.any(axis=0)
    label = plan.label_grid[days][:, stocks]
    returns = None if plan.returns_grid is None else plan.returns_grid[days][:, stocks]
    neutral = None
    if ecfg.returns_basis == "neutral":
        ex = exposure_grids(plan)
        neutral = Neutral(*(None if ex.get(k) is None else ex[k][days][:, stocks] for k in ("beta", "group")))
    out = {}
    for n in candidates:
        grid = np.where(labelled, smooth_signal(signal, n), np.nan)[days][:, stocks]
        s = evaluate(grid, label, returns=returns, neutral=neutral, quantiles=int(ecfg.quantiles),
                     cost_bps=ecfg.cost_bps, min_stocks=int(ecfg.min_stocks), horizon=int(plan.horizon),
                     periods_per_year=float(ecfg.periods_per_year)).summary
        out[n] = float(s["sharpe_net"])
    return out


def choose_smoothing(cfg, part) -> dict[str, Any]:
    """{"days": N, "chosen_on": [first, last] selection dates | None, "net_sharpe": {N: selection-split net
    Sharpe}, "note": why, when nothing was chosen} for one window part: `evaluation.smooth_days` when it is a
    number, else the N of SMOOTH_DAYS with the best net Sharpe on the window's selection split (ties: the
    smaller N). A sweep without a selection split keeps N = 1 (no smoothing): choosing on the valid split,
    which chose each model's epoch, or on test would flatter it."""
    ecfg = cfg.evaluation
    fixed = ecfg.smooth_days
    if fixed != "auto":
        return {"days": int(fixed), "chosen_on": None, "net_sharpe": {}, "note": "fixed by evaluation.smooth_days"}

    units = list(getattr(part.plan, "units", None) or [])
    if not units:
        return {"days": 1, "chosen_on": None, "net_sharpe": {}, "note": "no units to predict on the selection split"}
    try:
        sel = build_plan(cfg, units, [], Scope(part.window, allow_in_sample=True), split="select")
    except CliError as exc:
        return {"days": 1, "chosen_on": None, "net_sharpe": {}, "note": f"no selection split ({exc})"}
    if sel.label_grid is None or not np.isfinite(sel.label_grid).any():
        return {"days": 1, "chosen_on": list(sel.period), "net_sharpe": {}, "note": "no label on the selection split"}
    preds = predict_in_process(sel, cfg)
    signal = ensemble_units(preds, sel.groups, cfg.method, sel.unit_weights)
    sharpes = _net_sharpes(signal, sel, ecfg, SMOOTH_DAYS)
    finite = {n: v for n, v in sharpes.items() if math.isfinite(v)}
    best = max(finite, key=lambda n: (finite[n], -n)) if finite else 1
    return {"days": int(best), "chosen_on": list(sel.period), "net_sharpe": sharpes,
            "note": None if finite else "no net Sharpe on the selection split: no smoothing"}


def smoothed_record_signal(rec, choices: list[dict]) -> np.ndarray:
    """The record's ensemble signal with each window's rows smoothed over its chosen N days (the smoothing may
    read the previous window's rows: they are earlier dates)."""
    out = np.full(rec.signal.shape, np.nan)
    starts = np.cumsum([0] + [len(p.plan.dates) for p in rec.parts])
    cache: dict[int, np.ndarray] = {}
    for part, choice, lo, hi in zip(rec.parts, choices, starts[:-1], starts[1:]):
        n = int(choice["days"])
        if n not in cache:
            cache[n] = smooth_signal(rec.signal, n)
        out[lo:hi] = cache[n][lo:hi]
    return out
