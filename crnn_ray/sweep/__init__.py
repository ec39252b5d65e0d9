"""The sweep: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

    config.py       YAML config -> validated dataclasses, the grid
    trial.py        placement plan, the per-trial driver (TorchTrainer around train_one), progress lines
    ray_compat.py   every use of Ray internals (private modules, undocumented environment variables)
    leaderboard.py  trials.parquet and the leaderboard
    run.py          the sweep run: validate, prepare the experiment, run the Tune grid, collect (`run_sweep`)
    __main__.py     `python -m crnn_ray.sweep`

The run's API is re-exported here: `from crnn_ray.sweep import run_sweep`.
"""

from crnn_ray.sweep.config import SweepConfig, load_config
from crnn_ray.sweep.run import SweepOutcome, collect, prepare_experiment, resolve_experiment, run_sweep

__all__ = ["run_sweep", "load_config", "resolve_experiment", "prepare_experiment", "collect", "SweepConfig",
           "SweepOutcome"]
