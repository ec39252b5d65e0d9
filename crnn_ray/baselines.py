"""Baselines a net must beat, on the same rows as the nets: ridges, gradient-boosted trees and a reversal.

A net that does not beat what a researcher would try first does not earn its cost (GPU time, fragility). A
linear ridge on today's features is the weakest such bar; the second-order ridge sees interactions, the window
ridge sees the lookback the nets see, and LightGBM is the textbook nonlinear learner on tabular rows. All are
fitted on the training part only (per window when called per window), deterministic, and use only data at or
before the scored day.

    ridge         least squares with an L2 penalty on the last day's normalised features (the nets' inputs at
                  day t), fitted on the training part's samples against the nets' training target (the
                  per-date ranked label when rank_label); intercept unpenalised.
    reversal      minus the sum of `ret1` over the last 5 days (past losers up), from the raw panel feature;
                  absent when the panel has no `ret1` column.
    ridge2        ridge on the last day's F features, their F(F-1)/2 pairwise products and F squares
                  (8 features: 8 + 28 + 8 = 44 columns), each column standardised on the training samples.
    ridge_window  ridge on the whole lookback window, the L x F normalised features the nets see, flattened.
    lgbm          LightGBM regression on the last day's normalised features (fixed seed, deterministic,
                  modest trees); early-stopped on its mean daily IC over the valid part's samples when `valid`
                  is given, else LGBM_ROUNDS rounds. Absent (reason in `info`) when lightgbm cannot be imported.

`baseline_signals` returns [D, S] grids (NaN where a row is not a sample), ready for `metrics.evaluate`; the
names above are stable (they become the `baseline/<name>` rows of the leaderboards). Numpy, plus lightgbm for
"lgbm": no torch, no Ray. The ridges are fitted from moment sums over row chunks, so the window ridge's L x F
design is never built for all training rows at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from crnn_ray.data import NormalisedPanel, gather_windows, normalize_features, sample_index
from crnn_ray.data import rank_label as _rank_label  # the name rank_label is baseline_signals' flag
from crnn_ray.data.labels import training_label

__all__ = ["BASELINES", "LGBM_MAX_ROUNDS", "LGBM_PARAMS", "LGBM_PATIENCE", "LGBM_ROUNDS", "REVERSAL_DAYS",
           "RIDGE_ALPHA", "baseline_signals", "fit_ridge", "fit_ridge_moments", "normalised_features",
           "second_order"]

#: every baseline baseline_signals can return, in the order it returns them
BASELINES = ("ridge", "reversal", "ridge2", "ridge_window", "lgbm")
#: ridge penalty per training sample (the features are per-date robust z-scores, so about unit scale)
RIDGE_ALPHA = 1e-2
REVERSAL_DAYS = 5
#: LightGBM settings: small trees with large leaves (daily cross-sections are noisy), no row / column
#: sampling and deterministic=True, so a fit depends only on its data and num_threads
LGBM_PARAMS = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "max_depth": 6,
    "min_data_in_leaf": 200, "lambda_l2": 1.0, "feature_fraction": 1.0, "bagging_fraction": 1.0,
    "max_bin": 63, "seed": 0, "deterministic": True, "force_row_wise": True, "verbosity": -1,
}
#: boosting rounds without a valid part; with one, at most LGBM_MAX_ROUNDS, stopping after LGBM_PATIENCE
#: rounds without a higher mean daily IC on the valid samples (the rounds of the best one are kept)
LGBM_ROUNDS = 150
LGBM_MAX_ROUNDS = 1000
LGBM_PATIENCE = 50
#: design-matrix cells per chunk when fitting / predicting a ridge from moment sums (~32 MB of float64)
_CHUNK_CELLS = 4_000_000


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of ridge regression y ~ x with penalty alpha * n on the coefficients only."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    gram = xc.T @ xc + alpha * len(x) * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return beta, float(y_mean - x_mean @ beta)


def second_order(x: np.ndarray) -> np.ndarray:
    """[N, F] -> [N, F + F(F-1)/2 + F]: the features, their pairwise products (i < j), then their squares."""
    x = np.asarray(x, dtype=np.float64)
    i, j = np.triu_indices(x.shape[1], k=1)
    return np.concatenate([x, x[:, i] * x[:, j], x * x], axis=1)


def _chunks(n: int, width: int):
    step = max(1024, _CHUNK_CELLS // max(width, 1))
    for a in range(0, n, step):
        yield slice(a, min(a + step, n))


def fit_ridge_moments(design: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, y: np.ndarray, width: int,
                      alpha: float = RIDGE_ALPHA, standardise: bool = False) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of ridge y ~ design(rows) from moment sums over row chunks (never the whole
    [N, width] design in memory). With `standardise`, the penalty applies to the columns scaled to unit
    standard deviation on these rows (columns constant on them get a zero coefficient); the coefficients
    returned act on the unscaled design. Same solution as fit_ridge when not standardising."""
    y = np.asarray(y, dtype=np.float64)
    n = len(rows)
    sxx = np.zeros((width, width))
    sx, sxy = np.zeros(width), np.zeros(width)
    for part in _chunks(n, width):
        z = design(rows[part])
        sxx += z.T @ z
        sx += z.sum(axis=0)
        sxy += z.T @ y[part]
    mx, my = sx / n, float(y.mean())
    cxx = sxx - n * np.outer(mx, mx)           # centred Gram matrix
    cxy = sxy - n * mx * my
    scale = np.ones(width)
    if standardise:
        sd = np.sqrt(np.clip(np.diag(cxx) / n, 0.0, None))
        scale = np.where(sd > 1e-12 * max(1.0, float(sd.max(initial=0.0))), sd, np.inf)
    g = cxx / np.outer(scale, scale)
    g[~np.isfinite(g)] = 0.0
    beta = np.linalg.solve(g + alpha * n * np.eye(width), cxy / scale) / scale
    return beta, float(my - mx @ beta)


