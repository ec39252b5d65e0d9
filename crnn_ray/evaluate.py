"""`python -m crnn_ray.evaluate`: score a signal table against a label table and write metrics JSON.

Researchers bring signals from anywhere (our scorer, a notebook, another library), so the command takes two
long tables keyed on (date, symbol) -- parquet files, a date-partitioned parquet directory such as the
scorer's `signals/`, or CSV -- checks them, prints a readable summary and writes it atomically as JSON.

    python -m crnn_ray.evaluate --signals S.parquet --labels L.parquet --label y5 --json metrics.json
    python -m crnn_ray.evaluate ... --label y5 --horizon 5 --returns y1     # realised pnl of the 5 live books
    python -m crnn_ray.evaluate ... --liquidity traded_value_med            # IC on the liquid vs illiquid half
    python -m crnn_ray.evaluate ... --label-lag 1                           # state when the label is entered
    python -m crnn_ray.evaluate ... --returns-basis neutral --beta beta --group group   # residual returns

The scorer's signals/ say what they predict (schema metadata `crnn_ray_signals`: label, horizon, label_lag):
a flag left out takes the metadata's value (a printed line says so) and a flag that contradicts it is refused,
so `--signals OUT/signals --labels OUT/labels.parquet` alone evaluates at the signals' own horizon.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from crnn_ray.io import ArgumentParser, CliError, atomic_path, cli_main, parquet_dataset, write_json_atomic
from crnn_ray.config import add_flags, flag_values
from crnn_ray.metrics import EvaluationConfig, evaluate_frames
from crnn_ray.metrics_text import format_summary

SIGNALS_METADATA_KEY = b"crnn_ray_signals"  # crnn_ray/score/write.py: signals_metadata
# the settings the metadata fixes: key -> (flag, args attribute, type, default without metadata)
FROM_METADATA = {"label": ("--label", "label", str, None), "horizon": ("--horizon", "horizon", int, 1),
                 "label_lag": ("--label-lag", "label_lag", int, None)}


def read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """Read the named columns of a parquet file / parquet directory / CSV; CliError names the file."""
    path = Path(path)
    if not path.exists():
        raise CliError(f"{path}: no such file or directory")
    try:
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            # the scorer's signals/: date from the date=YYYY-MM-DD folders (date32); symbols as a dictionary
            dataset = parquet_dataset(path, dictionary_columns=("symbol",))
            present = dataset.schema.names
            missing = [c for c in columns if c not in present]
            if missing:
                raise CliError(f"{path}: missing column {missing[0]!r} (has {', '.join(present[:12])})")
            return _to_frame(dataset.to_table(columns=columns))
        if path.suffix.lower() in (".csv", ".gz", ".txt"):
            header = pd.read_csv(path, nrows=0).columns
            missing = [c for c in columns if c not in header]
            if missing:
                raise CliError(f"{path}: missing column {missing[0]!r} (has {', '.join(map(str, header[:12]))})")
            return pd.read_csv(path, usecols=columns, dtype={"symbol": str})
    except CliError:
        raise
    except Exception as exc:  # a corrupt or unreadable file: one line naming it
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CliError(f"{path}: cannot read ({type(exc).__name__}: {first})") from None
    raise CliError(f"{path}: unknown file type {path.suffix!r} (expected .parquet, a parquet directory or .csv)")


def _to_frame(table: Any) -> pd.DataFrame:
    """Arrow table -> DataFrame without a Python object per row, so the (date, symbol) join stays in numpy:
    dates as datetime64 (not datetime.date objects) and dictionary symbols as one Categorical whose integer
    codes the alignment uses (the row groups' dictionaries unified first: a cheap remap of the indices,
    where converting chunks with different dictionaries or concatenating them costs ~3x more)."""
    # ignore_metadata: the Arrow types decide, not a `pandas` key (labels.parquet declares its date32 `date` text
    # for pandas readers: write.LABELS_PANDAS_METADATA; the join wants datetime64)
    return table.unify_dictionaries().to_pandas(date_as_object=False, split_blocks=True, ignore_metadata=True)


def read_signals_metadata(path: str | Path) -> dict[str, Any]:
    """What the scorer's signal files say they predict: {label, horizon, label_lag} from their schema metadata
    `crnn_ray_signals` (the keys present; {} for a CSV or files without it). Every file of a directory is
    checked: files that disagree (two runs in one folder) are a CliError naming the key and its values."""
    path = Path(path)
    if not path.exists():
        raise CliError(f"{path}: no such file or directory")
    if not (path.is_dir() or path.suffix.lower() in (".parquet", ".pq")):
        return {}
    files = parquet_dataset(path).files if path.is_dir() else [str(path)]
    seen: dict[str, set] = {}
    for name in files:
        try:
            raw = (pq.read_schema(name).metadata or {}).get(SIGNALS_METADATA_KEY)
            meta = json.loads(raw) if raw is not None else {}
            values = {key: kind(meta[key]) for key, (_, _, kind, _) in FROM_METADATA.items()
                      if meta.get(key) is not None}
        except Exception as exc:  # a corrupt file or metadata: one line naming it
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise CliError(f"{name}: cannot read its metadata ({type(exc).__name__}: {first})") from None
        for key, value in values.items():
            seen.setdefault(key, set()).add(value)
    for key, values in seen.items():
        if len(values) > 1:
            shown = ", ".join(sorted(map(str, values)))
            raise CliError(f"{path}: the files' {SIGNALS_METADATA_KEY.decode()} metadata disagree on {key} ({shown}): "
                           f"evaluate one run's signals at a time")
    return {key: values.pop() for key, values in seen.items()}


def apply_signals_metadata(args: argparse.Namespace, meta: dict[str, Any]) -> str | None:
    """Fill --label / --horizon / --label-lag from the signals' metadata where not given; refuse a flag that
    contradicts it. Returns the line that says which values came from the metadata (None: none did)."""
    taken = []
    for key, (flag, attr, _, default) in FROM_METADATA.items():
        given = getattr(args, attr)
        if key not in meta:
            setattr(args, attr, default if given is None else given)
        elif given is None:
            setattr(args, attr, meta[key])
            taken.append(f"{key} {meta[key]}")
        elif given != meta[key]:
            context = ", ".join([f"{k} {meta[k]}" for k in dict.fromkeys((key, "label", "horizon")) if k in meta][:2])
            raise CliError(f"{flag} {given} contradicts the signals' metadata ({context}): "
                           f"drop the flag or pass the matching value")
    if args.label is None:
        raise CliError("--label is required: the signals carry no crnn_ray_signals metadata naming their label")
    return f"{', '.join(taken)} from the signals' metadata" if taken else None


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="python -m crnn_ray.evaluate",
        description="IC / RankIC / quantile returns / long-short and long pnl of a signal against a label "
        "(formulas: docs/metrics.md).",
    )
    ap.add_argument("--signals", required=True, help="long table with date, symbol, signal (parquet, dir or csv)")
    ap.add_argument("--labels", required=True, help="long table with date, symbol and the label column")
    ap.add_argument("--label", default=None,
                    help="label column, e.g. y5 (default: the label the signals' metadata names; required without)")
    ap.add_argument("--signal-col", default="signal", help="signal column (default: signal)")
    ap.add_argument("--horizon", type=int, default=None,
                    help="label horizon H in days: daily pnl = label / H (default: the signals' metadata, else 1)")
    ap.add_argument("--returns", metavar="COL", default=None,
                    help="1-day forward return column of the labels file (e.g. y1): with --horizon > 1 the "
                    "Sharpe / vol / drawdown are those of the realised daily pnl of the H overlapping books")
    ap.add_argument("--liquidity", metavar="COL", default=None,
                    help="liquidity column of the labels file (e.g. traded_value_med): adds the IC on the more vs "
                    "the less liquid half of each day's names (liquidity_split)")
    ap.add_argument("--beta", metavar="COL", default=None,
                    help="trailing-beta column of the labels file (the scorer's labels.parquet: beta): with "
                    "--returns-basis neutral the returns are residualised against it too")
    ap.add_argument("--group", metavar="COL", default=None,
                    help="numeric group (sector) code column of the labels file (the scorer's: group): with "
                    "--returns-basis neutral, one dummy per group")
    ap.add_argument("--label-lag", metavar="L", type=int, default=None,
                    help="the label's lag L (yH at t = return close t+L -> t+L+H; docs/data.md): only stated in "
                    "the summary and the JSON inputs (default: the signals' metadata, else unknown, not stated)")
    add_flags(ap, EvaluationConfig)  # --quantiles, --cost-bps, --min-stocks, --periods-per-year
    ap.add_argument("--json", required=True, help="output JSON (written atomically)")
    ap.add_argument("--daily", help="optional CSV of the per-day series (written atomically)")
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ecfg = EvaluationConfig(**flag_values(EvaluationConfig, args, source=parser.prog))
    if args.label_lag is not None and args.label_lag < 0:
        raise CliError(f"--label-lag must be >= 0 (got {args.label_lag})")
    provenance = apply_signals_metadata(args, read_signals_metadata(args.signals))
    if provenance:
        print(provenance)
    signals = read_table(args.signals, ["date", "symbol", args.signal_col])
    label_cols = ["date", "symbol", args.label]
    if args.returns and args.returns not in label_cols:
        label_cols.append(args.returns)
    for col in (args.liquidity, args.beta, args.group):
        if col and col not in label_cols:
            label_cols.append(col)
    labels = read_table(args.labels, label_cols)
    ev = evaluate_frames(
        signals,
        labels,
        args.label,
        args.signal_col,
        signals_name=str(args.signals),
        labels_name=str(args.labels),
        returns_col=args.returns,
        liquidity_col=args.liquidity,
        beta_col=args.beta,
        group_col=args.group,
        returns_basis=ecfg.returns_basis,
        quantiles=ecfg.quantiles,
        cost_bps=ecfg.cost_bps,
        min_stocks=ecfg.min_stocks,
        horizon=args.horizon,
        periods_per_year=float(ecfg.periods_per_year),
    )
    if ev.summary["n_days"] == 0:
        most = int(ev.daily["n"].max())
        raise CliError(
            f"no day has >= {ecfg.min_stocks} valid (signal, {args.label}) pairs (at most {most}); "
            f"lower --min-stocks"
        )
    out: dict[str, Any] = ev.to_dict()
    out["liquidity_split"]["column"] = args.liquidity
    out["inputs"] = {
        "signals": str(Path(args.signals).resolve()),
        "labels": str(Path(args.labels).resolve()),
        "label": args.label,
        "signal_col": args.signal_col,
        **({"returns": args.returns} if args.returns else {}),
        **({"liquidity": args.liquidity} if args.liquidity else {}),
        **({"beta": args.beta} if args.beta else {}),
        **({"group": args.group} if args.group else {}),
        **({"label_lag": args.label_lag} if args.label_lag is not None else {}),
        "first_date": str(pd.Timestamp(ev.daily["date"].iloc[0]).date()),
        "last_date": str(pd.Timestamp(ev.daily["date"].iloc[-1]).date()),
    }
    print(format_summary(ev, args.returns, label=args.label, label_lag=args.label_lag, liquidity=args.liquidity))
    if args.daily:
        with atomic_path(args.daily) as tmp:
            ev.daily.to_csv(tmp, index=False)
    write_json_atomic(args.json, out)
    print(f"wrote {args.json}")
    return 0


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main())
