"""Scorer parts without a sweep: per-date ensemble maths, member selection rules, predictor batching."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import scipy.stats as st
from scipy.stats import rankdata

from crnn_ray.io import CliError
from crnn_ray.score.ensemble import member_weights
from long_rows import combine, member_correlation, rank_by_date, zscore_by_date
from crnn_ray.score.predict import EnsemblePredictor, member_payload
from crnn_ray.score.select import Member, check_look_ahead, in_sample_overlaps, select_members
from crnn_ray.zoo import build_model


def long_table(seed=0, days=6, stocks=9, k=3):
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.arange("2024-01-01", days, dtype="datetime64[D]")[:days], stocks)
    preds = rng.normal(size=(days * stocks, k)) * np.array([1.0, 10.0, 0.01])[:k] + np.array([0.0, 5.0, -3.0])[:k]
    preds[:stocks, k - 1] = 7.0  # one constant member-day: z must be 0 there, not NaN
    preds[stocks:2 * stocks, 0] = np.round(preds[stocks:2 * stocks, 0])  # ties for the ranks
    perm = rng.permutation(len(dates))  # rows of one date need not be contiguous
    return dates[perm], preds[perm]


def test_zscore_and_rank_match_a_loop_per_date():
    dates, preds = long_table()
    z, r = zscore_by_date(dates, preds), rank_by_date(dates, preds)
    for d in np.unique(dates):
        rows = dates == d
        p = preds[rows]
        sd = p.std(axis=0)
        want = np.where(sd > 0, (p - p.mean(axis=0)) / np.where(sd > 0, sd, 1), 0.0)
        np.testing.assert_allclose(z[rows], want, atol=1e-12)
        n = rows.sum()
        want_r = np.column_stack([(rankdata(p[:, k]) - 1) / (n - 1) - 0.5 for k in range(p.shape[1])])
        np.testing.assert_allclose(r[rows], want_r, atol=1e-12)
    assert np.isfinite(z).all() and (z[dates == dates.min()][:, 2] == 0).all()
    assert len(np.unique(dates)) == 6 and np.abs(z).max() > 1


def test_combine_weights_and_fallback():
    dates, preds = long_table(seed=1)
    w, note = member_weights("ic_weighted", [0.04, -0.02, 0.01])
    np.testing.assert_allclose(w, [0.8, 0.0, 0.2])
    assert note is None
    np.testing.assert_allclose(combine(dates, preds, "ic_weighted", w), zscore_by_date(dates, preds) @ w)
    w_eq, note = member_weights("ic_weighted", [-0.01, float("nan"), 0.0])
    np.testing.assert_allclose(w_eq, [1 / 3] * 3)
    assert "equal weights" in note
    m = combine(dates, preds, "mean", member_weights("mean", [0, 0, 0])[0])
    # a per-date z-score mean is itself centred within every date
    for d in np.unique(dates):
        assert abs(m[dates == d].mean()) < 1e-12
    with pytest.raises(CliError, match="--method 'median'"):
        member_weights("median", [0.1])


def test_member_correlation_is_cross_sectional():
    dates, preds = long_table(seed=2, days=8, stocks=30, k=2)
    shifted = preds[:, 0] + np.searchsorted(np.unique(dates), dates) * 100.0  # daily level shifts only
    corr = member_correlation(dates, {"a": preds[:, 0], "a_shifted": shifted, "b": preds[:, 1]})
    assert corr.loc["a", "a_shifted"] == pytest.approx(1.0)
    assert abs(corr.loc["a", "b"]) < 0.5


def write_trials(exp: Path, rows: list[dict]) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    base = {"spec": "s", "family": "cnn1d", "reason": "", "valid_rank_ic": 0.0, "checkpoint": "ck"}
    pd.DataFrame([{**base, **r} for r in rows]).to_parquet(exp / "trials.parquet")


def test_selection_ranks_on_validation_and_skips_failed(tmp_path):
    exp = tmp_path / "exp"
    write_trials(exp, [
        {"trial_id": "t0", "variant_id": "a", "seed": 0, "status": "ok", "valid_ic": 0.02},
        {"trial_id": "t1", "variant_id": "b", "seed": 0, "status": "diverged", "valid_ic": 0.09},
        {"trial_id": "t2", "variant_id": "a", "seed": 1, "status": "ok", "valid_ic": 0.05},
        {"trial_id": "t3", "variant_id": "c", "seed": 0, "status": "failed", "valid_ic": 0.08},
        {"trial_id": "t4", "variant_id": "d", "seed": 0, "status": "pruned", "valid_ic": 0.03},
        {"trial_id": "t5", "variant_id": "e", "seed": 0, "status": "ok", "valid_ic": float("nan")},
    ])
    members = select_members(exp, 5, "valid_ic")
    assert [m.trial_id for m in members] == ["t2", "t4", "t0"]
    # the default ranks by RankIC (select_rank_ic; this sweep had no selection split: valid_rank_ic, all tied)
    assert [m.trial_id for m in select_members(exp, 5)] == ["t0", "t2", "t4", "t5"]
    assert [m.name for m in members] == ["a@seed1", "d@seed0", "a@seed0"]
    assert members[0].checkpoint == exp / "ck"  # relative paths resolve against the experiment
    assert [m.trial_id for m in select_members(exp, 2, "valid_rank_ic")] == ["t0", "t2"]  # ties: trial id
    for bad, msg in [("test_ic", "test metric"), ("ic", "not a validation metric"), ("valid_sharpe", "no column")]:
        with pytest.raises(CliError, match=msg):
            select_members(exp, 3, bad)
    with pytest.raises(CliError, match="trials.parquet: missing"):
        select_members(tmp_path, 3)


def test_selection_prints_every_excluded_trial_and_why(tmp_path, capsys):
    """The issue: an exploded trial vanished silently, or joined; now each trial that may not join is named,
    with its status and reason, before the members are listed."""
    exp = tmp_path / "exp"
    loss = "train loss 5.1e+08 at epoch 2 is 6.1e+09 x the target variance (bound: max_loss_ratio 100)"
    write_trials(exp, [
        {"trial_id": "t0", "variant_id": "a", "seed": 0, "status": "ok", "valid_ic": 0.02},
        {"trial_id": "t1", "variant_id": "convgru/m01", "seed": 0, "status": "diverged", "valid_ic": float("nan"),
         "reason": loss},
        {"trial_id": "t2", "variant_id": "c", "seed": 1, "status": "failed", "valid_ic": float("nan"),
         "reason": "TrainingFailedError: worker died"},
        {"trial_id": "t3", "variant_id": "d", "seed": 0, "status": "ok", "valid_ic": float("nan")},
        {"trial_id": "t4", "variant_id": "e", "seed": 0, "status": "ok", "valid_ic": 0.05, "checkpoint": None},
        {"trial_id": "t5", "variant_id": "f", "seed": 2, "status": "pruned", "valid_ic": 0.01},
    ])
    members = select_members(exp, 1, "valid_ic")
    assert [m.trial_id for m in members] == ["t0"]  # t5 was eligible, only not among the top 1: not "excluded"
    assert capsys.readouterr().out.splitlines() == [
        f"excluded t1 convgru/m01@seed0: diverged ({loss})",
        "excluded t2 c@seed1: failed (TrainingFailedError: worker died)",
        "excluded t3 d@seed0: ok but no finite valid_ic",
        "excluded t4 e@seed0: ok but no checkpoint",
    ]
    # nothing eligible: the lines still come, then the one-line error
    write_trials(exp, [{"trial_id": "t9", "variant_id": "z", "seed": 0, "status": "diverged",
                        "valid_ic": float("nan"), "reason": "non-finite loss (nan) at epoch 1 step 3"}])
    with pytest.raises(CliError, match="no eligible trial"):
        select_members(exp, 1, "valid_ic")
    assert capsys.readouterr().out == "excluded t9 z@seed0: diverged (non-finite loss (nan) at epoch 1 step 3)\n"


def test_look_ahead_window_runs_to_the_selection_end_plus_embargo_and_refuses_backcasts():
    dates = np.arange("2024-01-01", 40, dtype="datetime64[D]")
    m = Member(name="x@seed0", trial_id="t0", variant_id="x", spec="s", seed=0, checkpoint=Path("c"),
               valid_ic=0.1, select_value=0.1,
               meta={"splits": {"train": [str(dates[10]), str(dates[20])], "valid": [str(dates[23]), str(dates[28])],
                                "embargo": 3}})
    assert in_sample_overlaps([m], dates, 32, 39) == {}
    assert in_sample_overlaps([m], dates, 31, 39) == {"x@seed0": [str(dates[31]), str(dates[31])]}
    # a backcast (before training started) is no out-of-sample record either (issue: "numbers a quant can trust")
    assert in_sample_overlaps([m], dates, 0, 7) == {"x@seed0": [str(dates[0]), str(dates[7])]}
    check_look_ahead([m], dates, 32, 39)
    with pytest.raises(CliError, match=r"overlap member x@seed0 \(trial t0\).*\+embargo 3"):
        check_look_ahead([m], dates, 29, 35)


def test_predictor_rows_do_not_depend_on_batching():
    torch.manual_seed(0)
    D, S, F, L = 30, 25, 4, 6
    X = np.random.default_rng(0).normal(size=(D, S, F)).astype(np.float32)
    payloads = []
    for i, spec in enumerate(["cnn1d/m01", "convgru/m01"]):
        from crnn_ray.zoo import load_zoo

        entry = load_zoo()[spec]
        model = build_model(entry.spec, 3, L)
        meta = {"spec": entry.spec, "lookback": L}
        payloads.append(member_payload(f"m{i}", meta, model.state_dict(), [0, 2, 3], "z"))
    pred = EnsemblePredictor(payloads, {"z": X}, device="cuda", chunk_rows=64)
    assert pred.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    days, stocks = np.meshgrid(np.arange(L - 1, D), np.arange(S), indexing="ij")
    keys = pd.DataFrame({"day": days.ravel(), "stock": stocks.ravel()})
    whole = pd.DataFrame(pred(keys))
    pieces = pd.concat([pd.DataFrame(pred({"day": keys["day"].to_numpy()[i:i + n],
                                           "stock": keys["stock"].to_numpy()[i:i + n]}))
                        for i, n in zip(range(0, len(keys), 37), [37] * len(keys))], ignore_index=True)
    assert list(whole.columns) == ["day", "stock", "m0", "m1"]
    assert whole[["m0", "m1"]].equals(pieces[["m0", "m1"]])  # bit for bit
    # the prediction of one row is the member's model on that row's window of its features
    model = build_model(payloads[1]["spec"], 3, L)
    model.load_state_dict(payloads[1]["state_dict"])
    d, s = 17, 4
    with torch.no_grad():
        direct = model.eval()(torch.as_tensor(X[d - L + 1:d + 1, s][:, [0, 2, 3]][None])).item()
    row = whole[(whole["day"] == d) & (whole["stock"] == s)]
    assert row["m1"].item() == pytest.approx(direct, abs=1e-5)
    with pytest.raises(ValueError, match="not in the predictor's panel"):
        pred({"day": np.array([D + 5]), "stock": np.array([0])})


def test_config_defaults_file_matches_code_and_bad_keys_are_named(tmp_path):
    from crnn_ray.score.config import DEFAULT_CONFIG_FILE, ScoreConfig, load_score_config

    uncommented = tmp_path / "all.yaml"
    uncommented.write_text("\n".join(ln[2:] for ln in DEFAULT_CONFIG_FILE.read_text().splitlines()
                                     if ln.startswith("# ") and ":" in ln.split("#")[1] and ln[2:3] != " "
                                     and not ln.startswith("# `")) + "\n")
    assert load_score_config(None) == ScoreConfig() == load_score_config(str(uncommented))
    small = tmp_path / "small.yaml"
    small.write_text("ray: {actor_cpus: 0.25}\n")
    cfg = load_score_config(str(small))
    assert cfg.ray.actor_cpus == 0.25 and cfg.ray.num_cpus is None and cfg.top_k == ScoreConfig().top_k
    bad = tmp_path / "bad.yaml"
    for text, msg in [("evaluation: {quantile: 5}\n", r"^bad\.yaml: evaluation\.quantile: unknown key"),
                      ("batch_rows: -3\n", r"^bad\.yaml: batch_rows: expected a positive integer, got -3"),
                      ("top_k: [1\n", r"^bad\.yaml: not valid YAML"),
                      ("out: /tmp/x\n", r"^bad\.yaml: out: unknown key")]:   # a command-line-only flag
        bad.write_text(text)
        with pytest.raises(CliError, match=msg):
            load_score_config(str(bad))


def test_default_config_file_documents_the_code_defaults():
    """configs/score/default.yaml shows every key with its default, commented out: uncommented, it is the code's."""
    import yaml

    from crnn_ray.config import section_dict
    from crnn_ray.score.config import DEFAULT_CONFIG_FILE, ScoreConfig

    lines = DEFAULT_CONFIG_FILE.read_text().splitlines()
    documented = yaml.safe_load("\n".join(ln[2:] for ln in lines if ln.startswith("# ") and ":" in ln
                                          and not ln.startswith("# `") and "settings" not in ln
                                          and not ln.startswith("# crnn_ray") and not ln.startswith("# file")))
    assert documented == section_dict(ScoreConfig())


