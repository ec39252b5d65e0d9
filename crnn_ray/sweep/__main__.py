"""`python -m crnn_ray.sweep --config C [--storage DIR] [--name NAME] [--resume | --overwrite]`

Runs the grid on the cluster at RAY_ADDRESS (e.g. under `ray job submit`) or on a local Ray, writes
DIR/NAME/{trials.parquet, leaderboard.parquet, leaderboard.md} and prints the leaderboard. Exit status: 0 when
at least one variant is ranked, 1 when every trial diverged or failed, 2 on a bad config or data, 130 when
Ctrl-C / SIGTERM stopped it (the line printed says how to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from crnn_ray.data import describe_windows, walk_forward_splits
from crnn_ray.data.panel import _LABEL_RE, read_panel_meta
from crnn_ray.data.synth import synth_dates
from crnn_ray.defaults import HORIZON
from crnn_ray.io import ArgumentParser, CliError, cli_main


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m crnn_ray.sweep", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", help="sweep YAML (configs/sweeps/*.yaml); optional with --resume")
    p.add_argument("--storage", default="runs", help="directory holding experiments (default: runs)")
    p.add_argument("--name", help="experiment name (default: the config's `name`, else its file name)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue an interrupted experiment: finished trials are kept, others resume "
                           "from their last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing experiment of that name first")
    p.add_argument("--check", action="store_true",
                   help="validate the config (keys, types, variants), check that data.path exists (and, for a "
                        "Parquet panel, its footer lists the label and features) and print the grid; starts no Ray")
    return p


def check_data_path(cfg) -> str:
    """--check's look at the data without reading it: data.path must exist, and a Parquet panel's footer
    (its metadata alone) must list data.label and data.features. Returns what was checked, for the ok line."""
    if cfg.data.path is None:
        return "data: synthetic market (made at run time)"
    path = Path(cfg.data.path).expanduser().resolve()
    if not path.is_file():
        raise CliError(f"{cfg.source}: data.path: file not found: {path}")
    if not path.name.lower().endswith(".parquet"):
        return f"data: {path} exists (columns are checked when the sweep reads it)"
    try:
        meta = read_panel_meta(path)
    except CliError as exc:
        raise CliError(f"{cfg.source}: data.path: {exc}") from None
    if not meta:
        return f"data: {path} exists (no crnn_ray metadata: columns are checked when the sweep reads it)"
    labels, features = list(meta.get("labels") or []), list(meta.get("features") or [])
    if labels and cfg.data.label not in labels:
        raise CliError(f"{cfg.source}: data.label: {cfg.data.label!r} is not a label of {path.name} "
                       f"(it has {', '.join(labels)})")
    missing = [f for f in (cfg.data.features or []) if features and f not in features]
    if missing:
        raise CliError(f"{cfg.source}: data.features: {', '.join(missing)} not in {path.name} "
                       f"(it has {', '.join(features)})")
    return f"data: {path} has label {cfg.data.label} and {len(cfg.data.features or features)} feature(s)"


#: trials --check lists one per line (the rest are counted)
LISTED_TRIALS = 200


def check_windows(cfg) -> list[str]:
    """--check's walk-forward windows as dates, on the panel's calendar (the synthetic market's, or the date
    column of data.path alone): the same arithmetic and one-line errors as the sweep."""
    if cfg.data.path is None:
        synth = cfg.data.synth or {}
        dates, horizon = synth_dates(int(synth.get("days", 600))), int(synth.get("horizon", HORIZON))
    else:
        path = Path(cfg.data.path).expanduser().resolve()
        try:
            if path.name.lower().endswith(".parquet"):
                raw = pq.read_table(path, columns=["date"]).column("date").to_pandas()
            else:
                raw = pd.read_csv(path, usecols=["date"])["date"]
        except Exception as exc:  # noqa: BLE001 - any failure to read the dates is this one line
            raise CliError(f"{cfg.source}: data.path: cannot read a date column of {path} "
                           f"({type(exc).__name__})") from None
        dates = np.unique(pd.to_datetime(raw, errors="coerce").dropna().to_numpy().astype("datetime64[D]"))
        meta = read_panel_meta(path) if path.name.lower().endswith(".parquet") else {}
        horizons = (meta or {}).get("horizons") or {}
        m = _LABEL_RE.match(cfg.data.label)
        horizon = int(horizons.get(cfg.data.label) or (m.group(1) if m else 1))
    try:
        windows = walk_forward_splits(dates, cfg.data.walk_forward, horizon)
    except CliError as exc:
        raise CliError(f"{cfg.source}: data.{exc}") from None
    return describe_windows(windows, dates)


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the config module loads torch, the run module Ray and Tune: each mode imports what it runs
    if args.check:
        from crnn_ray.sweep import load_config

        if args.config is None:
            raise CliError("--check needs --config")
        cfg = load_config(args.config)
        data = check_data_path(cfg)
        windows = check_windows(cfg) if cfg.walk_forward else []
        for line in windows:
            print(line)
        cfg.check_grid_size(max(1, len(windows)))
        grid = cfg.grid(max(1, len(windows)))
        for t in grid[:LISTED_TRIALS]:
            print(f"{t['key']} {t['variant_id']} seed {t['seed']} {t['grid'] or ''}")
        if len(grid) > LISTED_TRIALS:
            print(f"... and {len(grid) - LISTED_TRIALS:,} more trial(s)")
        print(f"{args.config}: ok, {len(grid)} trial(s)"
              + (f" ({len(windows)} walk-forward window(s))" if windows else "") + f"; {data}")
        return 0

    from crnn_ray.sweep import run_sweep
    from crnn_ray.sweep.experiment import finish_experiment
    from crnn_ray.sweep.run import SweepInterrupted

    try:
        outcome = run_sweep(args.config, storage=args.storage, name=args.name, resume=args.resume,
                            overwrite=args.overwrite)
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    finish_experiment(Path(outcome.experiment_dir))  # config.yaml's provenance: when the sweep ended
    if outcome.n_ranked == 0:
        print("error: no variant ranked: every trial diverged or failed (see trials.parquet)", file=sys.stderr)
        return 1
    return 0


main = cli_main(_main)

if __name__ == "__main__":
    sys.exit(main())
