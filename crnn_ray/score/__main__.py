"""`python -m crnn_ray.score`: ensemble a sweep's top-K models into daily signals, evaluate, write a tear sheet.

    python -m crnn_ray.score --experiment runs/quickstart --out runs/quickstart/score
    python -m crnn_ray.score --experiment runs/quickstart --data today.parquet --latest \\
        --out prod/score            # the daily job: adds one partition, the panel's last date

Every flag, YAML key and default comes from `crnn_ray.score.config.ScoreConfig` (documented in
configs/score/default.yaml; a file passed with --config overrides the defaults, flags override both). Exit
status 2 with a one-line `error:` on bad input, and nothing written.
"""

from __future__ import annotations

import sys

from crnn_ray.io import cli_main
from crnn_ray.score.config import config_from_args
from crnn_ray.score.job import run_score


def main(argv: list[str] | None = None) -> int:
    run_score(config_from_args(argv))
    return 0


main = cli_main(main)

if __name__ == "__main__":
    sys.exit(main())
