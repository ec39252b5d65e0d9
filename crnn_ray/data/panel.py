"""The panel: a long (date, symbol) table on disk, dense [days, stocks, features] arrays in memory.

Models see windows of `lookback` days; they are gathered by fancy indexing from the dense array, so memory
stays O(days x stocks x features) whatever the lookback. Missing data never reaches a model as NaN: absent rows
and missing values become 0.0 after normalisation (the cross-sectional centre) and a sample needs its END day
valid and a finite label (see docs/data.md, "NaN policy").
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crnn_ray.io import CliError, write_parquet_atomic
from crnn_ray.metrics import scaled_ranks

#: Parquet schema-metadata key holding the panel description (JSON)
META_KEY = "crnn_ray"
#: panel format version written into the metadata
PANEL_VERSION = 1
#: the 1-day forward return column synth and ingest always write (returns[d] = close_{d+L+1} / close_{d+L} - 1
#: with L the label lag, 0 for synth: the convention of a y1 label at d), named by the metadata key "returns"
RETURNS = "y1"
#: raw / bookkeeping columns that are never features when a file has no metadata (CSV)
NON_FEATURE_COLUMNS = {"date", "symbol", "open", "high", "low", "close", "volume", "adj_close", "factor",
                       "suspect_jump", "price_break", "universe", "traded_value_med", "traded_value"}
_LABEL_RE = re.compile(r"^y(\d+)$")
#: MAD -> standard deviation for normal data
MAD_SCALE = 1.4826


@dataclass
class Panel:
    """Dense view of a panel file; `X` is NaN where a row is absent or a value missing."""

    X: np.ndarray
    mask: np.ndarray
    labels: dict[str, np.ndarray]
    dates: np.ndarray
    symbols: np.ndarray
    features: list[str]
    meta: dict = field(default_factory=dict)
    #: float32 [D, S] 1-day forward returns (NaN unknown), loaded whatever `labels` selected; see returns()
    forward_returns: np.ndarray | None = None
    #: per-row non-feature grids named by the metadata's "aux_columns" (ingest: "universe" bool [D, S], False
    #: where absent; "traded_value_med" float32 [D, S], NaN where absent)
    aux: dict = field(default_factory=dict)

    def returns(self) -> np.ndarray | None:
        """The [D, S] 1-day forward returns (returns[d, s] = close_{d+L+1} / close_{d+L} - 1 with L = label_lag,
        as a y1 label at d: what a book formed on d..d-H+1 earns on day d) that realise the pnl of overlapping
        H-day books (metrics.evaluate(returns=...)); None when the panel has none."""
        if self.forward_returns is not None:
            return self.forward_returns
        name = self.meta.get("returns") or RETURNS
        return self.labels.get(name)

    def label(self, name: str) -> np.ndarray:
        if name not in self.labels:
            raise CliError(f"label {name!r} not in panel {self.meta.get('path', '')} (has {sorted(self.labels)})")
        return self.labels[name]

    @property
    def n_days(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_stocks(self) -> int:
        return int(self.X.shape[1])

    @property
    def label_lag(self) -> int:
        """Days between the features' last close (t) and the label's first close (t+L); 0 for panels made
        before the lag existed (their labels started at close t) and for the synthetic market."""
        return int(self.meta.get("label_lag") or 0)

    def label_span(self, label: str) -> int:
        """Days after t that the label's last close lies: label_lag + horizon (yH spans close t+L .. t+L+H)."""
        return self.label_lag + self.horizon(label)

    def horizon(self, label: str) -> int:
        """Label horizon in days (the label's own length, without the lag), from the metadata or the `yH` name.

        The split embargo uses it: training labels (t+L .. t+L+H) and the next part's labels cover disjoint
        returns when at least H days lie between the parts, whatever the lag (docs/data.md, "Label lag")."""
        horizons = self.meta.get("horizons") or {}
        if label in horizons:
            return int(horizons[label])
        m = _LABEL_RE.match(label)
        if m:
            return int(m.group(1))
        raise CliError(f"label {label!r}: horizon unknown (no 'horizons' metadata and not named yH)")


