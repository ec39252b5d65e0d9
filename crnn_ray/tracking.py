"""Experiment tracking in MLflow: one run per model, nested under its sweep's run, and one run per scoring.

Why by hand rather than Ray's `MLflowLoggerCallback`: a Tune trial here is a pack of models trained one after
another, so a run per trial would chain several models' epochs into one curve. The driver sees every epoch report
with its model key (`trial_key`), so it logs each model into a run of its own: its spec, seed, window and
TrainConfig as params, every epoch's metrics with the epoch as step, its status, and its checkpoint (a reference:
the path inside the experiment, never a copy of the weights).

Where: `sqlite:///DIR/NAME/mlflow.db` inside the experiment by default (MLflow's own default backend; no server),
artifacts in `DIR/NAME/mlartifacts`; `MLFLOW_TRACKING_URI` or `tracking.uri` (a server) instead. The scorer logs
into the same store when it scores an experiment. Tracking never stops or fails a run: the first error prints one
line and switches it off for the rest of the run (the experiment's own files hold every figure anyway).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from crnn_ray.config import boolean, optional, setting, text
from crnn_ray.schema import VALID_METRICS

__all__ = ["TrackingConfig", "Tracker", "tracking_uri", "EPOCH_METRICS", "DB_FILE", "ARTIFACTS_DIR"]

#: the MLflow database and artifact folder inside an experiment (the default store)
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
#: the per-epoch figures a model run logs (besides the validation metrics and their best-epoch twins)
EPOCH_METRICS = ("train_loss", "samples_per_s", "epoch_s", "train_s", "valid_s", "cpu_percent",
                 *VALID_METRICS, *(f"best_{m}" for m in VALID_METRICS))
#: MLflow's limits per log_batch call
_BATCH_PARAMS, _BATCH_METRICS = 100, 1000
#: how a crnn_ray status ends an MLflow run
_RUN_STATUS = {"ok": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
               "not run": "KILLED"}


@dataclass
class TrackingConfig:
    """The sweep's `tracking:` section (and the scorer's flags)."""

    mlflow: bool = setting(True, check=boolean)              # false: no MLflow runs
    uri: str | None = setting(None, check=optional(text))     # None: $MLFLOW_TRACKING_URI, else the experiment's db
    tensorboard: bool = setting(True, check=boolean)         # DIR/NAME/tensorboard/<model key>: one series per model


def tracking_uri(exp_dir: str | os.PathLike, uri: str | None = None) -> str:
    """The store to log into: `uri` when given, else $MLFLOW_TRACKING_URI, else the experiment's sqlite file."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return chosen or f"sqlite:///{(Path(exp_dir).resolve() / DB_FILE)}"


def _quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (`Creating initial MLflow database tables...`) are not ours to print."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _param_text(value: Any) -> str:
    text_ = value if isinstance(value, str) else repr(value)
    return text_[:500]  # MLflow's limit for a param value


