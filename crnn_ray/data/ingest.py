"""OHLCV table of any vendor -> panel: Alpha360-style daily features (data <= t) and a lagged forward label.

Real vendor files are messy, so ingest goes in steps, each on wide [dates x symbols] frames (one column per
stock, NaN where a stock has no row) so that there is no per-stock Python loop:

1. validate: every problem of the file is collected and reported at once, in one line; input that cannot be
   used (no parsable date, no close column, non-numeric or infinite values, duplicate keys) stops here;
2. repair: placeholder rows (every price <= 0 or missing) become halted days, a non-positive open / high / low
   becomes missing for that field, a negative volume becomes missing; each kind is counted (`meta["repairs"]`)
   and `strict=True` refuses them instead;
3. corporate actions: a `factor` column (adjusted = raw * factor) or `adj_close` beside `close` adjusts the
   prices; what is left is checked for moves beyond asymmetric limits: reversed within a few days it is a bad
   print (flagged `suspect_jump`, as before), otherwise a break (a likely split): features restart there and
   no label spans it;
4. features from data <= t (the same code builds the synthetic market's OHLCV features);
5. labels: yH = close_{t+L+H} / close_{t+L} - 1 with L = label_lag (decide at close t, trade at close t+L),
   and the 1-day return y1 = close_{t+L+1} / close_{t+L} - 1 that realises the pnl of the H-day books;
6. universe filters (price, traded value, stale prices): rows out of the universe keep their features but
   get no label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.data.panel import PANEL_VERSION, RETURNS, label_coverage
from crnn_ray.io import CliError

#: column aliases (lower-cased, spaces/dashes -> underscores) accepted for each field
ALIASES = {
    "date": ["date", "datetime", "timestamp", "time", "trade_date", "trading_date", "day"],
    "symbol": ["symbol", "ticker", "instrument", "code", "secid", "permno", "asset", "stock", "name"],
    "open": ["open", "open_price", "o", "adj_open", "adjopen"],
    "high": ["high", "high_price", "h", "adj_high", "adjhigh"],
    "low": ["low", "low_price", "l", "adj_low", "adjlow"],
    "close": ["close", "close_price", "price", "prc", "last", "c"],
    "adj_close": ["adj_close", "adjclose", "adjusted_close", "close_adj"],
    "factor": ["factor", "adj_factor", "adjfactor", "adjustment_factor"],
    "volume": ["volume", "vol", "shares_traded", "v", "adj_volume", "adjvolume"],
}
PRICE_FIELDS = ("open", "high", "low", "close")
NUMERIC_FIELDS = ("open", "high", "low", "close", "adj_close", "factor", "volume")
#: rolling window (days) of the slow close / volume features
ROLL = 20
#: default limits of a one-day close-to-close move: beyond them it is a bad print (reversed) or a break (kept).
#: Up +100 % catches 1:2 reverse splits and bad ticks; down -40 % (not -50 %) catches a 2:1 split even on a day
#: the stock rose 20 % (0.5 x 1.2 = -40 %). A 3:2 split (-33 %) needs an exchange-specific limit or a factor.
DEFAULT_MAX_UP = 1.0
DEFAULT_MAX_DOWN = 0.4
#: a beyond-limit move that comes back more than halfway (in log terms) within this many days is a bad print
DEFAULT_REVERSAL_DAYS = 3
#: decide at close t, trade at close t+1: the label starts one day after the features end
DEFAULT_LABEL_LAG = 1
#: trailing window (days) of the liquidity and stale-price filters
DEFAULT_LIQUIDITY_WINDOW = 20
#: per-row trailing median of close * volume (raw prices), a non-feature column for liquidity splits
LIQUIDITY = "traded_value_med"
#: per-row bool: the row passed the universe filters on its date (labels are NaN where it did not)
UNIVERSE = "universe"
#: repair kinds, in report order: (kind, what is counted, the field whose column is named)
REPAIR_KINDS = (
    ("placeholder", "row", None),        # every price <= 0 or missing (at least one <= 0): halted day, no row
    ("bad_close", "row", "close"),       # close <= 0 while another price is positive: halted day, no row
    ("bad_open", "value", "open"),       # <= 0: missing (that field only)
    ("bad_high", "value", "high"),
    ("bad_low", "value", "low"),
    ("negative_volume", "value", "volume"),
    ("bad_factor", "row", "factor"),     # factor <= 0 or missing: the prices cannot be adjusted, no row
    ("bad_adj_close", "row", "adj_close"),
)
UNIVERSE_FILTERS = ("min_price", "min_traded_value", "max_stale_share")
#: how many (date, symbol) examples a problem or a repair names
N_EXAMPLES = 3


# ------------------------------------------------------------------------------------------------ features
def feature_names(available: set[str] | list[str]) -> list[str]:
    """Feature columns produced from the available OHLCV fields (close is required)."""
    names = ["ret1", "ret5", "ma20_gap", "vol20"]
    names += [f for f, a in (("open_gap", "open"), ("high_rel", "high"), ("low_rel", "low"),
                             ("volume_rel", "volume")) if a in available]
    return names


def move_limits(max_up: float, max_down: float) -> tuple[float, float]:
    """(lo, hi) log-return bounds of an ordinary day: log(1 - max_down), log(1 + max_up)."""
    return float(np.log1p(-max_down)), float(np.log1p(max_up))


def limits_from_max_jump(max_jump: float) -> tuple[float, float]:
    """The old symmetric --max-jump J (|log move| > log(1 + J)) as (max_up, max_down) = (J, J / (1 + J))."""
    return float(max_jump), float(max_jump) / (1.0 + float(max_jump))


def _features(wide: dict[str, pd.DataFrame], lo: float, hi: float) -> dict[str, pd.DataFrame]:
    """The feature formulas on wide frames; column-wise only (so they can run on per-segment columns)."""
    close = wide["close"]
    prev_close = close.ffill().shift(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_ret = np.log(close / prev_close)
    feats: dict[str, pd.DataFrame] = {}
    feats["ret1"] = raw_ret.clip(lo, hi)
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
    return {name: f.where(present) for name, f in feats.items()}


def _by_segment(wide: dict[str, pd.DataFrame], restarts: pd.DataFrame, fn) -> dict[str, pd.DataFrame]:
    """fn(wide) with every stock's series restarted on its `restarts` days: no window reaches back across one.

    Each (stock, segment) of a stock with restarts becomes its own column (NaN outside the segment), fn runs once
    on those columns, and each row takes the value of its own segment's column; stocks without a break keep
    fn's plain result. Vectorised: two fancy indexes, no loop over stocks or breaks."""
    seg = np.cumsum(restarts.to_numpy(dtype=bool), axis=0)  # [D, S] segment number of each row
    n_seg = seg[-1] + 1
    out = fn(wide)
    cols = np.flatnonzero(n_seg > 1)
    if len(cols) == 0:
        return out
    counts = n_seg[cols]
    starts = np.cumsum(counts) - counts
    col_of = np.repeat(cols, counts)
    seg_of = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    own = seg[:, col_of] == seg_of[None, :]
    expanded = {k: pd.DataFrame(np.where(own, v.to_numpy(dtype=np.float64)[:, col_of], np.nan)) for k, v in wide.items()}
    part = fn(expanded)
    pick = starts[None, :] + seg[:, cols]
    rows = np.arange(seg.shape[0])[:, None]
    result = {}
    for name, frame in out.items():
        arr = frame.to_numpy(dtype=np.float64).copy()
        arr[:, cols] = part[name].to_numpy(dtype=np.float64)[rows, pick]
        result[name] = pd.DataFrame(arr, index=frame.index, columns=frame.columns)
    return result


