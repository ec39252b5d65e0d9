"""The synthetic market: the embedded default data set, with a planted nonlinear signal of known strength.

The research report's features (raw3/raw5) are private, so the quickstart needs data where a model that sees
a window of days can demonstrably learn something. Prices follow a market + sector factor model with
GARCH-like volatility; stocks list, delist and halt; and a planted expected return, a NONLINEAR function of
past features, drives the next H days. The oracle IC (planted expected return vs realised label) is stored in
the metadata as the ceiling a model could reach.

Planted score at day t (each term standardised across stocks that day):
  * interaction   char_a_t * char_b_t                         (a linear model on today's features misses it)
  * trend         tanh(3 * (char_c_t - char_c_{t-10}))         (needs the window)
  * attention     -[max(volume_rel_{t-4..t}) > 1]               (threshold over recent days)
The score s_t adds a drift of k*s_t/H to each of days t+1..t+H, so the planted expected H-day return known
at t is  sum_{m=0..H-1} k*(H-m)/H * s_{t-m}.

Presets (docs/data.md): "easy" (the default, the quickstart's market: oracle IC ~0.155) and "realistic" (oracle
IC ~0.04 as strong real daily signals, Student-t idiosyncratic shocks, stronger sector moves). Every panel also
carries the 1-day forward return `y1` (the realised pnl of overlapping H-day books needs it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from crnn_ray.data.ingest import DEFAULT_DELISTING_RETURN, compute_features, forward_labels, held_returns_text
from crnn_ray.data.panel import PANEL_VERSION, RETURNS
from crnn_ray.io import CliError
from crnn_ray.metrics import daily_ic, zscore_by_day

#: OHLCV-derived features the synthetic panel keeps (computed by the ingest feature code)
OHLCV_FEATURES = ["ret1", "open_gap", "high_rel", "low_rel", "volume_rel"]
#: slow per-stock 'characteristics' standing in for the report's private raw3 features
CHAR_FEATURES = ["char_a", "char_b", "char_c"]
FEATURES = OHLCV_FEATURES + CHAR_FEATURES
N_SECTORS = 10
BURN_IN = 40
#: planted signal strength: total H-day drift per unit of score (tuned for an oracle IC around 0.15)
SIGNAL_STRENGTH = 0.0018
#: market presets: planted signal strength, idiosyncratic shock law (None: normal; else Student-t with that many
#: degrees of freedom, scaled to unit variance) and the daily vol of the sector factors
#: degrees of freedom, scaled to unit variance), the daily vol of the sector factors, and whether each day's log
#: return carries -sigma^2/2 (its conditional variance): without it E[close_{t+1} / close_t] = exp(sigma^2/2)
#: rises with volatility, so any volatility or beta tilt earns a Pearson IC and pnl with no skill
PRESETS = {
    "easy": {"signal_strength": SIGNAL_STRENGTH, "idio_dof": None, "sector_vol": 0.006, "log_drift": False},
    "realistic": {"signal_strength": 0.00055, "idio_dof": 4, "sector_vol": 0.012, "log_drift": True},
}


def synth_dates(n_days: int) -> np.ndarray:
    """The synthetic market's calendar: business days from 2018-01-02 (what `sweep --check` shows windows on)."""
    return pd.bdate_range("2018-01-02", periods=n_days).to_numpy().astype("datetime64[D]")


