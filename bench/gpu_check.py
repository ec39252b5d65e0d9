"""GPU check: what one GPU gives the sweep, measured in one run, without Ray.

Prints
  1. aggregate training samples/s with 1 / 2 / 4 models trained at once on the one GPU — separate processes
     sharing it, each running `train_one` for a fixed number of steps on a synthetic panel. This is what a
     fractional `gpus_per_trial` (0.5, 0.25) buys: the speed-up of the aggregate over one model.
  2. one convGRU training step (zoo variant) vs a cuDNN nn.GRU of the same hidden width and depth, in
     ms/step and their ratio: the price of the report's conv-in-the-gates cell over the fused kernel.
  3. K = 1 / 4 / 16 models of one spec (convgru/m01, cnn1d/m02) trained at once in ONE process on the one
     device: K independent modules and AdamW optimizers, one CUDA stream, each step runs the K forward /
     backward / optimizer steps in turn, each model on its own batch. Aggregate samples/s vs one model and
     the ratio: whether stacking several members on a GPU in one worker buys throughput (a ratio near 1
     means the step is launch-bound on the host and stacking gains nothing; near K, that the GPU was idle).

Runs where Ray is not installed: a meta-path hook makes any `import ray` fail here and in every worker, so
the data / zoo / metrics / train path is proven Ray-free on the way. `--smoke` is a tiny CPU version (the
test suite runs it so this script cannot rot). Usage: bench/gpu_check.sh [--smoke] [--steps N] ...
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


class _NoRay(importlib.abc.MetaPathFinder):
    """Make `import ray` fail as if Ray were not installed (the GPU box of this check has none)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "ray" or fullname.startswith("ray."):
            raise ModuleNotFoundError(f"gpu_check: the training path imported {fullname!r}; it must run without Ray",
                                      name=fullname)
        return None


sys.meta_path.insert(0, _NoRay())

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_SPEC = "convgru/m06"
#: section 3's specs and model counts (the figure that decides whether members are stacked on a GPU)
STACK_VARIANTS = "convgru/m01,cnn1d/m02"
STACK_MODELS = "1,4,16"
#: the smoke version's model: a one-layer convGRU small enough for a loaded CI core
SMOKE_SPEC = "convgru(conv_relu)x1[b1k3]{w=4}"


def _variant_spec(variant: str) -> str:
    """A zoo id (convgru/m06) or an inline spec -> spec string."""
    from crnn_ray.zoo import resolve_variants

    return resolve_variants([variant])[0][1]


def _make_panel(directory: Path, symbols: int, days: int, seed: int) -> Path:
    from crnn_ray.data import save_panel, synthesize

    df, meta = synthesize(n_symbols=symbols, n_days=days, seed=seed)
    path = directory / "panel.parquet"
    save_panel(df, path, meta)
    return path


