"""Training targets beside evaluation labels: the panel's `yH` realises every held move (jumps included), and
a model is trained on it without the moves the data flags as jumps.

Evaluation must see every return a book held (docs/metrics.md, "Held returns"): dropping a label because of a
jump that happens after the decision is look-ahead survivorship. Training is another matter: a -67 % day or a
bad print is a target no model should chase. So the mask lives here, applied by the trainer and the
baselines' fits only, never by `crnn_ray.metrics.evaluate`.
"""

from __future__ import annotations

import numpy as np

#: per-row bool columns that flag a one-day move beyond the limits (docs/data.md): ingest's bad prints and
#: breaks, the synthetic market's moves beyond +100 % / -50 %; `load_panel` scatters them into `panel.aux`
FLAG_COLUMNS = ("suspect_jump", "price_break")

__all__ = ["FLAG_COLUMNS", "jump_mask", "training_label"]


def jump_mask(flags: np.ndarray, horizon: int, lag: int = 0) -> np.ndarray:
    """bool [D, S]: a flagged day lies in the closes d+lag+1 .. d+lag+horizon that the label of day d spans."""
    flags = np.asarray(flags, dtype=bool)
    n_days = flags.shape[0]
    count = np.zeros((n_days + 1,) + flags.shape[1:], dtype=np.int64)
    np.cumsum(flags, axis=0, out=count[1:])
    day = np.arange(n_days)
    lo = np.minimum(day + lag + 1, n_days)
    hi = np.minimum(day + lag + horizon + 1, n_days)
    return (count[hi] - count[lo]) > 0


def training_label(panel, name: str) -> np.ndarray:
    """`panel.label(name)` with NaN where the label spans a flagged jump (FLAG_COLUMNS in `panel.aux`): the
    target a model trains on (and a baseline fits), never what it is evaluated on. A panel without flag
    columns (older files) returns the label as it is."""
    label = panel.label(name)
    aux = getattr(panel, "aux", None) or {}
    flags = [np.asarray(aux[c], dtype=bool) for c in FLAG_COLUMNS if c in aux]
    if not flags:
        return label
    mask = jump_mask(np.logical_or.reduce(flags), panel.horizon(name), panel.label_lag)
    return np.where(mask, np.nan, label).astype(label.dtype, copy=False)
