"""`python -m crnn_ray.data synth | ingest | inspect`: make, import and look at panel files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from crnn_ray import defaults
from crnn_ray.data.ingest import (
    DEFAULT_LABEL_LAG,
    DEFAULT_DELISTING_RETURN,
    DEFAULT_LIQUIDITY_WINDOW,
    DEFAULT_MAX_DOWN,
    DEFAULT_MAX_GAP_DAYS,
    DEFAULT_MAX_UP,
    DEFAULT_REVERSAL_DAYS,
    MIN_LABELLED_DAYS,
    IngestOptions,
    ingest_ohlcv,
    read_ohlcv,
    summary_lines,
)
from crnn_ray.data.panel import load_panel, read_label_coverage, save_panel
from crnn_ray.data.synth import summary, synthesize
from crnn_ray.io import ArgumentParser, CliError, cli_main


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m crnn_ray.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="generate the synthetic market panel")
    s.add_argument("--symbols", type=int, default=300)
    s.add_argument("--days", type=int, default=600)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--horizon", type=int, default=defaults.HORIZON)
    s.add_argument("--preset", default="easy", choices=["easy", "realistic"],
                   help="easy: the quickstart market (oracle IC ~0.155); realistic: oracle IC ~0.04, fat-tailed "
                   "shocks, stronger sectors (docs/data.md)")
    s.add_argument("--delisting-return", type=float, default=DEFAULT_DELISTING_RETURN,
                   help="return booked on a listed name's last close when it stops trading (default %(default)s: "
                   "it realises its last price; -1: a total loss)")
    s.add_argument("--out", required=True, help="output panel .parquet")
    i = sub.add_parser("ingest", help="turn a long OHLCV table (CSV / Parquet) into a panel",
                       description="Validate, repair and adjust a vendor's long OHLCV table, then write a panel of "
                       "features (data <= close t) and labels yH = close t+L -> t+L+H (docs/data.md).")
    i.add_argument("--ohlcv", required=True, help="input table: date, symbol, close and any of open/high/low/volume, "
                   "adj_close or factor")
    i.add_argument("--out", required=True, help="output panel .parquet")
    i.add_argument("--horizon", type=int, default=defaults.HORIZON, help="label horizon H in days (default %(default)s)")
    i.add_argument("--label-lag", type=int, default=DEFAULT_LABEL_LAG,
                   help="L: the label is the return from close t+L to t+L+H (decide at close t, trade at close t+L); "
                   "default %(default)s, 0 = trade at the close the features end on")
    i.add_argument("--symbol-col", default=None)
    i.add_argument("--date-col", default=None)
    i.add_argument("--date-format", default=None,
                   help="strftime format of the dates, e.g. %%d/%%m/%%Y (default: inferred; integer or digit-only "
                   "dates are read as %%Y%%m%%d, and say so)")
    i.add_argument("--max-gap-days", type=int, default=DEFAULT_MAX_GAP_DAYS,
                   help="a step of more calendar days than this between two dates is a gap in the calendar: "
                   "reported, and no feature window or label crosses it (default %(default)s)")
    i.add_argument("--traded-value", default=None, metavar="COLUMN",
                   help="a traded value (currency) column: the liquidity measure and --min-traded-value use it "
                   "instead of close x volume")
    i.add_argument("--extra-features", "--keep-features", dest="extra_features", type=_names, default=(),
                   metavar="COL[,COL...]", help="numeric columns of the file kept as features, after the computed "
                   "ones, as given (docs/data.md, \"Your own features\")")
    i.add_argument("--min-days", type=int, default=None,
                   help=f"refuse a file with fewer days (default: lookback {defaults.LOOKBACK} + label lag + horizon "
                   f"+ {MIN_LABELLED_DAYS})")
    i.add_argument("--strict", action="store_true",
                   help="refuse the file (one line naming every kind) instead of repairing placeholder rows, "
                   "non-positive prices, negative volumes")
    i.add_argument("--no-adjust", action="store_true",
                   help="ignore a factor / adj_close column (e.g. prices that are adjusted already)")
    i.add_argument("--max-up", type=float, default=DEFAULT_MAX_UP,
                   help="a one-day rise above this (default %(default)s = +100%%) is a bad print if reversed, else a "
                   "break (likely split): features restart, no label spans it")
    i.add_argument("--max-down", type=float, default=DEFAULT_MAX_DOWN,
                   help="the same for a fall below -this (default %(default)s = -40%%; a 10%% limit exchange: 0.1)")
    i.add_argument("--reversal-days", type=int, default=DEFAULT_REVERSAL_DAYS,
                   help="days within which a spike that comes back more than halfway is a bad print (default %(default)s)")
    i.add_argument("--max-jump", type=float, default=None,
                   help="deprecated: symmetric limit J, read as --max-up J --max-down J/(1+J)")
    i.add_argument("--min-price", type=float, default=0.0,
                   help="universe: a row whose raw close is below this is out (no label); default 0 = off")
    i.add_argument("--min-traded-value", type=float, default=0.0,
                   help="universe: out when the median close x volume over the last --liquidity-window days is "
                   "below this; default 0 = off")
    i.add_argument("--liquidity-window", type=int, default=DEFAULT_LIQUIDITY_WINDOW,
                   help="trailing days (<= t) of the liquidity and stale filters (default %(default)s)")
    i.add_argument("--max-stale-share", type=float, default=None,
                   help="universe: out when more than this share of the window's days have an unchanged close or "
                   "zero volume; default off")
    i.add_argument("--delisting-return", type=float, default=DEFAULT_DELISTING_RETURN,
                   help="return booked on a name's last close when it stops trading before the panel ends "
                   "(default %(default)s: it realises its last price; e.g. -0.3 for a typical delisting)")
    i.add_argument("--group", default=None, metavar="COLUMN",
                   help="a column naming each row's group (sector, industry): the scorer's neutral returns are "
                   "also taken against it (docs/metrics.md)")
    n = sub.add_parser("inspect", help="print a panel's shape, coverage and metadata")
    n.add_argument("path")
    return p


def _names(text: str) -> tuple[str, ...]:
    """COL[,COL...] -> the column names, in order."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected COL[,COL...], got {text!r}")
    return names