def _predict(design: Callable[[np.ndarray], np.ndarray], cells: np.ndarray, width: int, beta: np.ndarray,
             intercept: float) -> np.ndarray:
    out = np.empty(len(cells))
    for part in _chunks(len(cells), width):
        out[part] = design(cells[part]) @ beta + intercept
    return out


def _daily_ic_feval(days: np.ndarray, min_rows: int = 10):
    """A LightGBM feval: mean over days of the Pearson correlation of prediction and target across the rows
    of each day (the nets' valid_ic; with the ranked target, about their RankIC). Higher is better."""
    codes, day = np.unique(days, return_inverse=True)
    count = np.bincount(day, minlength=len(codes)).astype(np.float64)
    keep = count >= min_rows

    def feval(pred, data):
        y = np.asarray(data.get_label(), dtype=np.float64)
        p = np.asarray(pred, dtype=np.float64)
        pc = p - (np.bincount(day, p, len(codes)) / count)[day]
        yc = y - (np.bincount(day, y, len(codes)) / count)[day]
        cov, vp, vy = (np.bincount(day, a * b, len(codes)) for a, b in ((pc, yc), (pc, pc), (yc, yc)))
        ok = keep & (vp > 0) & (vy > 0)
        ic = cov[ok] / np.sqrt(vp[ok] * vy[ok])
        return "daily_ic", float(ic.mean()) if ic.size else 0.0, True

    return feval


def _fit_lgbm(X: np.ndarray, rows: np.ndarray, target: np.ndarray, valid_rows: np.ndarray | None,
              valid_target: np.ndarray | None, num_threads: int):
    """(booster, rounds used) of LightGBM on the last day's features. With valid rows: early stopping on their
    mean daily IC (l2 on a ranked, noisy target barely moves and stops after a round or two)."""
    import lightgbm as lgb  # deferred: heavy, and only this baseline needs it

    params = {**LGBM_PARAMS, "num_threads": int(num_threads), "metric": "None"}
    train = lgb.Dataset(X[rows[:, 0], rows[:, 1]], label=target)
    if valid_rows is not None and len(valid_rows):
        valid = lgb.Dataset(X[valid_rows[:, 0], valid_rows[:, 1]], label=valid_target, reference=train)
        booster = lgb.train(params, train, num_boost_round=LGBM_MAX_ROUNDS, valid_sets=[valid],
                            feval=_daily_ic_feval(valid_rows[:, 0]),
                            callbacks=[lgb.early_stopping(LGBM_PATIENCE, verbose=False)])
        return booster, int(booster.best_iteration or booster.current_iteration())
    return lgb.train(params, train, num_boost_round=LGBM_ROUNDS), LGBM_ROUNDS


def normalised_features(panel, clip: float) -> np.ndarray:
    """The features the baselines fit on: normalize_features of a raw Panel, or a NormalisedPanel's own Z (as
    float32) when it was normalised with this clip."""
    if not isinstance(panel, NormalisedPanel):
        return normalize_features(panel.X, panel.mask, clip=clip)
    if float(panel.clip) != float(clip):
        raise ValueError(f"the normalised panel has clip {panel.clip:g}, the baselines ask for {clip:g}")
    return panel.features_float32()


def _raw_feature(panel, name: str) -> np.ndarray:
    """A raw feature column [D, S] (a NormalisedPanel keeps the ones it was asked to: keep_raw)."""
    if isinstance(panel, NormalisedPanel):
        return panel.raw_feature(name)
    return panel.X[:, :, panel.features.index(name)]


