"""What a sweep leaves: one row per model from Tune's results and the packs' checkpoints, trials.parquet, the
leaderboard (with the baselines), and where the slot-seconds went.

Why a stage of its own: the rows come from what Tune holds after the fits (every epoch report, the newest
checkpoint of each pack) and, for a model whose end Tune lost (a driver killed), from its checkpoint on disk, so
the same code reads a fresh run and a resumed one, and every model of the grid gets a row, even one never
started. The tables themselves are built in crnn_ray.sweep.leaderboard (plain pandas).
"""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pandas as pd

from crnn_ray.baselines import normalised_features
from crnn_ray.sweep.config import SweepConfig
from crnn_ray.sweep.leaderboard import (baseline_rows, build_leaderboard, leaderboard_markdown, trial_row,
                                        training_note, trials_frame, write_results)
from crnn_ray.sweep.placement import pack_models
from crnn_ray.sweep.trial import STORAGE_ERROR, read_pack_file, read_reports, unusable
from crnn_ray.zoo import family_of, load_zoo

__all__ = ["collect", "baselines_for", "time_split", "relative_checkpoint", "disk_reports", "SweepOutcome"]


class SweepOutcome:
    """What a finished sweep left: its directory and the two tables."""

    def __init__(self, experiment_dir: Path, trials, leaderboard):
        self.experiment_dir = experiment_dir
        self.trials = trials
        self.leaderboard = leaderboard
        self.time: dict = {}  # run_sweep's time_split

    @property
    def n_ranked(self) -> int:
        return int((self.leaderboard["status"] == "ok").sum())


def baselines_for(cfg: SweepConfig, panel, windows: list) -> list[dict]:
    """Leaderboard rows of the ridge and reversal baselines on the nets' valid / select rows (walk-forward:
    fitted in each window, their figures averaged over the windows like the nets')."""
    t = cfg.training
    # per date, so once for every window: the driver's shared NormalisedPanel brings it (share_panel), a raw
    # panel is normalised here
    normalised = normalised_features(panel, float(t.clip))
    per_window = [baseline_rows(panel, w, cfg.data.label, cfg.data.lookback, float(t.clip), bool(t.rank_label),
                                normalised) for w in windows]
    if len(per_window) == 1:
        return per_window[0]
    rows = []
    for same in zip(*per_window):
        row = dict(same[0])
        for key in [k for k in row if k.endswith("_mean")]:
            vals = pd.to_numeric(pd.Series([r.get(key) for r in same]), errors="coerce")
            row[key] = float(vals.mean()) if vals.notna().any() else math.nan
            row[key[:-5] + "_std"] = float(vals.std(ddof=1)) if vals.notna().sum() >= 2 else math.nan
        row["n_seeds"] = len(same)
        rows.append(row)
    return rows


def relative_checkpoint(path: str | None) -> str | None:
    """A persisted checkpoint as a path relative to the experiment folder (`train/<run>/checkpoint_...`).

    Tune keeps the absolute paths it was given; stored relative, a copied or moved experiment points into
    itself, and readers resolve the path against the folder they opened.
    """
    if not path:
        return None
    parts = Path(str(path)).parts
    if "train" not in parts:
        return str(path)
    start = len(parts) - 1 - parts[::-1].index("train")
    return str(Path(*parts[start:]))


