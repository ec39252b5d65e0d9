"""Data layer: panel files, the synthetic market, OHLCV ingest and train/valid/test splits (no Ray here)."""

from crnn_ray.data.ingest import ingest_ohlcv
from crnn_ray.data.panel import (
    X_DTYPES,
    NormalisedPanel,
    Panel,
    gather_windows,
    load_panel,
    normalise_panel,
    normalize_features,
    rank_label,
    read_panel_meta,
    sample_index,
    save_panel,
)
from crnn_ray.data.splits import (
    Splits,
    describe_windows,
    make_splits,
    walk_forward_splits,
    window_key,
)
from crnn_ray.data.synth import synthesize

__all__ = [
    "NormalisedPanel",
    "Panel",
    "Splits",
    "describe_windows",
    "gather_windows",
    "ingest_ohlcv",
    "load_panel",
    "make_splits",
    "normalise_panel",
    "normalize_features",
    "rank_label",
    "read_panel_meta",
    "sample_index",
    "save_panel",
    "synthesize",
    "walk_forward_splits",
    "window_key",
    "X_DTYPES",
]
