"""Scoring throughput with K = 5 members: Ray Data vs in-process vs a plain single-process torch loop.

All three score the same rows of the same synthetic panel with the same five zoo models, side by side in one
run. Weights are freshly initialised (throughput does not depend on their values), written as real
checkpoints in a real experiment directory so the scorer runs exactly its production code. Figures printed:
rows/s of each path and the ratios; Ray's own start-up (ray.init) is timed apart.

    .venv/bin/python bench/score_bench.py [--symbols 300] [--days 360] [--score-days 160] [--rounds 2]
        [--members convgru/m01 ...] [--skip-plain]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from crnn_ray.data import gather_windows, load_panel, make_splits, save_panel, synthesize
from crnn_ray.defaults import LOOKBACK
from crnn_ray.score import ScoreConfig
from crnn_ray.score.choose import choose_units
from crnn_ray.score.inference import predict_rows
from crnn_ray.score.plan import Scope, plan_window
from crnn_ray.score.predict import resolve_chunk_rows
from crnn_ray.train.checkpoint import write_checkpoint
from crnn_ray.zoo import build_model, load_zoo

MEMBERS = ["convgru/m01", "convgru/m05", "convlstm/m1", "cnn1d/m01", "cnn1d/m05"]


def make_experiment(root: Path, symbols: int, days: int, score_days: int,
                    members: list[str] = MEMBERS) -> tuple[Path, dict]:
    df, meta = synthesize(n_symbols=symbols, n_days=days, seed=3)
    panel_path = root / "exp" / "data" / "panel.parquet"
    save_panel(df, panel_path, meta)
    panel = load_panel(panel_path)
    n = len(panel.dates)
    splits = make_splits(panel.dates, {"train": [str(panel.dates[0]), str(panel.dates[n - score_days - 60])],
                                       "valid": [str(panel.dates[n - score_days - 50]),
                                                 str(panel.dates[n - score_days - 10])],
                                       "test": [str(panel.dates[n - score_days]), str(panel.dates[-1])]},
                         horizon=5)
    zoo = load_zoo()
    rows = []
    for i, vid in enumerate(members):
        torch.manual_seed(i)
        model = build_model(zoo[vid].spec, len(panel.features), LOOKBACK)
        state = model.state_dict()
        ck = root / "exp" / "ckpt" / f"t{i:03d}"
        write_checkpoint(ck, best_state=state, last_state=state, train_state={"epoch": 1},
                         meta={"spec": zoo[vid].spec, "variant_id": vid, "features": panel.features,
                               "n_features": len(panel.features), "lookback": LOOKBACK, "label": "y5",
                               "horizon": 5, "normalisation": {"method": "robust_z", "clip": 5.0},
                               "rank_label": True, "splits": splits.dates(panel.dates),
                               "panel": str(panel_path.resolve()), "seed": 0, "epoch": 1, "best_epoch": 1,
                               "valid_metrics": {}, "params": 0, "status": "ok"})
        rows.append({"trial_id": f"t{i:03d}", "variant_id": vid, "spec": zoo[vid].spec, "seed": 0,
                     "status": "ok", "checkpoint": str(ck),  # every member is scored: the ranking figures are placeholders
                     **{k: 0.05 - 0.001 * i for k in ("valid_ic", "valid_rank_ic", "select_ic", "select_rank_ic")}})
    pd.DataFrame(rows).to_parquet(root / "exp" / "trials.parquet")
    return root / "exp", splits.dates(panel.dates)


class CpuUse:
    """CPU seconds (user + system) spent during a `with` block by this process (the driver: Ray Data's executor
    and the batches' scatter) and by every process under it, split into the predictor actors and Ray's own
    (raylet, GCS, idle workers). Sampled every 0.2 s per process, so an actor that exits when its job ends still
    counts up to its last sample."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.start: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()

    def _sample(self, first: bool = False) -> None:
        import psutil

        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                used = sum(proc.cpu_times()[:2])
                kind = "driver" if proc.pid == self.me.pid else \
                    "actors" if "MapWorker" in " ".join(proc.cmdline()) else "ray"
            except psutil.Error:
                continue
            if first:
                self.start[proc.pid] = used
            kind = "actors" if self.last.get(proc.pid, ("",))[0] == "actors" else kind  # once an actor, always
            self.last[proc.pid] = (kind, used)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self):
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.used = {"driver": 0.0, "actors": 0.0, "ray": 0.0}
        for pid, (kind, used) in self.last.items():
            self.used[kind] += used - self.start.get(pid, 0.0)


