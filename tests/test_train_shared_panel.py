"""One normalised panel for many models: train_one on a NormalisedPanel trains exactly as on the raw Panel,
reads the shared cube without copying it (also read-only, as Ray's object store hands it out), slices the days
its window needs, and refuses a cube normalised for another config; the sweep worker's path to it."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import saved_panel
from crnn_ray.data import NormalisedPanel, normalise_panel, walk_forward_splits
from crnn_ray.io import CliError
from crnn_ray.sweep.placement import Placement
from crnn_ray.sweep.trial import TrialContext, _normalised_panel, share_panel
from crnn_ray.train import TrainConfig, train_one
from crnn_ray.train.loop import _TrainData

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = "cnn1d(c3s1+batchnorm+relu+dropout+avgpool)"
TIMING_KEYS = {"samples_per_s", "epoch_s", "train_s", "valid_s"}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    panel = saved_panel(tmp_path_factory.mktemp("shared"), 50, 240, 2)
    windows = walk_forward_splits(panel.dates, {"train": 80, "valid": 40, "select": 0.5, "step": 30,
                                                "windows": "all"}, panel.horizon("y5"))
    return panel, windows


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=64, max_steps_per_epoch=4, lr=3e-3, seed=3, label="y5",
                                 lookback=10), **kw})


def _frozen(a):
    if a is None:
        return None
    a = a.copy()
    a.flags.writeable = False
    return a


def _read_only(n: NormalisedPanel) -> NormalisedPanel:
    """What ray.get returns: the arrays, not writable."""
    return dataclasses.replace(n, Z=_frozen(n.Z), mask=_frozen(n.mask), forward_returns=_frozen(n.forward_returns),
                               labels={k: _frozen(v) for k, v in n.labels.items()})


def _copy(panel):
    """The panel with its own features (normalise_panel(consume=True) overwrites them)."""
    return dataclasses.replace(panel, X=panel.X.copy())


def _comparable(history):
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items() if k not in TIMING_KEYS}
            for h in history]


def test_a_normalised_panel_trains_exactly_as_the_raw_one(market, tmp_path):
    panel, windows = market
    shared = _read_only(normalise_panel(panel, clip=5.0, windows=windows, labels=["y5"]))
    for w, splits in enumerate([windows[0], windows[-1]]):
        raw = train_one(SPEC, panel, splits, _cfg(), workdir=tmp_path / f"raw{w}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "not writable" warning included
            shared_run = train_one(SPEC, shared, splits, _cfg(), workdir=tmp_path / f"shared{w}")
        assert _comparable(shared_run.history) == _comparable(raw.history)
        best_raw = torch.load(raw.checkpoint_dir / "best.pt", weights_only=True)
        best_shared = torch.load(shared_run.checkpoint_dir / "best.pt", weights_only=True)
        assert all(torch.equal(best_raw[k], best_shared[k]) for k in best_raw)
        meta_raw = (raw.checkpoint_dir / "meta.json").read_text()
        assert meta_raw == (shared_run.checkpoint_dir / "meta.json").read_text()  # seen_data fingerprint included
        assert shared_run.setup_s > 0


def test_the_shared_cube_is_read_in_place_and_sliced_to_the_window(market):
    panel, windows = market
    shared = _read_only(normalise_panel(panel, windows=windows, labels=["y5"]))
    splits, cfg = windows[1], _cfg()
    data = _TrainData.build(SPEC, shared, splits, cfg, torch.device("cpu"))
    first = splits.train[0] - cfg.lookback + 1                     # the first training sample's history
    last = max(d for d in range(splits.select[1] + 1)
               if (panel.mask[d] & np.isfinite(panel.labels["y5"][d])).any())  # the select part's last sample
    assert data.first_day == first and data.X.shape[0] == last - first + 1
    assert np.shares_memory(data.X.numpy(), shared.Z)              # a view of the shared cube: nothing copied
    np.testing.assert_array_equal(data.X.numpy(), shared.Z[first:last + 1])
    rows = data.train_rows.numpy() + [first, 0]
    assert rows[:, 0].min() == splits.train[0] and rows[:, 0].max() <= splits.train[1]


@pytest.mark.parametrize("x_dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_storage_trains_in_float32_from_the_rounded_cube(market, tmp_path, x_dtype, torch_dtype):
    panel, windows = market
    shared = normalise_panel(panel, x_dtype=x_dtype, windows=windows, labels=["y5"])
    data = _TrainData.build(SPEC, shared, windows[0], _cfg(x_dtype=x_dtype), torch.device("cpu"))
    assert data.X.dtype == torch_dtype
    exact = normalise_panel(panel, windows=windows, labels=["y5"]).Z[data.first_day:data.first_day + len(data.X)]
    np.testing.assert_allclose(data.X.float().numpy(), exact, atol=0.02 * 5, rtol=0.01)
    result = train_one(SPEC, shared, windows[0], _cfg(x_dtype=x_dtype), workdir=tmp_path / x_dtype)
    assert result.status == "ok" and math.isfinite(result.best_metrics["valid_ic"])


def test_a_cube_for_another_config_or_window_is_refused(market, tmp_path):
    panel, windows = market
    shared = normalise_panel(panel, clip=5.0, windows=windows[:1], labels=["y5"])
    with pytest.raises(CliError, match="clip 5, x_dtype float32; this run asks for clip 3"):
        train_one(SPEC, shared, windows[0], _cfg(clip=3.0), workdir=tmp_path / "a")
    with pytest.raises(CliError, match="x_dtype float16"):
        train_one(SPEC, shared, windows[0], _cfg(x_dtype="float16"), workdir=tmp_path / "b")
    with pytest.raises(CliError, match="no fingerprint"):
        train_one(SPEC, shared, windows[1], _cfg(), workdir=tmp_path / "c")


def test_the_worker_normalises_a_raw_panel_once_for_its_pack(market, tmp_path):
    """A driver that put the raw Panel (no share_panel): the worker normalises it once, for every window."""
    panel, windows = market
    ctx = TrialContext(experiment="x", experiment_dir=str(tmp_path), panel_refs=[], splits=dataclasses.asdict(windows[0]),
                       placement=Placement(1.0, 0.0, 1), window_splits=[dataclasses.asdict(w) for w in windows])
    trial = {"train_config": dataclasses.asdict(_cfg(clip=4.0, x_dtype="float16"))}
    got = _normalised_panel(panel, ctx, trial)
    want = normalise_panel(panel, clip=4.0, x_dtype="float16", windows=windows, labels=["y5"])
    np.testing.assert_array_equal(got.Z, want.Z)
    assert got.fingerprints == want.fingerprints and (got.clip, got.x_dtype) == (4.0, "float16")
    assert _normalised_panel(want, ctx, trial) is want


def test_one_put_is_read_zero_copy_by_the_workers(market, ray_local):
    """share_panel puts the normalised panel once; a Ray worker builds its data on it without a copy. The
    driver keeps no copy either: its raw features are consumed, its view maps the object store's."""
    panel, windows = market
    own = _copy(panel)
    [ref], view = share_panel(own, windows, "y5", clip=5.0, x_dtype="float32")
    assert own.X is None and not view.Z.flags.writeable            # the driver's view: the object store's pages
    np.testing.assert_array_equal(view.raw_feature("ret1"), panel.X[:, :, 0])  # kept raw for the reversal baseline
    assert ray_local.get(ref).raw == {}                            # ... on the driver only

    @ray_local.remote(num_cpus=1)
    def build(refs, spec, splits, cfg):  # everything it uses comes as an argument or from crnn_ray
        shared = ray_local.get(refs[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data = _TrainData.build(spec, shared, splits, cfg, torch.device("cpu"))
        return (shared.Z.flags.writeable, bool(np.shares_memory(data.X.numpy(), shared.Z)),
                data.X.numpy().copy(), data.first_day)

    writeable, shares, X, first = ray_local.get(build.remote([ref], SPEC, windows[0], _cfg()))
    assert not writeable and shares                                # the object store's pages, read in place
    np.testing.assert_array_equal(X, normalise_panel(panel).Z[first:first + len(X)])


def test_the_driver_normalises_over_its_raw_features(market):
    """consume=True: float32 z-scores written over the raw features (no second X on the driver), the same values
    and fingerprints; the raw columns asked for are kept; half storage goes to a new, smaller array."""
    panel, windows = market
    want = normalise_panel(panel, clip=5.0, windows=windows, labels=["y5"])
    own = _copy(panel)
    buffer = own.X
    got = normalise_panel(own, clip=5.0, windows=windows, labels=["y5"], consume=True, keep_raw=["ret1", "nope"])
    assert own.X is None and np.shares_memory(got.Z, buffer)
    np.testing.assert_array_equal(got.Z, want.Z)
    assert got.fingerprints == want.fingerprints and list(got.raw) == ["ret1"]
    np.testing.assert_array_equal(got.raw_feature("ret1"), panel.X[:, :, panel.features.index("ret1")])
    with pytest.raises(CliError, match="kept no raw 'char_a'"):
        got.raw_feature("char_a")
    for x_dtype in ("float16", "bfloat16"):
        half = normalise_panel(_copy(panel), x_dtype=x_dtype, consume=True)
        np.testing.assert_array_equal(half.Z, normalise_panel(panel, x_dtype=x_dtype).Z)
        data = _TrainData.build(SPEC, half, windows[0], _cfg(x_dtype=x_dtype), torch.device("cpu"))
        decoded = half.features_float32()[data.first_day:data.first_day + len(data.X)]
        np.testing.assert_array_equal(decoded, data.X.float().numpy())  # what training reads, as float32


def test_the_baselines_read_the_shared_copy(market):
    """The sweep's baselines on the driver's NormalisedPanel (z-scores + the raw ret1) equal them on the raw panel."""
    from crnn_ray.baselines import baseline_signals

    panel, windows = market
    shared = _read_only(normalise_panel(_copy(panel), windows=windows, labels=["y5"], consume=True,
                                        keep_raw=["ret1"]))
    which = ["ridge", "reversal", "ridge2"]
    w = windows[0]
    want = baseline_signals(panel, w.train, "y5", 10, which=which, days=(w.valid[0], w.select[1]))
    got = baseline_signals(shared, w.train, "y5", 10, which=which, days=(w.valid[0], w.select[1]))
    assert sorted(got) == sorted(want) == sorted(which)
    for name in which:
        np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(ValueError, match="clip 5, the baselines ask for 3"):
        baseline_signals(shared, w.train, "y5", 10, clip=3.0, which=which)


def test_flagged_jumps_leave_the_training_target_not_the_scored_parts(market):
    """A label spanning a flagged jump is no training sample (data.labels.training_label), on the raw and the
    shared panel alike; the valid and select parts keep it: they are scored on every held return."""
    from crnn_ray.data.labels import jump_mask

    panel, windows = market
    splits, cfg = windows[0], _cfg()
    flags = np.zeros(panel.mask.shape, dtype=bool)
    flags[splits.train[0] + 30, :10] = True                        # jumps inside the train part ...
    flags[splits.valid[0] + 3, :10] = True                         # ... and inside the valid part
    flagged = dataclasses.replace(panel, aux={"price_break": flags})
    masked = jump_mask(flags, panel.horizon("y5"), panel.label_lag)
    plain = _TrainData.build(SPEC, panel, splits, cfg, torch.device("cpu"))
    expected = {tuple(r) for r in plain.train_rows.numpy() + [plain.first_day, 0] if not masked[r[0], r[1]]}
    assert 0 < len(expected) < len(plain.train_rows)
    for source in (flagged, normalise_panel(flagged, windows=windows, labels=["y5"])):
        data = _TrainData.build(SPEC, source, splits, cfg, torch.device("cpu"))
        got = data.train_rows.numpy() + [data.first_day, 0]
        assert {tuple(r) for r in got} == expected
        y = data.y.numpy()
        assert np.isnan(y[np.nonzero(masked[data.first_day:data.first_day + len(y)])]).all()
        for part in ("valid", "select"):
            np.testing.assert_array_equal(data.eval_parts[part].index, plain.eval_parts[part].index)
