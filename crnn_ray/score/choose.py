"""Which units join one window's ensemble, and (method stack) with what weights.

The K best by the selection metric, or greedy forward selection: greedy predicts its candidates on their
selection split (never on the scored period) and adds, one at a time, the unit that most raises the ensemble's IC
there less a correlation penalty. Stacking fits non-negative weights on the same split. Both plan and predict a
window of their own, which is why this sits above plan.py and inference.py. Seed averaging (`auto`) is on when a
variant has several seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crnn_ray.io import CliError
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.ensemble import greedy_select, stack_weights, unit_standardised
from crnn_ray.score.inference import predict_in_process
from crnn_ray.score.plan import Scope, build_plan
from crnn_ray.score.select import Member, Unit, select_units

__all__ = ["choose_units"]


def choose_units(cfg: ScoreConfig, window: int | None) -> tuple[list[Unit], list[Member], dict]:
    """(the ensemble's units, every eligible trial ranked by select_by, the selection record) by cfg.selection,
    among one walk-forward window's trials when `window` is set. With method `stack` the record also holds the
    units' weights, fitted on the selection split (ensemble.stack_weights)."""
    if int(cfg.top_k) != cfg.top_k or cfg.top_k < 1:
        raise CliError(f"--top-k must be a positive integer, got {cfg.top_k}")
    seed_average = resolve_seed_average(cfg, window)
    units, ranked = select_units(cfg.experiment, cfg.select_by, seed_average, window=window)
    info: dict[str, Any] = {"rule": cfg.selection, "seed_average": seed_average,
                            "seed_average_setting": cfg.seed_average}
    if window is not None:
        info["window"] = int(window)
    if cfg.selection == "top_k":
        chosen = units[:int(cfg.top_k)]
    elif cfg.selection == "greedy":
        chosen = _greedy(cfg, window, units, info)
    else:
        raise CliError(f"--selection {cfg.selection!r}: unknown (top_k | greedy)")
    if cfg.method == "stack" and len(chosen) > 1:
        _stack(cfg, window, chosen, info)
    return chosen, ranked, info


def resolve_seed_average(cfg: ScoreConfig, window: int | None) -> bool:
    """cfg.seed_average, "auto" meaning on when some variant (with its hyperparameters) has two or more
    eligible seeds: seeds of one variant correlate far from 1, so their average is a better unit than any one."""
    if cfg.seed_average != "auto":
        return bool(cfg.seed_average)
    _, ranked = select_units(cfg.experiment, cfg.select_by, False, window=window)
    variants = [m.variant_id for m in ranked]
    return any(variants.count(v) > 1 for v in set(variants))


def _selection_grids(cfg: ScoreConfig, window: int | None, units: list[Unit]):
    """The units' per-date standardised predictions on the selection split [D, S, U] (NaN: not scored), and
    its label grid: what greedy selection and stacking fit on, never the scored period."""
    sel = build_plan(cfg, units, [], Scope(window, allow_in_sample=True), split="select")
    if sel.label_grid is None:
        raise CliError(f"{cfg.selection} / {cfg.method}: no label {sel.label} on the selection split {sel.period[0]}..")
    preds = predict_in_process(sel, cfg)
    scored = ~np.isnan(preds[..., 0])
    return np.where(scored[..., None], unit_standardised(preds, sel.groups, cfg.method), np.nan), sel


def _greedy(cfg: ScoreConfig, window: int | None, units: list[Unit], info: dict) -> list[Unit]:
    pool = units[:int(cfg.pool)]
    unit_z, sel = _selection_grids(cfg, window, pool)
    chosen, trace = greedy_select(unit_z, sel.label_grid, int(cfg.top_k), float(cfg.corr_penalty),
                                  int(cfg.evaluation.min_stocks))
    for t in trace:
        t["unit"] = pool[t["unit"]].name
    info.update({"pool": [u.name for u in pool], "corr_penalty": float(cfg.corr_penalty),
                 "split": list(sel.period), "trace": trace})
    return [pool[i] for i in chosen]


def _stack(cfg: ScoreConfig, window: int | None, chosen: list[Unit], info: dict) -> None:
    unit_z, sel = _selection_grids(cfg, window, chosen)
    weights, note = stack_weights(unit_z, sel.label_grid, int(cfg.evaluation.min_stocks))
    info.update({"stack_weights": [float(w) for w in weights], "stack_split": list(sel.period),
                 "stack_note": note})