def test_score_help_defaults_are_the_dataclass_defaults_and_the_codes():
    """`score --help` states each flag's default from the one ScoreConfig field; with no flag and no file the
    command runs with exactly those values (the flag, the YAML key and the help default cannot drift apart)."""
    import dataclasses
    import re

    from crnn_ray.config import default_text, flag_name, value_text
    from crnn_ray.score.config import ScoreConfig, build_parser, config_from_args

    parser = build_parser()
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    run = config_from_args(["--experiment", "exp", "--out", "out"])
    flags = [f for f in dataclasses.fields(ScoreConfig) if f.metadata.get("flag")]
    assert {f.name for f in flags} >= {"top_k", "select_by", "method", "seed_average", "selection", "path",
                                       "window", "reference", "latest", "start", "end", "data"}
    for f in flags:
        assert flag_name(f) in parser.format_help()
        if f.metadata.get("required"):
            continue
        stated = re.search(r"\(default: ([^)]*)\)$", " ".join(helps[flag_name(f)].split())).group(1)
        assert stated == default_text(f), f.name
        assert value_text(getattr(run, f.name)) == stated, f.name
    assert "(default: select_rank_ic)" in helps["--select-by"] and "(default: auto)" in helps["--seed-average"]
    # flags override the file; each flag goes through its field's check
    assert config_from_args(["--experiment", "e", "--out", "o", "--top-k", "3", "--seed-average",
                             "--ray"]).top_k == 3
    with pytest.raises(CliError, match=r"^python -m crnn_ray.score: --top-k: expected a positive integer, got '0'"):
        config_from_args(["--experiment", "e", "--out", "o", "--top-k", "0"])
    with pytest.raises(CliError, match=r"--method: expected one of mean, ic_weighted, rank_mean"):
        config_from_args(["--experiment", "e", "--out", "o", "--method", "median"])


