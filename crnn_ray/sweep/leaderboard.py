"""Trial rows and the per-variant leaderboard (plain pandas: no Ray here).

A trial row summarises one (variant, seed, hyperparameters) run from what it reported to Tune; the
leaderboard ranks variants by the mean over seeds of their best-epoch validation metric. Diverged and failed
trials are listed in trials.parquet but never ranked. The scorer reads both files (docs/architecture.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crnn_ray.baselines import baseline_signals
from crnn_ray.io import atomic_path, write_parquet_atomic
from crnn_ray.metrics import evaluate
from crnn_ray.schema import LEADERBOARD_METRICS, METRICS, RANKED, VALID_METRICS

TRIAL_COLUMNS = [
    "trial_id", "variant_id", "spec", "family", "seed", "status", "reason", "epochs_run", "best_epoch",
    *VALID_METRICS, "checkpoint", "params", "cpu_percent", "threads", "samples_per_s", "node_ip", "gpu_ids",
    "hparams",
    # beyond the contract (additive): the Ray node id (IPs repeat on one-machine clusters), the OS thread
    # count of the worker process (Ray's own threads included), the epoch a restarted worker resumed from
    "node_id", "os_threads", "resumed_from_epoch",
    # walk-forward: the trial's window (0 for a static split) and its model line (the same variant, seed and
    # hyperparameters in every window: `t005` of `w03-t005`)
    "window", "line",
    # what the net saw: training samples stepped, the train split's samples, their ratio (passes over the
    # training rows), and what ended it: early_stopping | epochs (the cap) | diverged | "" (pruned, failed)
    "samples_seen", "train_rows", "passes", "finished_by",
]
LEADERBOARD_COLUMNS = [
    "variant_id", "spec", "family", "n_seeds", "n_ok", "status",
    *[f"{m}_{stat}" for m in LEADERBOARD_METRICS for stat in ("mean", "std")],
    "best_checkpoint", "params", "cpu_percent", "samples_per_s", "seed_ic", "seed_pnl",
]


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _first_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _int(value: Any, missing: int) -> int:
    value = _num(value)
    return missing if math.isnan(value) else int(value)


def trial_row(trial: dict, reports: list[dict], error: str | None, family: str,
              checkpoint: str | None = None) -> dict:
    """One trial's (model's) row from its config (the grid entry), its epoch reports (in order), its error
    and its checkpoint (default: the newest a report names).

    The last report says it all (status, reason, best epoch and its metrics as `best_*`, where it ran); the
    earlier ones only feed the run's averages. A last report still "running" means the scheduler stopped
    the trial (pruned), unless the trial errored (failed).
    """
    metric_reports = [r for r in reports if r.get("status") != "failed" or r.get("epoch") is not None]
    last = reports[-1] if reports else {}
    if last.get("status") == "failed":  # the model raised inside its pack: its metrics are the epochs before
        status, reason = "failed", str(last.get("reason") or "failed")
        last = metric_reports[-1] if metric_reports else last
    elif last.get("status") in ("ok", "diverged"):
        status, reason = last["status"], last.get("reason", "")
    elif error:
        status, reason = "failed", _first_line(error)
    elif last:
        status, reason = "pruned", f"stopped by the scheduler after epoch {last.get('epoch')}"
    else:
        status, reason = "failed", "no result reported"
    if checkpoint is None:
        checkpoint = next((r["checkpoint_path"] for r in reversed(reports) if r.get("checkpoint_path")), None)
    return {
        "trial_id": trial["key"],
        "variant_id": trial["variant_id"],
        "spec": trial["spec"],
        "family": family,
        "seed": int(trial["seed"]),
        "status": status,
        "reason": str(reason or ""),
        "epochs_run": _int(last.get("epoch"), 0),
        "best_epoch": _int(last.get("best_epoch"), -1),
        **{k: (_num(last.get(f"best_{k}")) if status != "diverged" else math.nan) for k in VALID_METRICS},
        "checkpoint": checkpoint,
        "params": _int(last.get("params"), -1),
        "cpu_percent": _mean(reports, "cpu_percent"),
        "threads": _int(last.get("threads"), -1),
        "samples_per_s": _mean(reports, "samples_per_s"),
        "node_ip": str(last.get("worker_node_ip") or ""),
        "gpu_ids": str(last.get("gpu_ids") or "[]"),
        "hparams": json.dumps(trial.get("hparams") or {}, sort_keys=True),
        "node_id": str(last.get("worker_node_id") or ""),
        "os_threads": _mean(reports, "os_threads"),
        "resumed_from_epoch": _int(last.get("resumed_from_epoch"), 0),
        "window": int(trial.get("window") or 0),
        "line": str(trial.get("line") or trial["key"]),
        **_seen(last),
    }


def _seen(last: dict) -> dict:
    """samples_seen, train_rows, passes (their ratio) and finished_by of a model's last report."""
    seen, rows = _int(last.get("samples_seen"), -1), _int(last.get("train_rows"), -1)
    return {"samples_seen": seen, "train_rows": rows,
            "passes": seen / rows if seen >= 0 and rows > 0 else math.nan,
            "finished_by": str(last.get("finished_by") or "")}


