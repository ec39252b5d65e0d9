"""Forward+backward time per sample of representative zoo variants vs torch.nn.GRU, on CPU.

Measured side by side in one run (interleaved repeats, median), at 1 torch thread and at the default thread
count, so the ratios hold on a busy machine even when the absolute figures do not. `--profile ID` adds a
torch.profiler table (top ops by self CPU time) of one training step, to show where the time goes.

    .venv/bin/python bench/zoo_bench.py [--batch 512] [--repeats 5] [--profile convgru/m12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from crnn_ray import defaults
from crnn_ray.zoo import build_model, count_params, load_zoo

VARIANTS = ["convgru/m12", "convgru/m25", "convlstm/m7", "cnn1d/m11"]


class TorchGRU(nn.Module):
    """The baseline: torch.nn.GRU over the raw features, last hidden state, one linear readout."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, num_layers=2, batch_first=True)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.readout(self.gru(x)[0][:, -1]).squeeze(-1)


def step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def bench(models: dict[str, nn.Module], batch: int, repeats: int, threads: int) -> dict[str, float]:
    """Median microseconds per sample of one training step (forward + backward + SGD step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, defaults.LOOKBACK, defaults.N_FEATURES)
    y = torch.randn(batch)
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}
    for k, m in models.items():  # warm-up
        m.train()
        step_seconds(m, x, y, opts[k])
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(step_seconds(m, x, y, opts[k]))
    return {k: statistics.median(v) / batch * 1e6 for k, v in times.items()}


def profile(model: nn.Module, batch: int, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.set_num_threads(1)
    x = torch.randn(batch, defaults.LOOKBACK, defaults.N_FEATURES)
    y = torch.randn(batch)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    step_seconds(model, x, y, opt)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step_seconds(model, x, y, opt)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    ap.add_argument("--profile", default=None, help="zoo id to profile (1 thread)")
    args = ap.parse_args()

    zoo = load_zoo()
    models: dict[str, nn.Module] = {}
    for v in args.variants:
        models[v] = build_model(zoo[v].spec, defaults.N_FEATURES, defaults.LOOKBACK)
    torch.manual_seed(0)
    models["torch.nn.GRU(h=16)"] = TorchGRU(defaults.N_FEATURES, 16)
    models["torch.nn.GRU(h=128)"] = TorchGRU(defaults.N_FEATURES, 128)
    default_threads = torch.get_num_threads()
    print(f"batch {args.batch}, lookback {defaults.LOOKBACK}, features {defaults.N_FEATURES}, "
          f"repeats {args.repeats} (median), default threads {default_threads}")
    results = {t: bench(models, args.batch, args.repeats, t) for t in sorted({1, default_threads})}
    base = "torch.nn.GRU(h=16)"
    header = f"{'model':<22} {'params':>8}" + "".join(
        f" {f'us/sample@{t}t':>15} {f'x GRU16@{t}t':>12}" for t in results)
    print(header)
    for name, model in models.items():
        row = f"{name:<22} {count_params(model):>8}"
        for r in results.values():
            row += f" {r[name]:>15.1f} {r[name] / r[base]:>12.2f}"
        print(row)
    if len(results) == 2:
        one, many = results[1], results[default_threads]
        print("speedup from default threads over 1 thread: " +
              ", ".join(f"{k} {one[k] / many[k]:.2f}x" for k in models))
    for name in models:
        print(f"samples/s at 1 thread: {name} {1e6 / results[1][name]:.0f}")
    if args.profile:
        print(f"\nprofile of one training step of {args.profile} (1 thread, batch {args.batch}):")
        profile(build_model(zoo[args.profile].spec, defaults.N_FEATURES, defaults.LOOKBACK), args.batch)


if __name__ == "__main__":
    main()
