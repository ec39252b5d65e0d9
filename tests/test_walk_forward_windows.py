"""Walk-forward windows: test parts tile the out-of-sample period, no label reaches a later scored day, and every
malformed spec is named in the error."""

from itertools import pairwise

import numpy as np
import pytest

from crnn_ray.data import Splits, describe_windows, walk_forward_splits, window_key
from crnn_ray.io import CliError

_DAYS = np.arange("2020-01-01", "2023-01-01", dtype="datetime64[D]")
DATES = _DAYS[np.is_busday(_DAYS)][:700]
N = len(DATES)
H = 5
BASE = {"train": 250, "valid": 60, "step": 40}


def _size(part):
    return part[1] - part[0] + 1


def _check_no_leak(wins, horizon):
    for w, s in enumerate(wins):
        assert s.train[1] + horizon < s.valid[0]
        if s.select is not None:
            assert s.valid[1] + horizon < s.select[0] and s.select[1] + horizon < s.test[0]
        else:
            assert s.valid[1] + horizon < s.test[0]
        for v in wins[w:]:
            assert s.selection_end + horizon < v.test[0]


def test_default_is_earliest_rolling_window_and_tests_tile_to_the_panel_end():
    wins = walk_forward_splits(DATES, BASE, horizon=H)
    assert all(isinstance(s, Splits) for s in wins)
    assert wins[0].train[0] == 0 and wins[0].test[0] == 250 + 60 + 2 * H
    for a, b in pairwise(wins):
        assert b.test[0] == a.test[1] + 1
        assert _size(a.test) == 40
    assert wins[-1].test[1] == N - 1
    assert len(wins) == -(-(N - wins[0].test[0]) // 40)
    assert all(s.embargo == H and _size(s.train) == 250 for s in wins)
    _check_no_leak(wins, H)


def test_partial_last_window_ends_at_the_panel_end():
    wins = walk_forward_splits(DATES, {**BASE, "step": 50}, horizon=H)
    first = wins[0].test[0]
    assert (N - first) % 50 != 0  # the setup really leaves a partial window
    assert _size(wins[-1].test) == (N - first) % 50 and wins[-1].test[1] == N - 1
    assert all(_size(s.test) == 50 for s in wins[:-1])


@pytest.mark.parametrize("embargo", [None, H, 12])
def test_gaps_between_parts_are_at_least_the_embargo(embargo):
    spec = dict(BASE) if embargo is None else {**BASE, "embargo": embargo}
    wins = walk_forward_splits(DATES, spec, horizon=H)
    e = H if embargo is None else embargo
    for s in wins:
        assert s.embargo == e
        parts = [getattr(s, p) for p in s.parts]
        assert list(s.parts) == ["train", "valid", "select", "test"]
        for prev, cur in pairwise(parts):
            assert cur[0] - prev[1] - 1 >= e
        # valid + embargo + select fill the 60 valid days exactly
        assert s.select[1] - s.valid[0] + 1 == 60
    _check_no_leak(wins, e)


def test_expanding_train_starts_at_zero_and_grows_by_step():
    wins = walk_forward_splits(DATES, {**BASE, "train": "expanding", "first_test": "2021-01-04"}, horizon=H)
    assert str(DATES[wins[0].test[0]]) == "2021-01-04"
    assert all(s.train[0] == 0 for s in wins)
    for a, b in pairwise(wins):
        assert _size(b.train) - _size(a.train) == 40
    _check_no_leak(wins, H)


def test_expanding_default_first_test_is_as_if_train_were_valid_days():
    wins = walk_forward_splits(DATES, {**BASE, "train": "expanding"}, horizon=H)
    assert wins[0].test[0] == 60 + 60 + 2 * H and _size(wins[0].train) == 60


def test_first_test_as_date_and_as_fraction():
    wins = walk_forward_splits(DATES, {**BASE, "first_test": "2021-07-03"}, horizon=H)  # a Saturday
    assert str(DATES[wins[0].test[0]]) == "2021-07-05"
    wins = walk_forward_splits(DATES, {**BASE, "first_test": 0.6}, horizon=H)
    assert wins[0].test[0] == int(np.floor(0.6 * N))
    assert wins[0].train[0] == wins[0].test[0] - (250 + 60 + 2 * H)


def test_windows_n_and_select_zero():
    wins = walk_forward_splits(DATES, {**BASE, "windows": 3, "select": 0}, horizon=H)
    assert len(wins) == 3 and all(s.select is None for s in wins)
    assert wins[0].parts == ("train", "valid", "test") and _size(wins[0].valid) == 60
    _check_no_leak(wins, H)


def test_describe_windows_and_keys():
    wins = walk_forward_splits(DATES, {**BASE, "windows": 2}, horizon=H)
    lines = describe_windows(wins, DATES)
    assert len(lines) == 2 and lines[0].startswith("w00  train ") and lines[1].startswith("w01  ")
    s = wins[0]
    assert f"train {DATES[s.train[0]]}..{DATES[s.train[1]]} (250 d)" in lines[0]
    assert f"test {DATES[s.test[0]]}..{DATES[s.test[1]]} (40 d)" in lines[0]
    assert " select " in lines[0] and " valid " in lines[0]
    no_sel = describe_windows(walk_forward_splits(DATES, {**BASE, "windows": 1, "select": 0}, horizon=H), DATES)
    assert "select" not in no_sel[0]
    assert [window_key(w) for w in (0, 1, 9, 10, 99, 100)] == ["w00", "w01", "w09", "w10", "w99", "w100"]


@pytest.mark.parametrize("spec, match", [
    ({**BASE, "step": 0}, r"walk_forward\.step: expected a positive"),
    ({**BASE, "step": -5}, r"walk_forward\.step: .*got -5"),
    ({**BASE, "step": "x"}, r"walk_forward\.step: .*got 'x'"),
    ({"train": 250, "valid": 60}, r"walk_forward\.step: missing"),
    ({**BASE, "embargo": 3}, r"walk_forward\.embargo: 3 is smaller than the label horizon 5 .*overlap"),
    ({**BASE, "embargo": 2.5}, r"walk_forward\.embargo: expected an integer"),
    ({**BASE, "first_test": "2020-06-01"}, (r"walk_forward\.first_test: window 0 needs 320 trading days .* "
                                            r"has \d+ before 2020-06-01")),
    ({**BASE, "first_test": 0.1}, r"walk_forward\.first_test: window 0 needs 320"),
    ({**BASE, "train": 800}, r"walk_forward\.train: window 0 needs 870 .*only 700"),
    ({**BASE, "windows": 50}, r"walk_forward\.windows: 50 requested but only \d+ fit"),
    ({**BASE, "windows": 0}, r"walk_forward\.windows: expected a positive"),
    ({**BASE, "horizon": 5}, r"walk_forward\.horizon: unknown key \(allowed: train, valid, select, step"),
    ({**BASE, "first_test": "2030-01-01"}, r"walk_forward\.first_test: 2030-01-01 is after the panel's last date"),
    ({**BASE, "first_test": 1.5}, r"walk_forward\.first_test: expected an ISO date or a fraction"),
    ({**BASE, "first_test": "not a date"}, r"walk_forward\.first_test: unparsable date"),
    ({**BASE, "select": 1.5}, r"walk_forward\.select: expected a share .* got 1\.5"),
    ({**BASE, "select": 0.01}, r"walk_forward\.select: a share of 0\.01 .* leaves an empty part"),
    ({**BASE, "train": 0}, r"walk_forward\.train: expected a positive .*got 0"),
    ({**BASE, "train": "rolling"}, r'walk_forward\.train: expected .*"expanding", got \'rolling\''),
    ({"valid": 60, "step": 40}, r"walk_forward\.train: missing"),
    ({**BASE, "valid": 0}, r"walk_forward\.valid: expected a positive"),
])
def test_errors_name_the_key(spec, match):
    with pytest.raises(CliError, match=match) as exc:
        walk_forward_splits(DATES, spec, horizon=H)
    assert "\n" not in str(exc.value)


def test_a_train_that_barely_fits_leaves_one_partial_window():
    wins = walk_forward_splits(DATES, {**BASE, "train": 620}, horizon=H)  # needs 690 of the 700 days
    assert len(wins) == 1 and wins[0].train[0] == 0 and wins[0].test == (690, N - 1)
    with pytest.raises(CliError, match=r"walk_forward\.train: window 0 needs 700 .*only 700"):
        walk_forward_splits(DATES, {**BASE, "train": 630}, horizon=H)


def test_non_mapping_spec_is_named():
    with pytest.raises(CliError, match=r"^walk_forward: expected a mapping, got list"):
        walk_forward_splits(DATES, [1, 2], horizon=H)
