"""`python -m crnn_ray.score`: ensemble a sweep's top-K models into daily signals, evaluate, write a tear sheet.

    python -m crnn_ray.score --experiment runs/quickstart --out runs/quickstart/score
    python -m crnn_ray.score --experiment runs/quickstart --data today.parquet --latest \\
        --out prod/score            # the daily job: adds one partition, the panel's last date

Defaults live in crnn_ray/score/config.py, documented in configs/score/default.yaml (a file passed with
--config overrides them; flags override both). Exit status 2
with a one-line `error:` on bad input, and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crnn_ray.io import ArgumentParser, CliError, cli_main
from crnn_ray.schema import SELECT_METRICS
from crnn_ray.score import ScoreOptions, run_score
from crnn_ray.score.config import DEFAULT_CONFIG_FILE, METHODS, SELECTIONS, load_score_config  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m crnn_ray.score", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="sweep experiment directory DIR/NAME")
    ap.add_argument("--out", required=True, help="output directory (signals/, metrics.json, report.html)")
    ap.add_argument("--config", help="score config YAML (default: configs/score/default.yaml)")
    ap.add_argument("--top-k", type=int,
                    help="number of units: trials, or seed averages with --seed-average (default from config: 5)")
    ap.add_argument("--select-by",
                    help=f"validation metric that ranks trials: {', '.join(SELECT_METRICS)} (default valid_ic)")
    ap.add_argument("--method", choices=METHODS, help="how member z-scores combine (default mean)")
    ap.add_argument("--seed-average", action=argparse.BooleanOptionalAction, default=None,
                    help="average the seeds of one (variant, hparams) into one unit before selecting and "
                         "combining (default from config: on)")
    ap.add_argument("--selection", choices=SELECTIONS,
                    help="top_k: the K best units by --select-by; greedy: forward selection on the selection "
                         "split with a correlation penalty (default from config: top_k)")
    ap.add_argument("--data", help="panel to score (default: the experiment's own panel)")
    ap.add_argument("--start", help="first date to score YYYY-MM-DD (default: the members' test period)")
    ap.add_argument("--end", help="last date to score (default: test end; with --data the panel's last date)")
    ap.add_argument("--latest", action="store_true",
                    help="score only the last date of the panel (the experiment's or --data); not with --start/--end")
    ap.add_argument("--allow-in-sample", action="store_true",
                    help="score dates inside a member's train/valid window (+embargo); flagged in the output")
    ap.add_argument("--window", type=int,
                    help="walk-forward experiment: score one window's test part with its own members (default: "
                         "every window, stitched into one out-of-sample record; --latest: the newest window)")
    ap.add_argument("--reference",
                    help="walk-forward leaderboard: the variant (or ENSEMBLE, baseline/ridge) every row's daily IC "
                         "is compared with (default: the top variant)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--in-process", dest="path", action="store_const", const="in_process",
                       help="run the predictor in this process (default: auto by job size)")
    where.add_argument("--ray", dest="path", action="store_const", const="ray",
                       help="run the predictor on Ray Data actors")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.latest and (args.start or args.end):
        raise CliError("--latest scores the panel's last date: do not combine it with --start/--end")
    cfg = load_score_config(args.config)
    opts = ScoreOptions(
        experiment=Path(args.experiment), out=Path(args.out),
        top_k=args.top_k if args.top_k is not None else int(cfg["top_k"]),
        select_by=args.select_by or str(cfg["select_by"]),
        method=args.method or str(cfg["method"]),
        seed_average=bool(cfg["seed_average"]) if args.seed_average is None else bool(args.seed_average),
        selection=args.selection or str(cfg["selection"]),
        data=Path(args.data) if args.data else None, start=args.start, end=args.end, latest=bool(args.latest),
        allow_in_sample=bool(args.allow_in_sample), path=args.path or str(cfg["path"]), config=cfg,
        window=args.window, reference=args.reference,
    )
    run_score(opts)
    return 0


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main())
