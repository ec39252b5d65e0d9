"""The sweep: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

    config.py       YAML config -> validated dataclasses, the grid
    trial.py        placement plan, the per-trial driver (TorchTrainer around train_one), progress lines
    ray_compat.py   every use of Ray internals (private modules, undocumented environment variables)
    leaderboard.py  trials.parquet and the leaderboard
    run.py          the sweep run: validate, prepare the experiment, run the Tune grid, collect (`run_sweep`)
    __main__.py     `python -m crnn_ray.sweep`

The run's API is re-exported here: `from crnn_ray.sweep import run_sweep`. The re-exports load on first use
(PEP 562): every Ray worker imports `crnn_ray.sweep.ray_compat` for its setup hook, Ray's own helper actors
included, and must not pay for torch (which config.py pulls in through crnn_ray.train) to do so.
"""

import importlib

#: name -> the submodule that defines it
_EXPORTS = {
    "run_sweep": "crnn_ray.sweep.run",
    "resolve_experiment": "crnn_ray.sweep.run",
    "prepare_experiment": "crnn_ray.sweep.run",
    "collect": "crnn_ray.sweep.run",
    "SweepOutcome": "crnn_ray.sweep.run",
    "SweepConfig": "crnn_ray.sweep.config",
    "load_config": "crnn_ray.sweep.config",
}

__all__ = ["run_sweep", "load_config", "resolve_experiment", "prepare_experiment", "collect", "SweepConfig",
           "SweepOutcome"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
