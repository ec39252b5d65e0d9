"""Drawing of the tear sheet: matplotlib set up once, one function per figure, PNG bytes drawn for 2x pixel
density, the figures inlined into the HTML as data: URIs, HTML tables, cells and footnotes.

matplotlib is imported on the first figure only (`pyplot()`): the scorer without labels (the daily job's
signals) and the modules that import the report never pay for it.

Sizes. A figure meant to be shown `css` CSS pixels wide is drawn `css / 100` inches wide (100 CSS px per inch)
and saved at DPI = 200, so its PNG holds 2 device pixels per CSS pixel: sharp on a 2x (retina) screen and when
a 1x screen zooms in. A full-width figure is FULL = 1100 CSS px (the page's content width: a 2200 px PNG), a
half-width one HALF = 544 (two side by side with a 12 px gap: 1088 px). Points then read at 100/72 CSS px, so
the 9 pt text of the figures is ~12.5 px on the page, the size of the tables' text.

Units (UNITS, stated once at the top of the page; every axis and table column names its own): mean returns in
bps, annual, cumulative (summed) and drawdown figures in %, turnover in % of one leg's capital a day.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["pyplot", "png", "html_table", "figure", "figure_tag", "inline_figures", "data_uri", "cell", "Notes",
           "Absent", "FULL", "HALF", "DPI", "UNITS", "DASH", "date_axis", "pnl_figure", "ic_daily_figure",
           "ic_hist_figure", "ic_monthly_figure", "quantile_figure", "quantile_cum_figure", "spread_figure",
           "turnover_figure", "autocorr_figure", "correlation_figure"]

#: CSS px of a full-width figure (the page's content width) and of one of two side by side
FULL, HALF = 1100, 544
#: CSS px per inch of a figure, and the PNG's pixels per inch: 2 device pixels per CSS pixel
CSS_PX_PER_INCH = 100
DPI = 2 * CSS_PX_PER_INCH
#: the page's unit convention, stated once at its top
UNITS = ("Units: mean returns in bps (basis points, 1 bp = 0.01%); annual figures, cumulative pnl (the sum of "
         "daily returns, not compounded) and drawdowns in %; turnover in % of one leg's capital traded a day "
         "(buys + sells of both legs); IC, t-stats and Sharpe ratios are plain numbers (Sharpe annualised). "
         "Every table column and axis names its unit.")
#: an absent value
DASH = "—"


def pyplot():
    """matplotlib.pyplot on the Agg backend with the tear sheet's style (matplotlib.dates loaded with it)."""
    import matplotlib  # deferred: a heavy import only figures need

    matplotlib.use("Agg")
    import matplotlib.dates  # noqa: F401  (plt.matplotlib.dates below)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9, "axes.titlesize": 10,
                         "legend.fontsize": 8, "legend.framealpha": 0.85, "axes.titlelocation": "left"})
    return plt


def figure(css_width: int, css_height: int, **kw):
    """(fig, ax) drawn `css_width` x `css_height` CSS px (constrained layout: the PNG is exactly that size x 2)."""
    return pyplot().subplots(figsize=(css_width / CSS_PX_PER_INCH, css_height / CSS_PX_PER_INCH),
                             layout="constrained", **kw)


def png(fig) -> bytes:
    """The figure as PNG bytes at DPI (no timestamp or software tag: reruns give identical bytes); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_tag(name: str, css_width: int, alt: str = "") -> str:
    """An <img> of figures/NAME shown `css_width` CSS px wide (scaled down on a narrower page);
    `inline_figures` turns it into a data: URI."""
    return f'<img src="figures/{html.escape(name)}" width="{css_width}" alt="{html.escape(alt or name)}">'


_FIGURE_REF = re.compile(r'<img src="figures/([^"]+)"([^>]*)>')


def inline_figures(page: str, figures: dict[str, bytes]) -> str:
    """Every figure_tag of `page` with its PNG inlined as a data: URI, so the HTML alone shows every figure
    (mailed, or copied without figures/); a figure not drawn becomes a one-line note."""
    def inline(m: re.Match) -> str:
        data = figures.get(html.unescape(m.group(1)))
        if data is None:
            return f"<p class='small'>(figure {m.group(1)} not drawn)</p>"
        return f'<img src="{data_uri(data)}"{m.group(2)}>'
    return _FIGURE_REF.sub(inline, page)


class Absent(str):
    """An absent value's cell, an em dash, carrying the reason that `Notes.resolve` turns into its footnote."""

    def __new__(cls, reason: str):
        obj = super().__new__(cls, DASH)
        obj.reason = reason
        return obj


