"""The batch scorer: top-K sweep members -> per-date ensemble signal -> signals/ + metrics + tear sheet.

    select.py    members (top-K on a validation metric) and the look-ahead rule
    predict.py   EnsemblePredictor: the members' raw predictions (Ray Data callable and in-process)
    ensemble.py  per-date combination of the member predictions
    report.py    evaluation, metrics.json, figures, HTML tear sheet
    job.py       the scoring job: plan, predict, ensemble, evaluate, write (`run_score`)
    __main__.py  `python -m crnn_ray.score`

The job's API is re-exported here: `from crnn_ray.score import ScoreOptions, run_score`.
"""

from crnn_ray.score.job import (DEFAULT_CONFIG, ScoreOptions, ScorePlan, choose_path, merge_config, partition_path,
                                plan_scoring, predict_in_process, predict_ray, predict_rows, run_score,
                                signals_metadata, write_labels, write_signals)

__all__ = ["DEFAULT_CONFIG", "ScoreOptions", "ScorePlan", "merge_config", "plan_scoring", "choose_path",
           "predict_in_process", "predict_ray", "predict_rows", "signals_metadata", "partition_path",
           "write_signals", "write_labels", "run_score"]
