"""Drawing primitives of the tear sheet: matplotlib set up once, figures as PNG bytes, HTML tables.

matplotlib is imported on the first figure only: the scorer without labels (the daily job's signals) and the
modules that import the report never pay for it.
"""

from __future__ import annotations

import html
import io

__all__ = ["pyplot", "png", "html_table"]


def pyplot():
    """matplotlib.pyplot on the Agg backend with the tear sheet's style."""
    import matplotlib  # deferred: a heavy import only figures need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9})
    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (no timestamp or software tag: reruns give identical bytes); closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def html_table(header: list[str], rows: list[list[str]], klass: str = "") -> str:
    """An HTML table; header cells escaped, body cells as given (already escaped or formatted)."""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{klass}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'