def _reports(result) -> list[dict]:
    """Every epoch report of one trial, in order, from Tune's Result (the last one as Tune holds it); a
    worker's storage-error report (trial.STORAGE_ERROR: no epoch, it only stopped the sweep) is left out."""
    frame = getattr(result, "metrics_dataframe", None)
    rows = frame.to_dict("records") if frame is not None and len(frame) else []
    if result.metrics:
        rows = rows[:-1] + [dict(result.metrics)]
    return [r for r in rows if not _present(r.get(STORAGE_ERROR))]


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def disk_reports(train_dir: Path, experiment: str, keys: list[str]) -> dict[str, tuple[list[dict], str]]:
    """{model key: (its reports, its checkpoint directory)} of the models among `keys` that are over on disk:
    finished (meta.json status ok / diverged, the directory intact) in some persisted checkpoint of some pack
    of the experiment (the most advanced one), or failed (pack.json `failed`). Why: Tune can lose a model's
    reports while its checkpoint stays (a driver SIGKILL: Tune restarts the pack's trial with an empty result
    log, and the restarted worker skips the finished models, so they report nothing again). The reports come
    from the model's `reports.json` (trial.REPORTS_FILE), else from its meta.json alone (the final figures)."""
    found: dict[str, tuple[tuple, list[dict], str]] = {}
    wanted = set(keys)
    for ckpt in sorted(train_dir.glob(f"{glob.escape(experiment)}-*/checkpoint_*")) if train_dir.is_dir() else []:
        if not ckpt.is_dir() or not wanted:
            continue
        failed = read_pack_file(ckpt).get("failed") or {}
        for key in wanted & set(failed):
            found.setdefault(key, ((-1, ""), [{"status": "failed", "reason": str(failed[key])}], None))
        for key in [k for k in wanted if (ckpt / k).is_dir()]:
            meta = _read_json(ckpt / key / "meta.json")
            rank = (int(meta.get("epoch") or 0), ckpt.name)
            if meta.get("status") not in ("ok", "diverged") or rank <= found.get(key, ((-1, ""),))[0] \
                    or unusable(ckpt / key) is not None:
                continue
            reports = read_reports(ckpt / key) or [_meta_report(meta)]
            found[key] = (rank, reports, str(ckpt / key))
    return {k: (reports, checkpoint) for k, (_, reports, checkpoint) in found.items()}


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _meta_report(meta: dict) -> dict:
    """A model's last report rebuilt from its meta.json (a checkpoint written before reports.json existed)."""
    return {"epoch": meta.get("epoch"), "best_epoch": meta.get("best_epoch"), "status": meta.get("status"),
            "reason": meta.get("reason") or "", "params": meta.get("params"),
            **{f"best_{k}": v for k, v in (meta.get("valid_metrics") or {}).items()}}


def _final(entry) -> bool:
    """Whether Tune's reports of a model end it (ok, diverged or failed): else its row may come from disk."""
    return entry is not None and bool(entry[1]) and entry[1][-1].get("status") in ("ok", "diverged", "failed")


def time_split(fits: list, slots: int) -> dict:
    """Where the sweep's slot-seconds went, from each Tune fit's results and wall-clock span
    [(results, t0, t1)]: the models' epochs (training + validation, as each epoch timed itself) against Tune's
    wall time x the concurrent slots. The rest, `overhead`, splits into
      startup_s         from the fit's start to each pack's worker entering train_worker (Tune scheduling, the
                        TrainController, the worker group; a restarted worker's start-up counts again)
      model_overhead_s  each model's active time (its start to its last report) minus its epochs: its data and
                        model set-up, checkpoint writes and Train's report / checkpoint persistence
      idle_s            the remainder: slots with no pack (fewer packs than slots, uneven packs finishing at
                        different times) and whatever the three above do not see."""
    epochs, startup, tune_part, active, fit_s = [], 0.0, 0.0, 0.0, 0.0
    for results, t0, t1 in fits:
        fit_s += t1 - t0
        for result in results:
            reports = _reports(result)
            epochs += [r for r in reports if r.get("epoch_s") is not None]
            workers = sorted({(float(r["worker_t0"]), float(r.get("driver_t0") or r["worker_t0"]))
                              for r in reports if r.get("worker_t0")})
            if workers:
                startup += max(0.0, workers[0][0] - t0)
                tune_part += max(0.0, min(workers[0][1], workers[0][0]) - t0)
            by_model: dict = {}
            for r in reports:
                if r.get("model_t0") and r.get("report_t"):
                    key = (r.get("trial_key"), float(r["model_t0"]))
                    by_model[key] = max(by_model.get(key, 0.0), float(r["report_t"]) - float(r["model_t0"]))
            active += sum(by_model.values())
    total = lambda key: float(sum(float(r.get(key) or 0.0) for r in epochs if r.get(key) == r.get(key)))  # noqa: E731
    slot_s = fit_s * max(1, slots)
    epoch_s = total("epoch_s")
    model_overhead = max(0.0, active - epoch_s) if active else 0.0
    return {"fit_s": fit_s, "slots": max(1, slots), "slot_s": slot_s, "epoch_s": epoch_s,
            "train_s": total("train_s"), "valid_s": total("valid_s"), "startup_s": startup,
            "startup_tune_s": tune_part,
            "model_overhead_s": model_overhead,
            "idle_s": max(0.0, slot_s - epoch_s - startup - model_overhead),
            "overhead": max(0.0, 1.0 - epoch_s / slot_s) if slot_s > 0 else math.nan}