def training_note(trials: pd.DataFrame) -> str | None:
    """One line when the nets were stopped by the epoch cap before the data stopped them (undertrained):
    `undertrained: 6 of 6 models stopped at the epoch cap, not by early stopping; they saw 0.40 of their
    training rows on average (median passes 0.40)`; None when early stopping ended most of them."""
    done = trials[trials["finished_by"].isin(["early_stopping", "epochs"])]
    capped = done[done["finished_by"] == "epochs"]
    if done.empty or len(capped) * 2 < len(done):
        return None
    passes = capped["passes"].dropna()
    seen = (f"; they saw {passes.median():.2f}x their training rows (median passes; "
            f"{int((passes < 1).sum())} of {len(passes)} saw fewer than all of them once)") if len(passes) else ""
    return (f"undertrained: {len(capped)} of {len(done)} models stopped at the epoch cap (training.epochs), not by "
            f"early stopping{seen}")


def _mean(rows: list[dict], key: str) -> float:
    vals = [_num(r.get(key)) for r in rows]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def trials_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    return df.sort_values("trial_id", kind="stable").reset_index(drop=True)


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if values.notna().sum() >= 2 else math.nan


def build_leaderboard(trials: pd.DataFrame, zoo: dict, rank_metric: str = "select_rank_ic",
                      baselines: list[dict] = ()) -> pd.DataFrame:
    """One row per variant: mean ± std over seeds of its best hyperparameter setting, ranked by rank_metric.

    `baselines` (baseline_rows) are listed after the ranked variants, unranked, as the bar they must clear.
    """
    rows = []
    for variant_id, vt in trials.groupby("variant_id", sort=False):
        groups = []
        for hp, g in vt.groupby("hparams", sort=False):
            ok = g[g["status"].isin(RANKED)]
            score = ok[rank_metric].mean() if len(ok) else math.nan
            groups.append((score, hp, g, ok))
        ranked = [x for x in groups if len(x[3]) and not math.isnan(x[0])]
        if ranked:
            _, hp, g, ok = max(ranked, key=lambda x: x[0])
        else:
            _, hp, g, ok = groups[0]
        entry = zoo.get(variant_id)
        row: dict[str, Any] = {
            "variant_id": variant_id,
            "spec": vt["spec"].iloc[0],
            "family": vt["family"].iloc[0],
            "n_seeds": int(len(g)),
            "n_ok": int(len(ok)),
        }
        if len(ok):
            row["status"] = "ok"
        else:
            row["status"] = g["status"].value_counts().idxmax()
        for m in LEADERBOARD_METRICS:
            row[f"{m}_mean"] = float(ok[m].mean()) if len(ok) else math.nan
            row[f"{m}_std"] = _std(ok[m]) if len(ok) else math.nan
        if len(ok) and ok[rank_metric].notna().any():
            best = ok.loc[ok[rank_metric].idxmax()]
            row["best_checkpoint"] = best["checkpoint"]
        else:
            row["best_checkpoint"] = None
        params = vt["params"][vt["params"] > 0]
        row["params"] = int(params.iloc[0]) if len(params) else -1
        row["cpu_percent"] = float(ok["cpu_percent"].mean()) if len(ok) else math.nan
        row["samples_per_s"] = float(ok["samples_per_s"].mean()) if len(ok) else math.nan
        row["seed_ic"] = _num(entry.seed_ic) if entry is not None else math.nan
        row["seed_pnl"] = _num(entry.seed_pnl) if entry is not None else math.nan
        row["_hparams"] = hp
        rows.append(row)
    rows += [dict(b) for b in baselines]
    lb = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS + ["_hparams"])
    key = f"{rank_metric}_mean" if f"{rank_metric}_mean" in lb.columns else None
    if key is None:  # valid_pnl_long has no leaderboard column: rank by its trial mean
        lb["_rank"] = [trials[(trials.variant_id == v) & trials.status.isin(RANKED)
                              & (trials.hparams == hp)][rank_metric].mean() for v, hp in zip(lb.variant_id, lb._hparams)]
        key = "_rank"
    lb["_ranked"] = lb["status"].eq("ok") & lb[key].notna()
    lb["_baseline"] = lb["status"].eq("baseline")
    lb = lb.sort_values(["_ranked", "_baseline", key], ascending=[False, False, False], kind="stable",
                        na_position="last")
    return lb.reset_index(drop=True)