def compute_features(wide: dict[str, pd.DataFrame], max_up: float = 1.0, max_down: float = 0.5, *,
                     restarts: pd.DataFrame | None = None, max_jump: float | None = None) -> tuple[dict, pd.DataFrame]:
    """Features from wide OHLCV frames [dates x symbols] (NaN = no row / halted); uses data <= t only.

    ret1      log(close_t / previous available close), clipped to [log(1 - max_down), log(1 + max_up)]
    ret5      log(close_t / close 5 rows earlier, last available)
    ma20_gap  log(close_t / mean of the last 20 available closes)
    vol20     std of ret1 over the last 20 days
    open_gap, high_rel, low_rel   log(open|high|low_t / close_t)   (Alpha360: prices relative to today's close)
    volume_rel  log(volume_t / mean volume over the last 20 days)
    `restarts` (bool [D, S]): each stock's series restarts on those days (no feature looks back across one;
    ingest restarts at every move beyond the limits, see classify_moves)
    The default limits (+100 % / -50 %, i.e. |log move| > log 2) are the synthetic market's; ingest passes its own.
    Returns (features by name, flags of the moves beyond the limits).
    """
    if max_jump is not None:
        max_up, max_down = limits_from_max_jump(max_jump)
    lo, hi = move_limits(max_up, max_down)
    close = wide["close"]
    with np.errstate(divide="ignore", invalid="ignore"):
        raw_ret = np.log(close / close.ffill().shift(1))
    jump = ((raw_ret > hi) | (raw_ret < lo)) & close.notna()
    if restarts is None or not restarts.to_numpy(dtype=bool).any():
        feats = _features(wide, lo, hi)
    else:
        feats = _by_segment(wide, restarts, lambda w: _features(w, lo, hi))
    return feats, jump


