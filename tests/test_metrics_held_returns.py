"""Every held return realised: the books' pnl rebuilt from raw closes, a name that stops trading, a halt.

The rebuilds here are plain numpy / pandas on the panel's `close` column: they share no code with
crnn_ray.data's held returns or crnn_ray.metrics' books.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import load_panel, save_panel, synthesize
from crnn_ray.data.ingest import held_returns
from crnn_ray.data.labels import training_label
from crnn_ray.data.splits import make_splits
from crnn_ray.metrics import evaluate

H = 5


def close_grid(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(closes [D, S] with NaN where a name has no row, dates, symbols) from the long table."""
    wide = df.pivot(index="date", columns="symbol", values="close").sort_index()
    return wide.to_numpy(dtype=np.float64), wide.index.to_numpy(), wide.columns.to_numpy()


def every_move(close: np.ndarray, delisting_return: float = 0.0) -> np.ndarray:
    """r[u, s]: what a position held at close u earns, counting every close-to-close move once: the move to
    the name's next close (a halt's move on its last day before it), `delisting_return` after its last close
    when it stops trading before the data ends, 0 on days it does not trade, NaN on the data's last day."""
    n_days, n_names = close.shape
    r = np.full(close.shape, np.nan)
    for s in range(n_names):
        days = np.flatnonzero(np.isfinite(close[:, s]))
        if days.size == 0:
            continue
        r[days[0]:, s] = 0.0
        for u, v in zip(days[:-1], days[1:]):
            r[u, s] = close[v, s] / close[u, s] - 1.0
        if days[-1] < n_days - 1:
            r[days[-1], s] = delisting_return
    r[n_days - 1] = np.nan
    return r


def rebuilt_pnl(signal: np.ndarray, r: np.ndarray, horizon: int, quantiles: int = 5) -> np.ndarray:
    """Daily pnl of the H overlapping quintile long-short books (1/H of the capital each), rebuilt with
    pd.qcut: W_t = mean of the books formed on t-H+1..t, pnl_t = W_t . r_t (a missing return earns 0);
    NaN on days that hold and trade nothing or whose returns are all unknown."""
    n_days, n_names = signal.shape
    books = np.zeros((n_days, n_names))
    formed = np.zeros(n_days, dtype=bool)
    for d in range(n_days):
        ok = np.flatnonzero(np.isfinite(signal[d]))
        if ok.size < 10:
            continue
        bucket = pd.qcut(signal[d, ok], quantiles, labels=False) + 1
        top, bottom = ok[bucket == quantiles], ok[bucket == 1]
        books[d, top] = 1.0 / top.size
        books[d, bottom] = -1.0 / bottom.size
        formed[d] = True
    pnl = np.full(n_days, np.nan)
    for t in range(n_days):
        live = formed[max(0, t - horizon + 1):t + 1].any()
        closing = t >= horizon and formed[t - horizon]
        if not (live or closing) or not np.isfinite(r[t]).any():
            continue
        held = books[max(0, t - horizon + 1):t + 1].sum(axis=0) / horizon
        pnl[t] = float(np.nansum(held * r[t]))
    return pnl


def sharpe(pnl: np.ndarray) -> float:
    x = pnl[np.isfinite(pnl)]
    return float(x.mean() / x.std(ddof=1) * math.sqrt(252))


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """The realistic sweep's panel (configs/sweeps/realistic.yaml: 200 x 500, seed 0) and its test part."""
    df, meta = synthesize(200, 500, seed=0, horizon=H, preset="realistic")
    path = tmp_path_factory.mktemp("realistic") / "panel.parquet"
    save_panel(df, path, meta)
    panel = load_panel(path, labels=["y5", "oracle_y5"])
    test = make_splits(panel.dates, {"fractions": [0.6, 0.2, 0.2]}, H).test
    return df, panel, test


def test_oracle_realised_pnl_on_the_realistic_preset_counts_every_close_to_close_move(realistic):
    df, panel, (a, b) = realistic
    close, dates, symbols = close_grid(df)
    assert (dates.astype("datetime64[D]") == panel.dates).all() and (symbols.astype(str) == panel.symbols).all()
    # the universe of day d from day d only: a row with all features and a price, and a label that ends
    # inside the data -- never a future jump, halt or delisting
    n_days = close.shape[0]
    label = panel.labels["y5"]
    universe = panel.mask & np.isfinite(close) & (np.arange(n_days)[:, None] <= n_days - 1 - H)
    np.testing.assert_array_equal(universe, panel.mask & np.isfinite(label))
    # the scorer's cut of the test part: its labelled days, the oracle where the label is known
    days = np.arange(a, b + 1)[universe[a:b + 1].any(axis=1)]
    signal = np.where(universe, panel.labels["oracle_y5"], np.nan)[days]
    r = every_move(close)
    assert np.nanmin(r[days]) < -0.5 or np.nanmax(r[days]) > 1.0 or np.nanmin(r) < -0.5  # fat tails are held
    expected = rebuilt_pnl(signal, r[days], H)
    ev = evaluate(signal, np.where(universe, label, np.nan)[days], horizon=H,
                  returns=panel.returns()[days], dates=panel.dates[days])
    got = ev.daily["pnl_ls"].to_numpy()
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=2e-5, atol=1e-8)
    assert ev.summary["sharpe"] == pytest.approx(sharpe(expected), rel=1e-4)
    # the figure docs/metrics.md prints ("Held returns")
    assert ev.summary["sharpe"] == pytest.approx(REALISTIC_ORACLE_TEST_SHARPE, abs=0.01)


#: the planted oracle's realised long-short Sharpe over the realistic sweep's test part, every move counted
#: (2.41 before the preset's -sigma^2/2 log drift; 3.67 counted with the old labels, which dropped names ahead
#: of their jumps, halts and delistings)
REALISTIC_ORACLE_TEST_SHARPE = 2.71