def collect(cfg: SweepConfig, exp_dir: Path, grid: list[dict], results, baselines: list[dict] = ()) -> SweepOutcome:
    """trials.parquet + leaderboard.{parquet,md} from the Tune results; prints the leaderboard."""
    zoo = load_zoo()
    grid_by_key = {t["key"]: t for t in grid}
    by_key = {}
    for result in results:
        pack = (result.config or {}).get("trial")
        if pack is None:
            continue
        reports = _reports(result)
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {result.error}"
        # the pack's newest checkpoint carries every model that reported: each model's directory in it
        newest = next((r["checkpoint_path"] for r in reversed(reports) if r.get("checkpoint_path")), None)
        models = pack_models(pack)
        # with work stealing (placement.PackQueue) a pack may train models dealt to another: every model it
        # reported on is its own, and a model is some pack's only where that pack reported on it
        dealt = {m["key"] for m in models}
        models += [grid_by_key[k] for k in dict.fromkeys(r.get("trial_key") for r in reports)
                   if k in grid_by_key and k not in dealt]
        for trial in models:
            own = [r for r in reports if r.get("trial_key", trial["key"] if len(models) == 1 else None) == trial["key"]]
            if not own and trial["key"] in by_key:
                continue
            # a model that raised is not carried in the pack's checkpoints: it has none
            raised = bool(own) and own[-1].get("status") == "failed"
            checkpoint = (f"{newest}/{trial['key']}" if newest and not raised
                          and any(r.get("checkpoint_path") for r in own) else None)
            by_key[trial["key"]] = (trial, own, error if own or trial["key"] in dealt else None, checkpoint)
    # a model Tune lost the end of (a driver SIGKILL) keeps the row its checkpoint on disk holds
    lost = [t["key"] for t in grid if not _final(by_key.get(t["key"]))]
    for key, (reports, checkpoint) in disk_reports(exp_dir / "train", cfg.name, lost).items():
        by_key[key] = (grid_by_key[key], reports, None, checkpoint)
    rows = []
    for trial in grid:  # every trial of the grid gets a row, even one Tune never started
        t, results_rows, error, checkpoint = by_key.get(trial["key"], (trial, [], "not run", None))
        entry = zoo.get(t["variant_id"])
        family = entry.family if entry is not None else family_of(t["spec"])
        row = trial_row(t, results_rows, error, family, checkpoint)
        row["checkpoint"] = relative_checkpoint(row["checkpoint"])
        rows.append(row)
    trials = trials_frame(rows)
    lb = build_leaderboard(trials, zoo, cfg.rank_metric, baselines)
    grid_keys = sorted({k for t in grid for k in t.get("grid", {})})
    md = leaderboard_markdown(lb, f"Leaderboard — {cfg.name}", cfg.rank_metric, grid_keys=grid_keys,
                              note=f"Experiment: `{exp_dir}`; {len(trials)} trial(s); "
                                   f"{int(trials.status.isin(['ok', 'pruned']).sum())} ranked, "
                                   f"{int((trials.status == 'diverged').sum())} diverged, "
                                   f"{int((trials.status == 'failed').sum())} failed.")
    note = training_note(trials)
    if note:
        md += f"\n{note}\n"
    write_results(exp_dir, trials, lb, md)
    for _, r in trials.iterrows():
        ic = "" if math.isnan(r.valid_ic) else (
            f" valid IC {r.valid_ic:+.4f}" + ("" if math.isnan(r.select_ic) else f", select IC {r.select_ic:+.4f}")
            + f" (epoch {r.best_epoch})")
        seen = f"; {r.passes:.2f} passes over its training rows" if math.isfinite(r.passes) else ""
        print(f"  {r.trial_id} {r.variant_id} seed {r.seed}: {r.status}{ic}"
              f"{' — ' + r.reason if r.reason else ''}{seen}", flush=True)
    print(md, flush=True)
    return SweepOutcome(exp_dir, trials, lb)
