"""`python -m crnn_ray.evaluate`: the numbers it writes, and one-line errors with no output on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crnn_ray.evaluate import main
from crnn_ray.metrics import Neutral, evaluate

REPO = Path(__file__).resolve().parents[1]


def make_tables(days: int = 40, stocks: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2024-01-02", periods=days)
    symbols = [f"S{i:03d}" for i in range(stocks)]
    grid = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"]).to_frame(index=False)
    signal = rng.normal(size=len(grid))
    label = 0.3 * signal + rng.normal(size=len(grid))
    label[rng.random(len(grid)) < 0.05] = np.nan
    signals = grid.assign(signal=signal, other=rng.normal(size=len(grid)))
    labels = grid.assign(y5=label, y1=rng.normal(size=len(grid)))
    return signals, labels, signal.reshape(days, stocks), label.reshape(days, stocks)


@pytest.fixture
def tables(tmp_path):
    signals, labels, signal, label = make_tables()
    sig_path, lab_path = tmp_path / "signals.parquet", tmp_path / "labels.parquet"
    signals.to_parquet(sig_path, index=False)
    labels.to_parquet(lab_path, index=False)
    return sig_path, lab_path, signals, labels, signal, label


def test_cli_writes_the_evaluation_as_json(tables, tmp_path, capsys):
    sig_path, lab_path, _, _, signal, label = tables
    out, daily = tmp_path / "m" / "metrics.json", tmp_path / "daily.csv"
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--quantiles", "4",
               "--cost-bps", "5", "--min-stocks", "10", "--horizon", "5", "--json", str(out), "--daily", str(daily)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "RankIC" in printed and "long-short" in printed
    got = json.loads(out.read_text())
    # the command's default basis is neutral (no beta / group column: the equal-weight market alone)
    ref = evaluate(signal, label, quantiles=4, cost_bps=5, min_stocks=10, horizon=5, neutral=Neutral())
    for key in ("ic", "rank_ic", "icir", "pnl_long_short", "pnl_long", "sharpe", "turnover", "pnl_long_short_net"):
        assert got["summary"][key] == pytest.approx(ref.summary[key], abs=1e-12), key
    assert got["summary"]["n_days"] == 40
    assert list(got["quantile_returns"]) == ["1", "2", "3", "4"]
    assert got["quantile_returns"]["4"] == pytest.approx(ref.quantile_returns[3], abs=1e-12)
    assert got["params"]["horizon"] == 5 and got["inputs"]["first_date"] == "2024-01-02"
    frame = pd.read_csv(daily)
    assert len(frame) == 40 and frame["date"].iloc[0] == "2024-01-02"
    assert f"{got['summary']['ic']:+.4f}" in printed


def test_cli_reads_csv_a_partitioned_signal_directory_and_another_signal_column(tables, tmp_path):
    _, lab_path, signals, labels, _, _ = tables
    sig_dir = tmp_path / "signals"
    for date, part in signals.groupby("date"):  # the scorer's layout: date=YYYY-MM-DD/part-0.parquet
        folder = sig_dir / f"date={date.date()}"
        folder.mkdir(parents=True)
        part.to_parquet(folder / "part-0.parquet", index=False)
    lab_csv = tmp_path / "labels.csv"
    labels.assign(date=labels["date"].dt.strftime("%Y-%m-%d")).to_csv(lab_csv, index=False)
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["--signals", str(sig_dir), "--labels", str(lab_csv), "--label", "y5", "--json", str(out_a)]) == 0
    assert main(["--signals", str(sig_dir), "--labels", str(lab_path), "--label", "y5", "--json", str(out_b)]) == 0
    a, b = json.loads(out_a.read_text()), json.loads(out_b.read_text())
    assert a["summary"]["ic"] == pytest.approx(b["summary"]["ic"], abs=1e-12)
    out_c = tmp_path / "c.json"
    assert main(["--signals", str(sig_dir), "--labels", str(lab_path), "--label", "y5", "--signal-col", "other",
                 "--json", str(out_c)]) == 0
    assert json.loads(out_c.read_text())["summary"]["ic"] != pytest.approx(a["summary"]["ic"], abs=1e-6)


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


BAD_CASES = {
    "missing_file": (lambda s, l, d: (d / "nope.parquet", None), "nope.parquet", "no such file"),
    "missing_column": (lambda s, l, d: (_write(s.drop(columns="signal"), d / "s.parquet"), None), "s.parquet",
                       "'signal'"),
    "duplicate_keys": (lambda s, l, d: (_write(pd.concat([s, s.iloc[5:6]]), d / "s.parquet"), None), "s.parquet",
                       "duplicate (date, symbol)"),
    "inf_label": (lambda s, l, d: (None, _write(l.assign(y5=l["y5"].where(l.index != 7, np.inf)), d / "l.parquet")),
                  "l.parquet", "'y5'"),
    "bad_dates": (lambda s, l, d: (_write(s.assign(date=s["date"].dt.strftime("%Y-%m-%d")
                                                   .where(s.index != 2, "2024-13-45")), d / "s.csv"), None),
                  "s.csv", "unparsable"),
    "constant_label": (lambda s, l, d: (None, _write(l.assign(y5=0.01), d / "l.parquet")), "l.parquet", "constant"),
    "text_signal": (lambda s, l, d: (_write(s.assign(signal=s["signal"].astype(str)), d / "s.parquet"), None),
                    "s.parquet", "numeric"),
    "no_overlap": (lambda s, l, d: (_write(s.assign(date=s["date"] + pd.Timedelta(days=3650)), d / "s.parquet"), None),
                   "no overlapping", "labels"),
    "too_few_stocks": (lambda s, l, d: (_write(s[s["symbol"] < "S005"], d / "s.parquet"), None), "--min-stocks",
                       "valid"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_cli_bad_input_is_one_line_exit_2_and_no_json(case, tables, tmp_path, capsys):
    sig_path, lab_path, signals, labels, _, _ = tables
    make, name, needle = BAD_CASES[case]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    new_sig, new_lab = make(signals, labels, bad_dir)
    out = tmp_path / "out.json"
    rc = main(["--signals", str(new_sig or sig_path), "--labels", str(new_lab or lab_path), "--label", "y5",
               "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err
    assert name in err and needle in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_module_entry_point_exits_2_on_a_missing_label_column(tables, tmp_path):
    sig_path, lab_path, *_ = tables
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, "-m", "crnn_ray.evaluate", "--signals", str(sig_path), "--labels", str(lab_path),
         "--label", "y99", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {lab_path}: missing column 'y99' (has date, symbol, y5, y1)"
    assert not out.exists()


def test_cli_returns_column_gives_the_realised_pnl_and_says_which_method(tables, tmp_path, capsys):
    sig_path, lab_path, _, labels, signal, label = tables
    returns = labels["y1"].to_numpy().reshape(signal.shape)
    out = tmp_path / "r.json"
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--horizon", "5",
               "--returns", "y1", "--cost-bps", "5", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pnl method: realised" in printed and "'y1'" in printed and "HAC t" in printed
    got = json.loads(out.read_text())
    ref = evaluate(signal, label, horizon=5, cost_bps=5, returns=returns, neutral=Neutral())
    assert got["summary"]["pnl_method"] == "realised" and got["inputs"]["returns"] == "y1"
    for key, value in ref.summary.items():
        if isinstance(value, float) and value != value:  # NaN is null in strict JSON (e.g. break_even_bps, pnl <= 0)
            assert got["summary"][key] is None, key
            continue
        assert got["summary"][key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert f"{got['summary']['sharpe']:+.3f}" in printed and f"{got['summary']['ic_tstat_hac']:+.2f}" in printed

    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--horizon", "5",
               "--json", str(tmp_path / "n.json")])
    assert rc == 0 and "pnl method: non_overlapping" in capsys.readouterr().out
    assert json.loads((tmp_path / "n.json").read_text())["summary"]["pnl_method"] == "non_overlapping"
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--returns", "y1",
               "--json", str(tmp_path / "d.json")])
    assert rc == 0 and "pnl method: daily" in capsys.readouterr().out


def test_cli_missing_returns_column_is_one_line_exit_2(tables, tmp_path, capsys):
    sig_path, lab_path, *_ = tables
    out = tmp_path / "m.json"
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--horizon", "5",
               "--returns", "y2", "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "'y2'" in err and str(lab_path) in err and "\n" not in err
    assert not out.exists()


def test_cli_liquidity_split_break_even_and_label_lag(tables, tmp_path, capsys):
    sig_path, _, signals, labels, signal, label = tables
    size = np.tile(np.arange(signal.shape[1], dtype=float), signal.shape[0])  # S000 least liquid ... S029 most
    lab_path = _write(labels.assign(traded_value_med=size), tmp_path / "liq.parquet")
    out = tmp_path / "l.json"
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--horizon", "5",
               "--liquidity", "traded_value_med", "--label-lag", "1", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    ref = evaluate(signal, label, horizon=5, liquidity=size.reshape(signal.shape))
    split = got["liquidity_split"]
    assert split["available"] and split["column"] == "traded_value_med"
    assert split["ic_liquid"] == pytest.approx(ref.liquidity_split["ic_liquid"], abs=1e-12)
    assert split["ic_illiquid"] == pytest.approx(ref.liquidity_split["ic_illiquid"], abs=1e-12)
    assert f"liquidity split by traded_value_med (each day's names halved at the median): IC " \
           f"{split['ic_liquid']:+.4f} more liquid vs {split['ic_illiquid']:+.4f} less liquid" in printed
    be = got["summary"]["break_even_bps"]
    assert be > 0 and f"break-even {be:.1f} bps per unit traded" in printed
    assert "execution: label y5 entered at close t+1 (label_lag 1): return close t+1 -> t+6" in printed
    assert got["inputs"]["liquidity"] == "traded_value_med" and got["inputs"]["label_lag"] == 1

    # without the options: no split (its reason in the JSON), no lag statement; a losing signal: n/a
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5",
               "--json", str(tmp_path / "p.json")])
    printed = capsys.readouterr().out
    plain = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and "execution:" not in printed and "liquidity split" not in printed
    assert plain["liquidity_split"] == {"available": False, "note": "n/a (no liquidity column)", "column": None}
    assert "label_lag" not in plain["inputs"]
    flipped = _write(signals.assign(signal=-signals["signal"]), tmp_path / "neg.parquet")
    rc = main(["--signals", str(flipped), "--labels", str(lab_path), "--label", "y5", "--label-lag", "0",
               "--json", str(tmp_path / "f.json")])
    printed = capsys.readouterr().out
    assert rc == 0 and "break-even n/a" in printed
    assert "execution: label y5 entered at close t (label_lag 0: entered at the close the features use" in printed
    rc = main(["--signals", str(sig_path), "--labels", str(lab_path), "--label", "y5", "--label-lag", "-1",
               "--json", str(tmp_path / "bad.json")])
    assert rc == 2 and "--label-lag" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


def test_evaluate_flags_and_help_defaults_come_from_the_evaluation_config():
    """--quantiles, --cost-bps, --min-stocks, --periods-per-year are EvaluationConfig's fields: the same keys and
    defaults as the scorer's `evaluation:` section, stated by --help."""
    import dataclasses
    import re

    from crnn_ray.config import default_text, flag_name
    from crnn_ray.evaluate import build_parser
    from crnn_ray.metrics import EvaluationConfig

    helps = {a.option_strings[0]: " ".join((a.help or "").split()) for a in build_parser()._actions if a.option_strings}
    flags = [f for f in dataclasses.fields(EvaluationConfig) if f.metadata.get("flag")]
    assert {f.name for f in flags} == {"quantiles", "cost_bps", "min_stocks", "periods_per_year", "returns_basis"}
    for f in flags:
        assert re.search(r"\(default: ([^)]*)\)$", helps[flag_name(f)]).group(1) == default_text(f)


