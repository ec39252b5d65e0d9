"""CPU quota vs unbounded threads: two concurrent sweep trials on this machine, measured side by side.

Why: the seed report saw unbounded torch thread pools burn 2000-4800 % CPU for no speed-up. Here two
trials of a small convGRU run at once on a local Ray with 2 CPUs, first with the quota (1 CPU granted ->
1 torch thread each), then with `resources.cpu_quota: false` (each worker free to use every core, as torch
does by default). Printed: per-trial and aggregate training samples/s, CPU %, threads, the overlap of the
two trials' training windows (the figures are "concurrent" only when it is high), and the ratio.

    python bench/quota_bench.py [--steps 60] [--batch-size 256] [--variant convgru/m01]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _config(variant: str, steps: int, batch_size: int, quota: bool) -> dict:
    return {
        "name": "quota" if quota else "unbounded",
        "data": {"synth": {"symbols": 100, "days": 260, "seed": 3, "horizon": 5}, "lookback": 20,
                 "splits": {"fractions": [0.7, 0.15, 0.15], "select": 0}},  # no member selection: one valid part
        "variants": [variant],
        "seeds": [0, 1],
        "training": {"epochs": 1, "batch_size": batch_size, "lr": 1e-3, "max_steps_per_epoch": steps},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "cpu_quota": quota, "max_concurrent_trials": 2},
    }


def _read_results_json(trial_dir: Path) -> list[dict]:
    """Every result a Tune trial reported, in order (its result.json: one JSON object per line)."""
    path = Path(trial_dir) / "result.json"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def _overlap(storage: Path, name: str, trial_ids) -> float:
    """Fraction of the shorter training window during which both trials were training."""
    windows = []
    for tid in trial_ids:
        # the trial's epoch reports (each carries epoch_s); with epochs: 1 there is one
        rows = [r for r in _read_results_json(storage / name / "tune" / tid) if r.get("epoch_s") is not None]
        r = rows[0]
        # epoch_s covers training + validation; the window ends when the epoch was reported
        windows.append((r["timestamp"] - r["epoch_s"], r["timestamp"]))
    (a0, a1), (b0, b1) = windows
    shorter = min(a1 - a0, b1 - b0)
    return max(0.0, min(a1, b1) - max(a0, b0)) / shorter if shorter > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="convgru/m01")
    ap.add_argument("--steps", type=int, default=60, help="training steps per trial")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    import ray

    from crnn_ray.sweep import run_sweep

    cpus = os.cpu_count() or 1
    storage = Path(tempfile.mkdtemp(prefix="quota_bench_"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for quota in (True, False):
            cfg = _config(args.variant, args.steps, args.batch_size, quota)
            path = storage / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            outcome = run_sweep(path, storage=storage)
            t = outcome.trials
            results[cfg["name"]] = {
                "per_trial": list(t.samples_per_s),
                "aggregate": float(t.samples_per_s.sum()),
                "cpu": list(t.cpu_percent),
                "threads": list(t.threads),
                "status": list(t.status),
                "overlap": _overlap(storage, cfg["name"], list(t.trial_id)),
            }
    finally:
        ray.shutdown()

    q, u = results["quota"], results["unbounded"]
    print()
    print(f"quota bench: 2 concurrent trials of {args.variant}, {args.steps} steps x {args.batch_size} samples, "
          f"local Ray with 2 CPUs on a {cpus}-core machine")
    print(f"{'':24s}{'quota (1 CPU each)':>24s}{'unbounded threads':>24s}")
    print(f"{'torch threads / trial':24s}{str(q['threads']):>24s}{str(u['threads']):>24s}")
    print(f"{'samples/s per trial':24s}{', '.join(f'{v:,.0f}' for v in q['per_trial']):>24s}"
          f"{', '.join(f'{v:,.0f}' for v in u['per_trial']):>24s}")
    print(f"{'aggregate samples/s':24s}{q['aggregate']:>24,.0f}{u['aggregate']:>24,.0f}")
    print(f"{'CPU % per trial':24s}{', '.join(f'{v:.0f}' for v in q['cpu']):>24s}"
          f"{', '.join(f'{v:.0f}' for v in u['cpu']):>24s}")
    print(f"{'training overlap':24s}{q['overlap']:>24.0%}{u['overlap']:>24.0%}")
    print(f"{'status':24s}{str(q['status']):>24s}{str(u['status']):>24s}")
    ratio = q["aggregate"] / u["aggregate"] if u["aggregate"] > 0 else float("nan")
    cpu_per_sample = (sum(u["cpu"]) / u["aggregate"]) / (sum(q["cpu"]) / q["aggregate"]) if q["aggregate"] else float("nan")
    print(f"ratio quota / unbounded: aggregate samples/s {ratio:.2f}x; CPU-seconds per sample "
          f"{cpu_per_sample:.2f}x more without the quota")
    return 0


if __name__ == "__main__":
    sys.exit(main())