def synthesize(n_symbols: int = 300, n_days: int = 600, seed: int = 0, horizon: int = 5,
               signal_strength: float | None = None, preset: str = "easy",
               delisting_return: float = DEFAULT_DELISTING_RETURN) -> tuple[pd.DataFrame, dict]:
    """Generate the synthetic panel: (long DataFrame with features, label, y1, raw OHLCV, oracle; metadata).

    `preset`: "easy" (the quickstart's market) or "realistic" (see PRESETS, docs/data.md);
    `signal_strength` (None: the preset's) overrides the planted drift per unit of score; `delisting_return`:
    what a held name realises after its last close when it delists (0: its last price).
    """
    if preset not in PRESETS:
        raise CliError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    knobs = PRESETS[preset]
    if signal_strength is None:
        signal_strength = knobs["signal_strength"]
    if n_symbols < 10:
        raise CliError(f"--symbols must be >= 10 (got {n_symbols})")
    if n_days < 60:
        raise CliError(f"--days must be >= 60 (got {n_days})")
    if horizon < 1:
        raise CliError(f"--horizon must be >= 1 (got {horizon})")
    rng = np.random.default_rng(seed)
    S, T = int(n_symbols), int(n_days) + BURN_IN
    H = int(horizon)

    # --- universe: sectors, betas, listing / delisting, halts --------------------------------------------
    sector = rng.integers(0, N_SECTORS, S)
    beta = np.clip(rng.normal(1.0, 0.3, S), 0.2, 2.0)
    sector_load = np.clip(rng.normal(1.0, 0.3, S), 0.2, 2.0)
    list_day = np.where(rng.random(S) < 0.25, rng.integers(BURN_IN, BURN_IN + int(0.6 * n_days), S), 0)
    delist_day = np.where(rng.random(S) < 0.15, rng.integers(BURN_IN + int(0.4 * n_days), T, S), T)
    delist_day = np.maximum(delist_day, list_day + 60)
    t_idx = np.arange(T)[:, None]
    listed = (t_idx >= list_day[None, :]) & (t_idx < delist_day[None, :])
    halted = rng.random((T, S)) < 0.004
    # a few multi-day halts
    for _ in range(max(1, S // 20)):
        s, t0, length = rng.integers(S), rng.integers(T), rng.integers(2, 10)
        halted[t0:t0 + length, s] = True
    present = listed & ~halted

    # --- exogenous state: characteristics, volatility (GARCH), shocks, volume -----------------------------
    rho = np.array([0.98, 0.97, 0.95])
    chars = []
    for k in range(3):
        eps = rng.standard_normal((T, S)) * np.sqrt(1 - rho[k] ** 2)
        eps[0] = rng.standard_normal(S)
        chars.append(lfilter([1.0], [1.0, -rho[k]], eps, axis=0))
    omega_m, alpha, gbeta = 0.01 ** 2 * 0.05, 0.08, 0.87
    idio_base = np.exp(rng.normal(np.log(0.018), 0.3, S))
    var_m = 0.01 ** 2
    var_i = idio_base ** 2
    z_m = rng.standard_normal(T)
    z_sec = rng.standard_normal((T, N_SECTORS)) * knobs["sector_vol"]
    dof = knobs["idio_dof"]
    # fat tails: Student-t shocks scaled to unit variance, so the GARCH vol is the same as with normal shocks
    z_i = rng.standard_normal((T, S)) if dof is None else rng.standard_t(dof, (T, S)) / np.sqrt(dof / (dof - 2.0))
    r_m = np.empty(T)
    r_i = np.empty((T, S))
    sig_i = np.empty((T, S))
    sig_m = np.empty(T)
    for t in range(T):  # GARCH(1,1): today's variance from yesterday's shock
        sig_m[t] = np.sqrt(var_m)
        r_m[t] = sig_m[t] * z_m[t]
        sig_i[t] = np.sqrt(var_i)
        r_i[t] = sig_i[t] * z_i[t]
        var_m = omega_m + alpha * r_m[t] ** 2 + gbeta * var_m
        var_i = idio_base ** 2 * (1 - alpha - gbeta) + alpha * r_i[t] ** 2 + gbeta * var_i
    vol_regime = lfilter([1.0], [1.0, -0.9], rng.standard_normal((T, S)) * 0.25, axis=0)
    spikes = (rng.random((T, S)) < 0.03) * rng.uniform(0.8, 2.0, (T, S))
    log_vol = (np.log(rng.uniform(2e5, 5e6, S))[None, :] + vol_regime + spikes
               + 0.4 * np.abs(z_i) + rng.normal(0, 0.2, (T, S)))
    volume = np.round(np.exp(log_vol))

    # --- planted score from exogenous published features (exact functions of the panel's columns) --------

    def nan_where_absent(a: np.ndarray) -> np.ndarray:
        return np.where(present, a, np.nan)

    vol_feats, _ = compute_features({"close": pd.DataFrame(nan_where_absent(np.ones((T, S)))),
                                     "volume": pd.DataFrame(nan_where_absent(volume))})
    volume_rel = vol_feats["volume_rel"].to_numpy()
    ca, cb, cc = (nan_where_absent(c) for c in chars)
    ok = present & np.isfinite(volume_rel)
    cc_lag = np.vstack([np.full((10, S), np.nan), cc[:-10]])
    term_inter = zscore_by_day(np.where(ok, ca * cb, np.nan))  # 0 where not ok
    term_trend = zscore_by_day(np.where(ok & np.isfinite(cc_lag), np.tanh(3.0 * (cc - cc_lag)), np.nan))
    vr_max = pd.DataFrame(volume_rel).rolling(5, min_periods=1).max().to_numpy()
    term_attn = zscore_by_day(np.where(ok, -(vr_max > 1.0).astype(float), np.nan))
    score = zscore_by_day(np.where(ok, term_inter + term_trend + 0.7 * term_attn, np.nan))

    # drift: s_t spreads k*s_t over days t+1..t+H; oracle = the part of E[y_t] known at t
    k = float(signal_strength)
    drift = np.zeros((T, S))
    oracle = np.zeros((T, S))
    for m in range(H):
        drift[m + 1:] += (k / H) * score[:T - m - 1]
        oracle[m:] += k * (H - m) / H * score[:T - m]

    # --- prices and OHLC -----------------------------------------------------------------------------------
    r = beta[None, :] * r_m[:, None] + sector_load[None, :] * z_sec[:, sector] + r_i + drift
    if knobs["log_drift"]:  # -sigma^2/2 of the day's conditional variance: E[arithmetic return] = planted drift
        r -= 0.5 * ((beta[None, :] * sig_m[:, None]) ** 2 + (sector_load[None, :] * knobs["sector_vol"]) ** 2
                    + sig_i ** 2)
    log_close = np.log(rng.uniform(10, 200, S))[None, :] + np.cumsum(r, axis=0)
    close = np.exp(log_close)
    prev_close = np.vstack([close[:1], close[:-1]])
    overnight = 0.3 * r + rng.normal(0, 0.3, (T, S)) * sig_i
    open_ = prev_close * np.exp(overnight)
    hi_ext = np.abs(rng.normal(0, 0.5, (T, S))) * sig_i
    lo_ext = np.abs(rng.normal(0, 0.5, (T, S))) * sig_i
    high = np.maximum(open_, close) * np.exp(hi_ext)
    low = np.minimum(open_, close) * np.exp(-lo_ext)

    wide = {name: pd.DataFrame(nan_where_absent(a)) for name, a in
            (("open", open_), ("high", high), ("low", low), ("close", close), ("volume", volume))}
    feats, jump = compute_features(wide)
    label = f"y{H}"
    # held returns: every close-to-close move of a held name realised, its jumps too (price_break flags them
    # for data.labels.training_label: training targets drop them, evaluation never does)
    labels, _ = forward_labels(wide["close"].to_numpy(), H, delisting_return=delisting_return)
    y, y_1 = labels[label], labels[RETURNS]

    # --- drop burn-in, long table ---------------------------------------------------------------------------
    keep = slice(BURN_IN, T)
    dates = synth_dates(n_days)
    symbols = np.array([f"S{i:04d}" for i in range(S)], dtype=object)
    pres = present[keep]
    di, si = np.nonzero(pres)
    cols: dict[str, np.ndarray] = {"date": dates[di], "symbol": symbols[si]}
    for name in OHLCV_FEATURES:
        cols[name] = feats[name].to_numpy()[keep][di, si].astype(np.float32)
    for name, c in zip(CHAR_FEATURES, chars):
        cols[name] = c[keep][di, si].astype(np.float32)
    cols[label] = y[keep][di, si].astype(np.float32)
    if label != RETURNS:
        cols[RETURNS] = y_1[keep][di, si].astype(np.float32)
    cols["price_break"] = jump.to_numpy(dtype=bool)[keep][di, si]  # a move beyond +100 % / -50 %: a real one
    # the group neutral returns are residualised against; text, so that no reader takes it for a feature
    cols["sector"] = np.array([f"sector{k:02d}" for k in range(N_SECTORS)], dtype=object)[sector[si]]
    for name in ("open", "high", "low", "close", "volume"):
        cols[name] = wide[name].to_numpy()[keep][di, si]
    oracle_col = f"oracle_{label}"
    cols[oracle_col] = oracle[keep][di, si].astype(np.float32)
    df = pd.DataFrame(cols)

    # oracle IC on what a model can be scored on: rows with all features finite and a finite label
    feat_ok = np.isfinite(df[FEATURES].to_numpy()).all(axis=1) & np.isfinite(df[label].to_numpy())
    D = len(dates)
    grid_sig, grid_lab = np.full((D, S), np.nan), np.full((D, S), np.nan)
    grid_sig[di[feat_ok], si[feat_ok]] = df[oracle_col].to_numpy(np.float64)[feat_ok]
    grid_lab[di[feat_ok], si[feat_ok]] = df[label].to_numpy(np.float64)[feat_ok]
    ic = daily_ic(grid_sig, grid_lab, min_stocks=10)  # NaN on skipped and constant days
    oracle_ic = float(ic[np.isfinite(ic)].mean()) if np.isfinite(ic).any() else float("nan")

    meta = {
        "version": PANEL_VERSION,
        "features": FEATURES,
        "labels": [label] + ([RETURNS] if label != RETURNS else []),
        "horizons": {label: H, RETURNS: 1},
        "label_lag": 0,  # yH = close_{t+H} / close_t - 1: the planted drift starts at t+1
        "returns": RETURNS,
        "source": "synth",
        "aux_columns": ["price_break"],
        "group_column": "sector",
        "held_returns": held_returns_text(delisting_return),
        "oracle_ic": {label: round(oracle_ic, 6)},
        "params": {"n_symbols": S, "n_days": int(n_days), "seed": int(seed), "horizon": H, "preset": preset,
                   "signal_strength": k, "idio_dof": dof, "sector_vol": knobs["sector_vol"],
                   "log_drift": bool(knobs["log_drift"]),
                   "delisting_return": float(delisting_return),
                   "n_sectors": N_SECTORS, "burn_in": BURN_IN,
                   "oracle_columns": {label: oracle_col},
                   "oracle_ic_rows": "all features finite and label finite; days with >= 10 stocks"},
    }
    return df, meta


def summary(df: pd.DataFrame, meta: dict) -> str:
    """One paragraph: what was generated and how strong the planted signal is."""
    label = meta["labels"][0]
    return (f"synthetic market: {len(df)} rows, {df['symbol'].nunique()} symbols x {df['date'].nunique()} days "
            f"({pd.Timestamp(df['date'].min()).date()} .. {pd.Timestamp(df['date'].max()).date()}), "
            f"{len(meta['features'])} features ({', '.join(meta['features'])}), label {label} "
            f"(forward return over t+1..t+{meta['horizons'][label]}; 1-day returns {meta.get('returns', RETURNS)}), "
            f"preset {meta['params'].get('preset', 'easy')}, seed {meta['params']['seed']}; "
            f"oracle IC {meta['oracle_ic'][label]:.4f} (planted expected return vs realised {label}).")