class Tracker:
    """One MLflow experiment (named after the crnn_ray experiment) and the runs of one sweep or scoring.

    Idempotent across `--resume`: the sweep's run is found again by its experiment folder, a model's run by its
    key, and an epoch already logged is not logged twice, so a resumed sweep continues its runs.
    """

    def __init__(self, exp_dir: str | os.PathLike, name: str, cfg: TrackingConfig | None = None, *,
                 quiet: bool = False):
        cfg = cfg or TrackingConfig()
        self.exp_dir = Path(exp_dir).resolve()
        self.enabled = bool(cfg.mlflow)
        self.uri = tracking_uri(self.exp_dir, cfg.uri) if self.enabled else None
        self.quiet = quiet
        self.client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.models: dict[str, str] = {}      # model key -> run id
        self.last_step: dict[str, int] = {}   # run id -> last epoch logged
        self.ended: set[str] = set()
        self.artifacts = True                 # whether files may be logged as artifacts (see _open)
        if self.enabled:
            self._call(self._open, name)

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        """fn(...) unless tracking is off; the first error switches it off with one line."""
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never be why a run fails
            self.enabled = False
            print(f"note: MLflow tracking off for the rest of this run ({self.uri}): {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}", flush=True)
            return None

    def _open(self, name: str) -> None:
        from mlflow.tracking import MlflowClient  # deferred: a second of imports, only when tracking is on

        _quiet_mlflow()  # after the import: importing mlflow sets its loggers' levels

        if self.uri.startswith("sqlite:///"):
            self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(name)
        default_store = self.uri == tracking_uri(self.exp_dir)
        own = (self.exp_dir / ARTIFACTS_DIR).as_uri()
        if found is not None:
            self.experiment_id = found.experiment_id
            # a copied or moved experiment's store still names the original folder for its artifacts: they
            # would be written there, outside this experiment; the files are named by tag instead
            self.artifacts = not default_store or found.artifact_location == own
        else:
            self.experiment_id = self.client.create_experiment(name, artifact_location=own if default_store else None)

    def _find(self, tags: dict[str, str]) -> list:
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=where, max_results=1000)

    def _log(self, run_id: str, params: dict | None = None, metrics: dict | None = None, step: int = 0,
             tags: dict | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, _param_text(v)) for k, v in (params or {}).items() if v is not None]
        m = [Metric(k, v, now, int(step)) for k, v in ((k, _finite(v)) for k, v in (metrics or {}).items())
             if v is not None]
        t = [RunTag(k, _param_text(v)) for k, v in (tags or {}).items() if v is not None]
        for i in range(0, max(len(p), len(m), len(t), 1), _BATCH_PARAMS):
            self.client.log_batch(run_id, metrics=m[i:i + _BATCH_PARAMS], params=p[i:i + _BATCH_PARAMS],
                                  tags=t[i:i + _BATCH_PARAMS])

    # ---- the sweep's run ------------------------------------------------------------------------------------
    def start_parent(self, role: str, run_name: str, params: dict | None = None, tags: dict | None = None) -> None:
        """The run of this sweep (role "sweep") or scoring (role "score"): found again for the same experiment
        folder on --resume (a sweep), else created."""
        self._call(self._start_parent, role, run_name, params or {}, tags or {})

    def _start_parent(self, role: str, run_name: str, params: dict, tags: dict) -> None:
        key = {"crnn_ray.role": role, "crnn_ray.experiment_dir": str(self.exp_dir)}
        if role == "sweep":
            runs = self._find(key)
            if runs:
                self.parent_id = runs[0].info.run_id
                self.client.update_run(self.parent_id, status="RUNNING")
                self._reuse_models()
                return
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**key, **tags})
        self.parent_id = run.info.run_id
        self._log(self.parent_id, params=params)

    def _reuse_models(self) -> None:
        """--resume: the model runs of this sweep already there, and the last epoch each logged."""
        for run in self._find({"mlflow.parentRunId": self.parent_id}):
            model = run.data.tags.get("crnn_ray.model")
            if model:
                self.models[model] = run.info.run_id
                history = self.client.get_metric_history(run.info.run_id, "epoch_s")
                self.last_step[run.info.run_id] = max((h.step for h in history), default=0)
                if run.info.status != "RUNNING":
                    self.ended.add(model)

    def end_parent(self, status: str = "FINISHED", metrics: dict | None = None,
                   artifacts: Iterable[str | os.PathLike] = ()) -> None:
        self._call(self._end_parent, status, metrics or {}, list(artifacts))

    def _end_parent(self, status: str, metrics: dict, artifacts: list) -> None:
        if self.parent_id is None:
            return
        files = [Path(p) for p in artifacts if Path(p).is_file()]
        tags = {} if self.artifacts else {f"crnn_ray.file.{p.name}": str(p.resolve()) for p in files}
        self._log(self.parent_id, metrics=metrics, tags=tags)
        for path in files if self.artifacts else []:
            self.client.log_artifact(self.parent_id, str(path))
        self.client.set_terminated(self.parent_id, status)

    # ---- model runs -----------------------------------------------------------------------------------------
    def model_run(self, key: str, params: dict, tags: dict | None = None) -> str | None:
        """The run of model `key` (created nested under the sweep's run on its first report)."""
        if key in self.models:
            return self.models[key]
        return self._call(self._new_model_run, key, params, tags or {})

    def _new_model_run(self, key: str, params: dict, tags: dict) -> str:
        run = self.client.create_run(self.experiment_id, run_name=key, tags={
            "mlflow.parentRunId": self.parent_id, "crnn_ray.model": key, **tags})
        self._log(run.info.run_id, params=params)
        self.models[key] = run.info.run_id
        return run.info.run_id

    def log_epoch(self, key: str, report: dict) -> None:
        """One epoch report of model `key` (EPOCH_METRICS, step = its epoch); an epoch logged before is skipped."""
        run_id, epoch = self.models.get(key), report.get("epoch")
        if run_id is None or epoch is None or not self.enabled:
            return
        if int(epoch) <= self.last_step.get(run_id, 0):
            return
        self._call(self._log, run_id, metrics={k: report.get(k) for k in EPOCH_METRICS}, step=int(epoch))
        self.last_step[run_id] = int(epoch)

    def end_model(self, key: str, status: str, reason: str = "", metrics: dict | None = None,
                  checkpoint: str | None = None) -> None:
        """Model `key` is over: its final figures (the selected epoch's), status, reason and checkpoint path.
        Called again (the sweep's final pass, which knows the checkpoint), it adds what it is given."""
        run_id = self.models.get(key)
        if run_id is None:
            return
        tags = {"crnn_ray.status": status, "crnn_ray.reason": reason or None,
                "crnn_ray.checkpoint": checkpoint,
                "crnn_ray.checkpoint_uri": (self.exp_dir / checkpoint).as_uri() if checkpoint else None}
        self._call(self._end_model, run_id, tags, metrics or {}, _RUN_STATUS.get(status, "FINISHED"))
        self.ended.add(key)

    def _end_model(self, run_id: str, tags: dict, metrics: dict, status: str) -> None:
        self._log(run_id, metrics=metrics, step=self.last_step.get(run_id, 0), tags=tags)
        self.client.set_terminated(run_id, status)
