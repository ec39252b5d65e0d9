"""`python -m crnn_ray.data synth | ingest | inspect`: make, import and look at panel files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from crnn_ray import defaults
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
    s.add_argument("--out", required=True, help="output panel .parquet")
    i = sub.add_parser("ingest", help="turn a long OHLCV table (CSV / Parquet) into a panel")
    i.add_argument("--ohlcv", required=True, help="input table: date, symbol and any of open/high/low/close/volume")
    i.add_argument("--out", required=True, help="output panel .parquet")
    i.add_argument("--horizon", type=int, default=defaults.HORIZON)
    i.add_argument("--symbol-col", default=None)
    i.add_argument("--date-col", default=None)
    i.add_argument("--max-jump", type=float, default=None,
                   help="flag |daily move| above this (1.0 = +100%% / -50%%); flagged ret1 clipped, labels over it dropped")
    n = sub.add_parser("inspect", help="print a panel's shape, coverage and metadata")
    n.add_argument("path")
    return p


def _out_path(path: str) -> Path:
    out = Path(path)
    if out.exists() and out.is_dir():
        raise CliError(f"--out {out}: is a directory")
    return out


def inspect_text(path: str) -> str:
    from crnn_ray.data.panel import load_panel

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
    for name, y in panel.labels.items():
        h = panel.meta.get("horizons", {}).get(name)
        lines.append(f"  label    {name} (horizon {h}): {np.isfinite(y).mean():.1%} finite, "
                     f"{(np.isfinite(y) & panel.mask).sum()} usable samples")
    returns = panel.meta.get("returns")
    if returns:
        lines.append(f"  returns  {returns} (1-day forward return: realises the pnl of overlapping H-day books)"
                     + ("" if panel.returns() is not None else " -- not in the file"))
    if panel.meta.get("oracle_ic"):
        lines.append("  oracle IC " + ", ".join(f"{k} {v:.4f}" for k, v in panel.meta["oracle_ic"].items()))
    if panel.meta.get("params"):
        lines.append("  params   " + ", ".join(f"{k}={v}" for k, v in panel.meta["params"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "synth":
        from crnn_ray.data.panel import save_panel
        from crnn_ray.data.synth import summary, synthesize

        out = _out_path(args.out)
        df, meta = synthesize(args.symbols, args.days, args.seed, horizon=args.horizon, preset=args.preset)
        save_panel(df, out, meta)
        print(summary(df, meta))
        print(f"wrote {out}")
    elif args.cmd == "ingest":
        from crnn_ray.data.ingest import DEFAULT_MAX_JUMP, ingest_ohlcv, read_ohlcv
        from crnn_ray.data.panel import save_panel

        out = _out_path(args.out)
        raw = read_ohlcv(args.ohlcv)
        df, meta = ingest_ohlcv(raw, args.horizon, date_col=args.date_col, symbol_col=args.symbol_col,
                                max_jump=DEFAULT_MAX_JUMP if args.max_jump is None else args.max_jump,
                                where=str(args.ohlcv))
        meta["params"]["input"] = str(Path(args.ohlcv).resolve())
        save_panel(df, out, meta)
        label = meta["labels"][0]
        print(f"ingested {args.ohlcv}: {len(df)} rows, {df['symbol'].nunique()} symbols x {df['date'].nunique()} "
              f"days, features {', '.join(meta['features'])}; label {label}: {df[label].notna().mean():.1%} "
              f"finite; {meta['params']['n_suspect_jumps']} suspect jump(s), "
              f"{meta['params']['n_zero_volume_rows']} zero-volume row(s)")
        print(f"wrote {out}")
    else:
        print(inspect_text(args.path))
    return 0


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
