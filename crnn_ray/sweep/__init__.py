"""The sweep: a Ray Tune grid (variant x seed x hyperparameters) whose trials are Ray Train V2 runs.

    config.py       YAML config -> validated dataclasses, the grid
    experiment.py   before Ray: resolve / overwrite / resume the experiment directory, check the data, generations
    costs.py        each model's cost, timed per spec on the driver (the cost probe)
    placement.py    each Train run's resources on the cluster, packs of models dealt by cost, work stealing
    trial.py        one Tune trial = one Train run of a pack: the trainable, the Train worker, pack checkpoints
    run.py          `run_sweep`: the stages in order; connect Ray, one Tune fit per generation, graceful stop
    collect.py      rows from Tune's results, trials.parquet, the leaderboard, the time split
    leaderboard.py  the tables themselves (plain pandas)
    __main__.py     `python -m crnn_ray.sweep`

Every use of Ray internals lives in `crnn_ray/ray_compat.py`, the edge module the scorer shares.
The run's API is re-exported here: `from crnn_ray.sweep import run_sweep`. The re-exports load on first use
(PEP 562), so importing one submodule loads only what it needs: the work-stealing actor imports
`crnn_ray.sweep.placement` without torch or Tune.
"""

import importlib

#: name -> the submodule that defines it
_EXPORTS = {
    "run_sweep": "crnn_ray.sweep.run",
    "resolve_experiment": "crnn_ray.sweep.experiment",
    "prepare_experiment": "crnn_ray.sweep.experiment",
    "collect": "crnn_ray.sweep.collect",
    "SweepOutcome": "crnn_ray.sweep.collect",
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