def baseline_signals(panel, train: tuple[int, int], label: str, lookback: int, *, clip: float = 5.0,
                     rank_label: bool = True, days: tuple[int, int] | None = None,
                     valid: tuple[int, int] | None = None, which: Iterable[str] | None = None,
                     num_threads: int | None = None, info: dict | None = None,
                     normalised: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{baseline name: signal [D, S]} over the panel's days (only `days` = (lo, hi) filled when given).

    A cell is filled where the nets could score it too: the day has `lookback` days of history, the row is
    present with all features finite (the panel mask). Every model is fitted on the training part's samples
    (rows with a finite label in `train`); `valid` (day range) only early-stops lgbm. `which`: the names to
    compute (default: all of BASELINES; a model needing more training samples than it has is left out).
    `num_threads`: lgbm's threads (the caller's CPU quota; default 1). `info`, if given, receives per name
    {"fit_s": seconds to fit and predict, "n_train": samples, "n_params": columns} (+ "rounds" for lgbm,
    "skipped": why, for a model left out).
    """
    wanted = tuple(BASELINES if which is None else which)
    unknown = sorted(set(wanted) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown} (have {', '.join(BASELINES)})")
    info = {} if info is None else info
    n_days = panel.n_days
    lo, hi = (0, n_days - 1) if days is None else (int(days[0]), int(days[1]))
    scorable = np.zeros(panel.mask.shape, dtype=bool)
    first = max(lo, int(lookback) - 1)
    if first <= hi:
        scorable[first:hi + 1] = panel.mask[first:hi + 1]
    cells = np.argwhere(scorable)
    out: dict[str, np.ndarray] = {}

    raw_label = training_label(panel, label)  # the fits' target: jump days masked (as the nets' training rows)
    # `normalised`: the caller's normalize_features(panel.X, panel.mask, clip) of the whole panel (per date, so the
    # same for every window: a walk-forward caller normalises once, not once per window); a NormalisedPanel
    # (the sweep driver's shared copy) brings its own
    X = normalised if normalised is not None else normalised_features(panel, clip)
    n_feat = X.shape[2]
    rows = sample_index(panel.mask, raw_label, lookback, *train)
    y_all = _rank_label(raw_label) if rank_label else raw_label
    target = y_all[rows[:, 0], rows[:, 1]].astype(np.float64)

    def grid(values: np.ndarray) -> np.ndarray:
        g = np.full(panel.mask.shape, np.nan)
        g[scorable] = values  # argwhere and boolean indexing share the row-major order
        return g

    last_day = lambda r: X[r[:, 0], r[:, 1]].astype(np.float64)
    pairs = n_feat * (n_feat - 1) // 2
    L = int(lookback)
    ridges = {  # name: (design, width, standardise)
        "ridge2": (lambda r: second_order(X[r[:, 0], r[:, 1]]), 2 * n_feat + pairs, True),
        "ridge_window": (lambda r: gather_windows(X, r[:, 0], r[:, 1], L).reshape(len(r), L * n_feat)
                         .astype(np.float64), L * n_feat, False),
    }
    for name in BASELINES:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        if name == "ridge":
            if len(rows) > n_feat:
                beta, intercept = fit_ridge(X[rows[:, 0], rows[:, 1]], target)
                out[name] = grid(_predict(last_day, cells, n_feat, beta, intercept))
                info[name] = {"n_params": n_feat}
        elif name == "reversal":
            if "ret1" not in panel.features:
                info[name] = {"skipped": "the panel has no ret1 feature"}
                continue
            ret1 = _raw_feature(panel, "ret1").astype(np.float64)
            past = np.full_like(ret1, np.nan)
            csum = np.cumsum(np.nan_to_num(ret1, nan=0.0), axis=0)
            k = REVERSAL_DAYS
            past[k - 1:] = csum[k - 1:] - np.vstack([np.zeros((1, ret1.shape[1])), csum[:-k]])
            out[name] = np.where(scorable & np.isfinite(ret1), -past, np.nan)
            info[name] = {"n_params": 0}
        elif name in ridges:
            design, width, standardise = ridges[name]
            if len(rows) > width:
                beta, intercept = fit_ridge_moments(design, rows, target, width, standardise=standardise)
                out[name] = grid(_predict(design, cells, width, beta, intercept))
                info[name] = {"n_params": width}
        elif name == "lgbm":
            if len(rows) <= 2 * LGBM_PARAMS["min_data_in_leaf"]:
                info[name] = {"skipped": f"{len(rows)} training samples"}
                continue
            valid_rows = valid_target = None
            if valid is not None:
                valid_rows = sample_index(panel.mask, raw_label, lookback, *valid)
                valid_target = y_all[valid_rows[:, 0], valid_rows[:, 1]].astype(np.float64)
            try:
                booster, rounds = _fit_lgbm(X, rows, target, valid_rows, valid_target, num_threads or 1)
            except ImportError as exc:
                info[name] = {"skipped": f"lightgbm not importable ({exc})"}
                continue
            out[name] = grid(booster.predict(X[cells[:, 0], cells[:, 1]], num_threads=int(num_threads or 1)))
            info[name] = {"n_params": n_feat, "rounds": rounds}
        if name in out:
            info[name].update(fit_s=time.perf_counter() - t0, n_train=0 if name == "reversal" else len(rows))
        elif name not in info:
            info[name] = {"skipped": f"{len(rows)} training samples"}
    return out
