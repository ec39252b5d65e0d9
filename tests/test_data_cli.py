"""`python -m crnn_ray.data`: synth / ingest / inspect, exit 2 + one-line error + no output on bad input."""

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from crnn_ray.data import load_panel
from crnn_ray.data.__main__ import main


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_synth_is_byte_identical_per_seed_and_prints_summary(tmp_path, capsys):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    for path, seed in ((a, 5), (b, 5), (c, 6)):
        assert main(["synth", "--symbols", "30", "--days", "90", "--seed", str(seed), "--out", str(path)]) == 0
    out = capsys.readouterr().out
    assert "30 symbols x 90 days" in out and "oracle IC" in out
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    p = load_panel(a)
    assert p.X.shape[1:] == (30, 8) and p.meta["params"]["seed"] == 5
    assert f"{p.meta['oracle_ic']['y5']:.4f}" in out


def test_synth_horizon_names_the_label(tmp_path):
    out = tmp_path / "h.parquet"
    assert main(["synth", "--symbols", "20", "--days", "80", "--horizon", "10", "--out", str(out)]) == 0
    p = load_panel(out)
    assert list(p.labels) == ["y10", "y1"] and p.horizon("y10") == 10 and "y10" in p.meta["oracle_ic"]


def test_inspect_prints_shape_coverage_and_metadata(tmp_path, capsys):
    out = tmp_path / "p.parquet"
    main(["synth", "--symbols", "25", "--days", "70", "--seed", "1", "--out", str(out)])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("days     70", "symbols  25", "features 8: ret1", "coverage", "label    y5 (horizon 5)",
                   "oracle IC y5", "source   synth"):
        assert needle in text


def _ohlcv_csv(path, n_days=40):
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2023-01-02", periods=n_days)
    rows = []
    for sym in ("AAA", "BBB", "CCC"):
        close = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, n_days)))
        rows.append(pd.DataFrame({"TradeDate": dates, "Ticker": sym, "close": close,
                                  "volume": rng.integers(100, 1000, n_days)}))
    df = pd.concat(rows)
    df.to_csv(path, index=False)
    return df


def test_ingest_writes_a_loadable_panel(tmp_path, capsys):
    src, out = tmp_path / "ohlcv.csv", tmp_path / "real.parquet"
    _ohlcv_csv(src)
    rc = main(["ingest", "--ohlcv", str(src), "--out", str(out), "--horizon", "3", "--date-col", "TradeDate"])
    assert rc == 0 and "120 rows, 3 symbols x 40 days" in capsys.readouterr().out
    p = load_panel(out)
    assert p.features == ["ret1", "ret5", "ma20_gap", "vol20", "volume_rel"] and list(p.labels) == ["y3", "y1"]
    assert p.meta["source"] == "ingest" and p.mask[25:].all()


def test_ingest_delisting_return_and_group_flags_reach_the_panel(tmp_path, capsys):
    """--delisting-return books its return on the last close of a name that stops trading; --group keeps the
    named column as the panel's group (the scorer's neutral returns take it)."""
    src = tmp_path / "ohlcv.csv"
    df = _ohlcv_csv(src)
    df["Sector"] = df["Ticker"].map({"AAA": "tech", "BBB": "tech", "CCC": "energy"})
    last = df["TradeDate"].unique()[29]
    df = df[(df["Ticker"] != "CCC") | (df["TradeDate"] <= last)]  # CCC stops trading after day 29
    df.to_csv(src, index=False)
    panels = {}
    for ret in ("0", "-1"):
        out = tmp_path / f"p{ret}.parquet"
        rc = main(["ingest", "--ohlcv", str(src), "--out", str(out), "--horizon", "3", "--date-col", "TradeDate",
                   "--delisting-return", ret, "--group", "Sector"])
        assert rc == 0, capsys.readouterr().err
        panels[ret] = pd.read_parquet(out)
    kept, lost = (p.assign(date=pd.to_datetime(p["date"])).set_index(["symbol", "date"]).sort_index()
                  for p in (panels["0"], panels["-1"]))
    # label_lag 1: y1 of the day before the last close is the move from the last close on: the delisting's
    day = pd.Timestamp(df["TradeDate"].unique()[28])
    assert kept.loc[("CCC", day), "y1"] == 0.0 and lost.loc[("CCC", day), "y1"] == -1.0
    assert lost.loc[("CCC", day), "y3"] == -1.0 and kept.loc[("AAA", day), "y1"] == lost.loc[("AAA", day), "y1"]
    assert set(panels["0"]["group"]) == {"tech", "energy"}


