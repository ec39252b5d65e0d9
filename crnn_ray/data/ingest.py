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
   print (flagged `suspect_jump`, as before: no price, a held name is carried over it), otherwise a break (a
   likely split, or a real crash): features restart there; the returns keep it, training targets do not;
4. features from data <= t (the same code builds the synthetic market's OHLCV features);
5. labels: yH = close_{t+L+H} / close_{t+L} - 1 with L = label_lag (decide at close t, trade at close t+L),
   and the 1-day return y1 = close_{t+L+1} / close_{t+L} - 1 that realises the pnl of the H-day books, both
   on held prices: a halted name carried at its last price, a delisted one realising its last price (or
   `delisting_return`), a jump kept (data.labels.training_label masks it for training only);
6. universe filters (price, traded value, stale prices): rows out of the universe keep their features but
   get no label.

Around them: integer YYYYMMDD dates are read as dates (pandas alone takes them for nanoseconds since 1970), a
calendar gap longer than `max_gap_days` cuts the panel into stretches that no feature window or label crosses,
and a file too small to make a panel (one symbol, fewer days than a lookback plus a label) is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.data.panel import (
    _LABEL_RE,
    NON_FEATURE_COLUMNS,
    PANEL_VERSION,
    RETURNS,
    label_coverage,
)
from crnn_ray.defaults import HORIZON, LOOKBACK
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
#: what a held name that stops trading (delisted, or halted through the data's end) realises after its last
#: close: 0 = its last price. Real delistings for cause lose more (CRSP studies: about -30 %), so a desk with
#: such names sets its own (IngestOptions.delisting_return, synthesize(delisting_return=...))
DEFAULT_DELISTING_RETURN = 0.0

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
    ("negative_traded_value", "value", "traded_value"),  # < 0: missing
    ("bad_factor", "row", "factor"),     # factor <= 0 or missing: the prices cannot be adjusted, no row
    ("bad_adj_close", "row", "adj_close"),
)
UNIVERSE_FILTERS = ("min_price", "min_traded_value", "max_stale_share")
#: a step between two consecutive panel dates longer than this many calendar days is a hole in the calendar,
#: not a holiday: the longest regular closures leave about 11 days between two sessions (Lunar New Year on the
#: Chinese exchanges; US: 7 days after 9/11), while a vendor's missing stretch or an extraordinary closure
#: (Athens 2015: 5 weeks) leaves more. No feature window or label spans one.
DEFAULT_MAX_GAP_DAYS = 14
#: a panel needs a cross-section: a daily rank or IC over one stock is meaningless
MIN_SYMBOLS = 2
#: days with a full default lookback window and a label that a file must at least give (see IngestOptions)
MIN_LABELLED_DAYS = 5
#: flag naming each column given explicitly
EXPLICIT_FLAGS = {"date": "--date-col", "symbol": "--symbol-col", "traded_value": "--traded-value"}
#: the panel column holding each row's group (IngestOptions.group), named by the metadata's "group_column"
GROUP = "group"
#: the traded value (currency) column, kept raw beside the OHLCV when declared (never a feature)
TRADED_VALUE = "traded_value"
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
        for name, price in (("open_gap", "open"), ("high_rel", "high"), ("low_rel", "low")):
            if price in wide:
                feats[name] = np.log(wide[price] / close)
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


def next_traded(traded: np.ndarray) -> np.ndarray:
    """int [D, S]: the first day after u on which the name trades (D where it never does again)."""
    n_days = traded.shape[0]
    idx = np.where(traded, np.arange(n_days)[:, None], n_days)
    nxt = np.full(traded.shape, n_days, dtype=np.int64)
    if n_days > 1:
        nxt[:-1] = np.minimum.accumulate(idx[::-1], axis=0)[::-1][1:]
    return nxt


