"""Which units join one window's ensemble: the K best by the selection metric, or greedy forward selection.

Greedy selection predicts its candidates on their selection split (never on the scored period) and adds, one
at a time, the unit that most raises the ensemble's IC there less a correlation penalty; so it plans and
predicts a window of its own, which is why it sits above plan.py and inference.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crnn_ray.io import CliError
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.ensemble import greedy_select, unit_standardised
from crnn_ray.score.inference import predict_in_process
from crnn_ray.score.plan import Scope, build_plan
from crnn_ray.score.select import Member, Unit, select_units

__all__ = ["choose_units"]


def choose_units(cfg: ScoreConfig, window: int | None) -> tuple[list[Unit], list[Member], dict]:
    """(the ensemble's units, every eligible trial ranked by select_by, the selection record) by cfg.selection,
    among one walk-forward window's trials when `window` is set."""
    if int(cfg.top_k) != cfg.top_k or cfg.top_k < 1:
        raise CliError(f"--top-k must be a positive integer, got {cfg.top_k}")
    units, ranked = select_units(cfg.experiment, cfg.select_by, cfg.seed_average, window=window)
    info: dict[str, Any] = {"rule": cfg.selection, "seed_average": bool(cfg.seed_average)}
    if window is not None:
        info["window"] = int(window)
    if cfg.selection == "top_k":
        return units[:int(cfg.top_k)], ranked, info
    if cfg.selection != "greedy":
        raise CliError(f"--selection {cfg.selection!r}: unknown (top_k | greedy)")
    pool = units[:int(cfg.pool)]
    # the pool's predictions on the selection split: chosen there only, never on the scored period
    sel = build_plan(cfg, pool, [], Scope(window, allow_in_sample=True), split="select")
    if sel.label_grid is None:
        raise CliError(f"greedy selection: no label {sel.label} on the selection split {sel.period[0]}..")
    preds = predict_in_process(sel, cfg)
    scored = ~np.isnan(preds[..., 0])
    unit_z = np.where(scored[..., None], unit_standardised(preds, sel.groups, cfg.method), np.nan)
    chosen, trace = greedy_select(unit_z, sel.label_grid, int(cfg.top_k), float(cfg.corr_penalty),
                                  int(cfg.evaluation.min_stocks))
    for t in trace:
        t["unit"] = pool[t["unit"]].name
    info.update({"pool": [u.name for u in pool], "corr_penalty": float(cfg.corr_penalty),
                 "split": list(sel.period), "trace": trace})
    return [pool[i] for i in chosen], ranked, info
