"""Cost per model: the same grid by a plain serial loop and by the sweep (one model per Train run vs packs).

Why: a Ray Train run costs ~15 s of start-up and a handful of bookkeeping processes whatever it trains, so at
small scale a sweep of one model per run is slower than the for-loop it replaces. Packs
(resources.models_per_trial) pay that once per pack. Run back to back on this machine, each in its own
process:
  serial, T threads   one Python process: the panel, then train_one for every model of the grid in turn,
                      torch.set_num_threads(T) (the research report's way; T = 2 and 1)
  sweep, mpt=1 / auto python -m crnn_ray.sweep with resources.models_per_trial 1, then auto
Printed: wall seconds and the ratio to the 2-thread loop, the sweep's own overhead share (its `time:` line:
1 - model-epoch seconds / (Tune wall x slots)), and the bookkeeping processes' memory per model: each Ray
actor process of the sweep sampled once a second (psutil), its peak RSS and USS summed over the
Tune/Train bookkeeping roles and divided by the number of models. Also written as JSON (--out).

    python bench/sweep_overhead_bench.py [--config configs/sweeps/quickstart.yaml] [--seeds 1 3]
                                         [--skip serial1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

#: the Ray processes a Tune-trial x Train-run costs besides its training worker (their process titles)
BOOKKEEPING = ("ImplicitFunc", "TrainController", "PlacementGroupCleaner", "PreemptionWatcher",
               "SynchronizationActor", "_QueueActor")
WORKER = "RayTrainWorker"

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
for trial in cfg.grid():
    t0 = time.perf_counter()
    r = train_one(trial["spec"], prep.panel, prep.splits, TrainConfig(**trial["train_config"]),
                  workdir=tempfile.mkdtemp())
    train_s += time.perf_counter() - t0
    print(f"SERIAL {trial['key']} {trial['variant_id']} {r.status} valid_ic={r.best_metrics.get('valid_ic')}",
          flush=True)
print(f"SERIAL_TRAIN_S {train_s:.3f}", flush=True)
"""


