"""GPU check: what one GPU gives the sweep, measured in one run, without Ray.

Prints
  1. aggregate training samples/s with 1 / 2 / 4 models trained at once on the one GPU — separate processes
     sharing it, each running `train_one` for a fixed number of steps on a synthetic panel. This is what a
     fractional `gpus_per_trial` (0.5, 0.25) buys: the speed-up of the aggregate over one model.
  2. one convGRU training step (zoo variant) vs a cuDNN nn.GRU of the same hidden width and depth, in
     ms/step and their ratio: the price of the report's conv-in-the-gates cell over the fused kernel.
  3. K = 1 / 4 / 16 / 64 members of one spec (convgru/m01, cnn1d/m02) in ONE process on the one device, two
     ways, each member on its own batch: in turn (K modules and AdamW optimizers, each step runs the K
     forward / backward / optimizer steps one after another) and stacked (crnn_ray.train.stacked: one
     vmapped module, one step for all K, per-member AdamW). Aggregate samples/s of each, stacked vs in turn,
     stacked vs one model, kernel launches per member-step (profiler) and GPU utilisation while timed; with
     --stack-compile also the stacked step under torch.compile(mode="reduce-overhead") (CUDA graphs) at K=16.

Runs where Ray is not installed: a meta-path hook makes any `import ray` fail here and in every worker, so
the data / zoo / metrics / train path is proven Ray-free on the way. `--smoke` is a tiny CPU version (the
test suite runs it so this script cannot rot); `--device cpu --full-size --sections 3` gives section 3's CPU
figures at the real sizes. Usage: bench/gpu_check.sh [--smoke] [--steps N] ...
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
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
STACK_MODELS = "1,4,16,64"
SMOKE_STACK_MODELS = "1,4"
#: the K whose stacked step is also timed compiled (--stack-compile): the issue's K = 16 figure
COMPILE_K = 16
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


class GpuUtilisation:
    """Mean GPU utilisation (%) over a `with` block, sampled every 0.2 s by torch.cuda.utilization (pynvml)
    or else `nvidia-smi`; `mean` stays None on a CPU, without either, or when the block was too short."""

    def __init__(self, device: torch.device):
        self.device, self.mean, self._samples = device, None, []
        self._stop = threading.Event()
        self._read = self._reader() if device.type == "cuda" else None

    def _reader(self):
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.utilization(index)
            return lambda: float(torch.cuda.utilization(index))
        except Exception:  # no pynvml: ask nvidia-smi for this device by its UUID
            smi = shutil.which("nvidia-smi")
            if smi is None:
                return None
            uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
            select = ["-i", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"] if uuid else []
            command = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", *select]
            return lambda: float(subprocess.run(command, capture_output=True, text=True, timeout=5,
                                                check=True).stdout.split()[0])

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._samples.append(self._read())
            except Exception:  # a failed read is a missing sample, not a failed check
                continue

    def __enter__(self):
        if self._read is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._read is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self.mean = float(np.mean(self._samples)) if self._samples else None
        return False


def _members(spec: str, k: int, args: dict) -> list[torch.nn.Module]:
    from crnn_ray.zoo import build_model

    torch.manual_seed(0)
    return [build_model(spec, args["n_features"], args["lookback"]).to(args["device"]).train() for _ in range(k)]


def _timed(step, steps: int, warmup: int, device: torch.device) -> dict:
    """Seconds of `steps` calls of step(s) after `warmup` untimed ones, peak device MiB and GPU utilisation."""
    for s in range(warmup):
        step(s)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuUtilisation(device) as util:
        t0 = time.perf_counter()
        for s in range(steps):
            step(s)
        _sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return {"seconds": seconds, "steps": steps, "peak_mem_mb": peak, "gpu_util": util.mean}


def in_turn_step(spec: str, k: int, args: dict):
    """One step of K models of `spec` trained in turn (K modules, K AdamW optimizers; one CUDA stream): for each
    model zero_grad, forward, MSE, backward, optimizer step, on its own batch (two per model made on the device
    up front and alternated, so the figure is the models' compute and launch cost, not the data path)."""
    device = torch.device(args["device"])
    models = _members(spec, k, args)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    xs = torch.randn(k, 2, args["batch_size"], args["lookback"], args["n_features"], device=device)
    ys = torch.randn(k, 2, args["batch_size"], device=device)

    def step(s: int) -> None:
        for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(xs[i, s % 2]).reshape(-1), ys[i, s % 2])
            loss.backward()
            opt.step()

    return step


