"""A real vendor file made messy: ingest repairs and reports every kind with the right counts; --strict refuses.

The file is the real daily OHLCV of the S&P 500 and the NASDAQ Composite that arch ships (tests/real_ohlcv.py),
2006-2009, with a third symbol LOWP (the S&P 500's real rows, sliding smoothly into a low-price, illiquid
stretch and back) and, on a copy, the mess vendors deliver:

* placeholder all-zero rows: both symbols on 2007-07-04 (a holiday the file does not have) and NDQ on
  2008-03-03;
* four negative volumes (SPX, 2006);
* an unadjusted 2:1 split of NDQ on 2009-06-01 (prices halve, volume doubles), the vendor's Adj Close
  column still continuous.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from real_ohlcv import real_pair

from crnn_ray.data import ingest_ohlcv
from crnn_ray.data.__main__ import main
from crnn_ray.io import CliError

SPLIT_DAY = pd.Timestamp("2009-06-01")
HOLIDAY = "7/4/2007"
NDQ_ZERO = "3/3/2008"
NEG_VOLUME_DAYS = ["2/1/2006", "2/2/2006", "5/10/2006", "11/30/2006"]
PRICES = ["Open", "High", "Low", "Close", "Adj Close"]


def _lowp(spx: pd.DataFrame) -> pd.DataFrame:
    """SPX's real rows, scaled by g(t): 1, then down by 1/500 over 40 days (-15 %/day, inside the limits),
    60 days at 1/500 (about $2.50, volume / 1e5), back up over 40 days."""
    n = len(spx)
    lo = 400
    logg = np.zeros(n)
    logg[lo:lo + 40] = np.linspace(0, np.log(1 / 500), 41)[1:]
    logg[lo + 40:lo + 100] = np.log(1 / 500)
    logg[lo + 100:lo + 140] = np.linspace(np.log(1 / 500), 0, 41)[1:]
    out = spx.copy()
    out[PRICES] = spx[PRICES].to_numpy() * np.exp(logg)[:, None]
    out["Volume"] = np.where(logg < 0, spx["Volume"] / 1e5, spx["Volume"])
    out["Symbol"] = "LOWP"
    return out


@pytest.fixture(scope="module")
def files():
    """(clean, messy): the real file with LOWP added, and its corrupted copy (vendor order, m/d/yyyy dates)."""
    real = real_pair("2006-01-01", "2009-12-31")
    clean = pd.concat([real, _lowp(real[real["Symbol"] == "SPX"].reset_index(drop=True))], ignore_index=True)
    messy = clean.copy()
    day = pd.to_datetime(messy["Date"], format="%m/%d/%Y")
    split = messy["Symbol"].eq("NDQ") & (day >= SPLIT_DAY)
    messy.loc[split, ["Open", "High", "Low", "Close"]] /= 2.0     # Adj Close stays continuous
    messy.loc[split, "Volume"] *= 2
    zero = messy["Symbol"].eq("NDQ") & messy["Date"].eq(NDQ_ZERO)
    messy.loc[zero, PRICES + ["Volume"]] = 0
    neg = messy["Symbol"].eq("SPX") & messy["Date"].isin(NEG_VOLUME_DAYS)
    messy.loc[neg, "Volume"] = -messy.loc[neg, "Volume"]
    holiday = pd.DataFrame({"Date": HOLIDAY, "Symbol": ["SPX", "NDQ"], **{c: 0.0 for c in PRICES}, "Volume": 0})
    messy = pd.concat([messy, holiday], ignore_index=True).sample(frac=1.0, random_state=0)  # vendors need not sort
    assert zero.sum() == 1 and neg.sum() == 4 and split.sum() == 150
    return clean, messy


def _by_key(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index(["date", "symbol"])


def test_repairs_breaks_and_counts_on_the_real_file(files):
    clean, messy = files
    unadjusted = messy.drop(columns=["Adj Close"])               # nothing to adjust with: detection finds it
    ref, mref = ingest_ohlcv(clean.drop(columns=["Adj Close"]), horizon=5)
    out, meta = ingest_ohlcv(unadjusted, horizon=5, where="messy.csv")
    n_days = clean["Date"].nunique()
    assert mref["repairs"] == {k: 0 for k in mref["repairs"]} and mref["corporate_actions"]["breaks"] == 0
    assert meta["repairs"] == {"placeholder": 3, "bad_close": 0, "bad_open": 0, "bad_high": 0, "bad_low": 0,
                               "negative_volume": 4, "negative_traded_value": 0, "bad_factor": 0,
                               "bad_adj_close": 0, "calendar_gap": 0}
    assert meta["repair_summary"] == [
        "placeholder 3 row(s), first (2007-07-04, NDQ), (2007-07-04, SPX), (2008-03-03, NDQ)",
        ("negative_volume 4 value(s) in column 'Volume', first (2006-02-01, SPX), (2006-02-02, SPX), "
         "(2006-05-10, SPX), ..."),
    ]
    ca = meta["corporate_actions"]
    assert ca["adjustment"] == "none" and ca["breaks"] == 1 and ca["bad_prints"] == 0
    assert ca["break_examples"][0].startswith("(2009-06-01, NDQ) x0.5")
    # the holiday placeholders vanish with their day; NDQ's zero row is a halted day (no row)
    assert out["date"].nunique() == n_days and pd.Timestamp("2007-07-04") not in set(out["date"])
    assert len(out) == 3 * n_days - 1 and meta["params"]["n_rows_dropped"] == 3
    o = _by_key(out)
    assert (pd.Timestamp("2008-03-03"), "NDQ") not in o.index
    neg = [(pd.Timestamp(d), "SPX") for d in NEG_VOLUME_DAYS]
    assert o.loc[neg, "volume"].isna().all() and o.loc[neg, "volume_rel"].isna().all()
    assert o.loc[neg, "ret1"].notna().all()                      # only that field goes missing
    # NDQ around the split: the unadjusted split is a move the panel cannot tell from a crash, so the labels
    # spanning it keep it (evaluation realises every held move; the docs say to adjust), training drops them;
    # every label / feature away from it is the clean file's
    nd, nr = out[out["symbol"] == "NDQ"].reset_index(drop=True), ref[ref["symbol"] == "NDQ"]
    nr = nr[nr["date"] != pd.Timestamp("2008-03-03")].reset_index(drop=True)
    b = int(np.flatnonzero(nd["price_break"])[0])
    assert nd["date"].iloc[b] == SPLIT_DAY and nd["price_break"].sum() == 1
    span = np.arange(b - 6, b - 1)                               # y5 at t covers closes t+1 .. t+6
    np.testing.assert_allclose(1 + nd["y5"].iloc[span], 0.5 * (1 + nr["y5"].iloc[span]), rtol=2e-5)
    assert nd["y1"].iloc[b - 2] == pytest.approx(0.5 * (1 + nr["y1"].iloc[b - 2]) - 1, rel=2e-5)
    keep = np.ones(len(nd), dtype=bool)
    keep[span] = False
    keep[-6:] = False
    # NDQ's halted day (calendar day c, no row): a label is never dropped for it -- the books holding NDQ are
    # carried over it -- so every label away from the split is the clean file's, whose close on c is known
    h = int(np.searchsorted(nd["date"], pd.Timestamp("2008-03-03")))  # first row after it
    assert nd["y5"].iloc[h - 6:h].notna().all()
    # day c-6's book holds closes c-5 .. c: stuck on c, it exits at the next traded close (row h, day c+1)
    close = nd["close"].to_numpy()
    assert nd["y5"].iloc[h - 6] == pytest.approx(close[h] / close[h - 5] - 1, rel=2e-5)
    keep[h - 6:h] = False                                        # the windows that reach day c
    np.testing.assert_allclose(nd["y5"][keep], nr["y5"][keep], rtol=2e-5)
    np.testing.assert_allclose(nd.loc[b + 20:, mref["features"]], nr.loc[b + 20:, mref["features"]], rtol=1e-4,
                               atol=1e-6)
    assert nd.loc[b:b + 8, "ma20_gap"].isna().all()              # the series restarted at the break
    assert meta["label_lag"] == 1 and meta["params"]["n_zero_volume_rows"] == 0


def test_vendor_adj_close_undoes_the_split(files):
    clean, messy = files
    ref, _ = ingest_ohlcv(clean, horizon=5)
    out, meta = ingest_ohlcv(messy, horizon=5)
    ca = meta["corporate_actions"]
    assert ca["adjustment"] == "adj_close" and ca["adjustment_column"] == "Adj Close" and ca["breaks"] == 0
    assert meta["repairs"]["placeholder"] == 3 and meta["repairs"]["negative_volume"] == 4
    o, r = _by_key(out), _by_key(ref).loc[_by_key(out).index]
    cols = meta["features"] + ["y5", "y1"]
    split_rows = (o.index.get_level_values("symbol") == "NDQ") & (o.index.get_level_values("date") >= SPLIT_DAY)
    assert (o.loc[split_rows, "close"] < 0.51 * o.loc[split_rows, "adj_close"]).all()   # raw kept, adjusted used
    # away from the repaired rows (NDQ's halted day, SPX's missing volumes) the adjusted panel is the clean one
    far = ~((o.index.get_level_values("date") >= "2006-01-25") & (o.index.get_level_values("date") <= "2007-01-10")
            ) & ~((o.index.get_level_values("date") >= "2008-02-20") & (o.index.get_level_values("date") <= "2008-04-10"))
    pd.testing.assert_frame_equal(o.loc[far, cols], r.loc[far, cols], rtol=1e-4, atol=1e-6)


def test_low_price_illiquid_stretch_is_out_of_the_universe(files):
    _, messy = files
    out, meta = ingest_ohlcv(messy, horizon=5, min_price=5.0, min_traded_value=1e8, liquidity_window=20,
                             max_stale_share=0.5)
    base, _ = ingest_ohlcv(messy, horizon=5)
    # reference: the last 20 days of the calendar (NDQ's halted day counts as a day without a value), on the
    # rows ingest keeps (raw close, repaired volume), symbol by symbol
    tv = (out["close"] * out["volume"]).groupby([out["date"], out["symbol"]]).first().unstack()
    med = tv.rolling(20, min_periods=10).median().stack()
    ref = pd.DataFrame({"med": med.reindex(pd.MultiIndex.from_frame(out[["date", "symbol"]])).to_numpy()})
    np.testing.assert_allclose(out["traded_value_med"], ref["med"], rtol=1e-12)
    low = out["symbol"].eq("LOWP") & (out["close"] < 5.0)
    assert meta["universe"]["rows_out"]["min_price"] == int(low.sum()) == 67
    tv_out = ~(ref["med"] >= 1e8)
    assert meta["universe"]["rows_out"]["min_traded_value"] == int(tv_out.sum())
    assert int(tv_out[out["symbol"] != "LOWP"].sum()) == 2 * 9     # only the warm-up of SPX and NDQ
    assert meta["universe"]["rows_out"]["max_stale_share"] == 3 * 9  # real closes move: only the warm-ups
    gone = ~out["universe"]
    assert meta["universe"]["rows_out_total"] == int(gone.sum())
    assert out.loc[gone, "y5"].isna().all() and base.loc[low, "y5"].notna().all()
    pd.testing.assert_frame_equal(out[meta["features"]], base[meta["features"]])  # features kept


def test_strict_refuses_the_messy_file_in_one_line(files):
    _, messy = files
    with pytest.raises(CliError) as err:
        ingest_ohlcv(messy, horizon=5, strict=True, where="messy.csv")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("messy.csv: --strict: 2 kind(s) of repair refused: placeholder 3 row(s)")
    assert "negative_volume 4 value(s) in column 'Volume'" in msg


def test_cli_on_the_messy_file_prints_the_summary(files, tmp_path, capsys):
    _, messy = files
    src, out = tmp_path / "messy.csv", tmp_path / "p.parquet"
    messy.to_csv(src, index=False)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(out), "--min-price", "5"]) == 0
    text = capsys.readouterr().out
    assert "repairs    placeholder 3 row(s), first (2007-07-04, NDQ), (2007-07-04, SPX), (2008-03-03, NDQ)" in text
    assert "negative_volume 4 value(s) in column 'Volume'" in text
    assert "adjustment by 'Adj Close' / close" in text and "0 break(s)" in text
    assert "min_price 5 (raw close): 67 row(s) out" in text and "label_lag 1" in text
    assert main(["ingest", "--ohlcv", str(src), "--out", str(tmp_path / "s.parquet"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "placeholder 3 row(s)" in err and "negative_volume 4" in err
    assert not (tmp_path / "s.parquet").exists()


def test_a_hole_in_the_real_calendar_is_a_gap_not_three_breaks(files):
    """The real file with two months of autumn 2008 missing (a vendor's hole): the indices fell ~30 % across
    it. With an exchange's tighter limit (-25 %) each symbol's jump over the hole would be a 'break'; as a
    calendar gap it is reported with its dates, no window or label crosses it, and nothing else changes."""
    clean, _ = files
    day = pd.to_datetime(clean["Date"], format="%m/%d/%Y")
    holed = clean[~day.between("2008-09-15", "2008-11-10")].assign(
        Date=lambda d: pd.to_datetime(d["Date"], format="%m/%d/%Y").dt.strftime("%Y%m%d").astype(int))
    naive, mn = ingest_ohlcv(holed, horizon=5, max_down=0.25, max_gap_days=100)
    assert mn["corporate_actions"]["breaks"] == 3 and mn["corporate_actions"]["break_examples"][0].startswith(
        "(2008-11-11, LOWP) x0.7")
    out, meta = ingest_ohlcv(holed, horizon=5, max_down=0.25)
    assert meta["params"]["date_note"] == "integer YYYYMMDD detected (20060103 -> 2006-01-03)"
    assert meta["corporate_actions"]["breaks"] == 0 and meta["calendar_gaps"]["gaps"] == [
        ["2008-09-12", "2008-11-11", 60]]
    assert meta["calendar_gaps"]["labels_masked"] == {"y5": 3 * 6, "y1": 3 * 2}
    ref, _ = ingest_ohlcv(clean, horizon=5, max_down=0.25)
    o, r = _by_key(out), _by_key(ref).loc[_by_key(out).index]
    cols = meta["features"] + ["y5", "y1"]
    before = o.index.get_level_values("date") < pd.Timestamp("2008-09-05")      # labels clear of the hole
    after = o.index.get_level_values("date") > pd.Timestamp("2008-12-31")       # feature windows clear of it
    pd.testing.assert_frame_equal(o.loc[before | after, cols], r.loc[before | after, cols])
    assert naive["y5"].notna().sum() > out["y5"].notna().sum()
