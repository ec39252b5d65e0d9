"""`python -m crnn_ray.sweep --config C [--storage DIR] [--name NAME] [--resume | --overwrite]`

Runs the grid on the cluster at RAY_ADDRESS (e.g. under `ray job submit`) or on a local Ray, writes
DIR/NAME/{trials.parquet, leaderboard.parquet, leaderboard.md} and prints the leaderboard. Exit status: 0 when
at least one variant is ranked, 1 when every trial diverged or failed, 2 on a bad config or data, 130 when
Ctrl-C / SIGTERM stopped it (the line printed says how to resume).
"""

from __future__ import annotations

import argparse
import sys

from crnn_ray.io import ArgumentParser, cli_main


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
                   help="validate the config (keys, types, variants) and print the grid; reads no data, starts no Ray")
    return p


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check:
        from crnn_ray.sweep import load_config

        if args.config is None:
            from crnn_ray.io import CliError

            raise CliError("--check needs --config")
        cfg = load_config(args.config)
        grid = cfg.grid()
        for t in grid:
            print(f"{t['key']} {t['variant_id']} seed {t['seed']} {t['grid'] or ''}")
        print(f"{args.config}: ok, {len(grid)} trial(s)")
        return 0

    from crnn_ray.sweep import run_sweep
    from crnn_ray.sweep.run import SweepInterrupted

    try:
        outcome = run_sweep(args.config, storage=args.storage, name=args.name, resume=args.resume,
                            overwrite=args.overwrite)
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    if outcome.n_ranked == 0:
        print("error: no variant ranked: every trial diverged or failed (see trials.parquet)", file=sys.stderr)
        return 1
    return 0


main = cli_main(_main)

if __name__ == "__main__":
    sys.exit(main())
