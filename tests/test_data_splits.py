"""Splits: fractions and date ranges, embargo >= horizon, and every malformed spec named in the error."""

import pandas as pd
import pytest

from crnn_ray.data import Splits, make_splits
from crnn_ray.io import CliError

DATES = pd.bdate_range("2020-01-01", periods=300).to_numpy().astype("datetime64[D]")


def test_fractions_cover_the_panel_with_embargo_gaps():
    s = make_splits(DATES, {"fractions": [0.6, 0.2, 0.2]}, horizon=5)
    assert isinstance(s, Splits) and s.embargo == 5
    assert s.train[0] == 0 and s.test[1] == len(DATES) - 1
    assert s.valid[0] - s.train[1] - 1 == 5 and s.test[0] - s.valid[1] - 1 == 5
    sizes = [p[1] - p[0] + 1 for p in (s.train, s.valid, s.test)]
    assert sum(sizes) == len(DATES) - 10 and abs(sizes[0] - 0.6 * 290) <= 1
    # no label of a training day reaches into the validation days
    assert s.train[1] + 5 < s.valid[0] and s.valid[1] + 5 < s.test[0]


def test_fractions_below_one_leave_the_tail_out_and_larger_embargo_is_kept():
    s = make_splits(DATES, {"fractions": [0.5, 0.2, 0.1], "embargo": 10}, horizon=5)
    assert s.embargo == 10 and s.valid[0] - s.train[1] - 1 == 10 and s.test[1] < len(DATES) - 1


def test_date_ranges_are_inclusive_and_open_ends_allowed():
    spec = {"train": [None, "2020-06-30"], "valid": ["2020-07-10", "2020-09-30"], "test": ["2020-10-12", None]}
    s = make_splits(DATES, spec, horizon=5)
    assert str(DATES[s.train[1]]) == "2020-06-30" and s.train[0] == 0
    assert str(DATES[s.valid[0]]) == "2020-07-10" and s.test[1] == len(DATES) - 1
    d = s.dates(DATES)
    assert d == {"train": ["2020-01-01", "2020-06-30"], "valid": ["2020-07-10", "2020-09-30"],
                 "test": ["2020-10-12", str(DATES[-1])], "embargo": 5}


@pytest.mark.parametrize("spec, match", [
    ({"fractions": [0.6, 0.2, 0.2], "embargo": 3}, r"splits\.embargo: 3 is smaller than the label horizon 5"),
    ({"train": ["2020-06-30", "2020-01-01"], "valid": ["2020-07-10", "2020-09-30"], "test": ["2020-10-12", None]},
     r"splits\.train: reversed range"),
    ({"train": [None, "2020-06-30"], "valid": ["2020-06-01", "2020-09-30"], "test": ["2020-10-12", None]},
     r"splits\.valid: overlaps"),
    ({"train": [None, "2020-06-30"], "valid": ["2020-07-02", "2020-09-30"], "test": ["2020-10-12", None]},
     r"splits\.valid: starts 1 trading day\(s\) after train ends; embargo needs 5"),
    ({"train": [None, "2020-06-30"], "valid": ["2020-07-10", "2020-09-30"], "test": ["2030-01-01", "2030-02-01"]},
     r"splits\.test: no panel dates"),
    ({"train": [None, "2020-06-30"], "valid": ["2020-07-10", "2020-09-30"]}, r"splits\.test: missing"),
    ({"train": [None, "2020-06-30"], "valid": ["2020-07-10", "bad"], "test": ["2020-10-12", None]},
     r"splits\.valid: unparsable date 'bad'"),
    ({"fractions": [0.9, 0.1, 0.0]}, r"splits\.fractions: every part needs a positive fraction"),
    ({"fractions": [0.998, 0.001, 0.001]}, r"splits\.fractions: part 'valid' is empty"),
    ({"fractions": [0.7, 0.3, 0.3]}, r"splits\.fractions: sum 1\.3 > 1"),
    ({"fractions": [0.6, 0.4]}, r"splits\.fractions: expected 3 numbers"),
    ({"fractions": [0.6, 0.2, 0.2], "tain": [1, 2]}, r"splits\.tain: unknown key"),
    ({"fractions": [0.6, 0.2, 0.2], "embargo": 2.5}, r"splits\.embargo: expected an integer"),
])
def test_bad_specs_name_the_key(spec, match):
    with pytest.raises(CliError, match=match) as err:
        make_splits(DATES, spec, horizon=5)
    assert "\n" not in str(err.value)


def test_precedes_is_an_error_even_with_a_gap():
    spec = {"train": ["2020-07-01", "2020-09-30"], "valid": ["2020-01-01", "2020-03-31"], "test": ["2020-10-12", None]}
    with pytest.raises(CliError, match=r"splits\.valid: overlaps or precedes train"):
        make_splits(DATES, spec, horizon=5)


def test_select_part_is_cut_off_the_valid_part_after_an_embargo():
    """valid chooses the epoch, select (after it, embargoed) ranks runs: no label of one reaches the other."""
    s = make_splits(DATES, {"fractions": [0.6, 0.2, 0.2], "select": 0.5}, horizon=5)
    whole = make_splits(DATES, {"fractions": [0.6, 0.2, 0.2]}, horizon=5)
    assert s.select is not None and whole.select is None
    assert s.valid[0] == whole.valid[0] and s.select[1] == whole.valid[1] and s.test == whole.test
    assert s.select[0] - s.valid[1] - 1 == 5 and s.valid[1] + 5 < s.select[0]
    n_valid, n_select = s.valid[1] - s.valid[0] + 1, s.select[1] - s.select[0] + 1
    assert n_valid + n_select == (whole.valid[1] - whole.valid[0] + 1) - 5 and abs(n_valid - n_select) <= 1
    assert s.parts == ("train", "valid", "select", "test") and s.selection_end == s.select[1]
    assert list(s.dates(DATES)) == ["train", "valid", "select", "test", "embargo"]
    spec = {"train": [None, "2020-06-30"], "valid": ["2020-07-10", "2020-08-31"], "select": ["2020-09-10", "2020-09-30"],
            "test": ["2020-10-12", None]}
    d = make_splits(DATES, spec, horizon=5).dates(DATES)
    assert d["select"] == ["2020-09-10", "2020-09-30"]
    for bad, match in [({"fractions": [0.6, 0.2, 0.2], "select": 1.5}, r"splits\.select: expected a share"),
                       ({"fractions": [0.6, 0.2, 0.2], "select": 0.01}, r"splits\.select: .* leaves an empty part"),
                       ({**spec, "select": ["2020-08-20", "2020-09-30"]},
                        r"splits\.select: overlaps or precedes valid")]:
        with pytest.raises(CliError, match=match):
            make_splits(DATES, bad, horizon=5)
