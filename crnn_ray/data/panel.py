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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crnn_ray.data.labels import FLAG_COLUMNS
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


class _CrossSection:
    """What a panel and its normalised form share: labels, returns, the label's timing (their fields:
    mask, labels, meta, forward_returns)."""

    mask: np.ndarray
    labels: dict
    meta: dict
    forward_returns: np.ndarray | None

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
        return int(self.mask.shape[0])

    @property
    def n_stocks(self) -> int:
        return int(self.mask.shape[1])

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


@dataclass
class Panel(_CrossSection):
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


@dataclass
class NormalisedPanel(_CrossSection):
    """What training reads: the panel with its features normalised once (normalise_panel), shared by every model.

    Why: per-date cross-sectional normalisation does not depend on the window, so one cube serves every model
    of every walk-forward window; put once in Ray's object store, every worker of a node reads it zero-copy (its
    arrays are then read-only). The raw features are left behind (1 x X less per node); the fingerprints of the
    data each window saw (seen_data_fingerprint, which hashes raw values) are taken from them first.
    """

    Z: np.ndarray                    # normalised features [D, S, F] in x_dtype's storage (X_DTYPES)
    mask: np.ndarray
    labels: dict[str, np.ndarray]
    dates: np.ndarray
    symbols: np.ndarray
    features: list[str]
    clip: float
    x_dtype: str
    meta: dict = field(default_factory=dict)
    forward_returns: np.ndarray | None = None
    #: (first date, last date, label) -> seen_data_fingerprint of the raw panel
    fingerprints: dict = field(default_factory=dict)
    #: the jump flags of the raw panel's `aux` (data.labels.FLAG_COLUMNS): what training_label masks targets with
    aux: dict = field(default_factory=dict)
    #: raw feature columns [D, S] kept beside Z (normalise_panel's keep_raw): the driver's baselines read the raw
    #: ret1 (the reversal signal sums raw returns); the workers' shared copy carries none
    raw: dict = field(default_factory=dict)

    def raw_feature(self, name: str) -> np.ndarray:
        """A raw feature column [D, S] kept by normalise_panel(keep_raw=...)."""
        if name not in self.raw:
            raise CliError(f"the normalised panel kept no raw {name!r} column (keep_raw={sorted(self.raw)})")
        return self.raw[name]

    def features_float32(self) -> np.ndarray:
        """Z as float32 (Z itself when stored so; a decoded copy for float16 / bfloat16 storage)."""
        if self.x_dtype == "float32":
            return self.Z
        if self.x_dtype == "bfloat16":
            return (self.Z.astype(np.uint32) << 16).view(np.float32)
        return self.Z.astype(np.float32)

    def fingerprint(self, first: str, last: str, label: str) -> str:
        """seen_data_fingerprint of the raw panel for these dates and label (taken by normalise_panel)."""
        try:
            return self.fingerprints[(first, last, label)]
        except KeyError:
            raise CliError(f"the normalised panel has no fingerprint of {first}..{last} ({label}): pass that "
                           f"window and label to normalise_panel") from None


def seen_span(splits, dates: np.ndarray) -> tuple[str, str]:
    """The dates that chose a model: its train part's first day to its selection (else valid) part's last."""
    parts = splits.dates(dates)
    return parts["train"][0], (parts.get("select") or parts["valid"])[1]