@pytest.mark.parametrize("edit, match", [
    (lambda df: df.drop(columns=["close"]), "missing column 'close'"),
    (lambda df: pd.concat([df, df.iloc[[2]]]), r"duplicate \(date, symbol\) row\(s\), first: \(2023-01-04, AAA\)"),
    (lambda df: df.assign(close=df["close"].astype(object).where(np.arange(len(df)) != 3, "abc")),
     "column 'close' is not numeric"),
    (lambda df: df.assign(close=df["close"].where(np.arange(len(df)) != 3, np.inf)), "'close' has 1 infinite"),
    (lambda df: df.assign(TradeDate=df["TradeDate"].astype(str).where(np.arange(len(df)) != 3, "31/31/2023")),
     "unparsable date '31/31/2023'"),
])
def test_ingest_bad_input_exit_2_one_line_no_output(tmp_path, capsys, edit, match):
    src, out = tmp_path / "ohlcv.csv", tmp_path / "out" / "real.parquet"
    edit(_ohlcv_csv(tmp_path / "good.csv")).to_csv(src, index=False)
    before = _leftovers(tmp_path)
    rc = main(["ingest", "--ohlcv", str(src), "--out", str(out), "--date-col", "TradeDate"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and str(src) in err
    assert re.search(match, err), err
    assert not out.exists() and _leftovers(tmp_path) == before


def test_ingest_missing_date_column_flag_and_missing_file(tmp_path, capsys):
    src = tmp_path / "ohlcv.csv"
    _ohlcv_csv(src)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(tmp_path / "x.parquet"), "--date-col", "when"]) == 2
    assert "missing column 'when' (--date-col)" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.parquet")]) == 2
    assert "nope.parquet: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_synth_bad_size_and_real_process_exit_status(tmp_path):
    out = tmp_path / "s.parquet"
    proc = subprocess.run([sys.executable, "-m", "crnn_ray.data", "synth", "--symbols", "3", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --symbols must be >= 10 (got 3)"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_synth_preset_realistic_and_inspect_shows_the_returns(tmp_path, capsys):
    easy, real = tmp_path / "e.parquet", tmp_path / "r.parquet"
    assert main(["synth", "--symbols", "40", "--days", "120", "--out", str(easy)]) == 0
    assert main(["synth", "--symbols", "40", "--days", "120", "--preset", "realistic", "--out", str(real)]) == 0
    out = capsys.readouterr().out
    assert "preset easy" in out and "preset realistic" in out and "1-day returns y1" in out
    p = load_panel(real)
    assert p.meta["params"]["preset"] == "realistic" and p.meta["oracle_ic"]["y5"] < load_panel(easy).meta[
        "oracle_ic"]["y5"]
    assert main(["inspect", str(real)]) == 0
    text = capsys.readouterr().out
    assert "returns  y1" in text and "label    y1 (horizon 1)" in text and "preset=realistic" in text
    assert main(["synth", "--preset", "hard", "--out", str(tmp_path / "h.parquet")]) == 2
    assert "--preset" in capsys.readouterr().err and not (tmp_path / "h.parquet").exists()


def _messy_csv(path):
    df = _ohlcv_csv(path)
    df = df.assign(volume=df["volume"].astype(float))
    first = (df["TradeDate"] == df["TradeDate"].iloc[5]) & (df["Ticker"] == "BBB")
    df.loc[first, ["close", "volume"]] = [0.0, 0.0]                     # a placeholder row
    neg = (df["TradeDate"] == df["TradeDate"].iloc[7]) & (df["Ticker"] == "CCC")
    df.loc[neg, "volume"] = -10.0
    df.to_csv(path, index=False)
    return df


def test_ingest_prints_repairs_lag_and_the_coverage_inspect_prints(tmp_path, capsys):
    src, out = tmp_path / "messy.csv", tmp_path / "p.parquet"
    _messy_csv(src)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(out), "--horizon", "3", "--date-col", "TradeDate",
                 "--min-price", "19"]) == 0
    text = capsys.readouterr().out
    assert "119 rows" in text and "(120 input rows, 1 without a usable price dropped)" in text
    assert "repairs    placeholder 1 row(s), first (2023-01-09, BBB); negative_volume 1 value(s) in column " \
           "'volume', first (2023-01-11, CCC)" in text
    assert "0 break(s)" in text and "universe   min_price 19 (raw close): " in text
    m = re.search(r"label      y3 \(close t\+1 -> t\+4, label_lag 1\): (present on [\d.]+% of rows with a price "
                  r"\(\d+ of 119\))", text)
    assert m, text
    p = load_panel(out)
    assert p.meta["label_lag"] == 1 and p.meta["repairs"]["placeholder"] == 1
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"label    y3 (horizon 3) close t+1 -> t+4, label_lag 1: {m.group(1)}" in shown  # same basis, same figure
    assert "repairs    placeholder 1 row(s)" in shown and "aux      universe, traded_value_med" in shown
    # a lag of 0 (trade at the close the features end on) is recorded too
    assert main(["ingest", "--ohlcv", str(src), "--out", str(tmp_path / "l0.parquet"), "--date-col", "TradeDate",
                 "--label-lag", "0"]) == 0
    assert "close t -> t+5, label_lag 0" in capsys.readouterr().out
    assert load_panel(tmp_path / "l0.parquet").label_lag == 0