def test_auto_path_keeps_small_jobs_and_one_machine_in_process(monkeypatch):
    from types import SimpleNamespace

    from crnn_ray.score.config import ScoreConfig
    from crnn_ray.score.inference import choose_path

    cfg = ScoreConfig(in_process_max_days=2, in_process_max_rows=100)

    def plan(days, stocks):
        return SimpleNamespace(n_dates=days, n_rows=days * stocks)

    assert choose_path(plan(2, 500), "auto", cfg)[0] == "in_process"   # few dates
    assert choose_path(plan(9, 10), "auto", cfg)[0] == "in_process"    # few rows
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = sys.modules.get("ray")
    if ray is not None:  # another test's Ray may still be up in this process: the question is about none
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    path, why = choose_path(plan(9, 500), "auto", cfg)
    assert path == "in_process" and "4,500 rows on this machine alone" in why
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a cluster to join (e.g. under `ray job submit`)
    path, why = choose_path(plan(9, 500), "auto", cfg)
    assert path == "ray" and "4,500 rows > 100 on a Ray cluster" in why
    monkeypatch.delenv("RAY_ADDRESS")
    assert choose_path(plan(9, 500), "auto", dataclasses.replace(cfg, ray=dataclasses.replace(
        cfg.ray, address="auto")))[0] == "ray"
    assert choose_path(plan(9, 500), "in_process", cfg) == ("in_process", "forced")
    with pytest.raises(CliError, match="path 'gpu' unknown"):
        choose_path(plan(1, 1), "gpu", cfg)