class ProcessSampler:
    """Peak RSS / USS of every `ray::` process, by role (its process title), sampled once a second."""

    def __init__(self):
        self.peak_rss: dict[int, int] = defaultdict(int)
        self.peak_uss: dict[int, int] = defaultdict(int)
        self.role: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if not cmd.startswith("ray::"):
                        continue
                    title = cmd[5:].split(".")[0].split()[0]
                    if title != "IDLE":
                        self.role[proc.pid] = title
                    mem = proc.memory_full_info()
                    self.peak_rss[proc.pid] = max(self.peak_rss[proc.pid], mem.rss)
                    self.peak_uss[proc.pid] = max(self.peak_uss[proc.pid], mem.uss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self._stop.wait(1.0)

    def by_role(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for pid, role in self.role.items():
            r = out.setdefault(role, {"processes": 0, "rss_mb": [], "uss_mb": []})
            r["processes"] += 1
            r["rss_mb"].append(self.peak_rss[pid] / 2**20)
            r["uss_mb"].append(self.peak_uss[pid] / 2**20)
        return out


def _serial(config: Path, threads: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([PY, "-c", SERIAL, str(config), str(threads)], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"serial loop failed:\n{out.stderr[-3000:]}")
    train_s = float(re.search(r"SERIAL_TRAIN_S (\S+)", out.stdout).group(1))
    return {"wall_s": wall, "train_s": train_s}


def _sweep(config: Path, storage: Path) -> dict:
    with ProcessSampler() as sampler:
        t0 = time.perf_counter()
        out = subprocess.run([PY, "-m", "crnn_ray.sweep", "--config", str(config), "--storage", str(storage),
                              "--overwrite"], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"sweep failed:\n{(out.stdout + out.stderr)[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("time: "))
    m = re.search(r"Tune (\d+)s x (\d+) slot.*model epochs (\d+)s.*overhead (\d+) %", line)
    runs = re.search(r"in (\d+) Train run\(s\) of up to (\d+) model", out.stdout)
    return {"wall_s": wall, "tune_s": float(m.group(1)), "slots": int(m.group(2)), "epoch_s": float(m.group(3)),
            "overhead": float(m.group(4)) / 100, "train_runs": int(runs.group(1)), "models_per_run": int(runs.group(2)),
            "roles": sampler.by_role(), "time_line": line}


def _bookkeeping_per_model(roles: dict, n_models: int, key: str) -> float:
    return sum(sum(r[key]) for name, r in roles.items() if name in BOOKKEEPING) / max(1, n_models)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "sweeps" / "quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="grid versions: this many seeds each")
    ap.add_argument("--skip", nargs="*", default=[], choices=["serial2", "serial1", "mpt1", "auto"])
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="overhead_bench_"))
    base = yaml.safe_load(Path(args.config).read_text())
    results = {}
    for n_seeds in args.seeds:
        doc = {**base, "seeds": list(range(n_seeds)), "name": f"{base.get('name', 'bench')}_s{n_seeds}"}
        n_models = len(doc["variants"]) * n_seeds
        rows = {}
        for label in ("serial2", "serial1", "mpt1", "auto"):
            if label in args.skip:
                continue
            path = tmp / f"{label}_s{n_seeds}.yaml"
            if label.startswith("serial"):
                path.write_text(yaml.safe_dump(doc, sort_keys=False))
                rows[label] = _serial(path, int(label[-1]))
            else:
                mpt = 1 if label == "mpt1" else "auto"
                path.write_text(yaml.safe_dump({**doc, "resources": {**doc.get("resources", {}),
                                                                      "models_per_trial": mpt}}, sort_keys=False))
                rows[label] = _sweep(path, tmp / label)
            print(f"  [{n_seeds} seed(s)] {label}: {rows[label]['wall_s']:.0f}s", flush=True)
        results[n_seeds] = (n_models, rows)

    print()
    print(f"sweep overhead bench: {Path(args.config).name}, {os.cpu_count()} CPU(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    for n_seeds, (n_models, rows) in results.items():
        ref = rows.get("serial2", {}).get("wall_s")
        print(f"\n{n_models} models ({n_seeds} seed(s)):")
        print(f"  {'':28s}{'wall s':>8s}{'x serial 2thr':>15s}{'overhead':>10s}{'runs':>6s}"
              f"{'bookkeeping RSS/model':>23s}{'USS/model':>11s}")
        for label, r in rows.items():
            name = {"serial2": "serial loop, 2 threads", "serial1": "serial loop, 1 thread",
                    "mpt1": "sweep, models_per_trial 1", "auto": "sweep, models_per_trial auto"}[label]
            ratio = f"{r['wall_s'] / ref:.2f}x" if ref else "-"
            if "roles" in r:
                rss = _bookkeeping_per_model(r["roles"], n_models, "rss_mb")
                uss = _bookkeeping_per_model(r["roles"], n_models, "uss_mb")
                print(f"  {name:28s}{r['wall_s']:8.0f}{ratio:>15s}{100 * r['overhead']:9.0f}%{r['train_runs']:6d}"
                      f"{rss:20.0f} MB{uss:8.0f} MB")
            else:
                print(f"  {name:28s}{r['wall_s']:8.0f}{ratio:>15s}{'':>10s}{'':>6s}")
        if "mpt1" in rows and "auto" in rows:
            a, b = (_bookkeeping_per_model(rows[k]["roles"], n_models, "rss_mb") for k in ("mpt1", "auto"))
            print(f"  packs (auto) vs one model per run: wall {rows['mpt1']['wall_s'] / rows['auto']['wall_s']:.2f}x "
                  f"faster, bookkeeping RSS per model {a / b if b else float('nan'):.1f}x lower")
        for label in ("mpt1", "auto"):
            if label in rows:
                print(f"  {label} {rows[label]['time_line']}")
        for label in ("mpt1", "auto"):
            if label in rows:
                print(f"  processes by role ({label}): " + "; ".join(
                    f"{role} {r['processes']} x {sorted(r['rss_mb'])[len(r['rss_mb']) // 2]:.0f} MB RSS "
                    f"({sorted(r['uss_mb'])[len(r['uss_mb']) // 2]:.0f} USS)"
                    for role, r in sorted(rows[label]["roles"].items())))
    if args.out:
        Path(args.out).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
