"""Ensembles from evidence (docs/scoring.md): ic_weighted weighs by the selection figure, stacking fits
non-negative weights on the selection split, seed averaging is on by default where a variant has several seeds,
and the switch flag reads like a boolean and takes `auto`."""

from __future__ import annotations

import numpy as np
import pytest

from crnn_ray.io import CliError
from crnn_ray.metrics import zscore_by_day
from crnn_ray.score.config import config_from_args
from crnn_ray.score.ensemble import member_weights, stack_weights


def test_ic_weighted_weighs_by_the_selection_figure_clipped_at_zero():
    w, note = member_weights("ic_weighted", [0.03, 0.01, -0.02])
    assert w == pytest.approx([0.75, 0.25, 0.0]) and note is None
    w, note = member_weights("ic_weighted", [-0.01, float("nan")])
    assert w == pytest.approx([0.5, 0.5]) and "falls back to equal weights" in note
    assert member_weights("stack", [0.1, 0.2])[0] == pytest.approx([0.5, 0.5])  # stack's come from the fit
    with pytest.raises(CliError, match="unknown"):
        member_weights("median", [0.1])


def test_stacking_recovers_planted_non_negative_weights():
    rng = np.random.default_rng(0)
    days, stocks = 120, 80
    units = rng.normal(size=(days, stocks, 3))
    label = 0.6 * units[..., 0] + 0.2 * units[..., 1] - 0.3 * units[..., 2] + rng.normal(0, 1.0, (days, stocks))
    unit_z = np.stack([zscore_by_day(units[..., k]) for k in range(3)], axis=-1)
    w, note = stack_weights(unit_z, label)
    # the harmful unit (negative loading) gets 0, never a short; the others keep their ratio (3:1)
    assert note is None and w[2] == 0.0 and w.sum() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(3.0, rel=0.25)
    label[:] = np.nan
    w, note = stack_weights(unit_z, label)
    assert w == pytest.approx([1 / 3] * 3) and "too few" in note


def test_stacking_with_only_harmful_units_falls_back_to_equal_weights():
    rng = np.random.default_rng(1)
    units = rng.normal(size=(60, 50, 2))
    label = -units[..., 0] - units[..., 1]
    unit_z = np.stack([zscore_by_day(units[..., k]) for k in range(2)], axis=-1)
    w, note = stack_weights(unit_z, label)
    assert w == pytest.approx([0.5, 0.5]) and "every NNLS weight is 0" in note


@pytest.mark.parametrize("argv, expected", [([], "auto"), (["--seed-average"], True), (["--no-seed-average"], False),
                                            (["--seed-average", "false"], False), (["--seed-average", "auto"], "auto")])
def test_the_seed_average_switch(tmp_path, argv, expected):
    cfg = config_from_args(["--experiment", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    assert cfg.seed_average == expected


def test_a_bad_switch_value_is_one_line(tmp_path):
    with pytest.raises(CliError, match="--seed-average: expected true, false or auto, got 'maybe'"):
        config_from_args(["--experiment", str(tmp_path), "--out", str(tmp_path / "o"), "--seed-average", "maybe"])