def test_ingest_strict_refuses_in_one_line_naming_every_kind(tmp_path, capsys):
    src, out = tmp_path / "messy.csv", tmp_path / "out" / "p.parquet"
    _messy_csv(src)
    before = _leftovers(tmp_path)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(out), "--date-col", "TradeDate", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: --strict: 2 kind(s) of repair refused: ")
    assert "placeholder 1 row(s)" in err and "negative_volume 1 value(s) in column 'volume'" in err
    assert not out.exists() and _leftovers(tmp_path) == before


def test_ingest_max_jump_is_a_deprecated_alias(tmp_path, capsys):
    src = tmp_path / "ohlcv.csv"
    _ohlcv_csv(src)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(tmp_path / "a.parquet"), "--date-col", "TradeDate",
                 "--max-jump", "1.0"]) == 0
    assert "--max-jump is deprecated" in capsys.readouterr().err
    assert load_panel(tmp_path / "a.parquet").meta["params"]["max_down"] == 0.5
    assert main(["ingest", "--ohlcv", str(src), "--out", str(tmp_path / "b.parquet"), "--date-col", "TradeDate",
                 "--max-jump", "1.0", "--max-up", "2.0"]) == 2
    assert "give one or the other" in capsys.readouterr().err and not (tmp_path / "b.parquet").exists()


