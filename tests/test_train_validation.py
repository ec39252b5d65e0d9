"""Validation at forward speed: the select part is scored once, with the weights the valid part chose, and gives
exactly the select_* metrics of those weights; the valid part every validated epoch; the eval batch per device;
predictions under torch.inference_mode."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import saved_panel
import crnn_ray.train.loop as loop
from crnn_ray.data import gather_windows, make_splits, normalize_features, sample_index
from crnn_ray.io import CliError
from crnn_ray.metrics import evaluate
from crnn_ray.schema import METRICS
from crnn_ray.train import TrainConfig, train_one
from crnn_ray.train.config import EVAL_BATCH
from crnn_ray.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = "cnn1d(c3s1+batchnorm+relu+dropout+avgpool)"
SELECT = [m for m in METRICS.values() if m.part == "select"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    panel = saved_panel(tmp_path_factory.mktemp("valid"), 40, 160, 4)
    return panel, make_splits(panel.dates, {"fractions": [0.6, 0.2, 0.2], "select": 0.5}, panel.horizon("y5"))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=4, batch_size=64, max_steps_per_epoch=5, lr=3e-3, patience=5, seed=1,
                                 label="y5", lookback=10), **kw})


def _reference_select(panel, splits, cfg: TrainConfig, weights: dict) -> dict:
    """select_* of `weights` computed from scratch: the whole panel normalised, one forward pass per 100 rows."""
    model = build_model(SPEC, len(panel.features), cfg.lookback)
    model.load_state_dict(weights)
    model.eval()
    X = torch.from_numpy(normalize_features(panel.X, panel.mask, clip=cfg.clip))
    lo, hi = splits.select
    rows = sample_index(panel.mask, panel.label(cfg.label), cfg.lookback, lo, hi)
    signal = np.full((hi - lo + 1, panel.n_stocks), np.nan, dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(rows), 100):
            r = rows[i:i + 100]
            signal[r[:, 0] - lo, r[:, 1]] = model(gather_windows(X, r[:, 0], r[:, 1], cfg.lookback)).reshape(-1).numpy()
    summary = evaluate(signal, panel.label(cfg.label)[lo:hi + 1], horizon=panel.horizon(cfg.label),
                       dates=panel.dates[lo:hi + 1], returns=panel.returns()[lo:hi + 1]).summary
    return {m.name: summary[m.summary_key] for m in SELECT}


def _force_best_epoch(monkeypatch, best: int) -> None:
    """Early stopping that finds its best at epoch `best` and nothing better after (whatever the model does)."""
    def update(self, metrics, epoch, model):
        if epoch == best:
            self.best_value, self.best_epoch, self.bad_epochs = 1.0, epoch, 0
            self.best_state = loop._cpu_copy(model.state_dict())
        else:
            self.bad_epochs += 1

    monkeypatch.setattr(loop.EarlyStopping, "update", update)


def _count_predictions(monkeypatch) -> list:
    """(part's first window day, rows) of every _predict call, and whether it ran under inference mode."""
    calls = []
    real = loop._predict

    def spy(forward, model, X_dev, rows, day_lo, n_days, lookback, batch_size):
        calls.append((day_lo, len(rows), batch_size))
        return real(forward, model, X_dev, rows, day_lo, n_days, lookback, batch_size)

    monkeypatch.setattr(loop, "_predict", spy)
    return calls


@pytest.mark.parametrize("best", [2, 4])  # an earlier epoch (its weights swapped in and out) and the last
def test_select_is_scored_once_with_the_best_weights(small, tmp_path, monkeypatch, best):
    panel, splits = small
    _force_best_epoch(monkeypatch, best)
    calls = _count_predictions(monkeypatch)
    reports = []
    end = train_one(SPEC, panel, splits, _cfg(), workdir=tmp_path / "end", on_epoch=lambda m, d: reports.append(m))
    starts = [c[0] for c in calls]
    select_lo = starts[-1]
    assert len(starts) == 5 and starts[:4] == [starts[0]] * 4 and select_lo > starts[0]  # valid x 4, select once
    assert end.best_epoch == best
    # the select_* of the best epoch's weights, computed from scratch
    weights = torch.load(end.checkpoint_dir / "best.pt", weights_only=True)
    reference = _reference_select(panel, splits, _cfg(), weights)
    for m in SELECT:
        assert reports[-1][f"best_{m.name}"] == pytest.approx(reference[m.name], abs=1e-6)
        assert end.best_metrics[m.name] == reports[-1][f"best_{m.name}"]
    # only the best epoch's row carries them; the last report and the checkpoint's meta say them
    assert [math.isfinite(h["select_ic"]) for h in end.history] == [e == best for e in range(1, 5)]
    meta = json.loads((end.checkpoint_dir / "meta.json").read_text())
    assert meta["valid_metrics"]["select_ic"] == reports[-1]["best_select_ic"]
    # "best": scored when the best epoch happens, with the model as it is then: the same numbers
    calls.clear()
    at_best = train_one(SPEC, panel, splits, _cfg(select_scoring="best"), workdir=tmp_path / "best")
    assert sum(c[0] == select_lo for c in calls) == 1
    assert {m.name: at_best.best_metrics[m.name] for m in SELECT} == {m.name: end.best_metrics[m.name] for m in SELECT}
    # scoring the best weights at the end leaves the model's own: the last weights are the same in both runs
    last_end = torch.load(end.checkpoint_dir / "last.pt", weights_only=True)
    last_best = torch.load(at_best.checkpoint_dir / "last.pt", weights_only=True)
    assert all(torch.equal(last_end[k], last_best[k]) for k in last_end)


def test_select_scoring_changes_nothing_else(small, tmp_path):
    """Training, the valid metrics and the best epoch are those of a run whose select part is never scored."""
    panel, splits = small
    no_select = train_one(SPEC, panel, dataclasses.replace(splits, select=None), _cfg(), workdir=tmp_path / "a")
    with_select = train_one(SPEC, panel, splits, _cfg(), workdir=tmp_path / "b")
    keys = ("epoch", "train_loss", "valid_ic", "valid_rank_ic", "valid_pnl_long_short")
    assert [[h[k] for k in keys] for h in with_select.history] == [[h[k] for k in keys] for h in no_select.history]
    assert with_select.best_epoch == no_select.best_epoch


def test_eval_batch_per_device_and_inference_mode(small, tmp_path, monkeypatch):
    assert TrainConfig().eval_batch_size == "auto"
    assert TrainConfig().eval_batch("cpu") == EVAL_BATCH["cpu"] == 256
    assert TrainConfig().eval_batch("cuda") == EVAL_BATCH["cuda"] >= 4096
    assert TrainConfig(eval_batch_size=1000).validate().eval_batch("cuda") == 1000
    for bad in ("big", 0, -5):
        with pytest.raises(CliError, match="eval_batch_size"):
            TrainConfig(eval_batch_size=bad).validate()
    with pytest.raises(CliError, match="select_scoring"):
        TrainConfig(select_scoring="never").validate()
    panel, splits = small
    calls = _count_predictions(monkeypatch)
    modes = []
    real = loop.build_model

    def build(*a, **k):
        model = real(*a, **k)
        model.register_forward_hook(lambda mod, i, o: modes.append((mod.training, torch.is_inference_mode_enabled())))
        return model

    monkeypatch.setattr(loop, "build_model", build)
    train_one(SPEC, panel, splits, _cfg(epochs=1), workdir=tmp_path / "w")
    assert {c[2] for c in calls} == {EVAL_BATCH["cpu"]}
    assert (False, True) in modes and (True, False) in modes       # eval under inference mode, training not
    assert all(inference for training, inference in modes if not training)


@pytest.mark.parametrize("variant", ["convgru/m05", "convlstm/m4", "convlstm/m6"])
def test_recurrent_validation_computes_each_cells_gates_once_with_the_same_values(variant, monkeypatch):
    """A recurrent net's validation runs its first layer's input pipeline once per (day, stock) cell of a block
    (the windows of a part overlap), not once per window and step: the per-window forward's predictions (to the
    last bit's rounding), also when a small block budget cuts the part into groups of stocks and blocks of days."""
    from crnn_ray.zoo import load_zoo

    torch.manual_seed(0)
    L, n_days, n_stocks = 20, 70, 40
    X = torch.randn(n_days, n_stocks, 8)
    keep = torch.rand(n_days, n_stocks) > 0.2                      # absent rows: holes in the part
    keep[:L + 5] = False
    rows = torch.nonzero(keep)                                     # (day, stock), sorted by day
    model = build_model(load_zoo()[variant].spec, 8, L)
    model.train()                                                  # _predict switches to eval itself
    computed = []
    first_gates = model.first_gates
    monkeypatch.setattr(model, "first_gates", lambda cells: computed.append(len(cells)) or first_gates(cells))

    def windows_one_by_one(x):  # not the model itself: the per-window path
        return model(x)

    lo = L + 5
    want = loop._predict(windows_one_by_one, model, X, rows, lo, n_days - lo, L, 64)
    assert computed == []
    got = loop._predict(model, model, X, rows, lo, n_days - lo, L, 64)
    # the same ops on the same values, the input pipeline's convs in other batch sizes: a CPU kernel's sums
    # may then round differently in the last bit (1 ulp: ~1e-8 here)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.isfinite(got[keep[lo:].numpy()]).all() and np.isnan(got[~keep[lo:].numpy()]).all()
    assert sum(computed) - 1 == (n_days - lo + L - 1) * n_stocks   # each cell once (+1: the probe cell)
    assert sum(computed) < len(rows) * L / 10                      # the per-window forward: len(rows) x L

    cell_bytes = (sum(p.numel() for p in [first_gates(X[0, :1])])) * 4
    monkeypatch.setattr(loop, "GATE_BLOCK_BYTES", cell_bytes * (2 * L - 1) * 7)  # groups of 7 stocks, few days
    computed.clear()
    got = loop._predict(model, model, X, rows, lo, n_days - lo, L, 64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len(computed) > 1 + 6 * 2                               # several stock groups x day blocks