def classify_moves(close: pd.DataFrame, max_up: float = DEFAULT_MAX_UP, max_down: float = DEFAULT_MAX_DOWN,
                   reversal_days: int = DEFAULT_REVERSAL_DAYS) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(bad_print, breaks, restarts): bool [D, S] flags from the one-day moves beyond the limits.

    bad_print  a move on day b beyond the limits whose close comes back more than halfway (in log terms) to
               the close before it within `reversal_days` rows: the days b .. the day it came back (a bad tick
               must be neither a feature nor a target)
    breaks     a beyond-limit move that stays: a split or other corporate action the file does not adjust for
               (or, rarely, a real crash or rally) across which no return can be trusted; a move on the last
               rows, with nothing after it to judge, is a break
    restarts   where the features restart: every beyond-limit move, and the day a bad print came back. Both
               are known on the day itself, so the features stay causal (telling a bad print from a break
               needs the days after it, which only the labels may look at).
    """
    prev = close.ffill().shift(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(close / prev)
    lo, hi = move_limits(max_up, max_down)
    exceed = (((r > hi) | (r < lo)) & close.notna()).to_numpy()
    frame = lambda a: pd.DataFrame(a, index=close.index, columns=close.columns)
    if not exceed.any():
        return frame(np.zeros(close.shape, dtype=bool)), frame(np.zeros(close.shape, dtype=bool)), frame(exceed)
    half = (r.abs() / 2).to_numpy()
    first = np.full(close.shape, reversal_days + 1)
    for k in range(1, reversal_days + 1):  # the first day k after b whose close is back more than halfway
        with np.errstate(divide="ignore", invalid="ignore"):
            back = np.abs(np.log(close.shift(-k) / prev).to_numpy()) < half
        first = np.where(exceed & back & (first > reversal_days), k, first)
    spike = exceed & (first <= reversal_days)
    episode, came_back = spike.copy(), np.zeros_like(spike)
    for k in range(1, min(reversal_days, len(first) - 1) + 1):
        episode[k:] |= (spike & (first >= k))[:-k]
        came_back[k:] |= (spike & (first == k))[:-k]
    present = close.notna().to_numpy()
    return frame(episode & present), frame(exceed & ~episode), frame((exceed | came_back) & present)


def forward_return(close: pd.DataFrame, horizon: int, jump: pd.DataFrame | None = None, *,
                   lag: int = 0) -> pd.DataFrame:
    """close_{t+lag+H} / close_{t+lag} - 1 on the panel calendar.

    NaN if either end is missing or a flagged day (a bad print, a break) lies in t+lag+1 .. t+lag+H: a return
    over a bad tick or a split is no target."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = close.shift(-(lag + horizon)) / close.shift(-lag) - 1.0
    if jump is not None:
        future_jump = jump.astype(float)[::-1].rolling(horizon, min_periods=1).max()[::-1].shift(-(1 + lag))
        y = y.where(~(future_jump.fillna(0) > 0))
    return y


