"""OHLCV table of any vendor -> panel: Alpha360-style daily features (data <= t) and a forward label (t+1..t+H).

The same feature code builds the synthetic market's OHLCV features, so a model trained on synthetic data sees
exactly the quantities it would see on real data. Everything is computed on wide [dates x symbols] frames
(one column per stock, NaN where a stock has no row), so there is no per-stock Python loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.data.panel import PANEL_VERSION, RETURNS, _parse_dates, check_duplicates
from crnn_ray.io import CliError

#: column aliases (lower-cased, spaces/dashes -> underscores) accepted for each OHLCV field
ALIASES = {
    "date": ["date", "datetime", "timestamp", "time", "trade_date", "trading_date", "day"],
    "symbol": ["symbol", "ticker", "instrument", "code", "secid", "permno", "asset", "stock", "name"],
    "open": ["open", "adj_open", "adjopen", "open_price", "o"],
    "high": ["high", "adj_high", "adjhigh", "high_price", "h"],
    "low": ["low", "adj_low", "adjlow", "low_price", "l"],
    "close": ["adj_close", "adjclose", "adjusted_close", "close_adj", "close", "price", "prc", "last", "c"],
    "volume": ["volume", "vol", "adj_volume", "adjvolume", "shares_traded", "v"],
}
PRICE_FIELDS = ("open", "high", "low", "close")
#: rolling window (days) of the slow close / volume features
ROLL = 20
#: default |daily move| that is flagged as suspicious: more than +100% or less than -50% (log 2)
DEFAULT_MAX_JUMP = 1.0


def feature_names(available: set[str] | list[str]) -> list[str]:
    """Feature columns produced from the available OHLCV fields (close is required)."""
    names = ["ret1", "ret5", "ma20_gap", "vol20"]
    names += [f for f, a in (("open_gap", "open"), ("high_rel", "high"), ("low_rel", "low"),
                             ("volume_rel", "volume")) if a in available]
    return names


def compute_features(wide: dict[str, pd.DataFrame], max_jump: float = DEFAULT_MAX_JUMP) -> tuple[dict, pd.DataFrame]:
    """Features from wide OHLCV frames [dates x symbols] (NaN = no row / halted); uses data <= t only.

    ret1      log(close_t / previous available close), clipped to +-log(1 + max_jump)
    ret5      log(close_t / close 5 rows earlier, last available)
    ma20_gap  log(close_t / mean of the last 20 available closes)
    vol20     std of ret1 over the last 20 days
    open_gap, high_rel, low_rel   log(open|high|low_t / close_t)   (Alpha360: prices relative to today's close)
    volume_rel  log(volume_t / mean volume over the last 20 days)
    Returns (features by name, suspect_jump flags).
    """
    close = wide["close"]
    prev_close = close.ffill().shift(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_ret = np.log(close / prev_close)
    cap = float(np.log1p(max_jump))
    jump = raw_ret.abs() > cap
    feats: dict[str, pd.DataFrame] = {}
    feats["ret1"] = raw_ret.clip(-cap, cap)
    with np.errstate(divide="ignore", invalid="ignore"):
        feats["ret5"] = np.log(close / close.ffill().shift(5))
        feats["ma20_gap"] = np.log(close / close.rolling(ROLL, min_periods=ROLL // 2).mean())
    feats["vol20"] = feats["ret1"].rolling(ROLL, min_periods=ROLL // 2).std()
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, field in (("open_gap", "open"), ("high_rel", "high"), ("low_rel", "low")):
            if field in wide:
                feats[name] = np.log(wide[field] / close)
        if "volume" in wide:
            vol = wide["volume"]
            feats["volume_rel"] = np.log(vol / vol.rolling(ROLL, min_periods=ROLL // 4).mean())
    present = close.notna()
    for name in feats:
        feats[name] = feats[name].where(present)
    return feats, jump & present


def forward_return(close: pd.DataFrame, horizon: int, jump: pd.DataFrame | None = None) -> pd.DataFrame:
    """close_{t+H} / close_t - 1 on the panel calendar; NaN if either end is missing or a jump is inside."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = close.shift(-horizon) / close - 1.0
    if jump is not None:
        # a flagged jump on any of t+1..t+H makes the label suspect: drop it rather than train on a bad tick
        future_jump = jump.astype(float)[::-1].rolling(horizon, min_periods=1).max()[::-1].shift(-1)
        y = y.where(~(future_jump.fillna(0) > 0))
    return y


def _normalise_name(name: Any) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def resolve_columns(columns: list[Any], date_col: str | None = None, symbol_col: str | None = None,
                    where: str = "ohlcv") -> dict[str, Any]:
    """Map each OHLCV field to a column of the table (case-insensitive, with aliases)."""
    by_norm: dict[str, Any] = {}
    for c in columns:
        by_norm.setdefault(_normalise_name(c), c)
    found: dict[str, Any] = {}
    for field, explicit in (("date", date_col), ("symbol", symbol_col)):
        if explicit is not None:
            if _normalise_name(explicit) not in by_norm:
                raise CliError(f"{where}: missing column {explicit!r} (--{field}-col)")
            found[field] = by_norm[_normalise_name(explicit)]
    for field, aliases in ALIASES.items():
        if field in found:
            continue
        for a in aliases:
            if a in by_norm and by_norm[a] not in found.values():
                found[field] = by_norm[a]
                break
    for field in ("date", "symbol", "close"):
        if field not in found:
            raise CliError(f"{where}: missing column {field!r} (accepted names: {', '.join(ALIASES[field][:5])})")
    return found


def ingest_ohlcv(df: pd.DataFrame, horizon: int = 5, *, date_col: str | None = None, symbol_col: str | None = None,
                 max_jump: float = DEFAULT_MAX_JUMP, where: str = "ohlcv") -> tuple[pd.DataFrame, dict]:
    """Long OHLCV table -> (panel long table, metadata). See docs/data.md for the column rules."""
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise CliError(f"--horizon must be a positive integer (got {horizon!r})")
    if not np.isfinite(max_jump) or max_jump <= 0:
        raise CliError(f"--max-jump must be a positive number (got {max_jump!r})")
    if len(df) == 0:
        raise CliError(f"{where}: no rows")
    cols = resolve_columns(list(df.columns), date_col, symbol_col, where)
    fields = [f for f in ("open", "high", "low", "close", "volume") if f in cols]

    values: dict[str, np.ndarray] = {}
    for f in fields:
        s = df[cols[f]]
        if s.dtype == bool or not pd.api.types.is_numeric_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            bad = s[num.isna() & s.notna() & (s.astype(str).str.strip() != "")]
            if len(bad) or s.dtype == bool:
                first = bad.iloc[0] if len(bad) else s.iloc[0]
                raise CliError(f"{where}: column {cols[f]!r} is not numeric (dtype {s.dtype}, e.g. {first!r})")
            s = num
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        n_inf = int(np.isinf(v).sum())
        if n_inf:
            raise CliError(f"{where}: column {cols[f]!r} has {n_inf} infinite value(s)")
        if f == "volume":
            if (v < 0).any():
                raise CliError(f"{where}: column {cols[f]!r} has {int((v < 0).sum())} negative value(s)")
        elif (v <= 0).any():
            raise CliError(f"{where}: column {cols[f]!r} has {int((v <= 0).sum())} non-positive price(s)")
        values[f] = v

    dates = _parse_dates(df[cols["date"]], f"{where}: column {cols['date']!r}")
    sym_series = df[cols["symbol"]]
    if sym_series.isna().any():
        raise CliError(f"{where}: column {cols['symbol']!r} has {int(sym_series.isna().sum())} missing value(s)")
    symbols = sym_series.astype(str).to_numpy(dtype=object)
    check_duplicates(dates, symbols, where)

    uniq_dates, di = np.unique(dates, return_inverse=True)
    uniq_syms, si = np.unique(symbols.astype(str), return_inverse=True)
    D, S = len(uniq_dates), len(uniq_syms)

    def to_wide(v: np.ndarray) -> pd.DataFrame:
        arr = np.full((D, S), np.nan)
        arr[di, si] = v
        return pd.DataFrame(arr)

    wide = {f: to_wide(values[f]) for f in fields}
    # a zero-volume day did not trade: its price is stale, so it is treated as a halted day
    zero_volume = wide["volume"] == 0 if "volume" in wide else pd.DataFrame(False, index=range(D), columns=range(S))
    if "volume" in wide:
        for f in fields:
            wide[f] = wide[f].where(~zero_volume)
    feats, jump = compute_features(wide, max_jump=max_jump)
    label = f"y{int(horizon)}"
    y = forward_return(wide["close"], int(horizon), jump)
    # the 1-day forward return (same rules: calendar, missing ends, jumps) realises the pnl of H-day books
    y_1 = y if label == RETURNS else forward_return(wide["close"], 1, jump)

    names = feature_names(set(fields))
    out = {"date": uniq_dates[di], "symbol": uniq_syms[si].astype(object)}
    for name in names:
        out[name] = feats[name].to_numpy()[di, si].astype(np.float32)
    out[label] = y.to_numpy()[di, si].astype(np.float32)
    if label != RETURNS:
        out[RETURNS] = y_1.to_numpy()[di, si].astype(np.float32)
    for f in fields:
        out[f] = values[f]
    out["suspect_jump"] = jump.to_numpy()[di, si]
    panel = pd.DataFrame(out).sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)

    meta = {
        "version": PANEL_VERSION,
        "features": names,
        "labels": [label] + ([RETURNS] if label != RETURNS else []),
        "horizons": {label: int(horizon), RETURNS: 1},
        "returns": RETURNS,
        "source": "ingest",
        "params": {"max_jump": float(max_jump), "columns": {k: str(v) for k, v in cols.items()},
                   "n_suspect_jumps": int(jump.to_numpy().sum()), "n_zero_volume_rows": int(zero_volume.to_numpy().sum())},
    }
    return panel, meta


def read_ohlcv(path) -> pd.DataFrame:
    """Read a vendor file: CSV (optionally gzipped) or Parquet."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise CliError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
