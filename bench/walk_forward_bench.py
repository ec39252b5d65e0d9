"""Walk-forward windows on the cluster vs one after another: W = 1, 2, 4 windows of the same small trials.

Why: a walk-forward study is (windows x variants x seeds) independent trainings. Qlib's rolling runs train
the windows one after another in one process; the sweep schedules every window's trials at once (packs of
models per Train run on the concurrent slots). Run back to back on this machine, each in its own process:
  serial   one Python process, torch with 2 threads (the research report's way): the panel, then train_one
           for every (window, variant, seed), window after window
  sweep    python -m crnn_ray.sweep on the same config (resources.models_per_trial auto)
Printed per W: models, wall seconds of each, the ratio sweep / serial, and the sweep's own `time:` split
(model-epoch seconds and the overhead share). Also written as JSON (--out).

    python bench/walk_forward_bench.py [--config configs/sweeps/walk_forward.yaml] [--windows 1 2 4]
                                       [--variants cnn1d/m02 cnn1d/m06] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

SERIAL = r"""
import sys, time, tempfile
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from crnn_ray.sweep.config import load_config
from crnn_ray.sweep.run import prepare_experiment
from crnn_ray.train import TrainConfig, train_one
cfg = load_config(sys.argv[1])
prep = prepare_experiment(cfg, Path(tempfile.mkdtemp()) / cfg.name)
train_s = 0.0
for trial in cfg.grid(len(prep.windows)):
    t0 = time.perf_counter()
    r = train_one(trial["spec"], prep.panel, prep.windows[trial["window"]], TrainConfig(**trial["train_config"]),
                  workdir=tempfile.mkdtemp())
    train_s += time.perf_counter() - t0
    print(f"SERIAL {trial['key']} {trial['variant_id']} {r.status} select_ic={r.best_metrics.get('select_ic')}",
          flush=True)
print(f"SERIAL_TRAIN_S {train_s:.3f}", flush=True)
"""


def _config(base: dict, windows: int, variants: list[str] | None, root: Path) -> Path:
    doc = json.loads(json.dumps(base))
    doc["name"] = f"wf_bench_w{windows}"
    doc["data"]["walk_forward"]["windows"] = windows
    if variants:
        doc["variants"] = variants
    path = root / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _serial(config: Path, threads: int = 2) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([PY, "-c", SERIAL, str(config), str(threads)], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"serial loop failed:\n{out.stderr[-3000:]}")
    return {"wall_s": wall, "train_s": float(re.search(r"SERIAL_TRAIN_S (\S+)", out.stdout).group(1)),
            "models": out.stdout.count("SERIAL w")}


def _sweep(config: Path, storage: Path) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([PY, "-m", "crnn_ray.sweep", "--config", str(config), "--storage", str(storage)],
                         cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"sweep failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    m = re.search(r"time: Tune (\S+)s x (\d+) slot\(s\) = (\S+) slot-s; model epochs (\S+)s .* overhead (\S+) %",
                  out.stdout)
    models = re.search(r"; (\d+) model\(s\)", out.stdout)
    return {"wall_s": wall, "fit_s": float(m.group(1)), "slots": int(m.group(2)), "epoch_s": float(m.group(4)),
            "overhead_pct": float(m.group(5)), "models": int(models.group(1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "sweeps" / "walk_forward.yaml"))
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--variants", nargs="*", default=None, help="override the config's variants")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    root = Path(tempfile.mkdtemp(prefix="wf_bench_"))
    rows = []
    for w in args.windows:
        config = _config(base, w, args.variants, root)
        serial = _serial(config)
        sweep = _sweep(config, root / "runs")
        row = {"windows": w, "models": sweep["models"], "serial_wall_s": serial["wall_s"],
               "serial_train_s": serial["train_s"], "sweep_wall_s": sweep["wall_s"], "sweep_fit_s": sweep["fit_s"],
               "sweep_epoch_s": sweep["epoch_s"], "sweep_overhead_pct": sweep["overhead_pct"],
               "ratio": sweep["wall_s"] / serial["wall_s"]}
        rows.append(row)
        print(f"W={w}: {row['models']} models; serial (2 threads) {serial['wall_s']:.0f}s (training "
              f"{serial['train_s']:.0f}s); sweep {sweep['wall_s']:.0f}s (Tune {sweep['fit_s']:.0f}s x "
              f"{sweep['slots']} slots, model epochs {sweep['epoch_s']:.0f}s, overhead {sweep['overhead_pct']:.0f} %); "
              f"sweep / serial {row['ratio']:.2f}x", flush=True)
    print("\n| windows | models | serial 2 threads | sweep (auto packs) | sweep / serial | sweep overhead |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['windows']} | {r['models']} | {r['serial_wall_s']:.0f} s | {r['sweep_wall_s']:.0f} s | "
              f"{r['ratio']:.2f}x | {r['sweep_overhead_pct']:.0f} % |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"per added window: serial +{(b['serial_wall_s'] - a['serial_wall_s']) / (b['windows'] - a['windows']):.0f}s, "
              f"sweep +{(b['sweep_wall_s'] - a['sweep_wall_s']) / (b['windows'] - a['windows']):.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
