"""The scorer's one options object: `ScoreConfig` is the YAML schema, the command line and the defaults.

A field declared with `setting(..., flag=True)` is a flag of `python -m crnn_ray.score` whose help text and help
default come from the field (the pattern of Hugging Face's HfArgumentParser); `yaml=False` marks the flags that
say what to score this time (experiment, out, dates, window), which are no YAML keys. configs/score/default.yaml
documents every YAML key with its default (commented out: the values live here). Precedence: the field's
default, then a `--config` file, then the flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crnn_ray.config import (Checker, add_flags, auto_or, boolean, choice, flag_values, load_yaml,
                             nonneg_int, nonneg_number, optional, path as path_value, positive_int, positive_number, read_section,
                             section, setting, text)
from crnn_ray.io import ArgumentParser, CliError
from crnn_ray.metrics import EvaluationConfig
from crnn_ray.schema import DEFAULT_RANK_METRIC, SELECT_METRICS
from crnn_ray.score.ensemble import METHODS
from crnn_ray.tracking import TrackingConfig

__all__ = ["ScoreConfig", "RayConfig", "EvaluationConfig", "load_score_config", "build_parser", "config_from_args",
           "DEFAULT_CONFIG_FILE", "DEFAULT_SELECT_BY", "METHODS", "PATHS", "SELECTIONS"]

#: where the predictor runs
PATHS = ("auto", "in_process", "ray")
#: how the ensemble's units are chosen (docs/scoring.md "Member selection")
SELECTIONS = ("top_k", "greedy")
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "score" / "default.yaml"
#: members are ranked by RankIC on the selection split: a Pearson IC rewards a volatility or beta tilt (a
#: trailing-volatility signal's IC rivals the planted oracle's on the realistic market; its RankIC is ~0)
DEFAULT_SELECT_BY = DEFAULT_RANK_METRIC


@dataclass
class RayConfig:
    address: str | None = setting(None, check=optional(text))  # None: RAY_ADDRESS if set, else a local Ray
    num_cpus: int | None = setting(None, check=optional(positive_int))  # local Ray only (None: all)
    actor_cpus: float = setting(0.5, check=positive_number)  # fractional: a pool of every CPU starves reads
    actors: int | None = setting(None, check=optional(positive_int))  # None: from the cluster's CPUs / GPUs
    gpus_per_actor: float = setting(1.0, check=positive_number)  # used when the cluster has GPUs


def _cli(default, check, help, **kw):
    """A command-line-only field: what to score this time."""
    return setting(default, check=optional(check), flag=True, yaml=False, help=help, **kw)


@dataclass
class ScoreConfig:
    # ---- what to score (command line only)
    experiment: Path | None = _cli(None, path_value, "sweep experiment directory DIR/NAME", required=True)
    out: Path | None = _cli(None, path_value, "output directory (signals/, metrics.json, report.html)", required=True)
    data: Path | None = _cli(None, path_value, "panel to score; none = the experiment's own panel")
    start: str | None = _cli(None, text, "first date to score YYYY-MM-DD; none = the start of the members' test period")
    end: str | None = _cli(None, text, "last date to score; none = the test end (with --data: the panel's last date)")
    latest: bool = setting(False, check=boolean, flag=True, yaml=False,
                           help="score only the last date of the panel (the experiment's or --data) with the "
                                "newest models; not with --start/--end")
    allow_in_sample: bool = setting(False, check=boolean, flag=True, yaml=False,
                                    help="score dates inside a member's train/valid window (+embargo); flagged "
                                         "in the output")
    window: int | None = _cli(None, nonneg_int, "walk-forward experiment: score this window's test part only, "
                              "with its own members; none = every window, stitched into one out-of-sample record")
    reference: str | None = _cli(None, text, "walk-forward leaderboard: the variant (or ENSEMBLE, baseline/ridge) "
                                 "every row's daily IC is compared with; none = the top variant")
    # ---- how to ensemble (YAML keys and flags)
    top_k: int = setting(5, check=positive_int, flag=True,
                         help="number of units: trials, or seed averages with --seed-average")
    select_by: str = setting(DEFAULT_SELECT_BY, check=text, flag=True,  # checked against the trials by select.py
                             help=f"validation metric that ranks trials: {', '.join(SELECT_METRICS)}")
    method: str = setting("mean", check=choice(*METHODS), flag=True,
                          help=f"how member z-scores combine: {' | '.join(METHODS)}")
    seed_average: Any = setting("auto", check=auto_or(boolean), flag=True, switch=True,
                                help="average the seeds of one (variant, hparams) into one unit before selecting "
                                     "and combining: true | false | auto (on when a variant has 2+ seeds)")
    selection: str = setting("top_k", check=choice(*SELECTIONS), flag=True,
                             help="top_k: the K best units by --select-by; greedy: forward selection on the "
                                  "selection split with a correlation penalty")
    corr_penalty: float = setting(0.5, check=nonneg_number, flag=True,
                                  help="greedy: candidate score = ensemble IC - corr_penalty x mean correlation")
    pool: int = setting(12, check=positive_int, flag=True,
                        help="greedy: candidates = the best `pool` units by select_by")
    # ---- where the predictor runs
    path: str = setting("auto", check=choice(*PATHS), flag=True,
                        help="auto (in-process for small jobs) | in_process | ray (Ray Data actors)")
    in_process_max_days: int = setting(5, check=positive_int)      # auto: at most this many dates ...
    in_process_max_rows: int = setting(200000, check=positive_int)  # ... or rows -> in-process
    # fixed model batch (padded): batching-independent; auto = predict.CHUNK_ROWS (512 on CPU, 1024 on a GPU)
    chunk_rows: int | str = setting("auto", check=auto_or(positive_int))
    batch_rows: int = setting(8192, check=positive_int)   # rows per Ray Data / in-process batch
    device: str = setting("auto", check=auto_or(choice("cpu", "cuda")), flag=True,
                          help="in-process device: auto (cuda when available) | cpu | cuda")
    ray: RayConfig = setting(default_factory=RayConfig, check=section(RayConfig))
    evaluation: EvaluationConfig = setting(default_factory=EvaluationConfig, check=section(EvaluationConfig))
    # the scoring's MLflow run, in the experiment's store (crnn_ray.tracking; `tensorboard` is the sweep's only)
    tracking: TrackingConfig = setting(default_factory=TrackingConfig, check=section(TrackingConfig))


def load_score_config(path: str | Path | None, overrides: dict | None = None) -> ScoreConfig:
    """The defaults, overlaid with a score config file (default: configs/score/default.yaml when present) and
    then with `overrides` ({field: value}, already checked); CliError `file: key: what` on bad input."""
    raw = None
    file = Path(path) if path else DEFAULT_CONFIG_FILE
    if path is not None or DEFAULT_CONFIG_FILE.is_file():
        raw = load_yaml(file, "score config")
        if raw is not None and not isinstance(raw, dict):
            raise CliError(f"{file.name}: expected a mapping of keys, got {type(raw).__name__}")
    values = read_section(Checker(file.name), ScoreConfig, raw, "")
    return ScoreConfig(**{**values, **(overrides or {})})


def build_parser() -> argparse.ArgumentParser:
    """`python -m crnn_ray.score`'s flags: ScoreConfig's, plus --config and the --in-process / --ray shorthands."""
    ap = ArgumentParser(prog="python -m crnn_ray.score",
                        description="Ensemble a sweep's top-K models into daily signals, evaluate, write a tear sheet.")
    ap.add_argument("--config", help=f"score config YAML (default: {DEFAULT_CONFIG_FILE.relative_to(DEFAULT_CONFIG_FILE.parents[2])})")
    add_flags(ap, ScoreConfig)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--in-process", dest="path", action="store_const", const="in_process",
                       default=argparse.SUPPRESS, help="= --path in_process")
    where.add_argument("--ray", dest="path", action="store_const", const="ray", default=argparse.SUPPRESS,
                       help="= --path ray")
    return ap


def config_from_args(argv: list[str] | None = None) -> ScoreConfig:
    """The command line -> ScoreConfig (file defaults under the flags); CliError on a bad flag or file."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = load_score_config(getattr(args, "config", None), flag_values(ScoreConfig, args, source=parser.prog))
    if cfg.latest and (cfg.start or cfg.end):
        raise CliError("--latest scores the panel's last date: do not combine it with --start/--end")
    return cfg