# ----------------------------------------------------------------------------------------------- load / save
def _read_table(path: Path, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a Parquet or CSV panel file (only `columns` that exist, when given); returns the frame and the
    `crnn_ray` metadata ({} when absent)."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".csv", ".csv.gz", ".txt")):
        try:
            want = None if columns is None else (lambda c: c in set(columns))
            return pd.read_csv(path, usecols=want), {}
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise CliError(f"{path}: not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    try:
        if columns is not None:
            names = set(pq.read_schema(path).names)
            columns = [c for c in columns if c in names]
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CliError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})")
    raw = (table.schema.metadata or {}).get(META_KEY.encode())
    meta: dict = {}
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            raise CliError(f"{path}: metadata key {META_KEY!r} is not valid JSON")
    table = table.replace_schema_metadata({k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"})
    return table.to_pandas(date_as_object=False), meta


def seen_data_fingerprint(panel: "Panel", first: str, last: str, features: list[str], label: str) -> str:
    """A hash of the data a model saw: the dates first..last, the symbols with a row there, their `features`
    and `label`, exactly as loaded. Checkpoints record it (with the two dates), so a scorer handed another
    market under the same path (an experiment re-run on other data, a copy whose panel was swapped) refuses,
    while a panel that only grew (new days, new listings) still matches: neither changes the seen part."""
    lo = int(np.searchsorted(panel.dates, np.datetime64(first, "D"), side="left"))
    hi = int(np.searchsorted(panel.dates, np.datetime64(last, "D"), side="right"))
    cols = [panel.features.index(f) for f in features]
    values, target = panel.X[lo:hi][:, :, cols], panel.label(label)[lo:hi]
    # the symbols with a value there (whatever else was loaded: the mask depends on the features read)
    present = np.isfinite(values).any(axis=(0, 2)) | np.isfinite(target).any(axis=0)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(panel.dates[lo:hi].astype("datetime64[D]").astype(np.int64).tobytes())
    digest.update("\x00".join(map(str, panel.symbols[present])).encode())
    digest.update(np.ascontiguousarray(values[:, present], dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(target[:, present], dtype=np.float32).tobytes())
    return digest.hexdigest()


def read_panel_meta(path: str | Path) -> dict | None:
    """The `crnn_ray` metadata of a Parquet panel from its footer alone (no data read); None without any."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY.encode())
        return json.loads(raw) if raw else None
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: not a readable Parquet panel ({type(exc).__name__})") from None


def _parse_dates(values: pd.Series, where: str) -> np.ndarray:
    try:
        parsed = pd.to_datetime(values, errors="raise")
    except (ValueError, TypeError) as exc:
        bad = _first_unparsable(values)
        raise CliError(f"{where}: unparsable date {bad!r} ({type(exc).__name__})")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    if parsed.isna().any():
        raise CliError(f"{where}: {int(parsed.isna().sum())} missing date(s)")
    return parsed.to_numpy().astype("datetime64[D]")


def _first_unparsable(values: pd.Series) -> Any:
    coerced = pd.to_datetime(values, errors="coerce")
    bad = values[coerced.isna() & values.notna()]
    return bad.iloc[0] if len(bad) else None


def check_numeric(df: pd.DataFrame, columns: list[str], where: str, allow_inf: bool = False) -> None:
    """One-line CliError for a non-numeric or infinite column (names file and column)."""
    for col in columns:
        s = df[col]
        if s.dtype == bool:
            continue
        if not pd.api.types.is_numeric_dtype(s):
            bad = pd.to_numeric(s, errors="coerce")
            sample = s[bad.isna() & s.notna()]
            first = sample.iloc[0] if len(sample) else None
            raise CliError(f"{where}: column {col!r} is not numeric (dtype {s.dtype}, e.g. {first!r})")
        if not allow_inf:
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            n_inf = int(np.isinf(v).sum())
            if n_inf:
                raise CliError(f"{where}: column {col!r} has {n_inf} infinite value(s)")


def check_duplicates(dates: np.ndarray, symbols: np.ndarray, where: str) -> None:
    """CliError naming the first few duplicated (date, symbol) keys."""
    keys = pd.DataFrame({"date": dates, "symbol": symbols})
    dup = keys.duplicated(keep="first")
    if dup.any():
        first = keys[dup].drop_duplicates().head(3)
        shown = ", ".join(f"({str(d)[:10]}, {s})" for d, s in zip(first["date"], first["symbol"]))
        raise CliError(f"{where}: {int(dup.sum())} duplicate (date, symbol) row(s), first: {shown}")


def load_panel(path: str | Path, features: list[str] | None = None, labels: list[str] | None = None,
               aux: list[str] | None = None) -> Panel:
    """Load a panel file into dense arrays (vectorised scatter of the long rows).

    `aux`: per-row non-feature columns to scatter into `panel.aux` (None: the metadata's "aux_columns")."""
    path = Path(path)
    df, meta = _read_table(path)
    where = str(path)
    for col in ("date", "symbol"):
        if col not in df.columns:
            raise CliError(f"{where}: missing column {col!r}")
    file_labels = list(meta.get("labels") or [c for c in df.columns if _LABEL_RE.match(str(c))])
    file_features = list(
        meta.get("features")
        or [c for c in df.columns if c not in NON_FEATURE_COLUMNS and c not in file_labels
            and not str(c).startswith("oracle_") and pd.api.types.is_numeric_dtype(df[c])]
    )
    feats = list(features) if features is not None else file_features
    labs = list(labels) if labels is not None else file_labels
    for col in feats:
        if col not in df.columns:
            raise CliError(f"{where}: missing feature column {col!r}")
    for col in labs:
        if col not in df.columns:
            raise CliError(f"{where}: missing label column {col!r}")
    if not feats:
        raise CliError(f"{where}: no feature columns")
    check_numeric(df, feats + labs, where)

    dates = _parse_dates(df["date"], f"{where}: column 'date'")
    if df["symbol"].isna().any():
        raise CliError(f"{where}: column 'symbol' has {int(df['symbol'].isna().sum())} missing value(s)")
    symbols = df["symbol"].astype(str).to_numpy(dtype=object)
    check_duplicates(dates, symbols, where)

    uniq_dates, day_idx = np.unique(dates, return_inverse=True)
    uniq_syms, sym_idx = np.unique(symbols.astype(str), return_inverse=True)
    D, S, F = len(uniq_dates), len(uniq_syms), len(feats)
    X = np.full((D, S, F), np.nan, dtype=np.float32)
    X[day_idx, sym_idx] = df[feats].to_numpy(dtype=np.float32, na_value=np.nan)
    mask = np.isfinite(X).all(axis=2)
    lab_arrays = {}
    for name in labs:
        arr = np.full((D, S), np.nan, dtype=np.float32)
        arr[day_idx, sym_idx] = df[name].to_numpy(dtype=np.float32, na_value=np.nan)
        lab_arrays[name] = arr
    # the 1-day forward returns, also when `labels` did not ask for them (the realised pnl needs them)
    returns_col = meta.get("returns") or (RETURNS if RETURNS in df.columns else None)
    forward_returns = None
    if returns_col in lab_arrays:
        forward_returns = lab_arrays[returns_col]
    elif returns_col is not None and returns_col in df.columns:
        check_numeric(df, [returns_col], where)
        forward_returns = np.full((D, S), np.nan, dtype=np.float32)
        forward_returns[day_idx, sym_idx] = df[returns_col].to_numpy(dtype=np.float32, na_value=np.nan)
    aux_arrays = {}
    for name in (meta.get("aux_columns") or []) if aux is None else aux:
        if name not in df.columns:
            if aux is None:
                continue
            raise CliError(f"{where}: missing column {name!r}")
        col = df[name]
        if col.dtype == bool:
            grid = np.zeros((D, S), dtype=bool)
            grid[day_idx, sym_idx] = col.to_numpy(dtype=bool)
        else:
            check_numeric(df, [name], where)
            grid = np.full((D, S), np.nan, dtype=np.float32)
            grid[day_idx, sym_idx] = col.to_numpy(dtype=np.float32, na_value=np.nan)
        aux_arrays[name] = grid
    meta = dict(meta)
    meta.setdefault("version", PANEL_VERSION)
    meta["features"], meta["labels"] = feats, labs
    horizons = dict(meta.get("horizons") or {})
    for name in labs:
        m = _LABEL_RE.match(name)
        if name not in horizons and m:
            horizons[name] = int(m.group(1))
    meta["horizons"] = horizons
    meta.setdefault("source", "file")
    meta.setdefault("label_lag", 0)  # panels made before the lag existed: labels started at close t
    meta["path"] = str(path.resolve())
    return Panel(X=X, mask=mask, labels=lab_arrays, dates=uniq_dates, symbols=uniq_syms.astype(object),
                 features=feats, meta=meta, forward_returns=forward_returns, aux=aux_arrays)


def label_coverage(df: pd.DataFrame, label: str) -> tuple[int, int, str]:
    """(rows with the label present, rows on the basis, basis): the basis is the rows with a price (a finite,
    positive close) when the table has a close column, else every row. ingest and inspect both report this."""
    present = df[label].notna().to_numpy()
    if "close" in df.columns:
        close = pd.to_numeric(df["close"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        base = np.isfinite(close) & (close > 0)
        return int((present & base).sum()), int(base.sum()), "rows with a price"
    return int(present.sum()), len(df), "rows in the file"


def read_label_coverage(path: str | Path, labels: list[str]) -> dict[str, tuple[int, int, str]]:
    """label_coverage of each label of a panel file, reading only the close and label columns."""
    df, _ = _read_table(Path(path), columns=["close", *labels])
    return {name: label_coverage(df, name) for name in labels if name in df.columns}


def save_panel(df: pd.DataFrame, path: str | Path, meta: dict) -> None:
    """Write the long table atomically as Parquet (date as date32, sorted by date, symbol) with its metadata."""
    where = str(path)
    for col in ["date", "symbol", *meta.get("features", []), *meta.get("labels", [])]:
        if col not in df.columns:
            raise CliError(f"{where}: cannot save, missing column {col!r}")
    meta = {"version": PANEL_VERSION, **{k: v for k, v in meta.items() if k != "path"}}
    dates = _parse_dates(df["date"], f"{where}: column 'date'")
    order = np.lexsort((df["symbol"].astype(str).to_numpy(), dates))
    out = df.iloc[order].reset_index(drop=True)
    columns = {"date": pa.array(dates[order], type=pa.date32()),
               "symbol": pa.array(out["symbol"].astype(str).to_numpy(dtype=object), type=pa.string())}
    for col in out.columns:
        if col in columns:
            continue
        s = out[col]
        if s.dtype == bool:
            columns[col] = pa.array(s.to_numpy(), type=pa.bool_())
        elif pd.api.types.is_numeric_dtype(s):
            columns[col] = pa.array(s.to_numpy(dtype=np.float64, na_value=np.nan).astype(
                np.float32 if s.dtype == np.float32 else np.float64), from_pandas=True)
        else:
            columns[col] = pa.array(s.astype(str).to_numpy(dtype=object), type=pa.string())
    write_parquet_atomic(pa.table(columns), path, metadata={META_KEY: meta})


# ----------------------------------------------------------------------------------------------- transforms
def normalize_features(X: np.ndarray, mask: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """Per-date, per-feature robust z-score over the valid stocks, clipped to +-clip; invalid -> 0.0.

    Robust (median / MAD) because daily cross-sections have fat tails; when MAD is 0 (many ties) the
    standard deviation is used instead, and a constant cross-section becomes all 0.
    """
    X = np.asarray(X, dtype=np.float32)
    valid = np.asarray(mask, dtype=bool)[:, :, None] & np.isfinite(X)
    x = np.where(valid, X, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN days (no valid stock) are expected
        med = np.nanmedian(x, axis=1, keepdims=True)
        mad = np.nanmedian(np.abs(x - med), axis=1, keepdims=True) * MAD_SCALE
        std = np.nanstd(x, axis=1, keepdims=True)
        scale = np.where(mad > 1e-12, mad, std)
        z = (x - med) / np.where(scale > 1e-12, scale, np.inf)
    return np.where(valid, np.clip(z, -clip, clip), 0.0).astype(np.float32)


def rank_label(y: np.ndarray) -> np.ndarray:
    """Per-date average ranks of the finite entries scaled to [-0.5, 0.5]; NaN stays NaN.

    Ranking removes the market move and fat tails from the training target (the report trains on ranks).
    """
    y = np.asarray(y, dtype=np.float64)
    return scaled_ranks(np.where(np.isfinite(y), y, np.nan)).astype(np.float32)


def sample_index(mask: np.ndarray, label: np.ndarray, lookback: int, day_lo: int, day_hi: int) -> np.ndarray:
    """(day, stock) pairs, day in [day_lo, day_hi], day >= lookback-1, END day valid and label finite."""
    if lookback < 1:
        raise CliError(f"lookback must be >= 1 (got {lookback})")
    lo = max(int(day_lo), int(lookback) - 1, 0)
    hi = min(int(day_hi), mask.shape[0] - 1)
    if hi < lo:
        return np.zeros((0, 2), dtype=np.int64)
    ok = np.asarray(mask[lo:hi + 1], dtype=bool) & np.isfinite(np.asarray(label[lo:hi + 1]))
    days, stocks = np.nonzero(ok)
    return np.stack([days.astype(np.int64) + lo, stocks.astype(np.int64)], axis=1)


def gather_windows(X, days, stocks, lookback: int):
    """X[days - L + 1 .. days, stocks] -> [N, L, F] by one fancy-index; numpy arrays or torch tensors."""
    L = int(lookback)
    if type(X).__module__.split(".")[0] == "torch":
        import torch  # here only: X is a tensor, so torch is loaded; crnn_ray.data itself stays torch-free

        days_t = torch.as_tensor(days, device=X.device, dtype=torch.long)
        stocks_t = torch.as_tensor(stocks, device=X.device, dtype=torch.long)
        offs = torch.arange(L, device=X.device, dtype=torch.long) - (L - 1)
        return X[days_t[:, None] + offs[None, :], stocks_t[:, None]]
    days = np.asarray(days, dtype=np.int64)
    stocks = np.asarray(stocks, dtype=np.int64)
    if days.size and int(days.min()) < L - 1:
        raise ValueError(f"gather_windows: day {int(days.min())} has fewer than lookback={L} days of history")
    offs = np.arange(L, dtype=np.int64) - (L - 1)
    return X[days[:, None] + offs[None, :], stocks[:, None]]
