"""Real daily OHLCV for the ingest tests: the S&P 500 and NASDAQ Composite files that arch ships.

`arch==8.0.0` (installed by the Makefile with --no-deps; only its data files are read, the package is never
imported) carries Yahoo's daily Open, High, Low, Close, Adj Close and Volume of both indices, 1999-01-04 ..
2018-12-31 (5,031 trading days each). Indices are not stocks, but the files are a vendor's real rows: real
volumes, real calendars, real price paths.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

ARCH_DATA = Path(importlib.util.find_spec("arch").submodule_search_locations[0]) / "data"
FILES = {"SPX": ARCH_DATA / "sp500" / "sp500.csv.gz", "NDQ": ARCH_DATA / "nasdaq" / "nasdaq.csv.gz"}


def read_index(symbol: str) -> pd.DataFrame:
    """One index's vendor file, as shipped (Date as m/d/yyyy text), with a Symbol column."""
    df = pd.read_csv(FILES[symbol])
    return df.assign(Symbol=symbol)


def real_pair(start: str, end: str) -> pd.DataFrame:
    """Both indices on their real common calendar between two dates: a 2-symbol long vendor table."""
    frames = []
    for sym in FILES:
        df = read_index(sym)
        day = pd.to_datetime(df["Date"], format="%m/%d/%Y")
        frames.append(df[(day >= start) & (day <= end)])
    return pd.concat(frames, ignore_index=True)


def time_sliced(n_slices: int = 6, days: int = 300, gap: int = 500) -> pd.DataFrame:
    """A cross-section of real price paths: each index cut into `n_slices` windows of `days` trading days
    (`gap` days apart), each window a pseudo-symbol ('SPX_1999', ...), all re-dated onto the first window's
    real trading days. Every row is real; only the alignment across symbols is made up (enough stocks per day
    for a daily IC, which needs >= 10)."""
    frames = []
    calendar = None
    for sym in FILES:
        df = read_index(sym).reset_index(drop=True)
        if calendar is None:
            calendar = df["Date"].iloc[:days].to_numpy()
        for k in range(n_slices):
            lo = k * gap
            part = df.iloc[lo:lo + days].copy()
            assert len(part) == days, (sym, k)
            year = pd.to_datetime(part["Date"].iloc[0], format="%m/%d/%Y").year
            part["Symbol"] = f"{sym}_{year}"
            part["Date"] = calendar
            frames.append(part)
    return pd.concat(frames, ignore_index=True)