def _worker(rank: int, args: dict, rounds: list[int], barriers: dict, everyone, results) -> None:
    """One model slot on the shared device. Warm up once; then for each round n (1, 2, 4 models at once) the
    first n workers start together, train `steps` steps and report, while the rest wait idle."""
    try:
        from crnn_ray.data import load_panel, make_splits
        from crnn_ray.train import TrainConfig, apply_cpu_quota, train_one

        # on a GPU the host threads only feed it; on CPU (smoke) one thread each keeps a loaded box from thrashing
        apply_cpu_quota(1 if args["device"] == "cpu" else max(1, (os.cpu_count() or 1) // max(rounds)))
        panel = load_panel(args["panel"])
        splits = make_splits(panel.dates, {"fractions": [0.8, 0.1, 0.1]}, panel.horizon("y5"))
        common = dict(batch_size=args["batch_size"], lookback=args["lookback"], seed=rank, epochs=1)
        with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(io.StringIO()):
            train_one(args["spec"], panel, splits, TrainConfig(**common, max_steps_per_epoch=3),
                      device=args["device"], workdir=Path(work) / "warmup")  # kernels, allocator, cuDNN plans
            everyone.wait(timeout=900)
            for n in rounds:
                if rank < n:
                    if args["device"] == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    barriers[n].wait(timeout=900)
                    result = train_one(args["spec"], panel, splits,
                                       TrainConfig(**common, max_steps_per_epoch=args["steps"]),
                                       device=args["device"], workdir=Path(work) / f"round{n}")
                    results.put({
                        "round": n,
                        "rank": rank,
                        "status": result.status,
                        "samples_per_s": result.history[-1]["samples_per_s"],
                        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if args["device"] == "cuda" else 0.0,
                        "ray_imported": "ray" in sys.modules,
                    })
                everyone.wait(timeout=900)  # the next round starts when this one is over everywhere
    except BaseException as exc:  # report, never leave the others (or the parent) hanging
        for barrier in (everyone, *barriers.values()):
            with contextlib.suppress(Exception):
                barrier.abort()
        results.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"})


def concurrent_throughput(rounds: list[int], args: dict):
    """Yield, per round n, the aggregate samples/s of n processes training at once on one device."""
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    n_workers = max(rounds)
    barriers = {n: ctx.Barrier(n) for n in set(rounds)}
    everyone, results = ctx.Barrier(n_workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args, rounds, barriers, everyone, results), daemon=True)
             for r in range(n_workers)]
    for p in procs:
        p.start()
    try:
        for n in rounds:
            reports = []
            while len(reports) < n:
                try:
                    report = results.get(timeout=900)
                except queue.Empty:
                    raise RuntimeError(f"{n}-model round: no report within 900 s") from None
                if "error" in report:
                    raise RuntimeError(f"{n}-model round, worker {report['rank']}: {report['error']}")
                reports.append(report)
            rates = [r["samples_per_s"] for r in reports]
            yield {
                "n_models": n,
                "aggregate_samples_per_s": float(sum(rates)),
                "per_model_samples_per_s": float(np.mean(rates)),
                "peak_mem_mb": float(max(r["peak_mem_mb"] for r in reports)),
                "ray_imported": any(r["ray_imported"] for r in reports),
                "statuses": sorted({r["status"] for r in reports}),
            }
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()


def recurrent_shape(model: torch.nn.Module) -> tuple[int, int, int, str]:
    """(hidden channels, layers, state size, state shapes) of a zoo convGRU, from its cells' `hidden` and
    `positions`: a b1 layer's state is a [channels, positions] map, so two GRU references are fair —
    hidden = the spec's width (channels) and hidden = the whole state (channels x positions)."""
    cells = [m for m in model.modules() if hasattr(m, "hidden") and hasattr(m, "positions")]
    if not cells:
        raise SystemExit(f"gpu_check: {type(model).__name__} has no recurrent cells (give a convgru variant)")
    return (max(c.hidden for c in cells), len(cells), max(c.hidden * c.positions for c in cells),
            " / ".join(f"{c.hidden}x{c.positions}" for c in cells))


def _time_steps(model: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor, steps: int, warmup: int) -> float:
    """Mean ms of one training step (forward, MSE, backward, AdamW) after `warmup` untimed steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(batch).reshape(-1), target)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(batch.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(batch.device)
    return (time.perf_counter() - t0) / steps * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CudnnGRU(torch.nn.Module):
    """The reference: torch's fused (cuDNN on GPU) multi-layer GRU + one linear readout of the last step."""

    def __init__(self, n_features: int, hidden: int, layers: int):
        super().__init__()
        self.gru = torch.nn.GRU(n_features, hidden, num_layers=layers, batch_first=True)
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.readout(out[:, -1]).squeeze(-1)


def step_comparison(spec: str, args: dict) -> dict:
    from crnn_ray.zoo import build_model, count_params

    device = torch.device(args["device"])
    n_features, lookback, batch_size = args["n_features"], args["lookback"], args["batch_size"]
    torch.manual_seed(0)
    conv = build_model(spec, n_features, lookback).to(device)
    hidden, layers, state_size, states = recurrent_shape(conv)
    gru = CudnnGRU(n_features, hidden, layers).to(device)
    gru_state = CudnnGRU(n_features, state_size, layers).to(device)
    x = torch.randn(batch_size, lookback, n_features, device=device)
    y = torch.randn(batch_size, device=device)
    conv_ms = _time_steps(conv, x, y, args["gru_steps"], args["gru_warmup"])
    gru_ms = _time_steps(gru, x, y, args["gru_steps"], args["gru_warmup"])
    gru_state_ms = _time_steps(gru_state, x, y, args["gru_steps"], args["gru_warmup"])
    return {
        "spec": spec, "hidden": hidden, "layers": layers, "state_size": state_size, "convgru_states": states,
        "convgru_ms": conv_ms, "gru_ms": gru_ms, "ratio": conv_ms / gru_ms,
        "gru_state_ms": gru_state_ms, "ratio_state": conv_ms / gru_state_ms,
        "convgru_params": count_params(conv), "gru_params": count_params(gru),
        "gru_state_params": count_params(gru_state),
        "cudnn": bool(device.type == "cuda" and torch.backends.cudnn.is_available()),
    }