def _signals_dir(signals: pd.DataFrame, root: Path, metadata: dict | None, horizon_of=lambda date: None) -> Path:
    """The scorer's layout (date=YYYY-MM-DD/part-0.parquet, the date in the folder only) with its schema metadata
    `crnn_ray_signals` (None: none); `horizon_of(date)` overrides the horizon per file."""
    for date, part in signals.groupby("date"):
        table = pa.Table.from_pandas(part.drop(columns="date").reset_index(drop=True), preserve_index=False)
        meta = None if metadata is None else {**metadata, **({"horizon": horizon_of(date)} if horizon_of(date) else {})}
        if meta is not None:
            table = table.replace_schema_metadata({b"crnn_ray_signals": json.dumps(meta).encode()})
        (root / f"date={date.date()}").mkdir(parents=True)
        pq.write_table(table, root / f"date={date.date()}" / "part-0.parquet")
    return root


def test_label_horizon_and_label_lag_come_from_the_signals_metadata(tables, tmp_path, capsys):
    """The scorer's signals say what they predict: without --horizon the command evaluates at the metadata's
    horizon (not 1), says so in one line, and gives exactly the figures of the matching explicit flags."""
    _, lab_path, signals, _, signal, label = tables
    sig_dir = _signals_dir(signals, tmp_path / "signals", {"method": "mean", "label": "y5", "horizon": 5,
                                                           "label_lag": 1})
    bare, explicit = tmp_path / "bare.json", tmp_path / "explicit.json"
    capsys.readouterr()
    assert main(["--signals", str(sig_dir), "--labels", str(lab_path), "--json", str(bare)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "label y5, horizon 5, label_lag 1 from the signals' metadata"
    assert "execution: label y5 entered at close t+1 (label_lag 1)" in printed
    got = json.loads(bare.read_text())
    assert got["params"]["horizon"] == 5 and got["inputs"]["label"] == "y5" and got["inputs"]["label_lag"] == 1
    ref = evaluate(signal, label, horizon=5)
    for key in ("ic", "pnl_long_short", "sharpe", "turnover"):
        assert got["summary"][key] == pytest.approx(ref.summary[key], abs=1e-12), key
    assert main(["--signals", str(sig_dir), "--labels", str(lab_path), "--label", "y5", "--horizon", "5",
                 "--label-lag", "1", "--json", str(explicit)]) == 0
    assert "from the signals' metadata" not in capsys.readouterr().out  # every flag given: nothing taken
    assert json.loads(explicit.read_text())["summary"] == got["summary"]
    # one flag left out: only that one is taken (and stated)
    assert main(["--signals", str(sig_dir), "--labels", str(lab_path), "--label", "y5", "--label-lag", "1",
                 "--json", str(tmp_path / "one.json")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "horizon 5 from the signals' metadata"


CONTRADICTIONS = {
    "horizon": (["--horizon", "1"], "error: --horizon 1 contradicts the signals' metadata (horizon 5, label y5): "
                                    "drop the flag or pass the matching value"),
    "label": (["--label", "y1"], "error: --label y1 contradicts the signals' metadata (label y5, horizon 5): "
                                 "drop the flag or pass the matching value"),
    "label_lag": (["--label", "y5", "--label-lag", "0"],
                  "error: --label-lag 0 contradicts the signals' metadata (label_lag 1, label y5): "
                  "drop the flag or pass the matching value"),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_a_flag_that_contradicts_the_signals_metadata_is_one_line_exit_2(case, tables, tmp_path, capsys):
    _, lab_path, signals, _, _, _ = tables
    sig_dir = _signals_dir(signals, tmp_path / "signals", {"label": "y5", "horizon": 5, "label_lag": 1})
    flags, line = CONTRADICTIONS[case]
    out = tmp_path / "out.json"
    capsys.readouterr()
    rc = main(["--signals", str(sig_dir), "--labels", str(lab_path), *flags, "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.err == line + "\n" and captured.out == ""
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_signals_without_metadata_keep_the_defaults_and_disagreeing_files_are_refused(tables, tmp_path, capsys):
    _, lab_path, signals, _, _, _ = tables
    plain = _signals_dir(signals, tmp_path / "plain", None)  # another producer's files: horizon 1, --label needed
    capsys.readouterr()
    assert main(["--signals", str(plain), "--labels", str(lab_path), "--label", "y5", "--json",
                 str(tmp_path / "p.json")]) == 0
    assert "from the signals' metadata" not in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["params"]["horizon"] == 1
    assert main(["--signals", str(plain), "--labels", str(lab_path), "--json", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --label is required") and err.count("\n") == 1 and not (tmp_path / "q.json").exists()

    first = signals["date"].min()
    mixed = _signals_dir(signals, tmp_path / "mixed", {"label": "y5", "horizon": 5},
                         horizon_of=lambda date: 1 if date == first else None)
    assert main(["--signals", str(mixed), "--labels", str(lab_path), "--json", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {mixed}: the files' crnn_ray_signals metadata disagree on horizon (1, 5): evaluate one " \
                  f"run's signals at a time\n"
    assert not (tmp_path / "m.json").exists()