def ingest_options(args: argparse.Namespace) -> IngestOptions:
    """The ingest flags as IngestOptions (one field per flag)."""
    return IngestOptions(
        horizon=args.horizon, label_lag=args.label_lag, date_col=args.date_col, symbol_col=args.symbol_col,
        date_format=args.date_format, max_up=args.max_up, max_down=args.max_down, reversal_days=args.reversal_days,
        max_jump=args.max_jump, adjust=not args.no_adjust, strict=args.strict, min_price=args.min_price,
        min_traded_value=args.min_traded_value, liquidity_window=args.liquidity_window,
        max_stale_share=args.max_stale_share, max_gap_days=args.max_gap_days, traded_value=args.traded_value,
        extra_features=args.extra_features, min_days=args.min_days, delisting_return=args.delisting_return,
        group=args.group)


def _out_path(path: str) -> Path:
    out = Path(path)
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out}: is a directory")
    return out


def coverage_text(name: str, present: int, rows: int, basis: str) -> str:
    """The label coverage line ingest and inspect share: the same basis, stated."""
    share = present / rows if rows else float("nan")
    return f"{name} present on {share:.1%} of {basis} ({present:,} of {rows:,})"


def label_timing(meta: dict, name: str) -> str:
    """'close t+L -> t+L+H' of a label, from the metadata."""
    lag = int(meta.get("label_lag") or 0)
    h = (meta.get("horizons") or {}).get(name)
    if h is None:
        return f"label_lag {lag}"
    start = f"t+{lag}" if lag else "t"
    return f"close {start} -> t+{lag + int(h)}, label_lag {lag}"


