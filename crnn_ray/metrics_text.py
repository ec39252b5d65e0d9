"""The one-line texts of an evaluation: what `python -m crnn_ray.evaluate` and the scorer print and write.

They sit beside crnn_ray/metrics.py (below the scorer), so the evaluate command and the scorer's report state
costs, break-even, the label lag and the liquidity split in the same words without importing each other.
"""

from __future__ import annotations

import math
from typing import Any

from crnn_ray.metrics import Costs, Evaluation

__all__ = ["TURNOVER_UNIT", "fmt", "pnl_note", "label_lag_text", "basis_text", "break_even_text", "format_summary",
           "costs_document", "costs_line", "liquidity_line", "cost_text", "book_verdict", "verdict_line"]

#: what one unit of turnover is, wherever a cost or a break-even is stated (docs/metrics.md, "Turnover")
TURNOVER_UNIT = ("traded notional per day, buys + sells of both legs, per unit of capital in each leg "
                 "(a full swap of a 1-day long-short book trades 4)")



def fmt(value: Any, pattern: str) -> str:
    """`pattern.format(value)`, or "n/a" for None / NaN / inf."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    try:
        return pattern.format(int(value) if pattern.endswith("d}") else value)
    except (TypeError, ValueError):
        return str(value)


def pnl_note(ev: Evaluation, returns: str | None = None) -> str:
    """One line: which daily pnl the Sharpe / vol / drawdown / curves come from (docs/metrics.md)."""
    s, h = ev.summary, ev.params["horizon"]
    method = s.get("pnl_method", "daily")
    if method == "realised":
        return (f"pnl method: realised -- daily pnl of the {h} overlapping {h}-day books on the 1-day returns"
                + (f" {returns!r}" if returns else "") + f" (booked-naive sharpe {s['sharpe_booked']:+.2f})")
    if method == "non_overlapping":
        return (f"pnl method: non_overlapping -- no 1-day returns given: every {h}th day's {h}-day book, "
                f"annualised by sqrt(P/{h}), averaged over the {h} offsets (pass --returns for the realised pnl)")
    return "pnl method: daily -- horizon 1, the label is the 1-day return"


def label_lag_text(label: str, horizon: int, lag: int | None) -> str:
    """When the label's position is entered (docs/data.md, "Label lag"); "" when the lag is unknown.

    `label y5 entered at close t+1 (label_lag 1): return close t+1 -> t+6, features up to close t`"""
    if lag is None:
        return ""
    lag, h = int(lag), int(horizon)
    if lag == 0:
        return (f"label {label} entered at close t (label_lag 0: entered at the close the features use, "
                f"frictionless): return close t -> t+{h}")
    return (f"label {label} entered at close t+{lag} (label_lag {lag}): return close t+{lag} -> t+{lag + h}, "
            f"features up to close t")


def basis_text(summary: dict) -> str:
    """Which returns every figure is on (docs/metrics.md, "Neutral returns")."""
    basis = str(summary.get("returns_basis") or "total")
    if basis == "total":
        return "returns: total (raw forward returns; a market, beta or sector tilt earns IC and pnl here)"
    return (f"returns: {basis}: IC, RankIC, quantiles and pnl on returns residualised per date against these "
            "exposures (the pnl of the books hedged with them)")


def break_even_text(value: Any) -> str:
    """`break-even 12.3 bps per unit traded`, or `break-even n/a` (nothing traded, or gross pnl <= 0)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return f"break-even {value:.1f} bps per unit traded" if ok else "break-even n/a"