def _stacked_run(spec: str, k: int, args: dict) -> tuple[float, float]:
    """(seconds for the timed steps, peak device MiB) of K models of `spec` trained in turn in this process."""
    from crnn_ray.zoo import build_model

    device = torch.device(args["device"])
    n_features, lookback, batch_size = args["n_features"], args["lookback"], args["batch_size"]
    torch.manual_seed(0)
    models = [build_model(spec, n_features, lookback).to(device).train() for _ in range(k)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    xs = torch.randn(k, 2, batch_size, lookback, n_features, device=device)
    ys = torch.randn(k, 2, batch_size, device=device)

    def step(s: int) -> None:
        for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(xs[i, s % 2]).reshape(-1), ys[i, s % 2])
            loss.backward()
            opt.step()

    for s in range(args["stack_warmup"]):
        step(s)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for s in range(args["stack_steps"]):
        step(s)
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return seconds, peak


def stacked_throughput(spec: str, ks: list[int], args: dict) -> list[dict]:
    """K models of `spec` trained at once in this process on one device (one stream), for each K in `ks`.

    Each model has its own module, AdamW optimizer and batches (two per model, alternated, made on the
    device up front, so the figure is the models' compute and launch cost, not the data path). One step =
    for each of the K models in turn: zero_grad, forward, MSE, backward, optimizer step; the device is
    synchronised only around the timed steps, so the host may run ahead of the GPU as a training loop does.
    """
    rows: list[dict] = []
    for k in ks:
        seconds, peak = _stacked_run(spec, k, args)
        aggregate = k * args["batch_size"] * args["stack_steps"] / seconds
        rows.append({
            "spec": spec, "k": k, "aggregate_samples_per_s": aggregate, "per_model_samples_per_s": aggregate / k,
            "ms_per_step": seconds / args["stack_steps"] * 1e3,
            "ratio": aggregate / rows[0]["aggregate_samples_per_s"] if rows else 1.0,
            "peak_mem_mb": peak,
        })
        if args["device"] == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny CPU version (seconds; what the tests run)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--variant", default=None,
                        help=f"zoo id or spec trained by the workers (default {DEFAULT_SPEC})")
    parser.add_argument("--gru-variant", default=None, help="convGRU zoo id or spec for the step comparison")
    parser.add_argument("--models", default=None, help="comma list of concurrent model counts (default 1,2,4)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default 300)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--symbols", type=int, default=None)
    parser.add_argument("--days", type=int, default=None)
    parser.add_argument("--stack-variants", default=STACK_VARIANTS,
                        help=f"section 3: comma list of zoo ids / specs (default {STACK_VARIANTS})")
    parser.add_argument("--stack-models", default=STACK_MODELS,
                        help=f"section 3: comma list of K, models trained at once in one process (default {STACK_MODELS})")
    parser.add_argument("--stack-steps", type=int, default=None, help="section 3: timed steps per K (default 100)")
    parser.add_argument("--skip-concurrent", action="store_true", help="leave out section 1 (the processes)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    opts = parser.parse_args(argv)

    device = opts.device or ("cuda" if torch.cuda.is_available() and not opts.smoke else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --smoke for the CPU version)", file=sys.stderr)
        return 2
    smoke = opts.smoke or device == "cpu"
    variant = opts.variant or (SMOKE_SPEC if smoke else DEFAULT_SPEC)
    models = [int(m) for m in (opts.models or ("1,2" if smoke else "1,2,4")).split(",")]
    args = {
        "device": device,
        "steps": opts.steps or (4 if smoke else 300),
        "batch_size": min(opts.batch_size, 64) if smoke else opts.batch_size,
        "lookback": 20,
        "gru_steps": 3 if smoke else 100,
        "gru_warmup": 1 if smoke else 10,
        "stack_steps": opts.stack_steps or (3 if smoke else 100),
        "stack_warmup": 1 if smoke else 10,
    }
    stack_ks = [int(k) for k in opts.stack_models.split(",")]
    symbols = opts.symbols or (20 if smoke else 500)
    days = opts.days or (60 if smoke else 400)

    print(f"gpu_check: torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
          + (", SMOKE (tiny CPU version)" if smoke else ""), flush=True)
    if device == "cpu":
        from crnn_ray.train import apply_cpu_quota

        apply_cpu_quota(1)
    t_start = time.perf_counter()
    out: dict = {"device": device, "smoke": smoke, "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        panel_path = _make_panel(Path(tmp), symbols, days, seed=0)
        from crnn_ray.data import load_panel

        panel = load_panel(panel_path)
        args.update(panel=str(panel_path), spec=_variant_spec(variant), n_features=panel.X.shape[2])
        print(f"panel: {symbols} symbols x {days} days, {panel.X.shape[2]} features; model {variant} "
              f"= {args['spec']}; {args['steps']} steps x batch {args['batch_size']} per model", flush=True)

        print("\n1) models trained at once on one device (separate processes, train_one)"
              + (": skipped (--skip-concurrent)" if opts.skip_concurrent else ""))
        if not opts.skip_concurrent:
            print(f"{'models':>6} {'aggregate samples/s':>20} {'per model':>12} {'speed-up':>9} {'peak MB/model':>14}")
        rows = []
        for row in ([] if opts.skip_concurrent else concurrent_throughput(models, args)):
            n = row["n_models"]
            row["speedup"] = row["aggregate_samples_per_s"] / rows[0]["aggregate_samples_per_s"] if rows else 1.0
            rows.append(row)
            print(f"{n:>6} {row['aggregate_samples_per_s']:>20,.0f} {row['per_model_samples_per_s']:>12,.0f} "
                  f"{row['speedup']:>8.2f}x {row['peak_mem_mb']:>14.0f}", flush=True)
        out["concurrent"] = rows

        gru_spec = _variant_spec(opts.gru_variant or (variant if variant.startswith("convgru") else DEFAULT_SPEC))
        print(f"\n2) convGRU training step vs cuDNN nn.GRU (batch {args['batch_size']}, lookback {args['lookback']})")
        cmp = step_comparison(gru_spec, args)
        out["step_comparison"] = cmp
        print(f"convGRU {gru_spec}: {cmp['convgru_ms']:.2f} ms/step ({cmp['convgru_params']:,} params, "
              f"state channels x positions per layer {cmp['convgru_states']})")
        fused = " (cuDNN)" if cmp["cudnn"] else ""
        print(f"nn.GRU{fused} hidden {cmp['hidden']} (same width) x {cmp['layers']} layers: "
              f"{cmp['gru_ms']:.2f} ms/step "
              f"({cmp['gru_params']:,} params)  ratio convGRU / GRU {cmp['ratio']:.1f}x")
        print(f"nn.GRU{fused} hidden {cmp['state_size']} (same state size) x {cmp['layers']} layers: "
              f"{cmp['gru_state_ms']:.2f} ms/step ({cmp['gru_state_params']:,} params)  "
              f"ratio convGRU / GRU {cmp['ratio_state']:.1f}x")

        print(f"\n3) K models of one spec at once in ONE process on one device (K modules + optimizers, one "
              f"stream, each step the K models in turn, each on its own batch of {args['batch_size']}; "
              f"{args['stack_steps']} timed steps)")
        print(f"{'spec':<34} {'K':>3} {'aggregate samples/s':>20} {'per model':>10} {'ms/step':>8} "
              f"{'vs 1 model':>10} {'peak MB':>8}")
        out["stacked"] = []
        for variant_k in opts.stack_variants.split(","):
            spec_k = _variant_spec(variant_k.strip())
            for row in stacked_throughput(spec_k, stack_ks, args):
                row["variant"] = variant_k.strip()
                out["stacked"].append(row)
                print(f"{variant_k.strip():<34} {row['k']:>3} {row['aggregate_samples_per_s']:>20,.0f} "
                      f"{row['per_model_samples_per_s']:>10,.0f} {row['ms_per_step']:>8.1f} {row['ratio']:>9.2f}x "
                      f"{row['peak_mem_mb']:>8.0f}", flush=True)

    ray_imported = "ray" in sys.modules or any(r["ray_imported"] for r in rows)
    out["ray_imported"] = ray_imported
    out["wall_s"] = time.perf_counter() - t_start
    print(f"\nray imported: {'YES (bug)' if ray_imported else 'no'}; total {out['wall_s']:.1f}s")
    print("GPU_CHECK_JSON " + json.dumps(out))
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if ray_imported else 0


if __name__ == "__main__":
    sys.exit(main())