def held_returns(price: np.ndarray, *, lag: int = 0,
                 delisting_return: float = DEFAULT_DELISTING_RETURN) -> tuple[np.ndarray, np.ndarray]:
    """(r, end): the 1-day return a book holding each name realises, indexed by decision day, and the last
    close each value reads. Every held move is realised, so no name leaves the books because of its future.

    With u = d + lag the close a book decided on day d is held from (price: [D, S], finite where the name
    trades at a good price), r[d] is the move from close u to the name's next traded close v:
      u traded, v exists         price[v] / price[u] - 1: a halt's whole move is booked on the last day it
                                 traded (no book can trade it while halted, so the books holding it at close u
                                 are the ones that realise the move to the close it trades again)
      u traded, never again      `delisting_return` (the name stopped trading: 0 = realised at its last price)
      u not traded, listed       0 (carried at its last price; its move is booked on the last traded day)
      before its first close     NaN (not listed); u >= D - 1: NaN for every name (the next close is unknown)
    `end[d]`: the last close day the value depends on (v, or u + 1), for the calendar-gap mask.
    """
    price = np.asarray(price, dtype=np.float64)
    n_days = price.shape[0]
    traded = np.isfinite(price)
    nxt = next_traded(traded)
    ahead = np.take_along_axis(price, np.minimum(nxt, n_days - 1), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        move = np.where(nxt < n_days, ahead / price - 1.0, float(delisting_return))
    listed = np.logical_or.accumulate(traded, axis=0)
    g = np.where(traded, move, np.where(listed, 0.0, np.nan))
    g[n_days - 1:] = np.nan
    day = np.arange(n_days)[:, None]
    g_end = np.where(traded & (nxt < n_days), nxt, day + 1)
    r = np.full(price.shape, np.nan)
    end = np.broadcast_to(day + lag + 1, price.shape).copy()
    if lag < n_days:
        r[:n_days - lag] = g[lag:]
        end[:n_days - lag] = g_end[lag:]
    return r, np.minimum(end, n_days - 1)


def held_label(r: np.ndarray, end: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(yH, end): the H-day return of the book decided on day d, prod_{k<H} (1 + r[d+k]) - 1, and the last
    close it reads (NaN where any of its days is unknown: the panel's end)."""
    n_days = r.shape[0]
    y = np.ones(r.shape)
    last = end.copy()
    for k in range(horizon):
        step = np.full(r.shape, np.nan)
        step[:n_days - k] = r[k:]
        y *= 1.0 + step
        if k:
            last[:n_days - k] = np.maximum(last[:n_days - k], end[k:])
    return y - 1.0, last


def held_returns_text(delisting_return: float = DEFAULT_DELISTING_RETURN) -> str:
    """The panel's held-return rule in one line (metadata `held_returns`, the scorer's report)."""
    gone = ("its last price" if delisting_return == 0 else f"a delisting return of {delisting_return:+.0%} "
            "after its last close")
    return ("every held move realised: labels and y1 never drop a name for what happens after the decision; "
            "a flagged jump stays in them (masked for training targets only); a halted name is carried at its "
            "last price, its move to the next traded close booked on its last traded day; a name that stops "
            f"trading realises {gone}")


def spans(flags: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """bool [D, S]: a flagged day lies in first[d] + 1 .. last[d] (both day indices, per cell)."""
    count = np.vstack([np.zeros((1, flags.shape[1]), dtype=np.int64), np.cumsum(flags, axis=0, dtype=np.int64)])
    n = flags.shape[0]
    lo = np.clip(first + 1, 0, n)
    hi = np.clip(last + 1, 0, n)
    cols = np.arange(flags.shape[1])[None, :]
    return (count[hi, cols] - count[np.minimum(lo, hi), cols]) > 0


def forward_labels(price: np.ndarray, horizon: int, *, lag: int = 0,
                   delisting_return: float = DEFAULT_DELISTING_RETURN) -> tuple[dict, dict]:
    """({yH, y1}, {yH, y1: the last close each value reads}) as [D, S] arrays from good prices.

    yH[d] compounds the held returns r[d .. d+H-1] (held_returns): the H-day return of the book decided on d,
    NaN only where d has no price (no book takes the name that day) or a day is past the data's end. y1 is r
    (NaN on a day without a price: the name is carried, its move booked on its last traded day). Neither is
    ever NaN because of what happens after d: the universe of day d uses what is known at d. Jumps stay in
    both; data.labels.training_label masks them for training targets only."""
    price = np.asarray(price, dtype=np.float64)
    traded = np.isfinite(price)
    r, end = held_returns(price, lag=lag, delisting_return=delisting_return)
    labels, last = {}, {}
    for name, h in ((f"y{int(horizon)}", int(horizon)), (RETURNS, 1)):
        y, read = held_label(r, end, h) if h > 1 else (r.copy(), end)
        labels[name] = np.where(traded, y, np.nan)
        last[name] = read
    return labels, last


def universe_filters(close: pd.DataFrame, volume: pd.DataFrame | None, *, min_price: float = 0.0,
                     min_traded_value: float = 0.0, window: int = DEFAULT_LIQUIDITY_WINDOW,
                     max_stale_share: float | None = None,
                     traded_value: pd.DataFrame | None = None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None]:
    """({filter: bool [D, S] rows failing it}, trailing median traded value), from raw prices, data <= t only.

    min_price          close_t < min_price
    min_traded_value   median of the traded value (the declared `traded_value` column, in currency, else
                       close * volume) over the last `window` days (>= window/2 rows) < the bound, or unknown
    max_stale_share    share of the last `window` days' rows with the close unchanged or no volume > the bound,
                       or unknown
    A filter that is off (0 / None) fails nothing. Absent rows fail nothing (they have no label anyway)."""
    present = close.notna()
    min_periods = max(1, window // 2)
    med = None
    value = traded_value if traded_value is not None else None if volume is None else close * volume
    if value is not None:
        med = value.rolling(window, min_periods=min_periods).median().where(present)
    fails = {name: pd.DataFrame(False, index=close.index, columns=close.columns) for name in UNIVERSE_FILTERS}
    if min_price > 0:
        fails["min_price"] = (close < min_price) & present
    if min_traded_value > 0:
        fails["min_traded_value"] = ~(med >= min_traded_value) & present
    if max_stale_share is not None:
        stale = close.eq(close.ffill().shift(1))
        for traded in (volume, traded_value):
            if traded is not None:
                stale |= traded.eq(0)
        share = stale.astype(float).where(present).rolling(window, min_periods=min_periods).mean()
        fails["max_stale_share"] = ~(share <= max_stale_share) & present
    return fails, med


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class IngestOptions:
    """Every ingest setting, one field per CLI flag (docs/data.md), so stages take one object, not 20 arguments.

    `min_days` None means the rule: the default lookback (20) + label_lag + horizon + MIN_LABELLED_DAYS, i.e.
    a first full feature window, a label's span after it and a few labelled days; fewer cannot train anything.
    `max_jump` (deprecated): the old symmetric limit, read as max_up = J, max_down = J / (1 + J)."""

    horizon: int = HORIZON
    label_lag: int = DEFAULT_LABEL_LAG
    date_col: str | None = None
    symbol_col: str | None = None
    date_format: str | None = None
    max_up: float = DEFAULT_MAX_UP
    max_down: float = DEFAULT_MAX_DOWN
    reversal_days: int = DEFAULT_REVERSAL_DAYS
    max_jump: float | None = None
    adjust: bool = True
    strict: bool = False
    min_price: float = 0.0
    min_traded_value: float = 0.0
    liquidity_window: int = DEFAULT_LIQUIDITY_WINDOW
    max_stale_share: float | None = None
    max_gap_days: int = DEFAULT_MAX_GAP_DAYS
    traded_value: str | None = None
    extra_features: tuple[str, ...] = field(default_factory=tuple)
    min_days: int | None = None
    delisting_return: float = DEFAULT_DELISTING_RETURN
    group: str | None = None  # a column naming each row's group (sector): neutral returns are taken against it

    def needed_days(self) -> tuple[int, str]:
        """(fewest days with a price a file must have, the rule in words)."""
        if self.min_days is not None:
            return int(self.min_days), f"--min-days {self.min_days}"
        need = LOOKBACK + self.label_lag + self.horizon + MIN_LABELLED_DAYS
        return need, (f"lookback {LOOKBACK} + label lag {self.label_lag} + horizon {self.horizon} + "
                      f"{MIN_LABELLED_DAYS} labelled days")

    def checked(self) -> IngestOptions:
        """The options with --max-jump resolved; CliError naming the flag of the first bad one."""
        def integer(x, lo: int) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= lo

        opts = self
        if self.max_jump is not None:
            if not np.isfinite(self.max_jump) or self.max_jump <= 0:
                raise CliError(f"--max-jump must be a positive number (got {self.max_jump!r})")
            opts = replace(self, **dict(zip(("max_up", "max_down"), limits_from_max_jump(self.max_jump))))
        checks = [
            (integer(opts.horizon, 1), f"--horizon must be a positive integer (got {opts.horizon!r})"),
            (integer(opts.label_lag, 0), f"--label-lag must be an integer >= 0 (got {opts.label_lag!r})"),
            (np.isfinite(opts.max_up) and opts.max_up > 0,
             f"--max-up must be a positive number (got {opts.max_up!r}; 1.0 = +100 %)"),
            (np.isfinite(opts.max_down) and 0 < opts.max_down < 1,
             f"--max-down must be in (0, 1) (got {opts.max_down!r}; 0.4 = -40 %)"),
            (integer(opts.reversal_days, 1), f"--reversal-days must be a positive integer (got {opts.reversal_days!r})"),
            (np.isfinite(opts.min_price) and opts.min_price >= 0,
             f"--min-price must be a number >= 0 (got {opts.min_price!r}; 0 = off)"),
            (np.isfinite(opts.min_traded_value) and opts.min_traded_value >= 0,
             f"--min-traded-value must be a number >= 0 (got {opts.min_traded_value!r}; 0 = off)"),
            (integer(opts.liquidity_window, 2),
             f"--liquidity-window must be an integer >= 2 (got {opts.liquidity_window!r})"),
            (opts.max_stale_share is None or (np.isfinite(opts.max_stale_share) and 0 <= opts.max_stale_share <= 1),
             f"--max-stale-share must be in [0, 1] (got {opts.max_stale_share!r})"),
            (integer(opts.max_gap_days, 1),
             f"--max-gap-days must be an integer >= 1 (got {opts.max_gap_days!r}; calendar days)"),
            (opts.date_format is None or (isinstance(opts.date_format, str) and "%" in opts.date_format),
             f"--date-format must be a strftime format such as %Y%m%d (got {opts.date_format!r})"),
            (np.isfinite(opts.delisting_return) and opts.delisting_return >= -1,
             f"--delisting-return must be a number >= -1 (got {opts.delisting_return!r}; 0 = the last price)"),
            (opts.min_days is None or integer(opts.min_days, 1),
             f"--min-days must be an integer >= 1 (got {opts.min_days!r})"),
            (all(isinstance(n, str) and n.strip() for n in opts.extra_features),
             f"--extra-features must be column names (got {list(opts.extra_features)!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise CliError(message)
        return opts


# --------------------------------------------------------------------------------------------- the columns
def _normalise_name(name: Any) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def resolve_columns(columns: list[Any], date_col: str | None = None, symbol_col: str | None = None,
                    where: str = "ohlcv", traded_value: str | None = None) -> dict[str, Any]:
    """Map each field to a column of the table (case-insensitive, with aliases).

    A file with an adjusted close but no raw close uses the adjusted one as its close (nothing to adjust).
    `traded_value` has no alias: a currency column must be declared, or it would pass for a volume."""
    by_norm: dict[str, Any] = {}
    for c in columns:
        by_norm.setdefault(_normalise_name(c), c)
    found: dict[str, Any] = {}
    for fld, explicit in (("date", date_col), ("symbol", symbol_col), ("traded_value", traded_value)):
        if explicit is not None:
            if _normalise_name(explicit) not in by_norm:
                raise CliError(f"{where}: missing column {explicit!r} ({EXPLICIT_FLAGS[fld]})")
            col = by_norm[_normalise_name(explicit)]
            other = next((f for f in ("date", "symbol", "close", "adj_close") if f != fld
                          and _normalise_name(col) in ALIASES[f]), None) if fld == "traded_value" else None
            if col in found.values() or other:
                raise CliError(f"{where}: {EXPLICIT_FLAGS[fld]} {explicit!r}: column {col!r} is the "
                               f"{other or next(f for f, c in found.items() if c == col)} column")
            found[fld] = col
    for fld, aliases in ALIASES.items():
        if fld in found:
            continue
        for a in aliases:
            if a in by_norm and by_norm[a] not in found.values():
                found[fld] = by_norm[a]
                break
    if "close" not in found and "adj_close" in found:
        found["close"] = found.pop("adj_close")
    for fld in ("date", "symbol", "close"):
        if fld not in found:
            names = ALIASES[fld][:5] + (ALIASES["adj_close"][:2] if fld == "close" else [])
            raise CliError(f"{where}: missing column {fld!r} (accepted names: {', '.join(names)})")
    return found


def extra_columns(columns: list[Any], cols: dict[str, Any], names: tuple[str, ...], where: str) -> dict[str, Any]:
    """{feature name: column} of --extra-features: each an existing column that is no OHLCV field and whose
    name no panel column ingest writes has (it would be overwritten or taken for a label)."""
    by_norm: dict[str, Any] = {}
    for c in columns:
        by_norm.setdefault(_normalise_name(c), c)
    taken = {c: f for f, c in cols.items()}
    written = NON_FEATURE_COLUMNS | set(feature_names(PRICE_FIELDS + ("volume",))) | {TRADED_VALUE, LIQUIDITY}
    out: dict[str, Any] = {}
    for name in names:
        col = by_norm.get(_normalise_name(name.strip()))
        if col is None:
            raise CliError(f"{where}: missing column {name!r} (--extra-features)")
        if col in taken:
            raise CliError(f"{where}: --extra-features: column {col!r} is the {taken[col]} column, not an extra "
                           "feature")
        feat = str(col)
        if feat in written or feat in out or _LABEL_RE.match(feat) or feat.startswith("oracle_"):
            raise CliError(f"{where}: --extra-features: {feat!r} is the name of a column ingest writes, or given "
                           "twice: rename it in the file")
        out[feat] = col
    return out


def group_column(df: pd.DataFrame, cols: dict[str, Any], name: str | None, where: str) -> np.ndarray | None:
    """The input rows' group (text; a missing value stays missing) from the column `name` names (any case or
    spelling _normalise_name folds), or None without one; CliError when it is absent or an OHLCV field."""
    if name is None:
        return None
    by_norm: dict[str, Any] = {}
    for c in df.columns:
        by_norm.setdefault(_normalise_name(c), c)
    col = by_norm.get(_normalise_name(str(name).strip()))
    if col is None:
        raise CliError(f"{where}: missing column {name!r} (group)")
    if col in cols.values():
        raise CliError(f"{where}: group: column {col!r} is an OHLCV / key column, not a group")
    values = df[col]
    return np.where(values.isna().to_numpy(), None, values.astype(str).to_numpy()).astype(object)


# ---------------------------------------------------------------------------------------------- validation
def _shown(value: Any) -> str:
    """repr of a file's value as the file has it: 20190231, not np.int64(20190231)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


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
        day = str(d) if not np.isnat(d) else _shown(self.raw_dates.iloc[i])
        return f"({day}, {self.symbols.iloc[i]})"

    def examples(self, mask: np.ndarray, values: pd.Series | None = None) -> str:
        idx = self.first(mask)
        shown = [self.name(i) + (f" {_shown(values.iloc[i])}" if values is not None else "") for i in idx]
        return ", ".join(shown) + (", ..." if mask.sum() > len(idx) else "")


def _integer_text(raw: pd.Series) -> pd.Series | None:
    """The dates as digit strings (NaN where missing) when every present value is an integer (an int column,
    whole floats, digit text), else None: pandas reads integers as nanoseconds since 1970, never as YYYYMMDD."""
    present = raw.dropna()
    if len(present) == 0 or raw.dtype == bool:
        return None
    if pd.api.types.is_numeric_dtype(raw):
        v = present.to_numpy(dtype=np.float64)
        if not (np.isfinite(v).all() and (v == np.round(v)).all()):
            return None
        text = present.astype(np.int64).astype(str)
    else:
        if not str(present.iloc[0]).strip().isdigit():  # text dates: decided on the first, no pass over all
            return None
        text = present.astype(str).str.strip()
        if not text.str.fullmatch(r"\d+").all():
            return None
    return text.reindex(raw.index)


def parse_dates(raw: pd.Series, date_format: str | None = None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(datetime64[D] with NaT, mask of the present values that do not parse, the note of detected integer
    YYYYMMDD dates or None). pandas' own warnings are silenced: the bad values are named in the error instead."""
    raw = raw.reset_index(drop=True)
    digits = _integer_text(raw)
    note = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Could not infer format ...": the error names the value
        if pd.api.types.is_datetime64_any_dtype(raw):  # a typed column (Parquet): nothing to read
            parsed = raw
        elif date_format is not None:
            text = digits if digits is not None else raw.where(raw.isna(), raw.astype(str))
            parsed = pd.to_datetime(text, format=date_format, errors="coerce")
        elif digits is not None:
            parsed = pd.to_datetime(digits.where(digits.str.len() == 8), format="%Y%m%d", errors="coerce")
            if parsed.notna().any():  # shown on the earliest date
                first = parsed.idxmin()
                note = f"integer YYYYMMDD detected ({digits.iloc[first]} -> {parsed.iloc[first].date()})"
        elif pd.api.types.is_numeric_dtype(raw) or raw.dtype == bool:  # fractional numbers are no dates
            parsed = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
        else:
            try:
                parsed = pd.to_datetime(raw, errors="raise")
            except (ValueError, TypeError, OverflowError):
                parsed = pd.to_datetime(raw, errors="coerce")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_localize(None)
    bad = (parsed.isna() & raw.notna()).to_numpy()
    return parsed.to_numpy().astype("datetime64[D]"), bad, note


def _date_problems(raw_dates: pd.Series, dates: np.ndarray, unparsable: np.ndarray, rows: _Rows, col: Any,
                   opts: IngestOptions, where: str) -> list[str]:
    """The date column's problems; CliError at once when no date parses (nothing else can be checked)."""
    if not (unparsable.any() or np.isnat(dates).all()):
        how = ""
    elif opts.date_format:
        how = f"--date-format {opts.date_format!r}"
    elif _integer_text(raw_dates) is not None:
        how = "integers are read as YYYYMMDD; else give --date-format"
    else:
        how = "give --date-format"
    problems = []
    if unparsable.any():
        first = raw_dates.iloc[int(np.flatnonzero(unparsable)[0])]
        problems.append(f"column {col!r}: unparsable date {_shown(first)} ({int(unparsable.sum())} row(s), "
                        f"e.g. {rows.examples(unparsable)}; {how})")
    if np.isnat(dates).all():
        raise CliError(f"{where}: column {col!r}: no parsable date (first value {_shown(raw_dates.iloc[0])}; {how})")
    missing = np.isnat(dates) & ~unparsable
    if missing.any():
        problems.append(f"column {col!r}: {int(missing.sum())} missing date(s) "
                        f"(symbols {', '.join(rows.symbols[missing].astype(str).unique()[:N_EXAMPLES])})")
    return problems


def _numeric(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of entries that are not numbers: text that does not parse, booleans)."""
    if s.dtype == bool:
        return np.full(len(s), np.nan), np.ones(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(s), dtype=bool)
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.isna() & s.notna() & (s.astype(str).str.strip() != "")).to_numpy()
    return num.to_numpy(dtype=np.float64, na_value=np.nan), bad


def bound_problems(dates: np.ndarray, symbols: np.ndarray, opts: IngestOptions) -> list[str]:
    """What makes the rows (each with a price) too small for a panel: fewer than MIN_SYMBOLS symbols (nothing
    to rank across), fewer days than opts.needed_days() (no labelled sample after a first lookback window)."""
    problems = []
    syms, days = np.unique(symbols.astype(str)), np.unique(dates)
    if len(syms) < MIN_SYMBOLS:
        problems.append(f"{len(syms)} symbol(s) with a price ({', '.join(syms[:N_EXAMPLES]) or 'none'}): a panel "
                        f"needs >= {MIN_SYMBOLS} (a cross-section to rank)")
    need, rule = opts.needed_days()
    if len(days) < need:
        span = f" ({days[0]} .. {days[-1]})" if len(days) else ""
        problems.append(f"{len(days)} day(s) with a price{span}: a panel needs >= {need} ({rule})")
    return problems


@dataclass
class _Checked:
    """The validated table: parsed values by field, keys, and what the date reading noticed."""
    values: dict[str, np.ndarray]
    dates: np.ndarray
    symbols: np.ndarray
    rows: _Rows
    date_note: str | None


def _validate(df: pd.DataFrame, cols: dict, used: dict[str, Any], opts: IngestOptions, where: str) -> _Checked:
    """Parse and check the whole table; one CliError naming every problem (bounds included), or the values."""
    raw_dates, sym = df[cols["date"]].reset_index(drop=True), df[cols["symbol"]].reset_index(drop=True)
    dates, unparsable, note = parse_dates(raw_dates, opts.date_format)
    rows = _Rows(raw_dates, dates, sym)
    problems = _date_problems(raw_dates, dates, unparsable, rows, cols["date"], opts, where)
    missing_sym = sym.isna().to_numpy()
    if missing_sym.any():
        problems.append(f"column {cols['symbol']!r} has {int(missing_sym.sum())} missing value(s), at "
                        f"{rows.examples(missing_sym)}")
    values: dict[str, np.ndarray] = {}
    for key, col in used.items():
        s = df[col].reset_index(drop=True)
        v, bad = _numeric(s)
        if s.dtype == bool:
            problems.append(f"column {col!r} is not numeric (dtype bool)")
        elif bad.any():
            problems.append(f"column {col!r} is not numeric: {int(bad.sum())} value(s), first "
                            f"{rows.examples(bad, s)}")
        inf = np.isinf(v)
        if inf.any():
            problems.append(f"column {col!r} has {int(inf.sum())} infinite value(s), first {rows.examples(inf)}")
            v = np.where(inf, np.nan, v)
        values[key] = v
    symbols = sym.astype(str).to_numpy(dtype=object)
    keyed = ~np.isnat(dates) & ~missing_sym
    dup = pd.DataFrame({"date": dates, "symbol": symbols}).duplicated(keep="first").to_numpy() & keyed
    if dup.any():
        problems.append(f"{int(dup.sum())} duplicate (date, symbol) row(s), first: {rows.examples(dup)}")
    priced = keyed & (values["close"] > 0)
    if priced.any():  # none at all is its own error, after the repairs
        problems += bound_problems(dates[priced], symbols[priced], opts)
    if problems:
        head = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise CliError(f"{where}: {head}" + "; ".join(problems))
    return _Checked(values, dates, symbols, rows, note)


# ------------------------------------------------------------------------------------------------- repairs
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
    none = np.zeros(len(gone), dtype=bool)
    for f in ("open", "high", "low"):
        kinds[f"bad_{f}"] = (nonpos[f] & ~gone) if f in values else none
        if f in values:
            values[f] = np.where(nonpos[f], np.nan, values[f])
    for f in ("volume", TRADED_VALUE):
        kinds[f"negative_{f}"] = (values[f] < 0) & ~gone if f in values else none
        if f in values:
            values[f] = np.where(values[f] < 0, np.nan, values[f])
    for f in ("factor", "adj_close"):
        if f == adjust_col:
            kinds[f"bad_{f}"] = ~(values[f] > 0) & ~gone
            gone = gone | kinds[f"bad_{f}"]
        else:
            kinds[f"bad_{f}"] = none
    return kinds, gone


def _repair_text(kinds: dict[str, np.ndarray], cols: dict, rows: _Rows) -> list[str]:
    """One phrase per repair kind that happened: count, unit, column and the first (date, symbol) examples."""
    out = []
    for kind, unit, fld in REPAIR_KINDS:
        mask = kinds.get(kind)
        if mask is None or not mask.any():
            continue
        col = f" in column {cols[fld]!r}" if fld is not None and fld in cols else ""
        out.append(f"{kind} {int(mask.sum())} {unit}(s){col}, first {rows.examples(mask)}")
    return out


# ------------------------------------------------------------------------------------------ calendar gaps
def calendar_gaps(dates: np.ndarray, max_gap_days: int) -> np.ndarray:
    """Indices d of the calendar (sorted unique dates) more than max_gap_days calendar days after day d-1:
    where a stretch starts after a hole (a vendor's missing weeks, a long closure), not after a holiday."""
    steps = np.diff(np.asarray(dates).astype("datetime64[D]")).astype(np.int64)
    return np.flatnonzero(steps > max_gap_days) + 1


def gap_list(dates: np.ndarray, starts: np.ndarray) -> list[list]:
    """[[last date before, first date after, calendar days], ...] of each gap."""
    return [[str(dates[g - 1]), str(dates[g]), int((dates[g] - dates[g - 1]).astype(np.int64))] for g in starts]


def _gap_text(gaps: list[list], max_gap_days: int) -> list[str]:
    """The calendar_gap phrase of the repairs (empty without gaps), with the first gaps' dates."""
    if not gaps:
        return []
    shown = ", ".join(f"{a} -> {b} ({n} days)" for a, b, n in gaps[:N_EXAMPLES])
    return [f"calendar_gap {len(gaps)} gap(s) longer than {max_gap_days} days, first {shown}"
            + (", ..." if len(gaps) > N_EXAMPLES else "")]


def _by_stretch(starts: np.ndarray, n_rows: int, fn: Callable[[slice], dict]) -> dict[str, pd.DataFrame]:
    """fn on each stretch of calendar rows between gaps, the pieces stacked: no window reaches across a gap."""
    edges = [0, *[int(g) for g in starts], n_rows]
    parts = [fn(slice(a, b)) for a, b in pairwise(edges)]
    return parts[0] if len(parts) == 1 else {k: pd.concat([p[k] for p in parts]) for k in parts[0]}


def crosses_gap(n_days: int, starts: np.ndarray, span: int) -> np.ndarray:
    """bool [D]: a gap starts in t+1 .. t+span (a label decided at t and ending at t+span would straddle it)."""
    is_start = np.zeros(n_days + span + 1, dtype=np.int64)
    is_start[np.asarray(starts, dtype=np.int64)] = 1
    count = np.cumsum(is_start)
    t = np.arange(n_days)
    return count[t + span] - count[t] > 0


# ------------------------------------------------------------------------------------------------- stages
@dataclass
class _Grid:
    """The kept rows on the wide [dates x symbols] calendar: its dates, symbols and each kept row's cell."""
    dates: np.ndarray
    symbols: np.ndarray
    di: np.ndarray
    si: np.ndarray
    keep: np.ndarray

    @classmethod
    def of(cls, dates: np.ndarray, symbols: np.ndarray, keep: np.ndarray) -> _Grid:
        uniq_dates, di = np.unique(dates[keep], return_inverse=True)
        uniq_syms, si = np.unique(symbols[keep].astype(str), return_inverse=True)
        return cls(uniq_dates, uniq_syms, di, si, keep)

    def wide(self, v: np.ndarray) -> pd.DataFrame:
        """A per-input-row array as a [dates x symbols] frame, NaN where a stock has no kept row."""
        arr = np.full((len(self.dates), len(self.symbols)), np.nan)
        arr[self.di, self.si] = v[self.keep]
        return pd.DataFrame(arr)

    def cells(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The kept rows' values of a wide frame, in input-row order."""
        return np.asarray(frame)[self.di, self.si]


def _adjust(raw: dict[str, pd.DataFrame], cols: dict, adjust_col: str | None):
    """(ratio or None, adjusted open / high / low / close / volume, no-trade days): the file's adjustment, and
    zero volume (or zero traded value) read as a halted day, since its price is stale."""
    ratio = raw["factor"] if adjust_col == "factor" else (
        raw["adj_close"] / raw["close"] if adjust_col == "adj_close" else None)
    pre_adjusted = {f for f in ("open", "high", "low", "volume") if f in cols
                    and _normalise_name(cols[f]).startswith("adj")}
    px = {f: raw[f] * ratio if ratio is not None and f not in pre_adjusted else raw[f]
          for f in PRICE_FIELDS if f in raw}
    if "volume" in raw:  # shares scale inversely: close * volume (traded value) is unchanged
        px["volume"] = raw["volume"] / ratio if ratio is not None and "volume" not in pre_adjusted else raw["volume"]
    no_trade = pd.DataFrame(False, index=raw["close"].index, columns=raw["close"].columns)
    for f in ("volume", TRADED_VALUE):
        if f in raw:
            no_trade |= raw[f].eq(0)
    return ratio, {f: v.where(~no_trade) for f, v in px.items()}, no_trade


def _moves_and_features(px: dict[str, pd.DataFrame], starts: np.ndarray, opts: IngestOptions):
    """({bad_print, breaks, restarts}, features, feature values the gaps masked), each stretch between calendar
    gaps on its own: a move across a gap is no move, and no window reads the other side. The count compares
    with the features computed across the gaps (only when there are gaps)."""
    close, n = px["close"], len(px["close"])

    def moves(sl: slice) -> dict:
        return dict(zip(("bad_print", "breaks", "restarts"),
                        classify_moves(close.iloc[sl], opts.max_up, opts.max_down, opts.reversal_days)))

    flags = _by_stretch(starts, n, moves)

    def feats(sl: slice) -> dict:
        return compute_features({k: v.iloc[sl] for k, v in px.items()}, opts.max_up, opts.max_down,
                                restarts=flags["restarts"].iloc[sl])[0]

    out = _by_stretch(starts, n, feats)
    masked = 0
    if len(starts):
        whole = feats(slice(0, n))
        masked = sum(int((np.isfinite(whole[k].to_numpy()) & ~np.isfinite(out[k].to_numpy())).sum()) for k in out)
    return flags, out, masked


def _labels(close: pd.DataFrame, flags: dict, starts: np.ndarray, opts: IngestOptions):
    """({yH, y1}, {label: labels the gaps masked}) as wide frames: held forward returns (forward_labels) on
    the good prices -- a bad print is no price, so a held name is carried over it -- and none whose closes
    (decision to last close read) cross a calendar gap. A break stays in the returns: it is a move the books
    holding the name made (a missed split shows as one: adjust with a factor column); training targets drop
    it (data.labels.training_label reads the suspect_jump / price_break columns)."""
    bad = flags["bad_print"].to_numpy(dtype=bool)
    price = np.where(bad, np.nan, close.to_numpy(dtype=np.float64))
    labels, last = forward_labels(price, opts.horizon, lag=opts.label_lag, delisting_return=opts.delisting_return)
    n_days = len(close)
    gap_day = np.zeros((n_days, 1), dtype=bool)
    gap_day[np.asarray(starts, dtype=np.int64)] = True
    day = np.broadcast_to(np.arange(n_days)[:, None], price.shape)
    masked = {}
    for name, y in labels.items():
        across = spans(np.broadcast_to(gap_day, price.shape), day, last[name])
        masked[name] = int((np.isfinite(y) & across).sum())
        labels[name] = pd.DataFrame(np.where(across, np.nan, y), index=close.index, columns=close.columns)
    return labels, masked


@dataclass
class _Stages:
    """What the stages of one ingest made, for the table and the metadata."""
    opts: IngestOptions
    cols: dict
    extras: dict
    adjust_col: str | None
    checked: _Checked
    kinds: dict
    gone: np.ndarray
    repaired: list
    grid: _Grid
    gaps: np.ndarray
    raw: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    group: np.ndarray | None = None  # the input rows' group (text), when IngestOptions.group names a column


def _table(st: _Stages) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(panel long table sorted by date and symbol, feature names in model-input order, aux columns)."""
    g, r = st.grid, st.results
    names = feature_names(set(r["px"]))
    out = {"date": g.dates[g.di], "symbol": g.symbols[g.si].astype(object)}
    for name in names:
        out[name] = g.cells(r["features"][name]).astype(np.float32)
    halted = g.cells(r["no_trade"])
    for feat in st.extras:  # as given, NaN on a halted (zero-volume) day like every feature
        out[feat] = np.where(halted, np.nan, st.checked.values["extra:" + feat][g.keep]).astype(np.float32)
    for name, y in r["labels"].items():
        out[name] = g.cells(y).astype(np.float32)
    for f in ("open", "high", "low", "close", "volume", TRADED_VALUE):
        if f in st.raw:
            out[f] = g.cells(st.raw[f])
    if r["ratio"] is not None:
        out["adj_close"] = g.cells(st.raw["close"] * r["ratio"])
    out["suspect_jump"] = g.cells(r["flags"]["bad_print"]).astype(bool)
    out["price_break"] = g.cells(r["flags"]["breaks"]).astype(bool)
    out[UNIVERSE] = ~g.cells(r["out_of"])
    if st.group is not None:  # text: no reader takes it for a feature; score.exposures reads it by name
        out[GROUP] = st.group[g.keep].astype(str)
    aux = [UNIVERSE]
    if r["liquidity"] is not None:
        out[LIQUIDITY] = g.cells(r["liquidity"])
        aux.append(LIQUIDITY)
    aux += ["suspect_jump", "price_break"]  # the flags data.labels.training_label masks training targets with
    panel = pd.DataFrame(out).sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)
    return panel, names + list(st.extras), aux


def _corporate_meta(st: _Stages) -> dict:
    """The corporate_actions metadata: adjustment, breaks (with their first price ratios), bad print episodes."""
    g, px, flags = st.grid, st.results["px"], st.results["flags"]
    brk, bp = flags["breaks"].to_numpy(dtype=bool), flags["bad_print"].to_numpy(dtype=bool)
    bd, bs = np.nonzero(brk)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (px["close"] / px["close"].ffill().shift(1)).to_numpy()
    order = np.lexsort((g.symbols[bs], bd))[:N_EXAMPLES]
    starts = bp & ~np.vstack([np.zeros((1, bp.shape[1]), bool), bp[:-1]])
    return {
        "adjustment": st.adjust_col or "none",
        "adjustment_column": None if st.adjust_col is None else str(st.cols[st.adjust_col]),
        "breaks": int(brk.sum()), "bad_prints": int(starts.sum()),
        "break_examples": [f"({g.dates[bd[i]]}, {g.symbols[bs[i]]}) x{step[bd[i], bs[i]]:.3g}" for i in order],
    }


def _meta(st: _Stages, panel: pd.DataFrame, features: list[str], aux: list[str], n_input: int) -> dict:
    """The panel's metadata (docs/data.md, "Panel file"): labels, repairs, corporate actions, gaps, universe."""
    o, r, H = st.opts, st.results, st.opts.horizon
    label = f"y{H}"
    fails = r["fails"]
    meta = {
        "version": PANEL_VERSION, "features": features,
        "labels": [label] + ([RETURNS] if label != RETURNS else []), "horizons": {label: H, RETURNS: 1},
        "label_lag": o.label_lag, "returns": RETURNS, "source": "ingest", "aux_columns": aux,
        "held_returns": held_returns_text(o.delisting_return),
        **({"group_column": GROUP} if st.group is not None else {}),
        "repairs": {**{kind: int(st.kinds[kind].sum()) for kind, _, _ in REPAIR_KINDS},
                    "calendar_gap": len(st.gaps)},
        "repair_summary": st.repaired, "corporate_actions": _corporate_meta(st),
        "calendar_gaps": {"max_gap_days": int(o.max_gap_days), "gaps": gap_list(st.grid.dates, st.gaps),
                          "features_masked": r["features_masked"], "labels_masked": r["labels_masked"]},
        "universe": {
            "filters": {"min_price": float(o.min_price), "min_traded_value": float(o.min_traded_value),
                        "liquidity_window": int(o.liquidity_window),
                        "max_stale_share": None if o.max_stale_share is None else float(o.max_stale_share)},
            "rows_out": {n: int(fails[n].to_numpy().sum()) for n in UNIVERSE_FILTERS},
            "rows_out_total": int(r["out_of"].sum()), "rows": len(panel)},
    }
    n_gone = int(st.gone.sum())
    meta["params"] = {
        "columns": {k: str(v) for k, v in st.cols.items()}, "label_lag": o.label_lag,
        "max_up": float(o.max_up), "max_down": float(o.max_down), "reversal_days": int(o.reversal_days),
        "adjust": bool(o.adjust), "strict": bool(o.strict), "max_gap_days": int(o.max_gap_days),
        "date_format": o.date_format or ("%Y%m%d" if st.checked.date_note else None),
        "date_note": st.checked.date_note, "traded_value": st.cols.get(TRADED_VALUE),
        "extra_features": {k: str(v) for k, v in st.extras.items()}, "min_days": o.needed_days()[0],
        "n_rows_input": n_input, "n_rows_dropped": n_gone,
        "n_rows_without_price": n_gone - sum(int(st.kinds[k].sum()) for k, unit, _ in REPAIR_KINDS if unit == "row"),
        "n_suspect_jumps": int(r["flags"]["bad_print"].to_numpy().sum()),
        "n_breaks": int(r["flags"]["breaks"].to_numpy().sum()),
        "n_zero_volume_rows": int(r["no_trade"].to_numpy().sum()),
    }
    meta["coverage"] = {name: dict(zip(("present", "rows", "basis"), label_coverage(panel, name)))
                        for name in meta["labels"]}
    return meta


def _prepare(df: pd.DataFrame, opts: IngestOptions, where: str) -> _Stages:
    """Columns, validation (every problem at once), repairs (refused when strict), calendar and bounds."""
    if len(df) == 0:
        raise CliError(f"{where}: no rows")
    cols = resolve_columns(list(df.columns), opts.date_col, opts.symbol_col, where, opts.traded_value)
    extras = extra_columns(list(df.columns), cols, opts.extra_features, where)
    group = group_column(df, cols, opts.group, where)
    if opts.min_traded_value > 0 and "volume" not in cols and TRADED_VALUE not in cols:
        raise CliError(f"{where}: --min-traded-value needs a volume column (none of "
                       f"{', '.join(ALIASES['volume'][:3])}) or --traded-value")
    adjust_col = None if not opts.adjust else next((f for f in ("factor", "adj_close") if f in cols), None)
    fields = [f for f in ("open", "high", "low", "close", "volume", TRADED_VALUE) if f in cols]
    used = {f: cols[f] for f in fields + ([adjust_col] if adjust_col else [])}
    used.update({"extra:" + feat: col for feat, col in extras.items()})
    checked = _validate(df, cols, used, opts, where)
    kinds, gone = _repairs(checked.values, cols, adjust_col)
    if gone.all():
        raise CliError(f"{where}: column {cols['close']!r}: no row with a positive close")
    grid = _Grid.of(checked.dates, checked.symbols, ~gone)
    gaps = calendar_gaps(grid.dates, opts.max_gap_days)
    repaired = _repair_text(kinds, cols, checked.rows) + _gap_text(gap_list(grid.dates, gaps), opts.max_gap_days)
    if opts.strict and repaired:
        raise CliError(f"{where}: --strict: {len(repaired)} kind(s) of repair refused: " + "; ".join(repaired))
    small = bound_problems(checked.dates[~gone], checked.symbols[~gone], opts)  # what the repairs left
    if small:
        raise CliError(f"{where}: after the repairs: " + "; ".join(small))
    return _Stages(opts, cols, extras, adjust_col, checked, kinds, gone, repaired, grid, gaps, group=group)


def ingest_ohlcv(df: pd.DataFrame, horizon: int = HORIZON, *, options: IngestOptions | None = None,
                 where: str = "ohlcv", **settings) -> tuple[pd.DataFrame, dict]:
    """Long OHLCV table -> (panel long table, metadata). See docs/data.md for the rules.

    Settings are IngestOptions' fields, as keywords or as `options` (then horizon and keywords are not read)."""
    opts = (options or IngestOptions(horizon=horizon, **settings)).checked()
    st = _prepare(df, opts, where)
    st.raw = {f: st.grid.wide(st.checked.values[f]) for f in NUMERIC_FIELDS + (TRADED_VALUE,)
              if f in st.checked.values}
    ratio, px, no_trade = _adjust(st.raw, st.cols, st.adjust_col)
    flags, feats, features_masked = _moves_and_features(px, st.gaps, opts)
    labels, labels_masked = _labels(px["close"], flags, st.gaps, opts)
    fails, liquidity = universe_filters(st.raw["close"], st.raw.get("volume"), min_price=opts.min_price,
                                        min_traded_value=opts.min_traded_value, window=opts.liquidity_window,
                                        max_stale_share=opts.max_stale_share, traded_value=st.raw.get(TRADED_VALUE))
    out_of = np.logical_or.reduce([fails[n].to_numpy() for n in UNIVERSE_FILTERS])
    label = f"y{opts.horizon}"
    labels[label] = labels[label].where(~out_of)  # out of the universe: no label, features kept
    if label == RETURNS:
        labels[RETURNS] = labels[label]
    # y1 (H > 1) keeps out-of-universe rows: a book formed while a stock was in the universe still earns its
    # return on the days it is held, whether or not the stock passes the filters then
    st.results = {"ratio": ratio, "px": px, "no_trade": no_trade, "flags": flags, "features": feats,
                  "features_masked": features_masked, "labels": labels, "labels_masked": labels_masked,
                  "fails": fails, "out_of": out_of, "liquidity": liquidity}
    panel, features, aux = _table(st)
    return panel, _meta(st, panel, features, aux, len(df))


def summary_lines(meta: dict) -> list[str]:
    """What ingest did, for the CLI (and `inspect` of an ingested panel): dates read, repairs, calendar gaps,
    corporate actions, liquidity, universe."""
    lines = []
    note = (meta.get("params") or {}).get("date_note")
    if note:
        lines.append("dates      " + note)
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
                     f"features restart; kept in the returns, masked for training){ex}; {ca.get('bad_prints', 0)} bad "
                     f"print(s) (reversed spikes: {p.get('n_suspect_jumps', 0)} suspect_jump row(s), no price: "
                     "held names carried over them, masked for training)")
    lines += _gap_lines(meta)
    uni = meta.get("universe")
    if uni:
        f, window = uni["filters"], uni["filters"]["liquidity_window"]
        declared = (meta.get("params") or {}).get("traded_value")
        value = f"traded value {declared!r}" if declared else "close x volume"
        if LIQUIDITY in (meta.get("aux_columns") or []):
            lines.append(f"liquidity  {LIQUIDITY}: median {value} over the last {window} days"
                         + (" (declared with --traded-value, in currency)" if declared else ""))
        what = {"min_price": f"min_price {f['min_price']:g} (raw close)",
                "min_traded_value": f"min_traded_value {f['min_traded_value']:g} (median {value}, {window} days)",
                "max_stale_share": f"max_stale_share {f['max_stale_share']} (unchanged close or no volume, {window} days)"}
        on = [n for n in UNIVERSE_FILTERS if (f[n] is not None and f[n] > 0) or (n == "max_stale_share"
                                                                                 and f[n] is not None)]
        if on:
            lines.append("universe   " + "; ".join(f"{what[n]}: {uni['rows_out'][n]} row(s) out" for n in on)
                         + f"; {uni['rows_out_total']} of {uni['rows']} row(s) out in all (features kept, labels NaN)")
        else:
            lines.append("universe   no filter (--min-price / --min-traded-value / --max-stale-share off)")
    return lines


def _gap_lines(meta: dict) -> list[str]:
    """The calendar gaps line: where the calendar has holes and what no window or label crosses because of them."""
    gaps = meta.get("calendar_gaps")
    if not gaps:
        return []
    if not gaps["gaps"]:
        return [f"gaps       none longer than {gaps['max_gap_days']} calendar days"]
    shown = ", ".join(f"{a} -> {b} ({n} days)" for a, b, n in gaps["gaps"][:N_EXAMPLES])
    more = ", ..." if len(gaps["gaps"]) > N_EXAMPLES else ""
    labels = ", ".join(f"{n:,} {name}" for name, n in gaps["labels_masked"].items())
    line = (f"gaps       {len(gaps['gaps'])} calendar gap(s) longer than {gaps['max_gap_days']} days: {shown}{more}; "
            f"features restart after each ({gaps['features_masked']:,} feature value(s) masked), no label spans "
            f"one ({labels} label(s) masked)")
    return [line]


def read_ohlcv(path) -> pd.DataFrame:
    """Read a vendor file: CSV (optionally gzipped) or Parquet."""
    path = Path(path)
    if not path.exists():
        raise CliError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, low_memory=False)  # one pass: no DtypeWarning on a large mixed column
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