def format_summary(ev: Evaluation, returns: str | None = None, *, label: str | None = None,
                   label_lag: int | None = None, liquidity: str | None = None) -> str:
    """The numbers a researcher reads first, one per line (with `label_lag`: when the label is entered; with
    `liquidity`: the liquidity split by that column)."""
    s, p = ev.summary, ev.params
    lag_line = label_lag_text(label or "label", p["horizon"], label_lag)
    lines = [verdict_line(s), *([f"execution: {lag_line}"] if lag_line else []), basis_text(s),
        f"days evaluated {s['n_days']}  skipped {s['n_days_skipped']} (< {p['min_stocks']} valid pairs)  "
        f"mean stocks/day {s['mean_stocks']:.1f}",
        f"RankIC   {s['rank_ic']:+.4f}  ICIR {s['rank_icir']:+.3f}  t {s['rank_ic_tstat']:+.2f}  "
        f"HAC t {s['rank_ic_tstat_hac']:+.2f}  non-overlapping t {fmt(s.get('rank_ic_tstat_nonoverlap'), '{:+.2f}')}"
        f"  (ICIR not annualised; Newey-West {s['hac_lags']} lags; non-overlapping: one day in {p['horizon']})",
        f"IC       {s['ic']:+.4f}  ICIR {s['icir']:+.3f}  t {s['ic_tstat']:+.2f}  HAC t {s['ic_tstat_hac']:+.2f}"
        f"  non-overlapping t {fmt(s.get('ic_tstat_nonoverlap'), '{:+.2f}')}  (Pearson)",
        pnl_note(ev, returns),
        f"long-short (top-bottom of {p['quantiles']}, horizon {p['horizon']}): pnl {s['pnl_long_short']:+.4f}  "
        f"ann {s['ann_return']:+.4f}  vol {s['ann_vol']:.4f}  sharpe {s['sharpe']:+.3f}  "
        f"maxDD {s['max_drawdown']:+.4f}",
        f"mean daily long-short pnl t {s['ls_tstat']:+.2f}  HAC t {s['ls_tstat_hac']:+.2f}  "
        f"non-overlapping t {fmt(s.get('ls_tstat_nonoverlap'), '{:+.2f}')}",
        f"long (top-mean):  pnl {s['pnl_long']:+.4f}  ann {s['ann_return_long']:+.4f}  sharpe {s['sharpe_long']:+.3f}",
        f"long-only (top):  pnl {fmt(s.get('pnl_long_only'), '{:+.4f}')}  ann "
        f"{fmt(s.get('ann_return_long_only'), '{:+.4f}')}  sharpe {fmt(s.get('sharpe_long_only'), '{:+.3f}')}  "
        f"maxDD {fmt(s.get('max_drawdown_long_only'), '{:+.4f}')}",
        f"turnover ls {s['turnover']:.4f}/day  top {s['turnover_top']:.3f}  bottom {s['turnover_bottom']:.3f}  "
        f"signal autocorr {s['signal_autocorr']:+.3f}",
        f"net of {cost_text(s)}: ls pnl {s['pnl_long_short_net']:+.4f}  sharpe {s['sharpe_net']:+.3f}  "
        f"long pnl {s['pnl_long_net']:+.4f}  long-only sharpe {fmt(s.get('sharpe_long_only_net'), '{:+.3f}')}  "
        f"(gross above; {break_even_text(s.get('break_even_bps'))}, long vs mean "
        f"{break_even_text(s.get('break_even_bps_long')).removeprefix('break-even ')}, long-only "
        f"{break_even_text(s.get('break_even_bps_long_only')).removeprefix('break-even ')})",
        "quantile mean label (1=lowest signal): "
        + "  ".join(f"q{q + 1} {v:+.5f}" for q, v in enumerate(ev.quantile_returns)),
    ]
    if liquidity:
        lines.append(liquidity_line(ev.liquidity_split, liquidity))
    return "\n".join(lines)