def inspect_text(path: str) -> str:
    panel = load_panel(path)
    D, S, F = panel.X.shape
    listed = np.isfinite(panel.X).any(axis=2)
    lines = [
        f"panel {panel.meta['path']}",
        f"  source   {panel.meta.get('source')}",
        f"  days     {D} ({panel.dates[0]} .. {panel.dates[-1]})",
        f"  symbols  {S} (median {int(np.median(listed.sum(1)))} with a row per day)",
        f"  features {F}: {', '.join(panel.features)}",
        f"  coverage {panel.mask.mean():.1%} of day x symbol cells valid (row present, all features finite)",
    ]
    coverage = read_label_coverage(path, list(panel.labels))
    for name, y in panel.labels.items():
        h = panel.meta.get("horizons", {}).get(name)
        cov = coverage_text(name, *coverage[name]) if name in coverage else f"{name}: not in the file"
        lines.append(f"  label    {name} (horizon {h}) {label_timing(panel.meta, name)}: {cov.split(' ', 1)[1]}; "
                     f"{int((np.isfinite(y) & panel.mask).sum()):,} usable samples (label and all features finite)")
    returns = panel.meta.get("returns")
    if returns:
        lines.append(f"  returns  {returns} (1-day return over {label_timing(panel.meta, returns).split(',')[0]}: "
                     "realises the pnl of overlapping H-day books)"
                     + ("" if panel.returns() is not None else " -- not in the file"))
    if panel.meta.get("oracle_ic"):
        lines.append("  oracle IC " + ", ".join(f"{k} {v:.4f}" for k, v in panel.meta["oracle_ic"].items()))
    lines += ["  " + line for line in summary_lines(panel.meta)]
    if panel.aux:
        lines.append("  aux      " + ", ".join(panel.aux) + " (per-row non-feature columns: panel.aux[name])")
    if panel.meta.get("params"):
        lines.append("  params   " + ", ".join(f"{k}={v}" for k, v in panel.meta["params"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "synth":
        out = _out_path(args.out)
        df, meta = synthesize(args.symbols, args.days, args.seed, horizon=args.horizon, preset=args.preset,
                              delisting_return=args.delisting_return)
        save_panel(df, out, meta)
        print(summary(df, meta))
        print(f"wrote {out}")
    elif args.cmd == "ingest":
        out = _out_path(args.out)
        if args.max_jump is not None:
            if args.max_up != DEFAULT_MAX_UP or args.max_down != DEFAULT_MAX_DOWN:
                raise CliError("--max-jump (deprecated) and --max-up / --max-down: give one or the other")
            print("note: --max-jump is deprecated; use --max-up / --max-down", file=sys.stderr)
        raw = read_ohlcv(args.ohlcv)
        df, meta = ingest_ohlcv(raw, options=ingest_options(args), where=str(args.ohlcv))
        meta["params"]["input"] = str(Path(args.ohlcv).resolve())
        save_panel(df, out, meta)
        p = meta["params"]
        print(f"ingested {args.ohlcv}: {len(df)} rows, {df['symbol'].nunique()} symbols x {df['date'].nunique()} "
              f"days, features {', '.join(meta['features'])} ({p['n_rows_input']} input rows, "
              f"{p['n_rows_dropped']} without a usable price dropped)")
        for line in summary_lines(meta):
            print("  " + line)
        print(f"  zero vol.  {p['n_zero_volume_rows']} zero-volume row(s) (stale price: treated as halted)")
        for name in meta["labels"]:
            cov = meta["coverage"][name]
            print(f"  label      {name} ({label_timing(meta, name)}): "
                  f"{coverage_text(name, cov['present'], cov['rows'], cov['basis']).split(' ', 1)[1]}")
        print(f"wrote {out}")
    else:
        print(inspect_text(args.path))
    return 0


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