def normalise_panel(panel: Panel, clip: float = 5.0, x_dtype: str = "float32", windows: list | tuple = (),
                    labels: list[str] | None = None, *, consume: bool = False,
                    keep_raw: list[str] | tuple = ()) -> NormalisedPanel:
    """The panel's features normalised once (normalize_features), with the fingerprint of what each of
    `windows` (Splits) saw for each of `labels` (None: every label loaded): what every model trains from.

    consume=True is the driver's path to 2 x X (docs/data.md, "One normalised panel"): the raw features are
    not needed once normalised, so float32 storage is written over `panel.X` itself (other storages into a new,
    smaller array) and `panel.X` is set to None (a later reader of the raw features fails loudly instead of
    reading z-scores). `keep_raw`: feature columns kept raw beside Z (`raw`), copied before they are overwritten.
    """
    fingerprints = {}
    for splits in windows:  # hashes of the raw values: taken before they are normalised away
        first, last = seen_span(splits, panel.dates)
        for label in panel.labels if labels is None else labels:
            fingerprints[(first, last, label)] = seen_data_fingerprint(panel, first, last, list(panel.features),
                                                                      label)
    raw = {name: np.array(panel.X[:, :, panel.features.index(name)], dtype=np.float32)
           for name in keep_raw if name in panel.features}
    X = panel.X
    in_place = (consume and x_dtype == "float32" and isinstance(X, np.ndarray) and X.dtype == np.float32
                and X.flags.c_contiguous and X.flags.writeable)
    Z = normalize_features(X, panel.mask, clip=clip, dtype=x_dtype, out=X if in_place else None)
    if consume:
        panel.X = None
    del X
    return NormalisedPanel(Z=Z, mask=panel.mask, labels=panel.labels, dates=panel.dates, symbols=panel.symbols,
                           features=list(panel.features), clip=float(clip), x_dtype=x_dtype, meta=dict(panel.meta),
                           forward_returns=panel.forward_returns, fingerprints=fingerprints, raw=raw,
                           aux={c: panel.aux[c] for c in FLAG_COLUMNS if c in (getattr(panel, "aux", None) or {})})


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
    meta = _footer_meta(table.schema.metadata, str(path))
    table = table.replace_schema_metadata({k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"})
    return table.to_pandas(date_as_object=False), meta


def seen_data_fingerprint(panel: "Panel", first: str, last: str, features: list[str], label: str) -> str:
    """A hash of the data a model saw: the dates first..last, the symbols with a row there, their `features`
    and `label`, exactly as loaded. Checkpoints record it (with the two dates), so a scorer handed another
    market under the same path (an experiment re-run on other data, a copy whose panel was swapped) refuses,
    while a panel that only grew (new days, new listings) still matches: neither changes the seen part.

    Read in chunks of days (the hash is fed the same bytes in the same order): no copy of the whole range."""
    lo = int(np.searchsorted(panel.dates, np.datetime64(first, "D"), side="left"))
    hi = int(np.searchsorted(panel.dates, np.datetime64(last, "D"), side="right"))
    cols = [panel.features.index(f) for f in features]
    every = cols == list(range(panel.X.shape[2]))
    target = panel.label(label)[lo:hi]
    step = max(1, NORM_CHUNK_BYTES // max(1, panel.X.shape[1] * len(cols) * 4))
    chunks = [slice(d, min(d + step, hi)) for d in range(lo, hi, step)]

    def values(days: slice) -> np.ndarray:
        return panel.X[days] if every else panel.X[days][:, :, cols]

    # the symbols with a value there (whatever else was loaded: the mask depends on the features read)
    present = np.isfinite(target).any(axis=0)
    for days in chunks:
        present |= np.isfinite(values(days)).any(axis=(0, 2))
    digest = hashlib.blake2b(digest_size=8)
    digest.update(panel.dates[lo:hi].astype("datetime64[D]").astype(np.int64).tobytes())
    digest.update("\x00".join(map(str, panel.symbols[present])).encode())
    for days in chunks:
        digest.update(np.ascontiguousarray(values(days)[:, present], dtype=np.float32))
    digest.update(np.ascontiguousarray(target[:, present], dtype=np.float32))
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
    """Load a panel file into dense arrays: one column at a time, scattered into the cube.

    A Parquet file is read column by column with pyarrow (only the columns asked for), so the memory beyond
    the dense arrays is one column, not a pandas frame of the file (float64 where the file is); a CSV goes
    through pandas. `aux`: per-row non-feature columns to scatter into `panel.aux` (None: the metadata's
    "aux_columns")."""
    path = Path(path)
    where = str(path)
    source = _columns(path)
    meta, names = source.meta, source.names
    for col in ("date", "symbol"):
        if col not in names:
            raise CliError(f"{where}: missing column {col!r}")
    file_labels = list(meta.get("labels") or [c for c in names if _LABEL_RE.match(str(c))])
    file_features = list(
        meta.get("features")
        or [c for c in names if c not in NON_FEATURE_COLUMNS and c not in file_labels
            and not str(c).startswith("oracle_") and source.is_numeric(c)]
    )
    feats = list(features) if features is not None else file_features
    labs = list(labels) if labels is not None else file_labels
    for col in feats:
        if col not in names:
            raise CliError(f"{where}: missing feature column {col!r}")
    for col in labs:
        if col not in names:
            raise CliError(f"{where}: missing label column {col!r}")
    if not feats:
        raise CliError(f"{where}: no feature columns")
    for col in feats + labs:
        source.check_numeric(col)

    day_idx, uniq_dates = source.dates()
    sym_idx, uniq_syms = source.symbols()
    D, S, F = len(uniq_dates), len(uniq_syms), len(feats)
    cell = day_idx.astype(np.int64) * S + sym_idx
    if len(cell) and int(np.bincount(cell, minlength=D * S).max()) > 1:
        check_duplicates(uniq_dates[day_idx], uniq_syms[sym_idx], where)  # names the first few

    X = np.full((D, S, F), np.nan, dtype=np.float32)
    cells = X.reshape(D * S, F)
    row_ok = np.ones(len(cell), dtype=bool)
    for j, name in enumerate(feats):
        values = source.floats(name)
        cells[cell, j] = values
        row_ok &= np.isfinite(values)
        del values
    mask = np.zeros(D * S, dtype=bool)
    mask[cell] = row_ok
    mask = mask.reshape(D, S)

    def grid(name: str) -> np.ndarray:
        out = np.full(D * S, np.nan, dtype=np.float32)
        out[cell] = source.floats(name)
        return out.reshape(D, S)

    lab_arrays = {name: grid(name) for name in labs}
    # the 1-day forward returns, also when `labels` did not ask for them (the realised pnl needs them)
    returns_col = meta.get("returns") or (RETURNS if RETURNS in names else None)
    forward_returns = None
    if returns_col in lab_arrays:
        forward_returns = lab_arrays[returns_col]
    elif returns_col is not None and returns_col in names:
        source.check_numeric(returns_col)
        forward_returns = grid(returns_col)
    aux_arrays = {}
    for name in (meta.get("aux_columns") or []) if aux is None else aux:
        if name not in names:
            if aux is None:
                continue
            raise CliError(f"{where}: missing column {name!r}")
        if source.is_bool(name):
            flags = np.zeros(D * S, dtype=bool)
            flags[cell] = source.bools(name)
            aux_arrays[name] = flags.reshape(D, S)
        else:
            source.check_numeric(name)
            aux_arrays[name] = grid(name)
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


class _FrameColumns:
    """A CSV panel's columns (pandas: a CSV is parsed whole anyway), as load_panel reads them."""

    def __init__(self, df: pd.DataFrame, meta: dict, where: str):
        self.df, self.meta, self.where = df, meta, where
        self.names = list(df.columns)

    def is_numeric(self, name: str) -> bool:
        return bool(pd.api.types.is_numeric_dtype(self.df[name]))

    def is_bool(self, name: str) -> bool:
        return self.df[name].dtype == bool

    def check_numeric(self, name: str) -> None:
        check_numeric(self.df, [name], self.where)

    def floats(self, name: str) -> np.ndarray:
        return self.df[name].to_numpy(dtype=np.float32, na_value=np.nan)

    def bools(self, name: str) -> np.ndarray:
        return self.df[name].to_numpy(dtype=bool)

    def dates(self) -> tuple[np.ndarray, np.ndarray]:
        """(day index of each row, the sorted distinct dates)."""
        uniq, idx = np.unique(_parse_dates(self.df["date"], f"{self.where}: column 'date'"), return_inverse=True)
        return idx, uniq

    def symbols(self) -> tuple[np.ndarray, np.ndarray]:
        """(symbol index of each row, the sorted distinct symbols as str)."""
        col = self.df["symbol"]
        if col.isna().any():
            raise CliError(f"{self.where}: column 'symbol' has {int(col.isna().sum())} missing value(s)")
        uniq, idx = np.unique(col.astype(str).to_numpy(dtype=str), return_inverse=True)
        return idx, uniq


class _ParquetColumns(_FrameColumns):
    """A Parquet panel's columns, each read from the file when asked for (pyarrow; no pandas frame)."""

    def __init__(self, path: Path, where: str):
        try:
            self.file = pq.ParquetFile(path)
            schema = self.file.schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise CliError(f"{where}: not a readable Parquet file ({str(exc).splitlines()[0]})")
        self.where, self.names = where, list(schema.names)
        self.types = {f.name: f.type for f in schema}
        self.meta = _footer_meta(schema.metadata, where)

    def column(self, name: str) -> pa.ChunkedArray:
        try:
            return self.file.read(columns=[name], use_pandas_metadata=False).column(0)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CliError(f"{self.where}: not a readable Parquet file ({str(exc).splitlines()[0]})")

    def is_numeric(self, name: str) -> bool:
        t = self.types[name]
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)

    def is_bool(self, name: str) -> bool:
        return pa.types.is_boolean(self.types[name])

    def check_numeric(self, name: str) -> None:
        if not self.is_numeric(name):  # the one-line error names an example value: pandas' view of the column
            check_numeric(pd.DataFrame({name: self.column(name).to_pandas()}), [name], self.where)

    def floats(self, name: str) -> np.ndarray:
        col = self.column(name)
        values = (col.cast(pa.float32()) if pa.types.is_boolean(col.type) else col).to_numpy()  # nulls: NaN
        n_inf = int(np.isinf(values).sum()) if values.dtype.kind == "f" else 0
        if n_inf:
            raise CliError(f"{self.where}: column {name!r} has {n_inf} infinite value(s)")
        return values.astype(np.float32, copy=False)

    def bools(self, name: str) -> np.ndarray:
        return self.column(name).to_numpy(zero_copy_only=False).astype(bool)

    def dates(self) -> tuple[np.ndarray, np.ndarray]:
        col = self.column("date")
        if not pa.types.is_date(col.type):  # text or timestamps: pandas parses them (time zones dropped)
            uniq, idx = np.unique(_parse_dates(col.to_pandas(), f"{self.where}: column 'date'"), return_inverse=True)
            return idx, uniq
        if col.null_count:
            raise CliError(f"{self.where}: column 'date': {col.null_count} missing date(s)")
        col = col.cast(pa.date32())
        uniq = pc.unique(col)
        uniq = uniq.take(pc.array_sort_indices(uniq))
        return self._index(col, uniq), uniq.to_numpy(zero_copy_only=False).astype("datetime64[D]")

    def symbols(self) -> tuple[np.ndarray, np.ndarray]:
        col = self.column("symbol")
        if col.null_count:
            raise CliError(f"{self.where}: column 'symbol' has {col.null_count} missing value(s)")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type)):
            return self._frame("symbol", col).symbols()
        col = col.cast(pa.string())
        uniq = pc.unique(col)
        uniq = uniq.take(pc.array_sort_indices(uniq))  # UTF-8 byte order = code point order, as np.unique's
        return self._index(col, uniq), np.asarray(uniq.to_pylist(), dtype=str)

    def _frame(self, name: str, col: pa.ChunkedArray) -> _FrameColumns:
        return _FrameColumns(pd.DataFrame({name: col.to_pandas()}), self.meta, self.where)

    @staticmethod
    def _index(col: pa.ChunkedArray, uniq: pa.Array) -> np.ndarray:
        return pc.index_in(col, value_set=uniq).to_numpy().astype(np.int64)