def _break_even_detail(value: Any, gross_total: Any) -> str:
    """`12.3 bps per unit traded`, or n/a with the reason (a losing strategy, or nothing traded).

    `gross_total`: the summed gross pnl over the same days (pnl_long_short / pnl_long), whose sign is the mean's."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.1f} bps per unit traded"
    if isinstance(gross_total, float) and math.isfinite(gross_total) and gross_total <= 0:
        return "n/a (gross pnl <= 0: no cost makes it break even)"
    return "n/a (no turnover, or no pnl days)"


def cost_text(summary: dict) -> str:
    """The cost assumption in words: `10 bps per unit traded` or `5 bps on buys, 25 bps on sells (...)`."""
    flat = float(summary.get("cost_bps") or 0.0)
    buy, sell = summary.get("cost_bps_buy"), summary.get("cost_bps_sell")
    return Costs(flat, flat).describe() if buy is None or sell is None else Costs(buy, sell).describe()


def costs_document(summary: dict) -> dict:
    """metrics.json's `costs`: the cost assumption, gross beside net for each book, the break-even costs and
    what they mean."""
    cost = float(summary.get("cost_bps") or 0.0)
    return {
        "cost_bps": cost,
        "cost_bps_buy": summary.get("cost_bps_buy", cost), "cost_bps_sell": summary.get("cost_bps_sell", cost),
        "cost_text": cost_text(summary),
        "cost_unit": f"bps of traded notional, charged per side (buys: raising a long or covering a short; sells: "
                     f"cutting a long or opening a short); turnover = {TURNOVER_UNIT}",
        "headline_sharpe": "gross" if cost == 0 else f"gross, with net of {cost_text(summary)} beside it (the "
                                                     "verdict line states the net one)",
        "sharpe_gross": summary.get("sharpe"), "sharpe_net": summary.get("sharpe_net"),
        "sharpe_net_tstat_hac": summary.get("ls_net_tstat_hac"),
        "pnl_long_short_gross": summary.get("pnl_long_short"), "pnl_long_short_net": summary.get("pnl_long_short_net"),
        "sharpe_long_gross": summary.get("sharpe_long"), "sharpe_long_net": summary.get("sharpe_long_net"),
        "sharpe_long_only_gross": summary.get("sharpe_long_only"),
        "sharpe_long_only_net": summary.get("sharpe_long_only_net"),
        "sharpe_long_only_net_tstat_hac": summary.get("long_only_net_tstat_hac"),
        "break_even_bps": summary.get("break_even_bps"),
        "break_even_bps_long": summary.get("break_even_bps_long"),
        "break_even_bps_long_only": summary.get("break_even_bps_long_only"),
        "turnover": summary.get("turnover"), "turnover_long_only": summary.get("turnover_long"),
        "break_even": ("the cost per unit traded (both sides alike) at which the summed net pnl is zero: 1e4 x "
                       "mean daily gross pnl / mean daily turnover over the pnl days; null when the turnover is 0 "
                       "or the gross pnl <= 0"),
        "break_even_text": _break_even_detail(summary.get("break_even_bps"), summary.get("pnl_long_short")),
        "break_even_long_text": _break_even_detail(summary.get("break_even_bps_long"), summary.get("pnl_long")),
        "break_even_long_only_text": _break_even_detail(summary.get("break_even_bps_long_only"),
                                                        summary.get("pnl_long_only")),
    }


def costs_line(summary: dict) -> str:
    """One printed line: the cost assumption, gross vs net of each book, and the break-even costs."""
    c = costs_document(summary)
    head = ("costs: none assumed (evaluation.cost_bps 0): every pnl and Sharpe above is gross"
            if c["cost_bps"] == 0 and not (c["cost_bps_buy"] or c["cost_bps_sell"]) else
            f"costs: {c['cost_text']}: long-short Sharpe {fmt(c['sharpe_gross'], '{:+.2f}')} gross, "
            f"{fmt(c['sharpe_net'], '{:+.2f}')} net; pnl {fmt(c['pnl_long_short_gross'], '{:+.4f}')} gross, "
            f"{fmt(c['pnl_long_short_net'], '{:+.4f}')} net; long-only Sharpe "
            f"{fmt(c['sharpe_long_only_gross'], '{:+.2f}')} gross, {fmt(c['sharpe_long_only_net'], '{:+.2f}')} net")
    return (f"{head}; break-even {c['break_even_text']} (long vs mean {c['break_even_long_text']}, long-only "
            f"{c['break_even_long_only_text']}); turnover = {TURNOVER_UNIT}")


def book_verdict(summary: dict, book: str = "ls") -> str:
    """`net Sharpe +0.85 (HAC t +1.20), break-even 14.2 bps, turnover 0.47/day` of one book ("ls", "long_only")."""
    keys = {"ls": ("sharpe_net", "ls_net_tstat_hac", "break_even_bps", "turnover", "pnl_long_short"),
            "long_only": ("sharpe_long_only_net", "long_only_net_tstat_hac", "break_even_bps_long_only",
                          "turnover_long", "pnl_long_only")}[book]
    sharpe, t, be, turnover, gross = (summary.get(k) for k in keys)
    if isinstance(be, (int, float)) and math.isfinite(be):
        even = f"break-even {be:.1f} bps"
    elif isinstance(gross, (int, float)) and math.isfinite(gross) and gross <= 0:
        even = "no break-even (gross pnl <= 0)"
    else:
        even = "no break-even (nothing traded)"
    return (f"net Sharpe {fmt(sharpe, '{:+.2f}')} (HAC t {fmt(t, '{:+.2f}')}), {even}, turnover "
            f"{fmt(turnover, '{:.2f}')}/day")


def verdict_line(summary: dict, *, name: str = "signal", baseline: tuple[str, dict] | None = None,
                 control: str | None = None) -> str:
    """The one line to read first: the long-short and long-only books' net Sharpe at the stated cost with
    its Newey-West t, break-even cost and turnover, on the stated returns basis; the same for `baseline`
    (name, summary) when given; `control`: the turnover control used (e.g. "signal smoothed over 3 days,
    chosen on the selection split")."""
    basis = str(summary.get("returns_basis") or "total")
    line = (f"VERDICT {name} at {cost_text(summary)} ({basis} returns"
            + (f"; {control}" if control else "") + f"): long-short {book_verdict(summary)}; long-only "
            f"{book_verdict(summary, 'long_only')}")
    if baseline is not None:
        line += f" | best baseline {baseline[0]}: long-short {book_verdict(baseline[1])}"
    return line


def liquidity_line(split: dict | None, column: str | None = None) -> str:
    """One printed line: IC on the more vs the less liquid half of each day's names, or why there is none."""
    if not split or not split.get("available"):
        return "liquidity split: " + ((split or {}).get("note") or "n/a (no liquidity column)")
    name = f" by {column}" if column else ""
    return (f"liquidity split{name} (each day's names halved at the median): IC "
            f"{fmt(split['ic_liquid'], '{:+.4f}')} more liquid vs {fmt(split['ic_illiquid'], '{:+.4f}')} less "
            f"liquid (difference {fmt(split['ic_diff'], '{:+.4f}')}, HAC t {fmt(split['ic_diff_tstat_hac'], '{:+.2f}')}"
            f", non-overlapping t {fmt(split.get('ic_diff_tstat_nonoverlap'), '{:+.2f}')}, {split['n_days']} days); RankIC {fmt(split['rank_ic_liquid'], '{:+.4f}')} vs "
            f"{fmt(split['rank_ic_illiquid'], '{:+.4f}')}; names per half {fmt(split['mean_stocks_liquid'], '{:.1f}')}"
            f" vs {fmt(split['mean_stocks_illiquid'], '{:.1f}')}")