def universe_filters(close: pd.DataFrame, volume: pd.DataFrame | None, *, min_price: float = 0.0,
                     min_traded_value: float = 0.0, window: int = DEFAULT_LIQUIDITY_WINDOW,
                     max_stale_share: float | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None]:
    """({filter: bool [D, S] rows failing it}, trailing median traded value), from raw prices, data <= t only.

    min_price          close_t < min_price
    min_traded_value   median of close * volume over the last `window` days (>= window/2 rows) < the bound,
                       or unknown (too little history)
    max_stale_share    share of the last `window` days' rows with the close unchanged or no volume > the bound,
                       or unknown
    A filter that is off (0 / None) fails nothing. Absent rows fail nothing (they have no label anyway)."""
    present = close.notna()
    min_periods = max(1, window // 2)
    med = None
    if volume is not None:
        med = (close * volume).rolling(window, min_periods=min_periods).median().where(present)
    fails = {name: pd.DataFrame(False, index=close.index, columns=close.columns) for name in UNIVERSE_FILTERS}
    if min_price > 0:
        fails["min_price"] = (close < min_price) & present
    if min_traded_value > 0:
        fails["min_traded_value"] = ~(med >= min_traded_value) & present
    if max_stale_share is not None:
        stale = close.eq(close.ffill().shift(1))
        if volume is not None:
            stale |= volume.eq(0)
        share = stale.astype(float).where(present).rolling(window, min_periods=min_periods).mean()
        fails["max_stale_share"] = ~(share <= max_stale_share) & present
    return fails, med


# --------------------------------------------------------------------------------------------- the columns
def _normalise_name(name: Any) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def resolve_columns(columns: list[Any], date_col: str | None = None, symbol_col: str | None = None,
                    where: str = "ohlcv") -> dict[str, Any]:
    """Map each field to a column of the table (case-insensitive, with aliases).

    A file with an adjusted close but no raw close uses the adjusted one as its close (nothing to adjust)."""
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
    if "close" not in found and "adj_close" in found:
        found["close"] = found.pop("adj_close")
    for field in ("date", "symbol", "close"):
        if field not in found:
            names = ALIASES[field][:5] + (ALIASES["adj_close"][:2] if field == "close" else [])
            raise CliError(f"{where}: missing column {field!r} (accepted names: {', '.join(names)})")
    return found


# ---------------------------------------------------------------------------------------------- validation
class _Rows:
    """The input rows' keys, to name (date, symbol) examples of a problem in (date, symbol) order."""

    def __init__(self, raw_dates: pd.Series, dates: np.ndarray, symbols: pd.Series):
        self.raw_dates = raw_dates.reset_index(drop=True)
        self.dates = dates
        self.symbols = symbols.reset_index(drop=True)

    def first(self, mask: np.ndarray, n: int = N_EXAMPLES) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if len(idx) > 1:
            d = self.dates[idx]
            key = pd.DataFrame({"d": np.where(np.isnat(d), np.iinfo(np.int64).max, d.astype("int64")),
                                "s": self.symbols.iloc[idx].astype(str).to_numpy()})
            idx = idx[key.sort_values(["d", "s"], kind="stable").index.to_numpy()[:n]]
        return idx

    def name(self, i: int) -> str:
        d = self.dates[i]
        day = str(d) if not np.isnat(d) else repr(self.raw_dates.iloc[i])
        return f"({day}, {self.symbols.iloc[i]})"

    def examples(self, mask: np.ndarray, values: pd.Series | None = None) -> str:
        idx = self.first(mask)
        shown = [self.name(i) + (f" {values.iloc[i]!r}" if values is not None else "") for i in idx]
        return ", ".join(shown) + (", ..." if mask.sum() > len(idx) else "")


def _parse_date_column(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(datetime64[D] with NaT, mask of the non-missing values that do not parse)."""
    try:
        parsed = pd.to_datetime(raw, errors="raise")
        bad = np.zeros(len(raw), dtype=bool)
    except (ValueError, TypeError, OverflowError):
        parsed = pd.to_datetime(raw, errors="coerce")
        bad = (parsed.isna() & raw.notna()).to_numpy()
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.to_numpy().astype("datetime64[D]"), bad


def _numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of entries that are not numbers: text that does not parse, booleans)."""
    if s.dtype == bool:
        return np.full(len(s), np.nan), np.ones(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(s), dtype=bool)
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.isna() & s.notna() & (s.astype(str).str.strip() != "")).to_numpy()
    return num.to_numpy(dtype=np.float64, na_value=np.nan), bad


def _validate(df: pd.DataFrame, cols: dict, fields: list[str], where: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, _Rows]:
    """Parse and check the whole table; one CliError naming every problem, or (values, dates, symbols, rows)."""
    problems: list[str] = []
    raw_dates = df[cols["date"]]
    dates, unparsable = _parse_date_column(raw_dates)
    sym = df[cols["symbol"]]
    rows = _Rows(raw_dates, dates, sym)
    if unparsable.any():
        first = raw_dates.iloc[int(np.flatnonzero(unparsable)[0])]
        problems.append(f"column {cols['date']!r}: unparsable date {first!r} ({int(unparsable.sum())} row(s), "
                        f"e.g. {rows.examples(unparsable)})")
    if np.isnat(dates).all():
        raise CliError(f"{where}: column {cols['date']!r}: no parsable date (first value {raw_dates.iloc[0]!r})")
    missing_date = np.isnat(dates) & ~unparsable
    if missing_date.any():
        problems.append(f"column {cols['date']!r}: {int(missing_date.sum())} missing date(s) "
                        f"(symbols {', '.join(map(str, sym[missing_date].astype(str).unique()[:N_EXAMPLES]))})")
    missing_sym = sym.isna().to_numpy()
    if missing_sym.any():
        problems.append(f"column {cols['symbol']!r} has {int(missing_sym.sum())} missing value(s), at "
                        f"{rows.examples(missing_sym)}")
    values: dict[str, np.ndarray] = {}
    for field in fields:
        s = df[cols[field]].reset_index(drop=True)
        v, bad = _numeric(s)
        if s.dtype == bool:
            problems.append(f"column {cols[field]!r} is not numeric (dtype bool)")
        elif bad.any():
            problems.append(f"column {cols[field]!r} is not numeric: {int(bad.sum())} value(s), first "
                            f"{rows.examples(bad, s)}")
        inf = np.isinf(v)
        if inf.any():
            problems.append(f"column {cols[field]!r} has {int(inf.sum())} infinite value(s), first {rows.examples(inf)}")
            v = np.where(inf, np.nan, v)
        values[field] = v
    symbols = sym.astype(str).to_numpy(dtype=object)
    keyed = ~np.isnat(dates) & ~missing_sym
    keys = pd.DataFrame({"date": dates, "symbol": symbols})
    dup = keys.duplicated(keep="first").to_numpy() & keyed
    if dup.any():
        problems.append(f"{int(dup.sum())} duplicate (date, symbol) row(s), first: {rows.examples(dup)}")
    if problems:
        head = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise CliError(f"{where}: {head}" + "; ".join(problems))
    return values, dates, symbols, rows


def _repairs(values: dict[str, np.ndarray], cols: dict, adjust_col: str | None) -> tuple[dict, np.ndarray]:
    """({kind: bool mask of the input rows it touches}, rows to drop), and the values repaired in place."""
    prices = [f for f in PRICE_FIELDS if f in values]
    nonpos = {f: values[f] <= 0 for f in prices}  # NaN compares False
    missing = {f: np.isnan(values[f]) for f in prices}
    all_bad = np.logical_and.reduce([nonpos[f] | missing[f] for f in prices])
    empty = np.logical_and.reduce([missing[f] for f in prices])  # no price at all: an absent row, not a repair
    kinds = {"placeholder": all_bad & ~empty}
    kinds["bad_close"] = nonpos["close"] & ~kinds["placeholder"]
    gone = empty | kinds["placeholder"] | kinds["bad_close"] | missing["close"]
    for f in ("open", "high", "low"):
        kinds[f"bad_{f}"] = (nonpos[f] & ~gone) if f in values else np.zeros(len(gone), dtype=bool)
        if f in values:
            values[f] = np.where(nonpos[f], np.nan, values[f])
    if "volume" in values:
        kinds["negative_volume"] = (values["volume"] < 0) & ~gone
        values["volume"] = np.where(values["volume"] < 0, np.nan, values["volume"])
    else:
        kinds["negative_volume"] = np.zeros(len(gone), dtype=bool)
    for f in ("factor", "adj_close"):
        if f == adjust_col:
            kinds[f"bad_{f}"] = ~(values[f] > 0) & ~gone
            gone = gone | kinds[f"bad_{f}"]
        else:
            kinds[f"bad_{f}"] = np.zeros(len(gone), dtype=bool)
    return kinds, gone


def _repair_text(kinds: dict[str, np.ndarray], cols: dict, rows: _Rows) -> list[str]:
    """One phrase per repair kind that happened: count, unit, column and the first (date, symbol) examples."""
    out = []
    for kind, unit, field in REPAIR_KINDS:
        mask = kinds.get(kind)
        if mask is None or not mask.any():
            continue
        col = f" in column {cols[field]!r}" if field is not None and field in cols else ""
        out.append(f"{kind} {int(mask.sum())} {unit}(s){col}, first {rows.examples(mask)}")
    return out


def _check_settings(horizon, label_lag, max_up, max_down, reversal_days, min_price, min_traded_value,
                    liquidity_window, max_stale_share) -> None:
    def integer(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not integer(horizon) or horizon < 1:
        raise CliError(f"--horizon must be a positive integer (got {horizon!r})")
    if not integer(label_lag) or label_lag < 0:
        raise CliError(f"--label-lag must be an integer >= 0 (got {label_lag!r})")
    if not np.isfinite(max_up) or max_up <= 0:
        raise CliError(f"--max-up must be a positive number (got {max_up!r}; 1.0 = +100 %)")
    if not np.isfinite(max_down) or not 0 < max_down < 1:
        raise CliError(f"--max-down must be in (0, 1) (got {max_down!r}; 0.4 = -40 %)")
    if not integer(reversal_days) or reversal_days < 1:
        raise CliError(f"--reversal-days must be a positive integer (got {reversal_days!r})")
    for name, v in (("--min-price", min_price), ("--min-traded-value", min_traded_value)):
        if not np.isfinite(v) or v < 0:
            raise CliError(f"{name} must be a number >= 0 (got {v!r}; 0 = off)")
    if not integer(liquidity_window) or liquidity_window < 2:
        raise CliError(f"--liquidity-window must be an integer >= 2 (got {liquidity_window!r})")
    if max_stale_share is not None and not (np.isfinite(max_stale_share) and 0 <= max_stale_share <= 1):
        raise CliError(f"--max-stale-share must be in [0, 1] (got {max_stale_share!r})")


# ------------------------------------------------------------------------------------------------- ingest
def ingest_ohlcv(df: pd.DataFrame, horizon: int = 5, *, date_col: str | None = None, symbol_col: str | None = None,
                 label_lag: int = DEFAULT_LABEL_LAG, max_up: float = DEFAULT_MAX_UP,
                 max_down: float = DEFAULT_MAX_DOWN, reversal_days: int = DEFAULT_REVERSAL_DAYS,
                 adjust: bool = True, strict: bool = False, min_price: float = 0.0, min_traded_value: float = 0.0,
                 liquidity_window: int = DEFAULT_LIQUIDITY_WINDOW, max_stale_share: float | None = None,
                 max_jump: float | None = None, where: str = "ohlcv") -> tuple[pd.DataFrame, dict]:
    """Long OHLCV table -> (panel long table, metadata). See docs/data.md for the rules.

    `max_jump` (deprecated): the old symmetric limit, read as max_up = J, max_down = J / (1 + J)."""
    if max_jump is not None:
        if not np.isfinite(max_jump) or max_jump <= 0:
            raise CliError(f"--max-jump must be a positive number (got {max_jump!r})")
        max_up, max_down = limits_from_max_jump(max_jump)
    _check_settings(horizon, label_lag, max_up, max_down, reversal_days, min_price, min_traded_value,
                    liquidity_window, max_stale_share)
    H, L = int(horizon), int(label_lag)
    if len(df) == 0:
        raise CliError(f"{where}: no rows")
    cols = resolve_columns(list(df.columns), date_col, symbol_col, where)
    if (min_traded_value > 0) and "volume" not in cols:
        raise CliError(f"{where}: --min-traded-value needs a volume column (none of {', '.join(ALIASES['volume'][:3])})")
    adjust_col = None if not adjust else ("factor" if "factor" in cols else "adj_close" if "adj_close" in cols else None)

    # --- 1. validate everything, 2. repair (or refuse, strict) -----------------------------------------------
    used = [f for f in ("open", "high", "low", "close", "volume") if f in cols] + ([adjust_col] if adjust_col else [])
    values, dates, symbols, rows = _validate(df, cols, used, where)
    kinds, gone = _repairs(values, cols, adjust_col)
    repaired = _repair_text(kinds, cols, rows)
    if strict and repaired:
        raise CliError(f"{where}: --strict: {len(repaired)} kind(s) of repair refused: " + "; ".join(repaired))
    keep = ~gone
    if not keep.any():
        raise CliError(f"{where}: column {cols['close']!r}: no row with a positive close")

    uniq_dates, di = np.unique(dates[keep], return_inverse=True)
    uniq_syms, si = np.unique(symbols[keep].astype(str), return_inverse=True)
    D, S = len(uniq_dates), len(uniq_syms)

    def to_wide(v: np.ndarray) -> pd.DataFrame:
        arr = np.full((D, S), np.nan)
        arr[di, si] = v[keep]
        return pd.DataFrame(arr)

    raw = {f: to_wide(values[f]) for f in NUMERIC_FIELDS if f in values}

    # --- 3. corporate actions: the file's adjustment, then what is left beyond the limits ----------------------
    ratio = None
    if adjust_col == "factor":
        ratio = raw["factor"]
    elif adjust_col == "adj_close":
        ratio = raw["adj_close"] / raw["close"]
    pre_adjusted = {f for f in ("open", "high", "low", "volume") if f in cols and _normalise_name(cols[f]).startswith("adj")}
    px = {}
    for f in ("open", "high", "low", "close"):
        if f in raw:
            px[f] = raw[f] * ratio if ratio is not None and f not in pre_adjusted else raw[f]
    if "volume" in raw:  # shares scale inversely: close * volume (traded value) is unchanged
        px["volume"] = raw["volume"] / ratio if ratio is not None and "volume" not in pre_adjusted else raw["volume"]
    # a zero-volume day did not trade: its price is stale, so it is treated as a halted day
    zero_volume = raw["volume"].eq(0) if "volume" in raw else pd.DataFrame(False, index=range(D), columns=range(S))
    if "volume" in raw:
        px = {f: v.where(~zero_volume) for f, v in px.items()}
    bad_print, breaks, restarts = classify_moves(px["close"], max_up, max_down, reversal_days)

    # --- 4. features (restarted at every beyond-limit move), 5. labels (lagged; none across a bad print or a
    # break) -----------------------------------------------------------------------------------------------
    feats, _ = compute_features(px, max_up, max_down, restarts=restarts)
    label = f"y{H}"
    flagged = bad_print | breaks
    y = forward_return(px["close"], H, flagged, lag=L)
    # the 1-day return the books formed on t..t-H+1 earn on day t: close t+L -> t+L+1 (same rules)
    y_1 = forward_return(px["close"], 1, flagged, lag=L)

    # --- 6. universe: filters on the raw (traded) prices; out -> no label, features kept ----------------------
    fails, liquidity = universe_filters(raw["close"], raw.get("volume"), min_price=min_price,
                                        min_traded_value=min_traded_value, window=liquidity_window,
                                        max_stale_share=max_stale_share)
    out_of = np.logical_or.reduce([fails[n].to_numpy() for n in UNIVERSE_FILTERS])
    y = y.where(~out_of)
    if label == RETURNS:
        y_1 = y
    # y1 (H > 1) keeps out-of-universe rows: a book formed while a stock was in the universe still earns its
    # return on the days it is held, whether or not the stock passes the filters then

    names = feature_names(set(px))
    out = {"date": uniq_dates[di], "symbol": uniq_syms[si].astype(object)}
    for name in names:
        out[name] = feats[name].to_numpy()[di, si].astype(np.float32)
    out[label] = y.to_numpy()[di, si].astype(np.float32)
    if label != RETURNS:
        out[RETURNS] = y_1.to_numpy()[di, si].astype(np.float32)
    for f in ("open", "high", "low", "close", "volume"):
        if f in raw:
            out[f] = raw[f].to_numpy()[di, si]
    if ratio is not None:
        out["adj_close"] = (raw["close"] * ratio).to_numpy()[di, si]
    out["suspect_jump"] = bad_print.to_numpy()[di, si]
    out["price_break"] = breaks.to_numpy()[di, si]
    out[UNIVERSE] = ~out_of[di, si]
    aux = [UNIVERSE]
    if liquidity is not None:
        out[LIQUIDITY] = liquidity.to_numpy()[di, si]
        aux.append(LIQUIDITY)
    panel = pd.DataFrame(out).sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)

    brk, bp = breaks.to_numpy(), bad_print.to_numpy()
    bd, bs = np.nonzero(brk)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (px["close"] / px["close"].ffill().shift(1)).to_numpy()
    order = np.lexsort((uniq_syms[bs], bd))[:N_EXAMPLES]
    n_present = len(panel)
    universe_meta = {
        "filters": {"min_price": float(min_price), "min_traded_value": float(min_traded_value),
                    "liquidity_window": int(liquidity_window),
                    "max_stale_share": None if max_stale_share is None else float(max_stale_share)},
        "rows_out": {n: int(fails[n].to_numpy().sum()) for n in UNIVERSE_FILTERS},
        "rows_out_total": int(out_of.sum()), "rows": n_present,
    }
    meta = {
        "version": PANEL_VERSION,
        "features": names,
        "labels": [label] + ([RETURNS] if label != RETURNS else []),
        "horizons": {label: H, RETURNS: 1},
        "label_lag": L,
        "returns": RETURNS,
        "source": "ingest",
        "aux_columns": aux,
        "repairs": {kind: int(kinds[kind].sum()) for kind, _, _ in REPAIR_KINDS},
        "repair_summary": repaired,
        "corporate_actions": {
            "adjustment": adjust_col or "none",
            "adjustment_column": None if adjust_col is None else str(cols[adjust_col]),
            "breaks": int(brk.sum()), "bad_prints": int((bp & ~np.vstack([np.zeros((1, S), bool), bp[:-1]])).sum()),
            "break_examples": [f"({uniq_dates[bd[i]]}, {uniq_syms[bs[i]]}) x{step[bd[i], bs[i]]:.3g}" for i in order],
        },
        "universe": universe_meta,
        "params": {"columns": {k: str(v) for k, v in cols.items()}, "label_lag": L,
                   "max_up": float(max_up), "max_down": float(max_down), "reversal_days": int(reversal_days),
                   "adjust": bool(adjust), "strict": bool(strict),
                   "n_rows_input": len(df), "n_rows_dropped": int(gone.sum()),
                   "n_rows_without_price": int(gone.sum()) - sum(int(kinds[k].sum()) for k, unit, _ in REPAIR_KINDS
                                                                 if unit == "row"),
                   "n_suspect_jumps": int(bad_print.to_numpy().sum()), "n_breaks": int(brk.sum()),
                   "n_zero_volume_rows": int(zero_volume.to_numpy().sum())},
    }
    meta["coverage"] = {name: dict(zip(("present", "rows", "basis"), label_coverage(panel, name)))
                        for name in meta["labels"]}
    return panel, meta


def summary_lines(meta: dict) -> list[str]:
    """What ingest did, for the CLI (and `inspect` of an ingested panel): repairs, corporate actions, universe."""
    lines = []
    rep = meta.get("repair_summary")
    if rep is not None:
        lines.append("repairs    " + ("; ".join(rep) if rep else "none"))
    ca = meta.get("corporate_actions")
    if ca:
        p = meta.get("params", {})
        adj = {"factor": f"by factor column {ca.get('adjustment_column')!r} (adjusted = raw x factor)",
               "adj_close": f"by {ca.get('adjustment_column')!r} / close (open, high, low scaled alike)"}.get(
            ca.get("adjustment"), "none (no factor / adj_close column)")
        ex = (": " + ", ".join(ca.get("break_examples", []))) if ca.get("breaks") else ""
        lines.append(f"corp. act. adjustment {adj}; {ca.get('breaks', 0)} break(s) (moves beyond "
                     f"+{p.get('max_up', DEFAULT_MAX_UP):.0%} / -{p.get('max_down', DEFAULT_MAX_DOWN):.0%} "
                     f"not reversed within {p.get('reversal_days', DEFAULT_REVERSAL_DAYS)} days: likely splits; "
                     f"features restart, no label spans them){ex}; {ca.get('bad_prints', 0)} bad print(s) "
                     f"(reversed spikes: {p.get('n_suspect_jumps', 0)} suspect_jump row(s), no label over them)")
    uni = meta.get("universe")
    if uni:
        f, window = uni["filters"], uni["filters"]["liquidity_window"]
        what = {"min_price": f"min_price {f['min_price']:g} (raw close)",
                "min_traded_value": f"min_traded_value {f['min_traded_value']:g} (median close x volume, {window} days)",
                "max_stale_share": f"max_stale_share {f['max_stale_share']} (unchanged close or no volume, {window} days)"}
        on = [n for n in UNIVERSE_FILTERS if (f[n] is not None and f[n] > 0) or (n == "max_stale_share"
                                                                                 and f[n] is not None)]
        if on:
            lines.append("universe   " + "; ".join(f"{what[n]}: {uni['rows_out'][n]} row(s) out" for n in on)
                         + f"; {uni['rows_out_total']} of {uni['rows']} row(s) out in all (features kept, labels NaN)")
        else:
            lines.append("universe   no filter (--min-price / --min-traded-value / --max-stale-share off)")
    return lines


def read_ohlcv(path) -> pd.DataFrame:
    """Read a vendor file: CSV (optionally gzipped) or Parquet."""
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
