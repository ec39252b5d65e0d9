"""The scorer's data files: signals/ (one Parquet file per date) and labels.parquet, from a stitched record.

The date is the folder's only (signals/date=YYYY-MM-DD/): a `date` column repeated inside the files clashes
with the one hive readers take from the folder names (pyarrow / pandas refuse to merge date32 with the
partition's string), so every reader -- pandas, pyarrow, duckdb, polars -- gets the date from the partition in
one plain call (docs/scoring.md, "Reading the signals"). labels.parquet keeps a date32 `date` (DATE in duckdb,
polars, typed pyarrow, as the partition there) and declares it text for pandas (LABELS_PANDAS_METADATA), so a plain
`pd.read_parquet(signals).merge(pd.read_parquet(labels), on=["date", "symbol"])` meets the partition's ISO
strings. Each file is written to a temporary name and renamed; other dates' partitions are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from crnn_ray.io import write_parquet_atomic
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.exposures import BETA_COLUMN, GROUP_COLUMN, exposure_grids
from crnn_ray.score.stitch import Part, Record
from crnn_ray.score.walk_forward import trained_through

__all__ = ["signals_metadata", "partition_path", "write_signals", "write_labels", "LABELS_PANDAS_METADATA"]

# labels.parquet's `pandas` schema metadata: pandas (pd.read_parquet, Table.to_pandas) reads the date32 `date` as
# ISO text ("2024-06-03", pandas' "string" dtype), the values pd.read_parquet(signals/) gives from the date=
# folders, so the two merge on (date, symbol); every other reader ignores the key and gets the date32 column
LABELS_PANDAS_METADATA = {"index_columns": [], "column_indexes": [], "creator": {"library": "crnn_ray"},
                          "columns": [{"name": "date", "field_name": "date", "pandas_type": "unicode",
                                       "numpy_type": "string", "metadata": None}]}


def signals_metadata(rec: Record, part: Part, cfg: ScoreConfig) -> dict:
    """How a window's dates were made, stored in each of their files' schema (no timestamps: reruns give
    identical bytes); `python -m crnn_ray.evaluate` takes its label, horizon and label_lag from here. A
    walk-forward record's dates also name their window, each member's data end and embargo, and which trial
    fills each line's column there."""
    plan = part.plan
    if not rec.walk_forward:
        return {"method": cfg.method, "select_by": cfg.select_by, "label": plan.label, "horizon": plan.horizon,
                "label_lag": int(plan.label_lag),
                "members": [{"name": m.name, "trial_id": m.trial_id, "spec": m.spec, "seed": m.seed,
                             "weight": float(w), "valid_ic": m.valid_ic} for m, w in zip(plan.members, plan.weights)],
                "in_sample": sorted(plan.in_sample), "seed_average": bool((plan.selection or {}).get("seed_average", False)),
                "selection": cfg.selection,
                "units": [{"name": u.name, "members": [m.name for m in u.members], "weight": float(w)}
                          for u, w in zip(plan.units, plan.unit_weights)]}
    return {"walk_forward": True, "window": part.window, "method": cfg.method, "select_by": cfg.select_by,
            "label": plan.label, "horizon": plan.horizon, "label_lag": int(plan.label_lag),
            "selection": cfg.selection,
            "members": [{"name": rec.column_of(m).name, "trial_id": m.trial_id, "spec": m.spec, "seed": m.seed,
                         "weight": float(w), "valid_ic": m.valid_ic, "select_value": m.select_value,
                         "trained_through": trained_through(m),
                         "embargo": int(m.meta["splits"].get("embargo", 0) or 0)}
                        for m, w in zip(plan.members, plan.weights)],
            "columns": {rec.column_of(m).name: m.trial_id for m in plan.predicted}}


def partition_path(out: Path, date: Any) -> Path:
    return Path(out) / "signals" / f"date={str(np.datetime64(date, 'D'))}" / "part-0.parquet"


def _key_columns(rec: Record, rows: np.ndarray, stocks: np.ndarray) -> dict:
    """`date` (date32) and `symbol` (string) Arrow columns of grid cells: labels only where files are written."""
    return {"date": pa.array(rec.dates[rows], type=pa.date32()),
            "symbol": pa.array(np.asarray(rec.symbols[stocks], dtype=object), type=pa.string())}


def write_signals(out: Path, rec: Record, cfg: ScoreConfig) -> list[Path]:
    """One file per scored date: (symbol, signal, one float32 column per member) of its scored cells, in
    (date, symbol) order, with its window's signals_metadata."""
    rows, stocks = rec.cells
    columns = {"symbol": _key_columns(rec, rows, stocks)["symbol"],
               "signal": pa.array(rec.signal[rows, stocks], type=pa.float64())}
    values = rec.preds[rows, stocks]
    for k, c in enumerate(rec.members):
        columns[c.name] = pa.array(np.ascontiguousarray(values[:, k]), type=pa.float32())
    table = pa.table(columns)
    metadata = {id(p): {"crnn_ray_signals": signals_metadata(rec, p, cfg)} for p in rec.parts}
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    written = []
    for a, b in zip(starts, ends):
        path = partition_path(out, rec.dates[rows[a]])
        write_parquet_atomic(table.slice(int(a), int(b - a)), path, metadata=metadata[id(rec.part_of_row(int(rows[a])))])
        written.append(path)
    return written


def write_labels(out: Path, rec: Record) -> None:
    """labels.parquet: (date, symbol, <label>) of the scored rows whose label is known, in (date, symbol) order;
    with 1-day returns also their column (y1), on those rows and on every other cell of the evaluated dates and
    symbols whose return is known (label NaN there): `python -m crnn_ray.evaluate --returns y1` then builds the
    very grids report.evaluate_all evaluates. With a liquidity grid also its column (traded_value_med) on the
    same rows, for `--liquidity traded_value_med`, and the exposures of neutral returns (`beta`: trailing beta,
    `group`: the panel's group as codes) for `--returns-basis neutral --beta beta --group group`. The date is
    date32, declared text for pandas (LABELS_PANDAS_METADATA)."""
    keep = labelled = np.isfinite(rec.label_grid)
    if rec.returns_grid is not None:
        inside = labelled.any(axis=1)[:, None] & labelled.any(axis=0)[None, :]  # evaluate_all's cut
        keep = labelled | (inside & np.isfinite(rec.returns_grid))
    rows, stocks = np.nonzero(keep)
    columns = {rec.label: pa.array(rec.label_grid[rows, stocks], type=pa.float64())}
    if rec.returns_grid is not None:
        columns[rec.returns_name] = pa.array(rec.returns_grid[rows, stocks], type=pa.float64())
    if rec.liquidity_grid is not None:
        columns[rec.liquidity_name] = pa.array(rec.liquidity_grid[rows, stocks], type=pa.float64())
    exposures = exposure_grids(rec)  # what neutral returns are residualised against (--beta / --group)
    for name, key in ((BETA_COLUMN, "beta"), (GROUP_COLUMN, "group")):
        if exposures.get(key) is not None:
            columns[name] = pa.array(exposures[key][rows, stocks], type=pa.float64())
    table = pa.table({**_key_columns(rec, rows, stocks), **columns})
    write_parquet_atomic(table, Path(out) / "labels.parquet", metadata={"pandas": LABELS_PANDAS_METADATA})