def _vendor_csv(path, n_days=80, hole=(30, 55)):
    """An emerging-market style file: integer YYYYMMDD dates, a traded value column in currency ('value'), a
    vendor's own signal ('mom'), and a stretch of business days `hole` nobody has a row in (> 14 calendar days)."""
    df = _ohlcv_csv(path, n_days=n_days)
    days = pd.bdate_range("2023-01-02", periods=n_days)
    df = df[~df["TradeDate"].between(days[hole[0]], days[hole[1] - 1])].copy()
    df["value"] = df["close"] * df["volume"] * 1e3
    df["mom"] = np.tile(np.linspace(-1, 1, len(df) // 3), 3)
    df["TradeDate"] = df["TradeDate"].dt.strftime("%Y%m%d").astype(int)
    df.to_csv(path, index=False)
    return df, days[hole[0] - 1], days[hole[1]]


def test_ingest_integer_dates_gaps_traded_value_and_extra_features(tmp_path, capsys):
    src, out = tmp_path / "em.csv", tmp_path / "em.parquet"
    _, last, first = _vendor_csv(src)
    assert main(["ingest", "--ohlcv", str(src), "--out", str(out), "--horizon", "3", "--traded-value", "value",
                 "--extra-features", "mom", "--date-col", "TradeDate"]) == 0
    text = capsys.readouterr().out
    gap = f"{last.date()} -> {first.date()} ({(first - last).days} days)"
    assert "165 rows, 3 symbols x 55 days, features ret1, ret5, ma20_gap, vol20, volume_rel, mom (" in text
    assert "  dates      integer YYYYMMDD detected (20230102 -> 2023-01-02)\n" in text
    assert f"  repairs    calendar_gap 1 gap(s) longer than 14 days, first {gap}\n" in text
    assert (f"  gaps       1 calendar gap(s) longer than 14 days: {gap}; features restart after each (87 feature "
            "value(s) masked), no label spans one (12 y3, 6 y1 label(s) masked)\n") in text
    assert ("  liquidity  traded_value_med: median traded value 'value' over the last 20 days (declared with "
            "--traded-value, in currency)\n") in text
    p = load_panel(out)
    assert p.features[-1] == "mom" and p.meta["params"]["traded_value"] == "value" and "traded_value" not in p.features
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "dates      integer YYYYMMDD detected" in shown and "gaps       1 calendar gap(s)" in shown
    # --keep-features is the same flag; --date-format reads what detection would not
    text_dates = pd.read_csv(src).assign(TradeDate=lambda d: pd.to_datetime(d["TradeDate"].astype(str)).dt.strftime(
        "%d.%m.%Y"))
    text_dates.to_csv(tmp_path / "dmy.csv", index=False)
    assert main(["ingest", "--ohlcv", str(tmp_path / "dmy.csv"), "--out", str(tmp_path / "dmy.parquet"), "--horizon",
                 "3", "--keep-features", "mom", "--date-format", "%d.%m.%Y", "--max-gap-days", "60",
                 "--date-col", "TradeDate"]) == 0
    again = capsys.readouterr().out
    assert "dates      integer" not in again and "gaps       none longer than 60 calendar days" in again
    assert load_panel(tmp_path / "dmy.parquet").features[-1] == "mom"


@pytest.mark.parametrize("edit, flags, match", [
    (lambda df: df[df["Ticker"] == "AAA"], [], r"1 symbol\(s\) with a price \(AAA\): a panel needs >= 2"),
    (lambda df: df[df["TradeDate"] == df["TradeDate"].iloc[0]], [],
     (r"1 day\(s\) with a price \(2023-01-02 \.\. 2023-01-02\): a panel needs >= 31 \(lookback 20 \+ label lag 1 "
     r"\+ horizon 5 \+ 5 labelled days\)")),
    (lambda df: df.assign(TradeDate=df["TradeDate"].astype(str).where(np.arange(len(df)) != 3, "31/01/2023")),
     ["--date-format", "%Y-%m-%d"], (r"column 'TradeDate': unparsable date '31/01/2023' \(1 row\(s\), .*"
                                    r"--date-format '%Y-%m-%d'\)")),
    (lambda df: df, ["--traded-value", "value"], r"missing column 'value' \(--traded-value\)"),
    (lambda df: df, ["--extra-features", "volume,mom"], "column 'volume' is the volume column, not an extra"),
    (lambda df: df.assign(mom=np.where(np.arange(len(df)) == 4, "x", "1.5")), ["--extra-features", "mom"],
     r"column 'mom' is not numeric: 1 value\(s\)"),
    (lambda df: df[~df["TradeDate"].between("2023-01-24", "2023-01-31")], ["--strict", "--max-gap-days", "7"],
     (r"--strict: 1 kind\(s\) of repair refused: calendar_gap 1 gap\(s\) longer than 7 days, first 2023-01-23 -> "
     r"2023-02-01 \(9 days\)$")),
])
def test_ingest_refusals_of_too_small_or_unreadable_files(tmp_path, capsys, edit, flags, match):
    src, out = tmp_path / "ohlcv.csv", tmp_path / "out" / "real.parquet"
    edit(_ohlcv_csv(tmp_path / "good.csv")).to_csv(src, index=False)
    before = _leftovers(tmp_path)
    rc = main(["ingest", "--ohlcv", str(src), "--out", str(out), "--date-col", "TradeDate", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {src}: ") and err.count("\n") == 1
    assert re.search(match, err), err
    assert not out.exists() and _leftovers(tmp_path) == before


def test_ingest_unparsable_dates_print_one_line_and_no_pandas_warning(tmp_path):
    """A real process (pytest would swallow the warning): pandas' "Could not infer format" stays unprinted."""
    src, out = tmp_path / "ohlcv.csv", tmp_path / "p.parquet"
    df = _ohlcv_csv(tmp_path / "good.csv")
    df.assign(TradeDate=df["TradeDate"].astype(str).where(np.arange(len(df)) != 0, "yesterday")).to_csv(
        src, index=False)
    proc = subprocess.run([sys.executable, "-m", "crnn_ray.data", "ingest", "--ohlcv", str(src), "--out", str(out),
                           "--date-col", "TradeDate"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"error: {src}: column 'TradeDate': unparsable date 'yesterday' (1 row(s), e.g. "
                           "('yesterday', AAA); give --date-format)\n")
    assert not out.exists()


def test_ingest_to_a_read_only_filesystem_is_one_line(tmp_path, capsys):
    """An unwritable --out (a tmpfs mounted read-only for the test): `error: OUT: Read-only file system`, exit 2,
    no traceback (pyarrow's own OSError names no file: the target is named)."""
    src = tmp_path / "ohlcv.csv"
    _ohlcv_csv(src)
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        capsys.readouterr()
        rc = main(["ingest", "--ohlcv", str(src), "--out", str(ro / "panel.parquet"), "--horizon", "3",
                   "--date-col", "TradeDate"])
        err = capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert rc == 2 and err == f"error: {ro / 'panel.parquet'}: Read-only file system\n"
