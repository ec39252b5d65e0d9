"""One normalised panel per node vs one per model: host memory and per-model set-up time, side by side.

Why: before issue 21 every model normalised the whole panel into its own copy (np.nanmedian: ~17 s per GB of X
and a peak of ~4.25 x X per model), so 8 workers starting a pack at once needed ~166 GB of host memory at a
Qlib-sized panel. Now the driver normalises once in one vectorised pass, puts the normalised cube in Ray's
object store once (crnn_ray.sweep.trial.share_panel), and every model reads the days its window needs from it
zero-copy.

What runs: a synthetic panel made directly with numpy (default 3,000 stocks x 2,500 days x 32 features: X is
0.96 GB float32; NaN holes, listings that start late), a walk-forward of `--windows` windows, one small model
per window, dealt to `--slots` Ray actors (one process and one CPU each: the sweep's workers) on a local Ray
this script starts and shuts down. Each model is a real `train_one` (one short epoch); the two paths:

    before  the raw panel put once; each model normalises the whole panel itself (the old formula,
            crnn_ray.data.panel.normalize_features_nanmedian, and the fingerprint of its window's raw data)
    after   share_panel: the driver normalises once and puts the normalised panel; models slice it

Memory is the proportional set size (PSS: shared pages split between the processes that map them, so the
object store's pages count once) summed over this process and every process under it (Ray's and the slots'),
sampled every 0.1 s; "baseline" is that sum with Ray and the slots up, before the panel exists. Set-up is per
model: normalisation (before) + train_one's data set-up (TrainResult.setup_s). Then the extrapolation of both
paths to 158 and 360 features at 8 workers per node, from the coefficients measured here.

    .venv/bin/python bench/scale_bench.py [--stocks 3000 --days 2500 --features 32 --windows 4 --slots 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from crnn_ray.data import NormalisedPanel, Panel, walk_forward_splits  # noqa: E402
from crnn_ray.data.panel import normalize_features_nanmedian, seen_data_fingerprint, seen_span  # noqa: E402
from crnn_ray.sweep.trial import share_panel  # noqa: E402
from crnn_ray.train import TrainConfig, train_one  # noqa: E402
from crnn_ray.zoo import load_zoo  # noqa: E402

GB = 1e9
VARIANT = "cnn1d/m02"
LABEL = "y5"


# ------------------------------------------------------------------------------------------------ the panel
def make_panel(stocks: int, days: int, features: int, seed: int = 0) -> Panel:
    """A dense synthetic panel: normal features with 2 % missing values, 10 % of the stocks listed late, a
    5-day label with a little signal in feature 0 and 1-day returns (numpy only: seconds, not minutes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((days, stocks, features), dtype=np.float32)
    X[rng.random((days, stocks, features), dtype=np.float32) < 0.02] = np.nan
    late = rng.choice(stocks, stocks // 10, replace=False)
    X[: days // 3, late] = np.nan
    mask = np.isfinite(X).all(axis=2)
    y1 = 0.01 * rng.standard_normal((days, stocks), dtype=np.float32)
    y5 = 0.02 * np.nan_to_num(X[:, :, 0]) + rng.standard_normal((days, stocks), dtype=np.float32)
    y1[~mask], y5[~mask] = np.nan, np.nan
    y5[-5:] = np.nan
    dates = business_days(days)
    meta = {"features": [f"f{j:03d}" for j in range(features)], "labels": [LABEL, "y1"], "returns": "y1",
            "horizons": {LABEL: 5, "y1": 1}, "label_lag": 0, "source": "scale_bench"}
    return Panel(X=X, mask=mask, labels={LABEL: y5, "y1": y1}, dates=dates,
                 symbols=np.array([f"S{i:05d}" for i in range(stocks)], dtype=object), features=meta["features"],
                 meta=meta, forward_returns=y1)


def business_days(days: int) -> np.ndarray:
    return np.busday_offset("2010-01-04", np.arange(days), roll="forward").astype("datetime64[D]")


def walk_forward(days: int, n: int) -> dict:
    """A walk-forward of n windows over the panel: train 40 % of it, valid 8 %, test steps of 8 %."""
    step = max(10, days // 12)
    return {"train": max(60, int(days * 0.4)), "valid": step, "select": 0.5, "step": step, "windows": n}


# ------------------------------------------------------------------------------------------------ memory
def pss_bytes(root: psutil.Process) -> int:
    """PSS of `root` and every process under it (kernel's smaps_rollup), bytes."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class Sampler:
    """The highest PSS sum per phase label (set `phase`), sampled every `every` seconds in a thread."""

    def __init__(self, every: float = 0.1):
        self.root, self.every, self.phase = psutil.Process(os.getpid()), every, "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value, phase = pss_bytes(self.root), self.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0), value)
            time.sleep(self.every)

    def now(self) -> int:
        return pss_bytes(self.root)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ a slot
@ray.remote(num_cpus=1)
class Slot:
    """One sweep worker: trains its models one after another from the panel it is handed."""

    def ready(self) -> int:
        import torch  # what a Train worker has loaded before its first model

        torch.set_num_threads(1)
        return os.getpid()

    def train(self, refs: list, jobs: list, mode: str) -> list[dict]:
        panel = ray.get(refs[0])
        out = []
        for job in jobs:
            cfg, splits = TrainConfig(**job["train_config"]), job["splits"]
            t0 = time.perf_counter()
            shared = panel if mode == "after" else _normalise_like_before(panel, splits, cfg)
            normalise_s = time.perf_counter() - t0
            with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
                result = train_one(job["spec"], shared, splits, cfg, workdir=tmp)
            del shared
            out.append({"window": job["window"], "normalise_s": normalise_s, "setup_s": normalise_s + result.setup_s,
                        "status": result.status, "valid_ic": result.best_metrics.get("valid_ic")})
        return out


def _normalise_like_before(panel: Panel, splits, cfg: TrainConfig) -> NormalisedPanel:
    """What train_one did for every model before: the whole panel normalised by np.nanmedian into its own copy,
    and the fingerprint of the window's raw data."""
    first, last = seen_span(splits, panel.dates)
    return NormalisedPanel(Z=normalize_features_nanmedian(panel.X, panel.mask, cfg.clip), mask=panel.mask,
                           labels=panel.labels, dates=panel.dates, symbols=panel.symbols, features=panel.features,
                           clip=cfg.clip, x_dtype="float32", meta=panel.meta, forward_returns=panel.forward_returns,
                           fingerprints={(first, last, cfg.label): seen_data_fingerprint(
                               panel, first, last, list(panel.features), cfg.label)})


# ------------------------------------------------------------------------------------------------ one path
def run_path(mode: str, args, jobs: list, windows: list) -> dict:
    """One path on a fresh local Ray: baseline, panel, put, the slots' models; peaks per phase."""
    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False,  # our own Ray
             object_store_memory=int(max(2 * GB, 2.5 * args.stocks * args.days * args.features * 4)))
    sampler = Sampler()
    try:
        slots = [Slot.remote() for _ in range(args.slots)]
        ray.get([s.ready.remote() for s in slots])
        time.sleep(1.0)
        baseline = sampler.now()
        slot_pss = [pss_bytes(psutil.Process(pid)) for pid in ray.get([s.ready.remote() for s in slots])]
        sampler.phase = "panel"
        panel = make_panel(args.stocks, args.days, args.features)
        x_bytes = panel.X.nbytes
        sampler.phase = "put"
        t0 = time.perf_counter()
        if mode == "after":
            refs, view = share_panel(panel, windows, LABEL, clip=5.0, x_dtype=args.x_dtype)
            del view  # the driver's zero-copy view: mapped pages of the put, nothing of its own
        else:
            refs = [ray.put(panel)]
        once_s = time.perf_counter() - t0
        time.sleep(0.5)
        steady = sampler.now()
        sampler.phase = "train"
        t0 = time.perf_counter()
        dealt = [jobs[i::args.slots] for i in range(args.slots)]
        results = ray.get([s.train.remote(refs, d, mode) for s, d in zip(slots, dealt)])
        wall = time.perf_counter() - t0
        del refs, panel
    finally:
        sampler.stop()
        ray.shutdown()
    return {"mode": mode, "baseline": baseline, "slot_pss": slot_pss, "x_bytes": x_bytes, "once_s": once_s,
            "steady_after_put": steady, "peaks": dict(sampler.peaks), "slots": results, "wall_s": wall}


# ------------------------------------------------------------------------------------------------ report
def coefficients(r: dict, slots: int) -> dict:
    """What one path measured: multiples of X above the baseline (the panel and its put; the steady state after
    it; the peak), what each training slot added (bytes), and the set-up seconds."""
    X, B = r["x_bytes"], r["baseline"]
    put_peak = max(r["peaks"].get("put", 0), r["peaks"].get("panel", 0))
    steady = r["steady_after_put"]
    models = [m for s in r["slots"] for m in s]
    after_first = [m for s in r["slots"] for m in s[1:]]
    return {"put_x": (put_peak - B) / X, "steady_x": (steady - B) / X,
            "per_slot": max(0.0, (r["peaks"]["train"] - steady) / slots),
            "peak_x": (max(r["peaks"].values()) - B) / X, "peak": max(r["peaks"].values()) - B,
            "setup_mean": float(np.mean([m["setup_s"] for m in models])),
            "setup_after_first": float(np.mean([m["setup_s"] for m in after_first])) if after_first else float("nan"),
            "normalise_s_per_gb": (float(np.mean([m["normalise_s"] for m in models])) if r["mode"] == "before"
                                   else r["once_s"]) / (X / GB),
            "slot_bookkeeping": float(np.mean(r["slot_pss"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=3000)
    ap.add_argument("--days", type=int, default=2500)
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--x-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--only", choices=["before", "after"], help="run one path (default: both, before first)")
    ap.add_argument("--out", help="write the measurements as JSON")
    args = ap.parse_args()

    spec = walk_forward(args.days, args.windows)
    windows = walk_forward_splits(business_days(args.days), spec, 5)
    if len(windows) < args.windows:
        raise SystemExit(f"only {len(windows)} windows fit {args.days} days")
    zoo = load_zoo()
    base = {"label": LABEL, "lookback": 20, "epochs": 1, "batch_size": 256, "max_steps_per_epoch": 2,
            "eval_max_days": 2, "x_dtype": args.x_dtype}
    jobs = [{"spec": zoo[VARIANT].spec, "window": w, "splits": windows[w], "train_config": {**base, "seed": 0}}
            for w in range(args.windows)]
    x_gb = args.stocks * args.days * args.features * 4 / GB
    print(f"scale_bench: {args.stocks:,} stocks x {args.days:,} days x {args.features} features (X {x_gb:.2f} GB "
          f"float32), {args.windows} walk-forward windows (train {spec['train']} days), {len(jobs)} models "
          f"({VARIANT}, 1 short epoch) on {args.slots} slots (Ray actors, 1 CPU each); storage {args.x_dtype}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)

    runs = {}
    for mode in ([args.only] if args.only else ["before", "after"]):
        t0 = time.perf_counter()
        runs[mode] = run_path(mode, args, jobs, windows)
        c = coefficients(runs[mode], args.slots)
        runs[mode]["coefficients"] = c
        print(f"\n[{mode}] {time.perf_counter() - t0:.0f} s; baseline (Ray + {args.slots} idle slots) "
              f"{runs[mode]['baseline'] / GB:.2f} GB, a slot {c['slot_bookkeeping'] / GB:.2f} GB", flush=True)
        for i, slot in enumerate(runs[mode]["slots"]):
            for m in slot:
                print(f"  slot {i} window w{m['window']:02d}: set-up {m['setup_s']:6.2f} s (normalisation "
                      f"{m['normalise_s']:.2f} s)  {m['status']}  valid IC {m['valid_ic']:+.4f}")
        what = "the driver's normalise + fingerprints + put" if mode == "after" else "the raw panel's put"
        print(f"  {what}: {runs[mode]['once_s']:.2f} s; peak above baseline {c['peak'] / GB:.2f} GB = "
              f"{c['peak_x']:.2f} x X (panel + put {c['put_x']:.2f} x X, steady after the put {c['steady_x']:.2f} x X, "
              f"+{c['per_slot'] / GB:.2f} GB per training slot)")

    if len(runs) == 2:
        b, a = runs["before"]["coefficients"], runs["after"]["coefficients"]
        X = runs["after"]["x_bytes"]
        print(f"\nside by side (X = {X / GB:.2f} GB; PSS above the baseline of Ray and {args.slots} idle slots):")
        print(f"  {'':36} {'before':>10} {'after':>10}")
        print(f"  {'peak host memory, GB':36} {b['peak'] / GB:10.2f} {a['peak'] / GB:10.2f}")
        print(f"  {'peak host memory, x X':36} {b['peak_x']:10.2f} {a['peak_x']:10.2f}")
        print(f"  {'each training slot adds, GB':36} {b['per_slot'] / GB:10.2f} {a['per_slot'] / GB:10.2f}")
        print(f"  {'set-up per model, s (mean)':36} {b['setup_mean']:10.2f} {a['setup_mean']:10.2f}")
        print(f"  {'set-up per model after the first, s':36} {b['setup_after_first']:10.2f} "
              f"{a['setup_after_first']:10.2f}")
        print(f"  {'normalisation, s per GB of X':36} {b['normalise_s_per_gb']:10.1f} {a['normalise_s_per_gb']:10.1f}"
              f"   (before: every model; after: once per sweep, on the driver)")
        target = 2 * X + args.slots * a["per_slot"]
        print(f"  target: peak <= 2 x X + {args.slots} x the per-slot bookkeeping ({target / GB:.2f} GB above the "
              f"baseline): {'met' if a['peak'] <= target else 'not met'}, {a['peak'] / GB:.2f} GB (the driver's raw "
              f"features normalised in place and the object store's copy while the put copies: 2 x X, plus the labels, "
              f"mask and normalisation chunks)")
        same = all(m_b["valid_ic"] == m_a["valid_ic"] for s_b, s_a in zip(runs["before"]["slots"], runs["after"]["slots"])
                   for m_b, m_a in zip(s_b, s_a))
        print(f"  every model's valid IC the same in both paths: {'yes' if same else 'NO'}")
        print(f"  target: set-up <= 1 s per model after the first: "
              f"{'met' if a['setup_after_first'] <= 1.0 else 'not met'} ({a['setup_after_first']:.2f} s)")
        extrapolate(args, b, a, runs)
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, default=str))


def extrapolate(args, b: dict, a: dict, runs: dict, workers: int = 8) -> None:
    """Both paths at 158 and 360 features, `workers` slots on a node, from the coefficients measured above.

    A training slot adds the same model, activations and window labels in both paths (after's per-slot bytes:
    they do not grow with the features); before, it also adds its own normalisation, (before - after) per-slot
    bytes, which grow with X. Peak: before, the panel and its raw put plus every worker normalising at once;
    after, the driver's normalise-and-put or the steady state plus the workers, whichever is higher. Set-up:
    before, the normalisation's seconds per GB for every model; after, once on the driver, and per model the
    measured set-up (on a CPU a view of the shared cube: it does not grow with the features either)."""
    X0 = runs["after"]["x_bytes"]
    fixed = a["per_slot"]
    grows = max(0.0, b["per_slot"] - a["per_slot"]) / X0
    base = runs["after"]["baseline"] + (workers - args.slots) * a["slot_bookkeeping"]
    print(f"\nextrapolated to {args.stocks:,} stocks x {args.days:,} days, {workers} workers per node (baseline "
          f"{base / GB:.1f} GB: Ray and {workers} idle slots of {a['slot_bookkeeping'] / GB:.2f} GB; a training slot "
          f"+{fixed / GB:.2f} GB, before also +{grows:.2f} x X):")
    print(f"  {'features':>8} {'X GB':>6} | {'before: set-up/model':>20} {'node peak GB':>12} | "
          f"{'after: normalise once':>21} {'set-up/model':>12} {'node peak GB':>12}")
    for features in (158, 360):
        X = args.stocks * args.days * features * 4
        before_peak = base + X * b["put_x"] + workers * (fixed + grows * X)
        after_peak = base + max(X * a["put_x"], X * a["steady_x"] + workers * fixed)
        print(f"  {features:>8} {X / GB:6.2f} | {b['normalise_s_per_gb'] * X / GB:18.0f} s {before_peak / GB:12.0f} | "
              f"{a['normalise_s_per_gb'] * X / GB:19.0f} s {a['setup_after_first']:10.2f} s {after_peak / GB:12.0f}")


if __name__ == "__main__":
    main()
