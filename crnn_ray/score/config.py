"""The scorer's config: defaults and checks in one schema (crnn_ray/config.py), read from a YAML file.

configs/score/default.yaml documents every key with its default (commented out: the values live here);
a researcher's file sets only what differs, and the command line overrides both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crnn_ray.config import (Checker, auto_or, boolean, choice, int_at_least, load_yaml, nonneg_number, optional,
                             positive_int, positive_number, read_section, section, setting, text)
from crnn_ray.io import CliError
from crnn_ray.schema import DEFAULT_RANK_METRIC
from crnn_ray.score.ensemble import METHODS

__all__ = ["ScoreConfig", "DEFAULT_CONFIG", "merge_config", "load_score_config", "DEFAULT_CONFIG_FILE", "METHODS",
           "PATHS", "SELECTIONS"]

#: where the predictor runs
PATHS = ("auto", "in_process", "ray")
#: how the ensemble's units are chosen (docs/scoring.md "Member selection")
SELECTIONS = ("top_k", "greedy")
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "score" / "default.yaml"


@dataclass
class RayConfig:
    address: str | None = setting(None, check=optional(text))  # None: RAY_ADDRESS if set, else a local Ray
    num_cpus: int | None = setting(None, check=optional(positive_int))  # local Ray only (None: all)
    actor_cpus: float = setting(0.5, check=positive_number)  # fractional: a pool of every CPU starves reads
    actors: int | None = setting(None, check=optional(positive_int))  # None: from the cluster's CPUs / GPUs
    gpus_per_actor: float = setting(1.0, check=positive_number)  # used when the cluster has GPUs


@dataclass
class EvaluationConfig:
    quantiles: int = setting(5, check=int_at_least(2))
    cost_bps: float = setting(0.0, check=nonneg_number)
    min_stocks: int = setting(10, check=int_at_least(2))
    periods_per_year: float = setting(252, check=positive_number)
    rolling_ic_days: int = setting(20, check=positive_int)


@dataclass
class ScoreConfig:
    top_k: int = setting(5, check=positive_int)
    select_by: str = setting(DEFAULT_RANK_METRIC, check=text)  # checked against the trials by score/select.py
    method: str = setting("mean", check=choice(*METHODS))
    seed_average: bool = setting(False, check=boolean)  # a unit = the seeds of one (variant, hparams), averaged
    selection: str = setting("top_k", check=choice(*SELECTIONS))  # top_k | greedy (on the selection split)
    corr_penalty: float = setting(0.5, check=nonneg_number)  # greedy: x mean correlation with the units in
    pool: int = setting(12, check=positive_int)  # greedy: candidates = the best `pool` units by select_by
    path: str = setting("auto", check=choice(*PATHS))
    in_process_max_days: int = setting(5, check=positive_int)      # auto: at most this many dates ...
    in_process_max_rows: int = setting(200000, check=positive_int)  # ... or rows -> in-process
    # fixed model batch (padded): batching-independent; auto = predict.CHUNK_ROWS (512 on CPU, 1024 on a GPU)
    chunk_rows: int | str = setting("auto", check=auto_or(positive_int))
    batch_rows: int = setting(8192, check=positive_int)   # rows per Ray Data / in-process batch
    device: str = setting("auto", check=auto_or(choice("cpu", "cuda")))  # in-process device
    ray: RayConfig = setting(default_factory=RayConfig, check=section(RayConfig))
    evaluation: EvaluationConfig = setting(default_factory=EvaluationConfig, check=section(EvaluationConfig))


#: the defaults as the plain dict the scorer reads (cfg["top_k"], cfg["ray"]["actor_cpus"], ...)
DEFAULT_CONFIG: dict[str, Any] = asdict(ScoreConfig())


def merge_config(user: dict | None, source: str = "score config") -> dict:
    """The defaults overlaid with a user's YAML mapping, checked; CliError `source: key: what` on bad input."""
    c = Checker(source)
    return asdict(ScoreConfig(**read_section(c, ScoreConfig, user, "")))


def load_score_config(path: str | None) -> dict:
    """A score config file (default: configs/score/default.yaml, or the built-in defaults without it)."""
    if path is None and not DEFAULT_CONFIG_FILE.is_file():
        return merge_config({})
    file = Path(path) if path else DEFAULT_CONFIG_FILE
    raw = load_yaml(file, "score config")
    if raw is not None and not isinstance(raw, dict):
        raise CliError(f"{file.name}: expected a mapping of keys, got {type(raw).__name__}")
    return merge_config(raw, source=file.name)