def cell(value: Any, pattern: str, scale: float = 1.0, absent: str = DASH) -> str:
    """`pattern.format(value * scale)`, or `absent` (an em dash, or an Absent) for None / NaN / inf / not a
    number; text is escaped."""
    if isinstance(value, str):
        return html.escape(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return absent
    if not math.isfinite(x):
        return absent
    return pattern.format(int(round(x * scale)) if pattern.endswith("d}") else x * scale)


class Notes:
    """Numbered footnotes: `mark(text)` gives the superscript (one number per distinct text), `html()` the list."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        n = self.texts.index(text) + 1
        return f"<sup class='fn'><a href='#note{n}'>{n}</a></sup>"

    def absent(self, reason: str) -> str:
        """An em dash with its reason as a footnote."""
        return DASH + self.mark(reason)

    def resolve(self, value: str) -> str:
        """A cell as shown: an Absent becomes its em dash and footnote mark, anything else stays."""
        return self.absent(value.reason) if isinstance(value, Absent) else value

    def html(self) -> str:
        if not self.texts:
            return ""
        items = "".join(f"<li id='note{i}'>{html.escape(t)}</li>" for i, t in enumerate(self.texts, 1))
        return f"<h2>Notes</h2><ol class='notes'>{items}</ol>"


def html_table(header: list[str], rows: list[list[str]], klass: str = "") -> str:
    """An HTML table; header cells escaped, body cells as given (already escaped or formatted)."""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{klass}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


# ------------------------------------------------------------------------------------------------ figures
def date_axis(ax) -> None:
    """Concise date ticks (year / month / day shown once where they change)."""
    mdates = pyplot().matplotlib.dates
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _dates(daily: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(daily["date"])


def _cum(x) -> np.ndarray:
    return np.cumsum(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0))


def pnl_figure(daily: pd.DataFrame, members: dict[str, pd.DataFrame], how: str, cost: str | None,
               controlled: pd.DataFrame | None = None, control: str | None = None) -> bytes:
    """Cumulative pnl of the ensemble, in %: the long-short and the long-only books, gross (solid) and net of
    `cost` (dashed; none when no cost is assumed), the turnover-controlled long-short net (`controlled`, its
    daily table, with `control` saying how) when it differs, and each member's long-short gross; under it the
    underwater panel (the long-short drawdown)."""
    plt = pyplot()
    fig = plt.figure(figsize=(FULL / CSS_PX_PER_INCH, 5.9), layout="constrained")
    ax, under = fig.subplots(2, 1, sharex=True, height_ratios=[3.0, 1.2])
    d = _dates(daily)
    ax.plot(d, 100 * daily["cum_ls"], color="C0", lw=2.2, label="ensemble long-short, gross")
    if cost:
        ax.plot(d, 100 * _cum(daily["pnl_ls_net"]), color="C0", lw=1.6, ls="--",
                label=f"ensemble long-short, net of {cost}")
    if "cum_long_only" in daily:
        ax.plot(d, 100 * daily["cum_long_only"], color="C1", lw=2.2, label="ensemble long-only (top bucket), gross")
        if cost:
            ax.plot(d, 100 * _cum(daily["pnl_long_only_net"]), color="C1", lw=1.6, ls="--",
                    label=f"ensemble long-only, net of {cost}")
    if controlled is not None:
        ax.plot(_dates(controlled), 100 * _cum(controlled["pnl_ls_net"]), color="k", lw=1.6, ls="-.",
                label=f"ensemble long-short, {control} (turnover control), net")
    for i, (name, md) in enumerate(members.items()):
        ax.plot(_dates(md), 100 * md["cum_ls"], lw=0.9, alpha=0.55, color=f"C{(i % 7) + 2}",
                label=f"{name} long-short")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"Cumulative pnl ({how})")
    ax.set_ylabel("cumulative pnl, % (summed)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _underwater(under, d, daily, cost)
    date_axis(under)
    return png(fig)


def _underwater(ax, d, daily: pd.DataFrame, cost: str | None) -> None:
    """The long-short cumulative pnl below its running peak (from 0), in %: gross, and net with a cost."""
    gross = 100 * daily["drawdown"].to_numpy(np.float64)
    ax.fill_between(d, gross, 0, color="C3", alpha=0.3, lw=0)
    ax.plot(d, gross, color="C3", lw=1, label="long-short drawdown, gross")
    if cost:
        cum = _cum(daily["pnl_ls_net"])
        ax.plot(d, 100 * (cum - np.maximum.accumulate(np.maximum(cum, 0.0))), color="k", lw=1, ls="--",
                label=f"long-short drawdown, net of {cost}")
    ax.set_ylim(top=0)
    ax.set_title("Underwater: below the running peak of the long-short cumulative pnl")
    ax.set_ylabel("drawdown, %")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))


def ic_daily_figure(daily: pd.DataFrame, window: int, mean: float) -> bytes:
    fig, ax = figure(FULL, 300)
    d, ic = _dates(daily), daily["ic"]
    ax.bar(d, ic.fillna(0.0), color=np.where(ic.fillna(0) >= 0, "C2", "C3"), width=1.0, alpha=0.55,
           label="daily IC")
    ax.plot(d, ic.rolling(window, min_periods=1).mean(), color="k", lw=1.5, label=f"rolling {window}-day mean")
    ax.axhline(mean, color="C0", ls="--", lw=1, label=f"mean {cell(mean, '{:+.4f}')}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title("Daily IC of the ensemble (cross-sectional Pearson of signal and label)")
    ax.set_ylabel("IC (correlation)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    date_axis(ax)
    return png(fig)


def ic_hist_figure(ic: np.ndarray) -> bytes:
    fig, ax = figure(HALF, 290)
    vals = ic[np.isfinite(ic)]
    ax.hist(vals, bins=max(5, min(40, len(vals) // 3)), color="C0", alpha=0.8)
    if len(vals):
        ax.axvline(float(np.mean(vals)), color="k", ls="--", lw=1, label=f"mean {np.mean(vals):+.4f}")
        ax.legend(loc="upper left")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_title("Daily IC distribution")
    ax.set_xlabel("daily IC (correlation)")
    ax.set_ylabel("days")
    return png(fig)


def ic_monthly_figure(monthly: pd.DataFrame) -> bytes:
    """Mean daily IC per month: years (rows) x months (columns), the value written in each cell."""
    fig, ax = figure(HALF, max(290, 150 + 34 * len(monthly)))
    values = monthly.to_numpy(np.float64)
    finite = values[np.isfinite(values)]
    vmax = max(0.05, float(np.abs(finite).max())) if finite.size else 0.05
    im = ax.imshow(values, cmap="RdYlGn", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(12), ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"])
    ax.set_yticks(range(len(monthly)), [str(y) for y in monthly.index])
    ax.grid(False)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.2f}".replace("0.", ".", 1), ha="center", va="center", fontsize=7.5)
    fig.colorbar(im, ax=ax, label="mean daily IC", shrink=0.9)
    ax.set_title("Monthly IC (mean daily IC, e.g. +.05 = +0.05; blank: no day)")
    ax.set_xlabel("month")
    ax.set_ylabel("year")
    return png(fig)


def quantile_figure(demeaned_bps: np.ndarray, label: str) -> bytes:
    """Mean label of each signal quantile minus the day's cross-sectional mean, averaged over days, in bps."""
    fig, ax = figure(HALF, 290)
    q = np.asarray(demeaned_bps, dtype=np.float64)
    names = [str(i + 1) for i in range(len(q))]
    ax.bar(names, np.nan_to_num(q), color=["C3" if v < 0 else "C2" for v in np.nan_to_num(q)])
    for i, v in enumerate(q):
        if np.isfinite(v):
            ax.annotate(f"{v:+.1f}", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=8,
                        xytext=(0, 2 if v >= 0 else -2), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.6)
    ax.margins(y=0.15)
    ax.set_title(f"Mean {label} by signal quantile, demeaned")
    ax.set_xlabel("signal quantile (1 = lowest signal)")
    ax.set_ylabel(f"{label} minus the day's mean, bps")
    return png(fig)


def quantile_cum_figure(dates, demeaned: np.ndarray, horizon: int) -> bytes:
    """Cumulative demeaned return of each quantile: each day its names' label minus the day's mean, / horizon
    (booked on the formation day, the long-short book's convention), summed, in %."""
    plt = pyplot()
    fig, ax = figure(HALF, 290)
    n_q = demeaned.shape[1]
    ramp = plt.matplotlib.colors.LinearSegmentedColormap.from_list("q", ["#b2182b", "#8c8c8c", "#1a7837"])
    colors = ramp(np.linspace(0.0, 1.0, n_q))
    d = pd.to_datetime(pd.Series(dates))
    for q in range(n_q):
        ax.plot(d, 100 * _cum(demeaned[:, q] / horizon), color=colors[q], lw=1.6, label=f"quantile {q + 1}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title("Cumulative return by quantile, demeaned")
    ax.set_ylabel(f"cumulative, % (label / {horizon} a day)")
    ax.legend(loc="upper left", ncol=2)
    date_axis(ax)
    return png(fig)


def spread_figure(dates, spread_bps: np.ndarray, window: int, horizon: int, mean: float, tstat: float,
                  tstat_nonoverlap: float | None = None) -> bytes:
    """Top-minus-bottom quantile spread of the label per day (bars) with its rolling mean and a band of
    +/- 2 standard errors of that mean (rolling sd / sqrt(window / horizon): overlapping labels)."""
    fig, ax = figure(FULL, 300)
    d = pd.to_datetime(pd.Series(dates))
    s = pd.Series(np.asarray(spread_bps, dtype=np.float64), index=d)
    roll = s.rolling(window, min_periods=max(2, window // 2))
    mean_r = roll.mean()
    se = roll.std() / np.sqrt(np.maximum(roll.count() / max(horizon, 1), 1.0))
    ax.bar(d, s.fillna(0.0), width=1.0, color="0.6", alpha=0.5, label="daily spread")
    ax.fill_between(d, mean_r - 2 * se, mean_r + 2 * se, color="C0", alpha=0.2, lw=0,
                    label="rolling mean ± 2 standard errors")
    ax.plot(d, mean_r, color="C0", lw=1.8, label=f"rolling {window}-day mean")
    ax.axhline(mean, color="k", ls="--", lw=1,
               label=f"mean {cell(mean, '{:+.1f}')} bps\n(Newey-West t {cell(tstat, '{:+.2f}')}, "
                     f"non-overlapping t {cell(tstat_nonoverlap, '{:+.2f}')})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title("Top-minus-bottom quantile spread of the label")
    ax.set_ylabel("top − bottom mean label, bps")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    date_axis(ax)
    return png(fig)


def turnover_figure(daily: pd.DataFrame, mean: float) -> bytes:
    fig, ax = figure(HALF, 290)
    d = _dates(daily)
    ax.plot(d, 100 * daily["turnover"], color="C4", lw=1.2, label="long-short turnover")
    ax.axhline(100 * mean if np.isfinite(mean) else 0.0, color="k", ls="--", lw=1,
               label=f"mean {cell(mean, '{:.1f}', 100)}%")
    ax.set_title("Turnover (long-short book)")
    ax.set_ylabel("% of one leg's capital a day")
    ax.legend(loc="upper left")
    date_axis(ax)
    return png(fig)


def autocorr_figure(autocorr: dict[int, float], horizon: int) -> bytes:
    """The signal's rank autocorrelation at lags 1..L (days); the horizon's lag, where the book re-forms, marked."""
    fig, ax = figure(HALF, 290)
    lags = list(autocorr)
    vals = np.array([autocorr[k] for k in lags], dtype=np.float64)
    ax.bar([str(k) for k in lags], np.nan_to_num(vals),
           color=["C0" if k == horizon else "#9ecae1" for k in lags])
    for i, v in enumerate(vals):
        if np.isfinite(v):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_ylim(min(0.0, float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0), 1.08)
    ax.set_title(f"Signal rank autocorrelation (dark: lag {horizon}, the horizon)")
    ax.set_xlabel("lag, trading days")
    ax.set_ylabel("rank autocorrelation")
    return png(fig)


def correlation_figure(corr: pd.DataFrame) -> bytes:
    """The members' (and the ensemble signal's) mean daily cross-sectional correlation, names on both axes."""
    n = len(corr)
    fig, ax = figure(HALF, 450)
    im = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")  # auto: the layout fits the names
    names = [str(c) for c in corr.index]
    ax.set_xticks(range(n), names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.grid(False)
    for (i, j), v in np.ndenumerate(corr.to_numpy()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="correlation")
    ax.set_title("Member correlation")
    return png(fig)
