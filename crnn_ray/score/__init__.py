"""The batch scorer: top-K sweep members -> per-date ensemble signal -> signals/ + metrics + tear sheet.

One pipeline over windows (a static split is one window): plan -> predict -> stitch -> evaluate -> write.

    config.py        ScoreConfig: the one options object (flags, YAML keys, defaults, --help)
    select.py        trials -> members and units ranked on a validation metric; the look-ahead rule
    plan.py          the windows to score; one window's members, panel slice, rows and label grids
    choose.py        which units join a window's ensemble (top-K, or greedy on the selection split)
    predict.py       EnsemblePredictor: the members' raw predictions (plain PyTorch)
    inference.py     where it runs: in-process or Ray Data actors
    ensemble.py      per-date combination of the member predictions
    stitch.py        the windows' grids concatenated by date into one record
    report.py        evaluation, metrics.json, printed tables, figures, the HTML tear sheet (render.py: drawing)
    walk_forward.py  a walk-forward record's windows table and leaderboard
    write.py         signals/ and labels.parquet
    job.py           the command: `run_score(ScoreConfig)`
    __main__.py      `python -m crnn_ray.score`

`from crnn_ray.score import ScoreConfig, run_score, load_score_config` is the API.
"""

from crnn_ray.score.config import ScoreConfig, load_score_config
from crnn_ray.score.job import run_score

__all__ = ["ScoreConfig", "load_score_config", "run_score"]
