"""Validation's share of model-epoch seconds: a sweep config's models trained with `train_one` directly (no Ray).

Why: issue 21 measured validation at 53 % of all model-epoch seconds on the 3-seed quickstart (220 of 418 s):
the select part was scored every epoch, at eval_batch_size 4096 (1.5-1.9x slower per row on a CPU than 512).
This trains the config's variants x seeds one after another in one process, torch on one thread (the sweep's
1-CPU quota), and prints per model and in total the seconds of training (`train_s`), validation (`valid_s`)
and whole epochs (`epoch_s`), as train_one reports them, with each model's best-epoch valid and select IC.

It reads the YAML itself and uses only APIs older checkouts have too, so the same script measures "before" on
an older tree (PYTHONPATH=/path/to/old/checkout) and "after" on this one, on the same data (`--panel FILE`:
written by the first run, read by the next); `--out` writes the figures as JSON and `--compare OLD.json` prints
the select_* differences per model against such a file.

    PYTHONPATH=/tmp/old .venv/bin/python bench/validation_share_bench.py --panel /tmp/q.parquet --out before.json
    .venv/bin/python bench/validation_share_bench.py --panel /tmp/q.parquet --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after PYTHONPATH: an older checkout there measures "before"

from crnn_ray.data import load_panel, make_splits, save_panel, synthesize  # noqa: E402
from crnn_ray.train import TrainConfig, train_one  # noqa: E402
from crnn_ray.zoo import load_zoo  # noqa: E402

#: the sweep's default share of the valid part that becomes the select part (crnn_ray.sweep.config)
SELECT_SHARE = 0.5
#: sweep YAML synth keys -> synthesize() arguments
SYNTH_ARGS = {"symbols": "n_symbols", "days": "n_days", "seed": "seed", "horizon": "horizon"}
METRICS = ("valid_ic", "select_ic", "select_rank_ic", "select_icir", "select_pnl_long_short", "select_pnl_long")


def train_kwargs(raw: dict, data: dict) -> dict:
    """TrainConfig keyword arguments from a sweep config's `training:` and `data:` sections (scalars only)."""
    out = {"label": data.get("label", "y5"), "lookback": int(data.get("lookback", 20))}
    for key, value in (raw or {}).items():
        if key == "early_stopping":
            out.update({"early_stopping_metric": value["metric"]} if "metric" in value else {})
            out.update({"patience": value["patience"]} if "patience" in value else {})
        else:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "sweeps" / "quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", help="a subset of the config's variants (default: all)")
    ap.add_argument("--panel", help="read this panel file (written from the config's synth when absent): "
                                    "before and after runs on different checkouts then train on the same data")
    ap.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                    help="training settings over the config's (YAML values), e.g. x_dtype=float16")
    ap.add_argument("--out", help="write the figures as JSON")
    ap.add_argument("--compare", help="a JSON of an earlier run: print its select_* differences per model")
    args = ap.parse_args()

    cfg = yaml.safe_load(Path(args.config).read_text())
    data = cfg["data"]
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="valid_share_"))
    if args.panel and Path(args.panel).exists():
        panel = load_panel(args.panel)
    else:  # the config's synthetic market, kept at --panel when given (so a later run reads the same data)
        df, meta = synthesize(**{SYNTH_ARGS[k]: v for k, v in data["synth"].items() if k in SYNTH_ARGS})
        save_panel(df, args.panel or tmp / "panel.parquet", meta)
        panel = load_panel(args.panel or tmp / "panel.parquet")
    spec = dict(data.get("splits") or {"fractions": [0.6, 0.2, 0.2]})
    spec.setdefault("select", SELECT_SHARE)
    splits = make_splits(panel.dates, spec, panel.horizon(data["label"]))
    zoo = load_zoo()
    variants = args.variants or cfg["variants"]
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.train)}
    print(f"{args.config}: {len(variants)} variant(s) x seeds {args.seeds}, panel {panel.X.shape}, torch 1 thread, "
          f"crnn_ray from {Path(sys.modules['crnn_ray'].__file__).parent.parent}"
          f"{'; ' + ', '.join(args.train) if args.train else ''}", flush=True)

    rows = []
    for seed in args.seeds:
        for variant in variants:
            kwargs = {**train_kwargs(cfg.get("training"), data), **overrides, "seed": seed}
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # train_one's epoch lines
                result = train_one(zoo[variant].spec, panel, splits, TrainConfig(**kwargs),
                                   workdir=tmp / f"{variant.replace('/', '_')}_{seed}")
            wall = time.perf_counter() - t0
            h = result.history
            row = {"variant": variant, "seed": seed, "epochs": len(h), "best_epoch": result.best_epoch,
                   "epoch_s": sum(m["epoch_s"] for m in h), "train_s": sum(m["train_s"] for m in h),
                   "valid_s": sum(m["valid_s"] for m in h), "wall_s": wall,
                   **{k: result.best_metrics.get(k, math.nan) for k in METRICS}}
            rows.append(row)
            print(f"  {variant:<14} seed {seed}: {row['epochs']} epochs {row['epoch_s']:6.1f} s (train "
                  f"{row['train_s']:5.1f} s, valid {row['valid_s']:5.1f} s = {100 * row['valid_s'] / row['epoch_s']:4.1f} %)"
                  f"  best epoch {row['best_epoch']}  valid IC {row['valid_ic']:+.4f}  select IC {row['select_ic']:+.4f}",
                  flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("epoch_s", "train_s", "valid_s", "wall_s")}
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in ("valid_ic", "select_ic")}
    print(f"total over {len(rows)} models: epochs {total['epoch_s']:.1f} s, train {total['train_s']:.1f} s, "
          f"valid {total['valid_s']:.1f} s -> validation {100 * total['valid_s'] / total['epoch_s']:.1f} % of "
          f"model-epoch seconds (wall {total['wall_s']:.1f} s); mean best-epoch valid IC {mean['valid_ic']:+.4f}, "
          f"select IC {mean['select_ic']:+.4f}")
    if args.compare:
        old = {(r["variant"], r["seed"]): r for r in json.loads(Path(args.compare).read_text())["rows"]}
        pairs = [(r[k], old[(r["variant"], r["seed"])][k]) for r in rows if (r["variant"], r["seed"]) in old
                 for k in METRICS if k.startswith("select")]
        diffs = [0.0 if math.isnan(a) and math.isnan(b) else abs(a - b) for a, b in pairs]  # NaN vs a number: NaN
        same_epoch = all(r["best_epoch"] == old[(r["variant"], r["seed"])]["best_epoch"] for r in rows
                         if (r["variant"], r["seed"]) in old)
        print(f"vs {args.compare}: {len(diffs)} select_* values of {len(diffs) // 5} models, max |difference| "
              f"{max(diffs, key=lambda d: math.inf if math.isnan(d) else d, default=math.nan):.2e}; best epochs {'all the same' if same_epoch else 'DIFFER'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "train": args.train, "rows": rows,
                                              "total": total, "mean": mean}, indent=1))


if __name__ == "__main__":
    main()