def baseline_rows(panel, splits, label: str, lookback: int, clip: float, rank_label: bool,
                  normalised: np.ndarray | None = None) -> list[dict]:
    """Leaderboard rows (status "baseline") for crnn_ray.baselines on the same valid / select rows as the nets,
    predicted on those days only (`normalised`: the panel's features normalised once, shared by every window)."""
    parts = [p for p in (splits.valid, getattr(splits, "select", None)) if p is not None]
    signals = baseline_signals(panel, splits.train, label, lookback, clip=clip, rank_label=rank_label,
                               days=(min(p[0] for p in parts), max(p[1] for p in parts)), normalised=normalised)
    raw = panel.label(label)
    horizon = panel.horizon(label) if hasattr(panel, "horizon") else 1
    returns = panel.returns() if hasattr(panel, "returns") else None  # the realised pnl of the H live books
    rows = []
    for name, signal in signals.items():
        row: dict[str, Any] = {"variant_id": f"baseline/{name}", "spec": name, "family": "baseline", "n_seeds": 1,
                               "n_ok": 0, "status": "baseline", "best_checkpoint": None, "params": -1,
                               "cpu_percent": math.nan, "samples_per_s": math.nan, "seed_ic": math.nan,
                               "seed_pnl": math.nan, "_hparams": "{}"}
        for part in ("valid", "select"):
            lo_hi = getattr(splits, part, None)
            summary = {} if lo_hi is None else evaluate(
                signal[lo_hi[0]:lo_hi[1] + 1], raw[lo_hi[0]:lo_hi[1] + 1], horizon=horizon,
                dates=panel.dates[lo_hi[0]:lo_hi[1] + 1],
                returns=None if returns is None else returns[lo_hi[0]:lo_hi[1] + 1]).summary
            for m in LEADERBOARD_METRICS:
                if METRICS[m].part == part:
                    row[f"{m}_mean"], row[f"{m}_std"] = _num(summary.get(METRICS[m].summary_key)), math.nan
        rows.append(row)
    return rows


def leaderboard_markdown(lb: pd.DataFrame, title: str, rank_metric: str, grid_keys=(), note: str = "") -> str:
    """The leaderboard as a Markdown table (also what the CLI prints at the end).

    With a hyperparameter grid, each variant shows its best setting (`grid_keys` only: the rest is fixed).
    """

    def f(x: Any, fmt: str) -> str:
        x = _num(x)
        return "—" if math.isnan(x) else format(x, fmt)

    def pm(mean: Any, std: Any, fmt: str = "+.4f") -> str:
        s = f(mean, fmt)
        return s if math.isnan(_num(std)) else f"{s} ± {f(std, '.4f')}"

    lines = [f"# {title}", "", f"Ranked by mean {rank_metric} over seeds, each seed at the epoch its valid "
             "split chose. valid figures are optimistic (that split chose the epoch: a max over epochs); select "
             "figures come from the selection split after it, which chose nothing. ± is the sample std over "
             "seeds. Diverged / failed variants are listed last, unranked. seed IC / seed pnl: the research "
             "report's figures on its private data (reference only).", ""]
    if note:
        lines += [note, ""]
    grid_keys = list(grid_keys)
    shown = [METRICS[m] for m in LEADERBOARD_METRICS]
    lines.append("| # | variant | family | seeds ok | " + "".join(f"{m.label} | " for m in shown)
                 + "params | CPU % | samples/s | status |" + (" hparams |" if grid_keys else "")
                 + " seed IC | seed pnl |")
    lines.append("|---:|---|---|---:|" + "---:|" * len(shown) + "---:|---:|---:|---|" + ("---|" if grid_keys else "")
                 + "---:|---:|")
    rank = 0
    for _, r in lb.iterrows():
        ranked = bool(r.get("_ranked", r["status"] == "ok"))
        rank += ranked
        hp = {k: v for k, v in json.loads(r.get("_hparams") or "{}").items() if k in grid_keys}
        lines.append("| " + " | ".join([
            str(rank) if ranked else "–",
            f"`{r['variant_id']}`",
            str(r["family"]),
            f"{r['n_ok']}/{r['n_seeds']}",
            *[pm(r[f"{m.name}_mean"], r[f"{m.name}_std"], m.fmt) for m in shown],
            f"{int(r['params']):,}" if _num(r["params"]) > 0 else "—",
            f(r["cpu_percent"], ".0f"),
            f(r["samples_per_s"], ",.0f"),
            str(r["status"]),
            *([", ".join(f"{k}={v}" for k, v in hp.items())] if grid_keys else []),
            f(r["seed_ic"], ".4f"),
            f(r["seed_pnl"], ".3f"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def write_results(exp_dir: Path, trials: pd.DataFrame, lb: pd.DataFrame, markdown: str) -> None:
    """trials.parquet, leaderboard.parquet (contract columns only) and leaderboard.md, each atomically."""
    write_parquet_atomic(trials, exp_dir / "trials.parquet")
    write_parquet_atomic(lb[LEADERBOARD_COLUMNS], exp_dir / "leaderboard.parquet")
    with atomic_path(exp_dir / "leaderboard.md") as tmp:
        tmp.write_text(markdown)