def _footer_meta(metadata: dict | None, where: str) -> dict:
    raw = (metadata or {}).get(META_KEY.encode())
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CliError(f"{where}: metadata key {META_KEY!r} is not valid JSON")


def _columns(path: Path) -> _FrameColumns:
    """The file's columns as load_panel reads them: Parquet by pyarrow, one column at a time; CSV by pandas."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if "".join(path.suffixes).lower().endswith((".csv", ".csv.gz", ".txt")):
        df, meta = _read_table(path)
        return _FrameColumns(df, meta, str(path))
    return _ParquetColumns(path, str(path))


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
            # from_pandas: a missing value (pandas 3 keeps NaN through astype(str)) is written as null
            columns[col] = pa.array(s.astype(str).to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    write_parquet_atomic(pa.table(columns), path, metadata={META_KEY: meta})


# ----------------------------------------------------------------------------------------------- transforms
#: storage dtypes of a normalised cube (`training.x_dtype`): bfloat16 is kept as its uint16 bit pattern (numpy has
#: no bfloat16; the training loop views it as torch.bfloat16)
X_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
#: float32 bytes of one chunk of days in normalize_features: its temporaries are ~7 x this, whatever the panel
NORM_CHUNK_BYTES = 32 << 20


def normalize_features(X: np.ndarray, mask: np.ndarray, clip: float = 5.0, dtype: str = "float32",
                       out: np.ndarray | None = None) -> np.ndarray:
    """Per-date, per-feature robust z-score over the valid stocks, clipped to +-clip; invalid -> 0.0.

    Robust (median / MAD) because daily cross-sections have fat tails; when MAD is 0 (many ties) the
    standard deviation is used instead, and a constant cross-section becomes all 0.

    One vectorised pass over chunks of days (NORM_CHUNK_BYTES): every (day, feature) column is sorted along the
    stocks with NaN last and its median read at the middle of its valid count, then the same for the absolute
    deviations: the values of normalize_features_nanmedian (the definition; np.nanmedian loops in Python per
    column past 600 stocks), at ~7 chunks of extra memory instead of ~4 x X. `dtype` is the storage of the
    result (X_DTYPES; "bfloat16" as uint16 bits). `out`: where to write it, X itself included (each chunk is
    copied before its days are overwritten): normalising in place needs no second X.
    """
    if dtype not in X_DTYPES:
        raise CliError(f"x_dtype {dtype!r}: expected one of {', '.join(X_DTYPES)}")
    X, mask = np.asarray(X), np.asarray(mask, dtype=bool)
    D, S, F = X.shape
    if out is None:
        out = np.empty((D, S, F), dtype=X_DTYPES[dtype])
    elif out.shape != X.shape or out.dtype != X_DTYPES[dtype]:
        raise ValueError(f"out: {out.dtype} {out.shape}, expected {np.dtype(X_DTYPES[dtype])} {X.shape}")
    step = max(1, NORM_CHUNK_BYTES // max(1, S * F * 4))
    for lo in range(0, D, step):
        z = _robust_z(X[lo:lo + step], mask[lo:lo + step], clip)
        out[lo:lo + step] = _bfloat16_bits(z) if dtype == "bfloat16" else z
    return out


def _robust_z(X: np.ndarray, mask: np.ndarray, clip: float) -> np.ndarray:
    """normalize_features of a few days, as float32 (computed in place in one copy of them)."""
    x = np.array(X, dtype=np.float32)
    valid = mask[:, :, None] & np.isfinite(x)
    np.copyto(x, np.float32(np.nan), where=~valid)
    n = valid.sum(axis=1)                                    # [days, F] valid stocks per column
    cols = np.ascontiguousarray(x.transpose(0, 2, 1))        # [days, F, S]: each column contiguous
    cols.sort(axis=-1)                                       # NaN last
    med = _sorted_median(cols, n)
    np.subtract(cols, med[:, :, None], out=cols)
    np.abs(cols, out=cols)                                   # the deviations: their median needs no order
    cols.sort(axis=-1)
    mad = _sorted_median(cols, n) * MAD_SCALE
    del cols
    std = np.full_like(mad, np.nan)
    tied = (n > 0) & ~(mad > 1e-12)                          # MAD 0: the standard deviation instead
    if tied.any():
        days = np.nonzero(tied.any(axis=1))[0]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            std[days] = np.nanstd(x[days], axis=1)           # the layout np.nanstd saw before: the same bits
    scale = np.where(mad > 1e-12, mad, std)
    with np.errstate(all="ignore"):
        x -= med[:, None, :]
        x /= np.where(scale > 1e-12, scale, np.float32(np.inf))[:, None, :]
    np.clip(x, -clip, clip, out=x)
    np.copyto(x, np.float32(0.0), where=~valid)
    return x


def _sorted_median(cols: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median of the first n[...] entries of each sorted row of cols [..., S] (NaN where n is 0): the middle
    one, or the float32 mean of the middle two, exactly as np.median computes it."""
    upper = np.take_along_axis(cols, (n // 2)[..., None], axis=-1)[..., 0]
    lower = np.take_along_axis(cols, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    with np.errstate(all="ignore"):
        return np.where(n % 2 == 1, upper, (lower + upper) / np.float32(2)).astype(np.float32, copy=False)


def _bfloat16_bits(z: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even (finite input)."""
    bits = np.ascontiguousarray(z, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def normalize_features_nanmedian(X: np.ndarray, mask: np.ndarray, clip: float = 5.0) -> np.ndarray:
    """The definition normalize_features is tested against (and bench/scale_bench.py's "before"): the same
    robust z-score by np.nanmedian over the whole cube, ~17 s per GB of X and a peak of ~4.25 x X."""
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
