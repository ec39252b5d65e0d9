"""The exposures a scored record's neutral returns are residualised against (docs/metrics.md, "Neutral
returns"): each name's trailing beta to the equal-weight market, from the panel's own 1-day returns over its
whole history (a scored period's first days need the days before it), and the panel's group column (the
synthetic market's sector) as codes. labels.parquet carries both, so `python -m crnn_ray.evaluate
--returns-basis neutral --beta beta --group group` rebuilds the scorer's figures from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from crnn_ray.metrics import trailing_beta

__all__ = ["BETA_COLUMN", "GROUP_COLUMN", "exposure_grids"]

#: labels.parquet's columns of the exposures
BETA_COLUMN, GROUP_COLUMN = "beta", "group"


def exposure_grids(rec) -> dict[str, Any]:
    """On a stitched Record or a WindowPlan: {"beta": float64 [D, S] | None, "group": float64 codes [D, S] (NaN: unknown) | None, "group_column": the
    panel's column | None} on the record's dates and symbols; None where the panel has no 1-day returns (beta)
    or no `group_column` in its metadata (group). The beta of day t uses the returns known at t only
    (metrics.trailing_beta with the panel's label_lag)."""
    meta = getattr(rec, "panel_meta", None) or getattr(getattr(rec, "panel", None), "meta", None) or {}
    path = Path(rec.panel_path)
    out: dict[str, Any] = {"beta": None, "group": None, "group_column": None}
    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # the panel moved or is unreadable: the record is scored on the market alone
        return out
    returns_col = meta.get("returns") or "y1"
    group_col = meta.get("group_column")
    cols = [c for c in (returns_col, group_col) if c and c in names]
    if not cols:
        return out
    tab = pq.read_table(path, columns=["date", "symbol", *cols]).to_pandas()
    day = pd.to_datetime(tab["date"]).to_numpy().astype("datetime64[D]")
    dates, di = np.unique(day, return_inverse=True)
    symbols, si = np.unique(tab["symbol"].astype(str).to_numpy(), return_inverse=True)
    rows = np.searchsorted(dates, np.asarray(rec.dates).astype("datetime64[D]"))
    rows = np.minimum(rows, len(dates) - 1)
    found_row = dates[rows] == np.asarray(rec.dates).astype("datetime64[D]")
    stocks = pd.Index(symbols).get_indexer(np.asarray(rec.symbols).astype(str))

    def on_record(grid: np.ndarray) -> np.ndarray:
        picked = grid[rows][:, np.maximum(stocks, 0)]
        picked[~found_row] = np.nan
        picked[:, stocks < 0] = np.nan
        return picked

    if returns_col in cols:
        returns = np.full((len(dates), len(symbols)), np.nan)
        returns[di, si] = pd.to_numeric(tab[returns_col], errors="coerce").to_numpy(dtype=np.float64)
        out["beta"] = on_record(trailing_beta(returns, lag=int(getattr(rec, "label_lag", 0) or 0)))
    if group_col in cols:
        values = tab[group_col]
        known = values.notna().to_numpy()
        labels, codes = np.unique(values[known].astype(str).to_numpy(), return_inverse=True)
        group = np.full((len(dates), len(symbols)), np.nan)
        group[di[known], si[known]] = codes
        out["group"] = on_record(group)
        out["group_column"] = group_col
        out["group_names"] = [str(x) for x in labels]
    return out