def stacked_step(spec: str, k: int, args: dict, compile_mode: str | None = None):
    """One step of K members of `spec` stacked (crnn_ray.train.stacked.StackedModule: one vmapped forward /
    backward for all K, per-member MSE, AdamW and dropout masks), on the same kind of batches as in_turn_step."""
    from crnn_ray.train.stacked import StackBatch, StackedModule

    device = torch.device(args["device"])
    stack = StackedModule(_members(spec, k, args), (args["lookback"], args["n_features"]), [1e-3] * k, [0.0] * k,
                          [None] * k, device, compile_mode)
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(k)]
    xs = torch.randn(2, k, args["batch_size"], args["lookback"], args["n_features"], device=device)
    ys = torch.randn(2, k, args["batch_size"], device=device)

    def step(s: int) -> None:
        stack.step(StackBatch(x=xs[s % 2], y=ys[s % 2], masks=stack.dropout_masks(args["batch_size"], generators)))

    return step


def _interleaved(steps_by_name: dict, n_steps: dict, warmup: dict, repeats: int, device: torch.device) -> dict:
    """_timed figures of each named step function, timed in `repeats` alternating rounds (A, B, A, B, ...) and
    the round with the median seconds kept, so a load spike on a shared machine hits both alike; plus the
    kernel launches of one step of each (CPU profiler: leaf aten ops, crnn_ray.train.stacked.count_aten_ops)."""
    from crnn_ray.train.stacked import count_aten_ops

    for name, step in steps_by_name.items():
        for s in range(warmup[name]):
            step(s)
    rounds: dict = {name: [] for name in steps_by_name}
    for _ in range(repeats):
        for name, step in steps_by_name.items():
            rounds[name].append(_timed(step, n_steps[name], 0, device))
    out = {}
    for name, step in steps_by_name.items():
        timed = sorted(rounds[name], key=lambda r: r["seconds"])[len(rounds[name]) // 2]
        out[name] = {**timed, "launches": count_aten_ops(lambda step=step: step(0), repeats=1)["launches"]}
    return out


def k_members_throughput(spec: str, ks: list[int], args: dict, compile_k: int | None = None) -> list[dict]:
    """For each K: aggregate samples/s of K members of `spec` in turn and stacked, in this process on one
    device, kernel launches per member-step of each, GPU utilisation, peak memory. In turn at large K is slow
    (K lone steps per step), so past K = 4 it runs stack_steps * 4 / K timed steps (at least 3) after
    stack_warmup * 4 / K warm-up ones (at least 2). args["repeats"] > 1: in turn and stacked are timed in that
    many alternating rounds and each one's median round is kept."""
    device = torch.device(args["device"])
    rows: list[dict] = []
    for k in ks:
        steps, warmup = args["stack_steps"], args["stack_warmup"]
        turn_steps, turn_warmup = (max(3, steps * 4 // k), max(2, warmup * 4 // k)) if k > 4 else (steps, warmup)
        timed = _interleaved({"turn": in_turn_step(spec, k, args), "stacked": stacked_step(spec, k, args)},
                             {"turn": turn_steps, "stacked": steps}, {"turn": turn_warmup, "stacked": warmup},
                             args["repeats"], device)
        turn, stacked = timed["turn"], timed["stacked"]
        del timed
        samples = k * args["batch_size"]
        row = {
            "spec": spec, "k": k,
            "in_turn_samples_per_s": samples * turn["steps"] / turn["seconds"],
            "stacked_samples_per_s": samples * stacked["steps"] / stacked["seconds"],
            "in_turn_ms_per_step": turn["seconds"] / turn["steps"] * 1e3,
            "stacked_ms_per_step": stacked["seconds"] / stacked["steps"] * 1e3,
            "in_turn_launches_per_member_step": turn["launches"] / k,
            "stacked_launches_per_member_step": stacked["launches"] / k,
            "in_turn_gpu_util": turn["gpu_util"], "stacked_gpu_util": stacked["gpu_util"],
            "in_turn_peak_mem_mb": turn["peak_mem_mb"], "stacked_peak_mem_mb": stacked["peak_mem_mb"],
            "in_turn_steps": turn["steps"], "stacked_steps": stacked["steps"],
        }
        if compile_k == k:
            try:
                compiled = _timed(stacked_step(spec, k, args, "reduce-overhead"), args["stack_steps"],
                                  args["stack_warmup"] + 3, device)
                row["compiled_samples_per_s"] = samples * compiled["steps"] / compiled["seconds"]
                row["compiled_gpu_util"] = compiled["gpu_util"]
            except Exception as exc:  # report what failed and go on: the eager figures stand
                row["compiled_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        one = rows[0]["in_turn_samples_per_s"] if rows else row["in_turn_samples_per_s"]
        row["stacked_vs_in_turn"] = row["stacked_samples_per_s"] / row["in_turn_samples_per_s"]
        row["stacked_vs_one_model"] = row["stacked_samples_per_s"] / one
        rows.append(row)
        if device.type == "cuda":
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
    parser.add_argument("--stack-models", default=None,
                        help=f"section 3: comma list of K, members in one process (default {STACK_MODELS}; "
                             f"smoke {SMOKE_STACK_MODELS})")
    parser.add_argument("--stack-steps", type=int, default=None, help="section 3: timed steps per K (default 100)")
    parser.add_argument("--stack-compile", action="store_true",
                        help=f"section 3: also time the stacked step under torch.compile(mode='reduce-overhead') "
                             f"at K={COMPILE_K} (CUDA graphs; minutes of compiling)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="section 3: time in turn and stacked in this many alternating rounds, keep each one's "
                             "median (default 1; 3 on a shared machine)")
    parser.add_argument("--skip-concurrent", action="store_true", help="leave out section 1 (the processes)")
    parser.add_argument("--sections", default="1,2,3", help="comma list of the sections to run (default 1,2,3)")
    parser.add_argument("--full-size", action="store_true",
                        help="on CPU, the GPU sizes (batch, steps, panel) instead of the smoke ones: CPU figures")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    opts = parser.parse_args(argv)

    device = opts.device or ("cuda" if torch.cuda.is_available() and not opts.smoke else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --smoke for the CPU version)", file=sys.stderr)
        return 2
    smoke = opts.smoke or (device == "cpu" and not opts.full_size)
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
        "repeats": max(1, opts.repeats),
    }
    stack_ks = [int(k) for k in (opts.stack_models or (SMOKE_STACK_MODELS if smoke else STACK_MODELS)).split(",")]
    sections = {int(s) for s in opts.sections.split(",")}
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

        skip_concurrent = opts.skip_concurrent or 1 not in sections
        print("\n1) models trained at once on one device (separate processes, train_one)"
              + (": skipped" if skip_concurrent else ""))
        if not skip_concurrent:
            print(f"{'models':>6} {'aggregate samples/s':>20} {'per model':>12} {'speed-up':>9} {'peak MB/model':>14}")
        rows = []
        for row in ([] if skip_concurrent else concurrent_throughput(models, args)):
            n = row["n_models"]
            row["speedup"] = row["aggregate_samples_per_s"] / rows[0]["aggregate_samples_per_s"] if rows else 1.0
            rows.append(row)
            print(f"{n:>6} {row['aggregate_samples_per_s']:>20,.0f} {row['per_model_samples_per_s']:>12,.0f} "
                  f"{row['speedup']:>8.2f}x {row['peak_mem_mb']:>14.0f}", flush=True)
        out["concurrent"] = rows

        gru_spec = _variant_spec(opts.gru_variant or (variant if variant.startswith("convgru") else DEFAULT_SPEC))
        print(f"\n2) convGRU training step vs cuDNN nn.GRU (batch {args['batch_size']}, lookback {args['lookback']})"
              + ("" if 2 in sections else ": skipped"))
        if 2 in sections:
            _print_step_comparison(out, gru_spec, args)
        if 3 in sections:
            _print_k_members(out, opts, stack_ks, args)

    ray_imported = "ray" in sys.modules or any(r["ray_imported"] for r in rows)
    out["ray_imported"] = ray_imported
    out["wall_s"] = time.perf_counter() - t_start
    print(f"\nray imported: {'YES (bug)' if ray_imported else 'no'}; total {out['wall_s']:.1f}s")
    print("GPU_CHECK_JSON " + json.dumps(out))
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if ray_imported else 0


def _print_step_comparison(out: dict, gru_spec: str, args: dict) -> None:
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


def _print_k_members(out: dict, opts, stack_ks: list[int], args: dict) -> None:
    print(f"\n3) K members of one spec in ONE process on one device, each on its own batch of "
          f"{args['batch_size']}: in turn (K modules + AdamW, one after another) vs stacked (one vmapped module, "
          f"crnn_ray.train.stacked); {args['stack_steps']} timed steps (in turn at K > 4: stack_steps x 4 / K)"
          + (f", median of {args['repeats']} alternating rounds" if args["repeats"] > 1 else ""))
    print(f"{'spec':<12} {'K':>3} {'in turn /s':>11} {'stacked /s':>11} {'stacked/turn':>12} {'vs 1 model':>10} "
          f"{'launches/member-step':>21} {'GPU util %':>11} {'peak MB':>9}")
    out["k_members"] = []
    compile_k = COMPILE_K if opts.stack_compile else None
    for variant in [v.strip() for v in opts.stack_variants.split(",")]:
        for row in k_members_throughput(_variant_spec(variant), stack_ks, args, compile_k):
            row["variant"] = variant
            out["k_members"].append(row)
            util = "/".join("-" if u is None else f"{u:.0f}"
                            for u in (row["in_turn_gpu_util"], row["stacked_gpu_util"]))
            print(f"{variant:<12} {row['k']:>3} {row['in_turn_samples_per_s']:>11,.0f} "
                  f"{row['stacked_samples_per_s']:>11,.0f} {row['stacked_vs_in_turn']:>11.2f}x "
                  f"{row['stacked_vs_one_model']:>9.2f}x "
                  f"{row['in_turn_launches_per_member_step']:>10.0f} {row['stacked_launches_per_member_step']:>10.0f} "
                  f"{util:>11} {row['in_turn_peak_mem_mb']:>4.0f}/{row['stacked_peak_mem_mb']:<4.0f}", flush=True)
            if "compiled_samples_per_s" in row:
                print(f"{'':<12} {row['k']:>3} compiled (reduce-overhead): {row['compiled_samples_per_s']:,.0f} "
                      f"samples/s, {row['compiled_samples_per_s'] / row['stacked_samples_per_s']:.2f}x eager stacked"
                      + ("" if row["compiled_gpu_util"] is None else f", GPU util {row['compiled_gpu_util']:.0f} %"),
                      flush=True)
            elif "compiled_error" in row:
                print(f"{'':<12} {row['k']:>3} compiled (reduce-overhead) failed: {row['compiled_error']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