def test_latest_is_the_panels_last_date_and_excludes_start_end(tmp_path, capsys):
    from types import SimpleNamespace

    from crnn_ray.score.__main__ import main as score_main
    from crnn_ray.score.config import config_from_args
    from crnn_ray.score.plan import Scope, _scored_days

    panel = SimpleNamespace(dates=np.arange("2024-01-01", "2024-01-11", dtype="datetime64[D]"), meta={})
    members = [SimpleNamespace(meta={"splits": {"test": ["2024-01-03", "2024-01-08"]}})]
    assert _scored_days(panel, members, Scope(None), False) == (2, 7)               # the members' test period
    assert _scored_days(panel, members, Scope(None, latest=True), False) == (9, 9)  # --latest: the last date

    # with --start or --end: a one-line error before anything is read or written
    out = tmp_path / "out"
    with pytest.raises(CliError, match="--latest"):
        config_from_args(["--experiment", str(tmp_path / "missing"), "--out", str(out), "--latest", "--start",
                          "2024-01-10"])
    for flag in ("--start", "--end"):
        capsys.readouterr()
        rc = score_main(["--experiment", str(tmp_path / "missing"), "--out", str(out), "--latest", flag,
                         "2024-01-10"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --latest")
        assert not out.exists()


# ------------------------------------------------------------------ seed averaging, greedy, vs selected member
def test_seed_average_groups_seeds_and_averages_their_z_scores(tmp_path):
    from crnn_ray.score.ensemble import ensemble_signal, ensemble_units, unit_standardised
    from crnn_ray.score.select import select_units

    exp = tmp_path / "exp"
    hp = {"hparams": "{}"}
    write_trials(exp, [
        {"trial_id": "t0", "variant_id": "a", "seed": 0, "status": "ok", "valid_ic": 0.02, "select_ic": 0.01, **hp},
        {"trial_id": "t1", "variant_id": "a", "seed": 1, "status": "ok", "valid_ic": 0.04, "select_ic": 0.05, **hp},
        {"trial_id": "t2", "variant_id": "b", "seed": 0, "status": "ok", "valid_ic": 0.09, "select_ic": 0.04, **hp},
        {"trial_id": "t3", "variant_id": "b", "seed": 1, "status": "diverged", "valid_ic": 0.09, "select_ic": 0.09,
         **hp},
        {"trial_id": "t4", "variant_id": "a", "seed": 0, "status": "ok", "valid_ic": 0.01, "select_ic": 0.02,
         "hparams": '{"lr": 0.1}'},
    ])
    units, ranked = select_units(exp, "select_ic", seed_average=True)
    assert [m.trial_id for m in ranked] == ["t1", "t2", "t4", "t0"]
    assert [u.name for u in units] == ["b", "a#t0", "a#t4"]  # a/{} mean 0.03 < b 0.04; a/{lr} 0.02
    assert [[m.trial_id for m in u.members] for u in units] == [["t2"], ["t1", "t0"], ["t4"]]
    np.testing.assert_allclose([u.select_value for u in units], [0.04, 0.03, 0.02])
    np.testing.assert_allclose(units[1].valid_ic, 0.03)
    plain, _ = select_units(exp, "select_ic", seed_average=False)  # off: one unit per trial, today's order
    assert [u.members[0].trial_id for u in plain[:3]] == [m.trial_id for m in select_members(exp, 3, "select_ic")]

    rng = np.random.default_rng(3)
    preds = rng.normal(size=(5, 8, 3)) * np.array([1.0, 7.0, 0.1]) + 2.0
    preds[:, 7] = np.nan  # a stock never scored
    preds[1, :7, 2] = 4.0  # a constant member-day
    groups = [[0, 2], [1]]
    got = unit_standardised(preds, groups, "mean")
    for d in range(5):
        p = preds[d, :7]
        z = np.where(p.std(0) > 0, (p - p.mean(0)) / np.where(p.std(0) > 0, p.std(0), 1), 0.0)
        avg = z[:, [0, 2]].mean(1)
        np.testing.assert_allclose(got[d, :7, 0], (avg - avg.mean()) / avg.std(), atol=1e-12)
        np.testing.assert_allclose(got[d, :7, 1], z[:, 1], atol=1e-12)
    sig = ensemble_units(preds, groups, "ic_weighted", np.array([0.25, 0.75]))
    np.testing.assert_allclose(sig[:, :7], got[:, :7] @ [0.25, 0.75], atol=1e-12)
    assert np.isnan(sig[:, 7]).all()
    w = np.array([0.5, 0.3, 0.2])  # singleton units in column order: exactly today's per-member signal
    assert np.array_equal(ensemble_units(preds, [[0], [1], [2]], "rank_mean", w),
                          ensemble_signal(preds, "rank_mean", w), equal_nan=True)


def _greedy_market(seed=0, days=60, stocks=50):
    rng = np.random.default_rng(seed)
    label = rng.normal(size=(days, stocks))
    noise = rng.normal(size=(days, stocks))
    units = np.stack([label + 2.0 * noise,                               # 0: best alone
                      label + 2.0 * noise + 0.3 * rng.normal(size=(days, stocks)),  # 1: near-duplicate of 0
                      label + 2.5 * rng.normal(size=(days, stocks)),     # 2: weaker, independent errors
                      rng.normal(size=(days, stocks))], axis=-1)         # 3: noise
    return units, label


def test_greedy_selection_prefers_diverse_units_and_stops_when_ic_stops_rising():
    from scipy.stats import spearmanr

    from crnn_ray.metrics import zscore_by_day
    from crnn_ray.score.ensemble import greedy_select

    units, label = _greedy_market()
    z = np.stack([zscore_by_day(units[..., k]) for k in range(units.shape[-1])], axis=-1)

    def ic(idx):  # plain per-day Spearman loop (RankIC first)
        s = z[..., idx].mean(-1)
        return float(np.mean([spearmanr(s[d], label[d])[0] for d in range(len(s))]))

    def corr(a, b):
        return float(np.mean([np.corrcoef(z[d, :, a], z[d, :, b])[0, 1] for d in range(len(z))]))

    chosen, trace = greedy_select(z, label, top_k=4, corr_penalty=0.5, min_stocks=10)
    assert chosen[:2] == [0, 2]  # the near-duplicate (corr ~0.98) loses to the independent unit
    assert 3 not in chosen       # noise never raises the ensemble's IC
    for t, idx in zip(trace, [chosen[:i + 1] for i in range(len(chosen))]):
        assert abs(t["ic"] - ic(idx)) < 1e-9
    assert abs(trace[1]["corr"] - corr(2, 0)) < 1e-9
    assert abs(trace[1]["score"] - (ic([0, 2]) - 0.5 * corr(2, 0))) < 1e-9
    for i in range(1, len(chosen)):
        assert trace[i]["ic"] > trace[i - 1]["ic"]
    assert greedy_select(z, label, top_k=1, corr_penalty=0.5)[0] == [0]
    # with every candidate a copy of unit 0 nothing improves: it stops at one unit
    same = np.repeat(z[..., :1], 3, axis=-1)
    assert greedy_select(same, label, top_k=3, corr_penalty=0.0)[0] == [0]


def test_vs_selected_member_matches_a_hand_loop_and_newey_west():
    from crnn_ray.metrics import evaluate, hac_lags
    from crnn_ray.score.report import vs_line, vs_member

    units, label = _greedy_market(seed=1, days=45)
    dates = np.arange("2024-01-01", 45, dtype="datetime64[D]")
    ens_sig, mem_sig = units[..., :3].mean(-1), units[..., 0].copy()
    mem_sig[3, :] = np.nan  # a day the member cannot be scored: left out of the difference
    ens = evaluate(ens_sig, label, horizon=5, dates=dates, min_stocks=10)
    mem = evaluate(mem_sig, label, horizon=5, dates=dates, min_stocks=10)
    member = Member(name="a@seed0", trial_id="t0", variant_id="a", spec="s", seed=0, checkpoint=Path("ck"),
                    valid_ic=0.1, select_value=0.05)
    vs = vs_member(ens, mem, member, horizon=5)

    diff = []
    for d in range(45):
        if d == 3:
            continue
        diff.append(np.corrcoef(ens_sig[d], label[d])[0, 1] - np.corrcoef(mem_sig[d], label[d])[0, 1])
    x = np.array(diff)
    n, lags = len(x), max(2 * 5, int(np.floor(4 * (len(x) / 100) ** (2 / 9))))  # >= 2H lags (H = 5)
    e = x - x.mean()
    s = e @ e / n + 2 * sum((1 - j / (lags + 1)) * (e[j:] @ e[:-j]) / n for j in range(1, lags + 1))
    assert vs["n_days"] == n == 44 and vs["hac_lags"] == lags == hac_lags(44, 5)
    assert abs(vs["ic_diff"] - x.mean()) < 1e-12
    assert abs(vs["ic_diff_tstat_hac"] - x.mean() / np.sqrt(s / (n - 1))) < 1e-9
    assert vs["ic_ensemble"] == ens.summary["ic"] and vs["ic_member"] == mem.summary["ic"]
    # RankIC first: the same difference on each day's Spearman correlations
    rdiff = np.array([st.spearmanr(ens_sig[d], label[d])[0] - st.spearmanr(mem_sig[d], label[d])[0]
                      for d in range(45) if d != 3])
    assert abs(vs["rank_ic_diff"] - rdiff.mean()) < 1e-12 and vs["rank_ic_member"] == mem.summary["rank_ic"]
    # non-overlapping t: every 5th day's difference (the member's unscored day 3 left out of its offset)
    full = np.insert(x, 3, np.nan)
    parts = [full[o::5][np.isfinite(full[o::5])] for o in range(5)]
    assert vs["ic_diff_tstat_nonoverlap"] == pytest.approx(
        np.mean([p.mean() / p.std(ddof=1) * np.sqrt(len(p)) for p in parts]), rel=1e-12)
    line = vs_line(vs, "select_rank_ic")
    assert line.startswith("ensemble vs selected member a@seed0 (chosen alone by select_rank_ic): RankIC ")
    assert f"daily difference {rdiff.mean():+.4f}" in line and f"daily difference {x.mean():+.4f}" in line
    assert f"{lags} lags, 44 days)" in line


def test_predictor_worker_threads_give_the_same_bits_and_restore_torch_threads():
    """Chunks on several threads (in-process scoring) = one thread, bit for bit; torch's thread count is
    the caller's again afterwards; per-member seconds are counted."""
    from crnn_ray.zoo import load_zoo

    torch.manual_seed(1)
    D, S, F, L = 24, 30, 4, 6
    X = np.random.default_rng(1).normal(size=(D, S, F)).astype(np.float32)
    payloads = [member_payload(f"m{i}", {"spec": load_zoo()[v].spec, "lookback": L},
                               build_model(load_zoo()[v].spec, F, L).state_dict(), list(range(F)), "z")
                for i, v in enumerate(["convgru/m05", "cnn1d/m01"])]
    days, stocks = np.meshgrid(np.arange(L - 1, D), np.arange(S), indexing="ij")
    one = EnsemblePredictor(payloads, {"z": X}, device="cpu", chunk_rows=32)
    many = EnsemblePredictor(payloads, {"z": X}, device="cpu", chunk_rows=32, workers=3)
    threads = torch.get_num_threads()
    a = one.predict_indices(days.ravel(), stocks.ravel())
    b = many.predict_indices(days.ravel(), stocks.ravel())
    assert torch.get_num_threads() == threads
    assert np.array_equal(a, b) and np.isfinite(a).all()
    assert (many.member_seconds > 0).all() and many.workers == 3


def test_a_scoring_run_loads_its_panel_once_and_normalises_it_once_for_the_baselines(tmp_path):
    """Every window of a walk-forward (and each window's selection-split plans) shares one loaded panel, not one
    copy each, and the baselines' normalised features once per clip; a rewritten file is read again."""
    import os

    from conftest import synth_file
    from crnn_ray.data import load_panel, normalize_features, save_panel
    from crnn_ray.score import plan as plan_mod

    path, df, meta = synth_file(tmp_path, 20, 80, 1)
    features = list(meta["features"])[:3]
    plan_mod.release_panels()
    first = plan_mod._load_once(path, features)
    assert plan_mod._load_once(path, features) is first             # the next window's plan: the same copy
    assert plan_mod._load_once(path, features[:2]) is not first     # other columns: another load
    panel = plan_mod._load_once(path, features)
    z = plan_mod._normalised_once(panel, 5.0)
    assert plan_mod._normalised_once(panel, 5.0) is z and plan_mod._normalised_once(panel, 3.0) is not z
    np.testing.assert_array_equal(z, normalize_features(load_panel(path, features=features).X, panel.mask, clip=5.0))
    assert plan_mod._normalised_once(load_panel(path, features=features), 5.0) is None  # not the run's panel
    save_panel(df.iloc[: len(df) // 2], path, meta)                  # rewritten: read again
    os.utime(path, ns=(1, 1))
    again = plan_mod._load_once(path, features)
    assert again is not panel and len(again.dates) < len(panel.dates)
    plan_mod.release_panels()
    assert plan_mod._load_once(path, features) is not again
    plan_mod.release_panels()
    with pytest.raises(CliError, match="no such file"):
        plan_mod._load_once(tmp_path / "missing.parquet", features)