def test_a_held_name_that_stops_trading_realises_its_last_move_and_its_delisting_return(tmp_path):
    """A name held into its delisting: it stays in the universe on its last days (whatever follows), its
    last close-to-close move is in the pnl of the books that hold it, and after its last close it realises
    the panel's delisting return (0: its last price; -30 % here as a configured alternative)."""
    s = None
    for delist in (0.0, -0.3):
        df, meta = synthesize(60, 160, seed=3, delisting_return=delist)
        save_panel(df, tmp_path / f"p{delist}.parquet", meta)
        p = load_panel(tmp_path / f"p{delist}.parquet")
        close, _, _ = close_grid(df)
        if s is None:
            last = np.array([np.flatnonzero(np.isfinite(close[:, k]))[-1] for k in range(close.shape[1])])
            gone = np.flatnonzero((last < close.shape[0] - 20) & p.mask[last, np.arange(close.shape[1])])
            assert gone.size > 0, "some names delist well before the end"
            s = int(gone[0])
            t = int(last[s])
            rng = np.random.default_rng(0)
            noise = rng.standard_normal(p.mask.shape)
        label = p.labels["y5"]
        # on its last days the name is in the universe: its label is known at each decision (mask: features)
        assert np.isfinite(label[t - H + 1:t + 1, s])[p.mask[t - H + 1:t + 1, s]].all() and p.mask[t, s]
        assert label[t, s] == pytest.approx(delist)
        # a signal that ranks the name first every day it trades: it is in every top bucket until it stops
        signal = np.where(p.mask, noise, np.nan)
        signal[:, s] = np.where(p.mask[:, s], 10.0, np.nan)
        signal = np.where(np.isfinite(label), signal, np.nan)
        r = every_move(close, delisting_return=delist)
        expected = rebuilt_pnl(signal, r, H)
        got = evaluate(signal, label, horizon=H, returns=p.returns()).daily["pnl_ls"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)  # y1 is stored as float32
        # the name's own part: its last move (close t-1 -> t, day t-1) and the delisting return (day t)
        without = r.copy()
        without[:, s] = 0.0
        own = expected - rebuilt_pnl(signal, without, H)
        assert own[t - 1] == pytest.approx(held_weight(signal, s, t - H, t) * r[t - 1, s], rel=1e-9)
        assert r[t - 1, s] != 0.0
        assert own[t] == pytest.approx(held_weight(signal, s, t - H + 1, t + 1) * delist, abs=1e-12)
        assert np.all(np.nan_to_num(own[t + 1:]) == 0.0)


def held_weight(signal: np.ndarray, s: int, lo: int, hi: int) -> float:
    """Name s's weight in the portfolio of the books formed on days lo .. hi-1 (1/H of the capital each)."""
    weight = 0.0
    for d in range(lo, hi):
        ok = np.flatnonzero(np.isfinite(signal[d]))
        if ok.size >= 10 and np.isfinite(signal[d, s]):
            top = ok[pd.qcut(signal[d, ok], 5, labels=False) == 4]
            weight += (s in top) / top.size
    return weight / H


def test_held_returns_by_hand():
    """A halt, a delisting, the data's end, on one price grid: every move counted once."""
    nan = np.nan
    price = np.array([[10.0, 20.0, 5.0],
                      [11.0, nan, 5.5],
                      [12.0, nan, nan],
                      [nan, 30.0, nan],
                      [15.0, 33.0, nan]])
    r, end = held_returns(price, delisting_return=-0.5)
    np.testing.assert_allclose(r, [[0.1, 0.5, 0.1],          # name 1 halted on days 1-2: 20 -> 30 on day 0
                                   [12 / 11 - 1, 0.0, -0.5],  # name 2's last close on day 1: delisted
                                   [15 / 12 - 1, 0.0, 0.0],
                                   [0.0, 0.1, 0.0],
                                   [nan, nan, nan]])          # the data's last day: next close unknown
    np.testing.assert_array_equal(end[:, 1], [3, 2, 3, 4, 4])
    lagged, _ = held_returns(price, lag=1, delisting_return=-0.5)
    np.testing.assert_allclose(lagged[:-1], r[1:])
    assert np.isnan(lagged[-1]).all()


def test_a_jump_is_in_the_evaluation_label_and_out_of_the_training_target(realistic):
    """The realistic preset's fat tails make one-day moves beyond -50 % / +100 %: flagged price_break, kept in
    yH and y1 (the books realise them), dropped from the training target (data.labels.training_label)."""
    df, panel, _ = realistic
    close, _, _ = close_grid(df)
    flags = panel.aux["price_break"]
    days, names = np.nonzero(flags)
    assert days.size >= 1
    d, s = int(days[0]), int(names[0])
    prev = np.flatnonzero(np.isfinite(close[:d, s]))[-1]
    move = close[d, s] / close[prev, s] - 1
    assert move < -0.5 or move > 1.0
    assert panel.returns()[prev, s] == pytest.approx(move, rel=1e-5)         # in y1 on the day before it
    t = prev - 2                                                              # a 5-day label spanning it
    assert panel.labels["y5"][t, s] == pytest.approx(close[t + 5, s] / close[t, s] - 1, rel=1e-5)
    target = training_label(panel, "y5")
    assert np.isnan(target[d - H:d, s]).all() and np.isfinite(panel.labels["y5"][d - H:d, s]).all()
    # elsewhere the target is the label
    same = ~np.isnan(target)
    np.testing.assert_array_equal(target[same], panel.labels["y5"][same])
    assert np.isnan(target).sum() - np.isnan(panel.labels["y5"]).sum() <= H * flags.sum()
