"""Stacked members (crnn_ray.train.stacked): a member trained in a stack equals the same member trained alone by
train_one (weights, metrics, checkpoints; float tolerance, CPU), finished members leave the stack while the
others go on, checkpoints load and resume like train_one's, and a stacked step launches ~1/K of the kernels per
member that K lone steps do."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from conftest import saved_panel
from crnn_ray.data import make_splits, walk_forward_splits
from crnn_ray.train import TrainConfig, load_checkpoint, train_one
from crnn_ray.train.loop import _train_epoch, _TrainData
from crnn_ray.train.stacked import StackedModule, StackMember, _start, _train_round, count_aten_ops, train_stacked
from crnn_ray.zoo import build_model, resolve_variants

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMING_KEYS = {"samples_per_s", "epoch_s", "train_s", "valid_s", "cpu_percent", "threads", "os_threads"}
#: float tolerance of a stacked member against train_one: vmapped kernels sum in another order
ATOL, RTOL = 1e-5, 1e-4
#: a small CNN with BatchNorm (stacked running stats; after the relu, so no bias feeds it: see below) and dropout
#: (Dropout and Dropout1d): the masks must be each member's own stream, bit for bit
DROPOUT_CNN = "cnn1d(c3s1+relu+batchnorm+dropout+c3s2+featuredropout+avgpool)"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    panel = saved_panel(tmp_path_factory.mktemp("stacked"), 40, 100, 0)
    return panel, make_splits(panel.dates, {"fractions": [0.6, 0.2, 0.2], "select": 0.4}, panel.horizon("y5"))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, max_steps_per_epoch=4, lr=3e-3, patience=5, eval_batch_size=512, seed=1,
                lookback=10)
    return TrainConfig(**{**base, **kw})


def _spec(variant: str) -> str:
    return resolve_variants([variant])[0][1]


def _alone(spec, panel, splits, cfg, workdir, **kw):
    with contextlib.redirect_stdout(io.StringIO()):
        return train_one(spec, panel, splits, cfg, workdir=workdir, **kw)


def _stacked(spec, panel, members):
    with contextlib.redirect_stdout(io.StringIO()):
        return train_stacked(spec, panel, members)


def _assert_close(a, b, where: str) -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=RTOL, abs=ATOL), where
    else:
        assert a == b, where


def _assert_same_run(alone, stacked, skip_weights: tuple = ()) -> None:
    """Same status, reason, best epoch, history (timings aside) and last / best weights, to float tolerance."""
    assert (stacked.status, stacked.reason, stacked.best_epoch) == (alone.status, alone.reason, alone.best_epoch)
    assert len(stacked.history) == len(alone.history)
    for ha, hs in zip(alone.history, stacked.history):
        assert set(ha) == set(hs)
        for key in set(ha) - TIMING_KEYS:
            _assert_close(ha[key], hs[key], f"epoch {ha['epoch']} {key}")
    for key in set(alone.best_metrics) - TIMING_KEYS:
        _assert_close(alone.best_metrics[key], stacked.best_metrics[key], f"best {key}")
    for name in ("last.pt", "best.pt"):
        wa = torch.load(alone.checkpoint_dir / name, weights_only=True)
        ws = torch.load(stacked.checkpoint_dir / name, weights_only=True)
        assert list(wa) == list(ws)
        for key in wa:
            if key not in skip_weights:
                torch.testing.assert_close(ws[key], wa[key], atol=ATOL, rtol=RTOL, equal_nan=True,
                                           msg=f"{name} {key}")


@pytest.mark.parametrize("variant", ["convgru/m01", "convlstm/m6", "cnn1d/m02", DROPOUT_CNN])
def test_a_stacked_member_equals_the_member_trained_alone(small, tmp_path, variant):
    """convlstm/m6 has BatchNorm (stacked running stats) and dropout (each member's own masks); the members
    differ in seed, lr, weight decay and gradient clipping, each its own AdamW."""
    panel, splits = small
    spec = _spec(variant) if "/" in variant else variant
    cfgs = [_cfg(seed=1), _cfg(seed=2, lr=1e-3, weight_decay=1e-2, grad_clip=None)]
    alone = [_alone(spec, panel, splits, c, tmp_path / f"alone{i}") for i, c in enumerate(cfgs)]
    stacked = _stacked(spec, panel, [StackMember(c, splits, workdir=tmp_path / f"stack{i}")
                                     for i, c in enumerate(cfgs)])
    for a, s in zip(alone, stacked):
        _assert_same_run(a, s)
    # the members really differ (a stack that trained one member K times would pass the above for seed 1 only)
    w0, w1 = (torch.load(s.checkpoint_dir / "last.pt", weights_only=True) for s in stacked)
    assert any(not torch.allclose(w0[k].float(), w1[k].float()) for k in w0)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_batchnorm_fed_bias_follows_rounding_noise_as_in_train_one(small, tmp_path):
    """A conv bias that feeds a BatchNorm has a zero gradient in exact arithmetic: AdamW turns its rounding noise
    into +-lr steps, so that bias and the running mean that follows it depend on the kernels' summation order --
    in train_one too (oneDNN off moves them as much). Everything else, and the training loss, is equal."""
    panel, splits = small
    spec = _spec("convlstm/m3")  # avg_conv_batchnorm: the conv's bias feeds the BatchNorm
    cfg = _cfg(max_steps_per_epoch=3)
    alone = _alone(spec, panel, splits, cfg, tmp_path / "alone")
    with torch.backends.mkldnn.flags(enabled=False):
        other = _alone(spec, panel, splits, cfg, tmp_path / "other")
    (stacked,) = _stacked(spec, panel, [StackMember(cfg, splits, workdir=tmp_path / "stack")])
    wa, wo, ws = (torch.load(r.checkpoint_dir / "last.pt", weights_only=True) for r in (alone, other, stacked))
    noisy = {k for k in wa if not torch.allclose(wa[k].float(), wo[k].float(), atol=ATOL, rtol=RTOL)}
    assert noisy and all(k.endswith((".1.bias", "running_mean")) for k in noisy), noisy  # input_transform.1: the conv
    steps = cfg.epochs * cfg.max_steps_per_epoch
    for key in noisy:  # AdamW moves a parameter at most ~3 lr a step (|m| / sqrt(v) <= (1 - b1) / sqrt(1 - b2))
        assert float((ws[key] - wa[key]).abs().max()) <= 2 * 3.2 * cfg.lr * steps, key
    for key in set(wa) - noisy:
        torch.testing.assert_close(ws[key], wa[key], atol=ATOL, rtol=RTOL, msg=key)
    for ha, hs, ho in zip(alone.history, stacked.history, other.history):
        assert hs["train_loss"] == pytest.approx(ha["train_loss"], rel=RTOL, abs=ATOL)  # train mode: BN removes it
        # evaluation uses the running mean: as far from train_one as train_one with oneDNN off, within noise
        assert abs(hs["valid_ic"] - ha["valid_ic"]) <= max(10 * abs(ho["valid_ic"] - ha["valid_ic"]), 1e-4)


def test_finished_members_leave_the_stack_and_the_others_go_on(small, tmp_path):
    """One member early-stops, one diverges, one has fewer epochs, one runs to the end: each equals train_one,
    so a finished member's weights stopped changing and its departure did not disturb the others."""
    panel, splits = small
    cfgs = [
        _cfg(epochs=4, seed=1, patience=1, max_steps_per_epoch=2),                       # early stopping
        _cfg(epochs=4, seed=2, lr=1e30, grad_clip=None, patience=10, max_steps_per_epoch=2),  # diverges
        _cfg(epochs=1, seed=3, max_steps_per_epoch=2),                                   # one epoch
        _cfg(epochs=4, seed=4, patience=10, max_steps_per_epoch=2),                      # all four
    ]
    alone = [_alone(DROPOUT_CNN, panel, splits, c, tmp_path / f"alone{i}") for i, c in enumerate(cfgs)]
    assert alone[0].reason.startswith("early stopped at epoch") and len(alone[0].history) < 4
    assert alone[1].status == "diverged" and [len(a.history) for a in alone[2:]] == [1, 4]
    reports = {i: [] for i in range(len(cfgs))}
    members = [StackMember(c, splits, workdir=tmp_path / f"stack{i}", meta_extra={"variant_id": f"m{i}"},
                           on_epoch=lambda m, d, i=i: reports[i].append((m["epoch"], m["status"], d.name)))
               for i, c in enumerate(cfgs)]
    stacked = _stacked(DROPOUT_CNN, panel, members)
    for a, s in zip(alone, stacked):
        _assert_same_run(a, s)
    for i, a in enumerate(alone):  # every epoch reported once, with its own checkpoint directory
        assert reports[i] == [(h["epoch"], h["status"], f"checkpoint_{h['epoch']:04d}") for h in a.history]
        assert load_checkpoint(stacked[i].checkpoint_dir)[0]["variant_id"] == f"m{i}"


def test_walk_forward_windows_batch_sizes_and_the_ic_loss_in_one_stack(small, tmp_path):
    """Members on different windows (their own data on the device), another batch size and the "ic" loss (whole
    days: batch sizes differ from member to member) step in one stack: one vmapped call per batch shape."""
    panel, _ = small
    windows = walk_forward_splits(panel.dates, {"train": 40, "valid": 16, "select": 0, "step": 10,
                                                       "windows": 2}, panel.horizon("y5"))
    cases = [(windows[0], _cfg(seed=1)), (windows[1], _cfg(seed=1)), (windows[0], _cfg(seed=2, batch_size=48)),
             (windows[1], _cfg(seed=3, loss="ic", batch_size=80))]
    alone = [_alone(DROPOUT_CNN, panel, w, c, tmp_path / f"alone{i}") for i, (w, c) in enumerate(cases)]
    stacked = _stacked(DROPOUT_CNN, panel, [StackMember(c, w, workdir=tmp_path / f"stack{i}")
                                            for i, (w, c) in enumerate(cases)])
    for a, s in zip(alone[:3], stacked[:3]):
        _assert_same_run(a, s)
    # the IC loss ignores a constant shift of the predictions: the readout bias's gradient is zero in exact
    # arithmetic and its rounding noise moves it (as a BatchNorm-fed bias, see above); the metrics are shift-free
    _assert_same_run(alone[3], stacked[3], skip_weights=("readout.bias",))
    metas = [load_checkpoint(s.checkpoint_dir)[0]["splits"] for s in stacked]
    assert metas[0] != metas[1] and metas[0] == metas[2]


def test_checkpoints_load_and_resume_like_train_ones(small, tmp_path):
    """A stacked member's checkpoint is train_one's: the scorer's loader rebuilds it, train_one resumes it
    (optimizer state included) as it resumes its own, and a stack resumes train_one's."""
    panel, splits = small
    spec = _spec("convgru/m01")
    cfg1, cfg3 = _cfg(epochs=1, max_steps_per_epoch=3), _cfg(epochs=3, max_steps_per_epoch=3)
    (first,) = _stacked(spec, panel, [StackMember(cfg1, splits, workdir=tmp_path / "stack1",
                                                  meta_extra={"variant_id": "convgru/m01", "trial_id": "t7"})])
    meta, best = load_checkpoint(first.checkpoint_dir)
    one = _alone(spec, panel, splits, cfg1, tmp_path / "one", meta_extra={"variant_id": "convgru/m01",
                                                                          "trial_id": "t7"})
    meta_alone = json.loads((one.checkpoint_dir / "meta.json").read_text())
    assert set(meta) == set(meta_alone)
    for key in set(meta) - {"valid_metrics", "train_config"}:
        assert meta[key] == meta_alone[key], key
    model = build_model(meta["spec"], meta["n_features"], meta["lookback"])
    model.load_state_dict(best)
    state_stack = torch.load(first.checkpoint_dir / "state.pt", weights_only=True)
    state_alone = torch.load(one.checkpoint_dir / "state.pt", weights_only=True)
    assert state_stack["optimizer"]["param_groups"] == state_alone["optimizer"]["param_groups"]
    assert set(state_stack) == set(state_alone)

    # (a one-epoch run scored its select part at its end: both resumed runs carry that in epoch 1)
    own = _alone(spec, panel, splits, cfg3, tmp_path / "own", resume_from=one.checkpoint_dir)
    assert len(own.history) == 3
    resumed = _alone(spec, panel, splits, cfg3, tmp_path / "resumed", resume_from=first.checkpoint_dir)
    _assert_same_run(own, resumed)
    (stack_resumed,) = _stacked(spec, panel, [StackMember(cfg3, splits, workdir=tmp_path / "stack3",
                                                          resume_from=one.checkpoint_dir)])
    _assert_same_run(own, stack_resumed)


def _per_step(fn_steps) -> dict:
    """aten ops of one step: the count at 4 steps minus the count at 2, halved (set-up and the epoch-end
    checks cancel)."""
    four, two = count_aten_ops(lambda: fn_steps(4), repeats=1), count_aten_ops(lambda: fn_steps(2), repeats=1)
    return {k: (four[k] - two[k]) / 2 for k in four}


def test_a_stack_of_8_launches_at_most_1_2_over_8_of_a_lone_step_per_member(small, tmp_path):
    """The launches a GPU would see (CPU profiler: leaf aten ops that are not views or allocations) per
    member-step at K = 8, against one lone train_one step of the same model and batch."""
    panel, splits = small
    spec, k = _spec("convgru/m01"), 8
    device = torch.device("cpu")
    cfg = _cfg(max_steps_per_epoch=4)
    torch.manual_seed(0)
    model = build_model(spec, len(panel.features), cfg.lookback)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    data = _TrainData.build(spec, panel, splits, cfg, device)

    def lone(steps):
        cfg.max_steps_per_epoch = steps
        _train_epoch(model, model, optimizer, data, cfg, 1, device)

    runs, models, cache = [], [], {}
    for seed in range(k):
        member = StackMember(_cfg(seed=seed), splits, workdir=tmp_path / f"m{seed}")
        run, member_model, _ = _start(spec, panel, member, device, cache, len(panel.features))
        runs.append(run)
        models.append(member_model)
    stack = StackedModule(models, (cfg.lookback, len(panel.features)), [cfg.lr] * k, [0.0] * k, [1.0] * k)

    def stacked(steps):
        for run in runs:
            run.cfg.max_steps_per_epoch = steps
        _train_round(stack, runs, device)

    lone_ops, stacked_ops = _per_step(lone), _per_step(stacked)
    print(f"aten ops per step: lone {lone_ops}, stack of {k} {stacked_ops} "
          f"(per member-step {stacked_ops['launches'] / k:.0f} launches vs {lone_ops['launches']:.0f})")
    assert lone_ops["launches"] > 500  # a recurrent model's step: hundreds of kernels
    assert stacked_ops["launches"] / k <= 1.2 / k * lone_ops["launches"]
    assert len(cache) == 1  # the 8 members share one window's data on the device
    assert all(r.steps == 2 for r in runs)  # the last call trained 2 steps each
