"""The scorer's outputs open in every reader: pandas, pyarrow, duckdb and polars, one plain call each.

A small real signals dataset is written by the scorer's own writer (`write.write_signals` / `write_labels` on a
hand-made plan: 4 dates x 6 text symbols, some cells not scored; no sweep, no Ray) and read back by each
reader; all must give the same (date, symbol, signal, member) rows. The date lives only in the
`date=YYYY-MM-DD` folder names (a copy inside the files made pyarrow and pandas refuse to merge it with the
partition), so each reader's date type is pinned down too -- docs/scoring.md, "Reading the signals".
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from crnn_ray.evaluate import main as evaluate_main
from crnn_ray.evaluate import read_table
from crnn_ray.io import parquet_dataset
from crnn_ray.metrics import evaluate
from crnn_ray.score.config import ScoreConfig
from crnn_ray.score.plan import WindowPlan
from crnn_ray.score.stitch import Part, stitch
from crnn_ray.score.write import write_labels, write_signals
from crnn_ray.score.select import Member, Unit

DATES = np.array(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"], dtype="datetime64[D]")
SYMBOLS = np.array(["AAPL", "BRK.B", "MSFT", "NVDA", "TSLA", "ZZZ 1"])  # sorted, as the panel keeps them


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """(output dir, the expected signal rows, the expected label rows), written by the real writers."""
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("readers") / "out"
    d, s = len(DATES), len(SYMBOLS)
    scored = rng.random((d, s)) < 0.8
    scored[:, 0] = True  # every date has rows
    days, stocks = np.nonzero(scored)
    members = [Member(name=f"convgru/m0{k}@seed0", trial_id=f"t00{k}", variant_id=f"convgru/m0{k}", spec="x",
                      seed=0, checkpoint=Path("."), valid_ic=0.05, select_value=0.05) for k in (1, 2)]
    label = np.where(scored, rng.normal(size=(d, s)), np.nan)
    label[-1, 1] = np.nan  # a scored row whose label is not known yet
    plan = WindowPlan(
        members=members, payloads=[], inputs={}, slice_dates=DATES, symbols=SYMBOLS, first_day=0, days=days,
        stocks=stocks, panel=SimpleNamespace(meta={}), panel_path=Path("panel.parquet"), label="y5", horizon=5, label_grid=label,
        oracle_grid=None, period=(str(DATES[0]), str(DATES[-1])), in_sample={}, weights=np.array([0.5, 0.5]),
        weight_note=None, units=[Unit(m.name, [m], 0.05, 0.05) for m in members],
        unit_weights=np.array([0.5, 0.5]), groups=[[0], [1]],
    )
    preds = rng.normal(size=(d, s, 2)).astype(np.float32)
    signal = np.where(scored, preds.mean(axis=2).astype(np.float64), np.nan)
    record = stitch([Part(None, plan, preds, signal, {"seconds": 0.0}, "in_process")], False, Path("."))
    write_signals(out, record, ScoreConfig(experiment=Path("."), out=out))
    write_labels(out, record)
    expected = pd.DataFrame({"date": [str(x) for x in DATES[days]], "symbol": SYMBOLS[stocks],
                             "signal": signal[days, stocks]})
    for k, m in enumerate(members):
        expected[m.name] = preds[days, stocks, k]
    known = np.isfinite(label)
    lab_days, lab_stocks = np.nonzero(known)
    labels = pd.DataFrame({"date": [str(x) for x in DATES[lab_days]], "symbol": SYMBOLS[lab_stocks],
                           "y5": label[known]})
    return out, expected, labels


def canonical(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """ISO date strings, the given columns, sorted: what every reader must agree on."""
    df = pd.DataFrame(df)
    dates = df["date"].astype(str) if not pd.api.types.is_datetime64_any_dtype(df["date"]) else df["date"]
    df = df.assign(date=pd.to_datetime(dates).dt.strftime("%Y-%m-%d"), symbol=df["symbol"].astype(str))
    return df[columns].sort_values(["date", "symbol"], ignore_index=True)


def test_every_reader_gets_the_same_signal_rows_with_a_usable_date(written):
    out, expected, _ = written
    sig = out / "signals"
    assert sorted(p.name for p in sig.iterdir()) == [f"date={x}" for x in DATES]
    cols = list(expected.columns)
    assert pq.read_schema(sig / f"date={DATES[0]}" / "part-0.parquet").names == ["symbol", "signal", *cols[3:]]

    frames = {}
    # pandas: date = the folder's ISO string, as a category
    frames["pd.read_parquet"] = got = pd.read_parquet(sig)
    assert isinstance(got["date"].dtype, pd.CategoricalDtype)
    assert set(got["date"].astype(str)) == {str(x) for x in DATES}
    # pyarrow: the same dictionary<string> / string partition column; typed date32 when asked for
    table = pq.read_table(sig)
    assert pa.types.is_dictionary(table.schema.field("date").type)
    frames["pq.read_table"] = table.to_pandas()
    table = ds.dataset(sig, partitioning="hive").to_table()
    assert table.schema.field("date").type == pa.string()
    frames["ds.dataset hive"] = table.to_pandas()
    typed = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
    table = pq.read_table(sig, partitioning=typed)
    assert table.schema.field("date").type == pa.date32()
    frames["pq.read_table date32"] = table.to_pandas()
    table = parquet_dataset(sig).to_table()  # what crnn_ray.evaluate reads through
    assert table.schema.field("date").type == pa.date32()
    frames["crnn_ray.io.parquet_dataset"] = table.to_pandas()
    # duckdb: DATE from the hive folders (hive_types_autocast)
    rel = duckdb.read_parquet(f"{sig}/**/*.parquet", hive_partitioning=True)
    assert dict(zip(rel.columns, rel.types))["date"] == "DATE"
    frames["duckdb.read_parquet"] = rel.df()
    frames["duckdb FROM glob"] = duckdb.sql(f"SELECT * FROM '{sig}/**/*.parquet'").df()
    # polars: Date from the hive folders (try_parse_hive_dates)
    got = pl.read_parquet(sig)
    assert got.schema["date"] == pl.Date
    frames["pl.read_parquet"] = got.to_pandas()
    got = pl.scan_parquet(f"{sig}/**/*.parquet", hive_partitioning=True).collect()
    assert got.schema["date"] == pl.Date
    frames["pl.scan_parquet"] = got.to_pandas()

    want = canonical(expected, cols)
    for name, frame in frames.items():
        assert set(frame.columns) == set(cols), name
        got = canonical(frame, cols)
        assert got[["date", "symbol"]].equals(want[["date", "symbol"]]), name
        np.testing.assert_array_equal(got[cols[2:]].to_numpy(np.float64), want[cols[2:]].to_numpy(np.float64),
                                      err_msg=name)


def test_every_reader_gets_the_same_label_rows(written):
    out, _, labels = written
    path = out / "labels.parquet"
    cols = ["date", "symbol", "y5"]
    frames = {
        "pd.read_parquet": pd.read_parquet(path),
        "pq.read_table": pq.read_table(path).to_pandas(),
        "duckdb.read_parquet": duckdb.read_parquet(str(path)).df(),
        "pl.read_parquet": pl.read_parquet(path).to_pandas(),
    }
    assert pq.read_schema(path).field("date").type == pa.date32()
    assert pl.read_parquet(path).schema["date"] == pl.Date
    want = canonical(labels, cols)
    for name, frame in frames.items():
        got = canonical(frame, cols)
        assert got[["date", "symbol"]].equals(want[["date", "symbol"]]), name
        np.testing.assert_array_equal(got["y5"].to_numpy(), want["y5"].to_numpy(), err_msg=name)


def test_a_plain_pandas_merge_of_signals_and_labels_gets_every_labelled_row(written):
    """pd.read_parquet(signals/) gives the date=YYYY-MM-DD folders' ISO strings; labels.parquet's date32 `date` is
    declared text for pandas, so the plain merge meets them (it returned 0 rows when pandas got datetime.date
    objects). duckdb, polars and typed pyarrow read both dates as dates and join them in one plain call too."""
    out, expected, labels = written
    sig, lab = out / "signals", out / "labels.parquet"
    merged = pd.read_parquet(sig).merge(pd.read_parquet(lab), on=["date", "symbol"])
    assert len(merged) == len(labels) > 0  # every labelled row (each is a scored row)
    cols = ["date", "symbol", "signal", "y5"]
    want = canonical(expected.merge(labels, on=["date", "symbol"]), cols)
    got = canonical(merged, cols)
    assert got[["date", "symbol"]].equals(want[["date", "symbol"]])
    np.testing.assert_array_equal(got[["signal", "y5"]].to_numpy(), want[["signal", "y5"]].to_numpy())
    dates = pd.read_parquet(lab)["date"]
    assert pd.api.types.is_string_dtype(dates) and set(dates) == {str(x) for x in DATES}
    assert pq.read_schema(lab).field("date").type == pa.date32()  # on disk, and for every other reader: a date

    query = (f"SELECT count(*) FROM read_parquet('{sig}/**/*.parquet', hive_partitioning=true) "
             f"JOIN '{lab}' USING (date, symbol)")
    assert duckdb.sql(query).fetchall() == [(len(labels),)]
    assert pl.read_parquet(sig).join(pl.read_parquet(lab), on=["date", "symbol"]).height == len(labels)
    typed = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
    joined = pq.read_table(sig, partitioning=typed).join(pq.read_table(lab), keys=["date", "symbol"])
    assert joined.num_rows == len(labels)


def test_evaluate_reads_the_written_dataset_and_a_legacy_one(written, tmp_path):
    """crnn_ray.evaluate joins what the scorer wrote (date from the folders), and still reads directories written
    before the date left the files, alone or mixed with new partitions."""
    out, expected, labels = written
    frame = read_table(out / "signals", ["date", "symbol", "signal"])
    assert pd.api.types.is_datetime64_any_dtype(frame["date"])
    assert canonical(frame, ["date", "symbol", "signal"]).equals(canonical(expected, ["date", "symbol", "signal"]))

    legacy = tmp_path / "legacy"
    for i, (date, part) in enumerate(expected.groupby("date")):
        folder = legacy / f"date={date}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
        if i % 2 == 0:  # the old layout: the date repeated inside the file as date32
            table = table.set_column(0, "date", pa.array(np.array(part["date"], dtype="datetime64[D]"), pa.date32()))
        else:  # the new one
            table = table.drop_columns(["date"])
        pq.write_table(table, folder / "part-0.parquet")
    for path in (out / "signals", legacy):
        check = tmp_path / f"{path.name}.json"
        argv = ["--signals", str(path), "--labels", str(out / "labels.parquet"), "--label", "y5",
                "--min-stocks", "2", "--quantiles", "2", "--json", str(check)]
        assert evaluate_main(argv) == 0
        got = json.loads(check.read_text())["summary"]
        merged = expected.merge(labels, on=["date", "symbol"])
        grid = merged.pivot(index="date", columns="symbol")
        ref = evaluate(grid["signal"].to_numpy(), grid["y5"].to_numpy(), min_stocks=2, quantiles=2).summary
        assert got["ic"] == pytest.approx(ref["ic"], abs=1e-12) and got["n_days"] == ref["n_days"] == len(DATES)