def plain_loop(plan, batch: int) -> float:
    """The baseline: one process, numpy windows, each model over the rows in batches (the predictor's chunk
    size, so the comparison shows the machinery's cost, not a batch-size effect); returns seconds."""
    models = []
    for p in plan.payloads:
        m = build_model(p["spec"], len(p["feature_index"]), p["lookback"])
        m.load_state_dict(p["state_dict"])
        models.append(m.eval())
    X = next(iter(plan.inputs.values()))
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, plan.n_rows, batch):
            w = torch.from_numpy(gather_windows(X, plan.days[lo:lo + batch], plan.stocks[lo:lo + batch], LOOKBACK))
            for m in models:
                m(w)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=300)
    ap.add_argument("--days", type=int, default=360)
    ap.add_argument("--score-days", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each path's best is reported")
    ap.add_argument("--members", nargs="+", default=MEMBERS, help="zoo variants to score (default: the five)")
    ap.add_argument("--skip-plain", action="store_true", help="leave out the plain loop (large jobs: time)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="score_bench_") as tmp:
        root = Path(tmp)
        exp, dates = make_experiment(root, args.symbols, args.days, args.score_days, args.members)
        cfg = ScoreConfig(experiment=exp, out=root / "out", top_k=len(args.members))
        plan = plan_window(cfg, Scope(None), *choose_units(cfg, None))
        n = plan.n_rows
        print(f"bench: {len(plan.members)} members ({', '.join(args.members)}), {n:,} rows = "
              f"{plan.n_dates} dates x ~{n // plan.n_dates} stocks, lookback {LOOKBACK}")

        import ray

        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        # interleaved rounds, best of each: a shared machine's load drifts between measurements
        base_s, t_in, t_ray, t_ray2 = math.inf, None, None, None
        try:
            for r in range(args.rounds):
                if not args.skip_plain:
                    base_s = min(base_s, plain_loop(plan, resolve_chunk_rows(cfg.chunk_rows, "cpu")))
                t = predict_rows(plan, "in_process", cfg)[1]
                t_in = t if t_in is None or t["seconds"] < t_in["seconds"] else t_in
                with CpuUse() as use:
                    t = predict_rows(plan, "ray", cfg)[1]
                t["cpu"] = use.used
                if r == 0:
                    t_ray = t  # the first Ray Data job pays the cold start of its actors
                else:
                    t_ray2 = t if t_ray2 is None or t["seconds"] < t_ray2["seconds"] else t_ray2
        finally:
            ray.shutdown()
        t_ray2 = t_ray2 or t_ray
        base_rps = n / base_s if math.isfinite(base_s) else math.nan
        print(f"torch threads {torch.get_num_threads()} (plain loop, in-process); machine load "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'path':<34}{'seconds':>9}{'rows/s':>12}{'vs plain loop':>15}")
        print(f"{'plain torch loop (1 process)':<34}{base_s:>9.2f}{base_rps:>12,.0f}{1.0:>15.2f}")
        print(f"{'in-process EnsemblePredictor':<34}{t_in['seconds']:>9.2f}{t_in['rows_per_s']:>12,.0f}"
              f"{t_in['rows_per_s'] / base_rps:>15.2f}")
        for label, t in (("Ray Data (1st job)", t_ray), ("Ray Data (later jobs, best)", t_ray2)):
            print(f"{label:<34}{t['seconds']:>9.2f}{t['rows_per_s']:>12,.0f}{t['rows_per_s'] / base_rps:>15.2f}")
        ratio = t_ray2["rows_per_s"] / t_in["rows_per_s"]
        print(f"Ray Data: {t_ray['actors']} actors x {t_ray['num_cpus']} CPU on {t_ray['cluster_cpus']:.0f} CPUs; "
              f"ray.init {init_s:.1f}s not included; Ray/in-process ratio {ratio:.2f}")
        print("in-process rows/s per member (forward passes alone, chunks of "
              f"{t_in['chunk_rows']} rows): " + ", ".join(f"{k} {v:,.0f}" for k, v in t_in["member_rows_per_s"].items()))
        # the forward-pass bound: every usable CPU running member forwards, one thread each, at the in-process
        # single-thread rates (seconds per row summed over the members)
        cpus = len(os.sched_getaffinity(0))
        bound = cpus / sum(1.0 / r for r in t_in["member_rows_per_s"].values())
        print(f"forward-pass bound ({cpus} CPUs x the members' single-thread rates): {bound:,.0f} rows/s; "
              f"in-process reaches {t_in['rows_per_s'] / bound:.2f} of it, Ray Data {t_ray2['rows_per_s'] / bound:.2f} "
              f"(1st job {t_ray['rows_per_s'] / bound:.2f})")
        for label, t in (("1st job", t_ray), ("later job", t_ray2)):
            used, wall = t["cpu"], t["seconds"]
            print(f"Ray Data {label}: CPU-seconds per wall second on the {cpus} CPUs: actors "
                  f"{used['actors'] / wall:.2f}, driver {used['driver'] / wall:.2f}, Ray's own processes "
                  f"{used['ray'] / wall:.2f} (member forwards alone {sum(t['member_rows_per_s'][k] ** -1 for k in t['member_rows_per_s']) * n / wall:.2f})")
        print(f"note: the predictor's time includes building the {len(args.members)} models and moving the features "
              "(once per job/actor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
