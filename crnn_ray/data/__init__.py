"""Data layer: panel files, the synthetic market, OHLCV ingest and train/valid/test splits (no Ray here)."""

from crnn_ray.data.ingest import ingest_ohlcv
from crnn_ray.data.panel import (
    Panel,
    gather_windows,
    load_panel,
    normalize_features,
    rank_label,
    read_panel_meta,
    sample_index,
    save_panel,
)
from crnn_ray.data.splits import Splits, make_splits
from crnn_ray.data.synth import synthesize

__all__ = [
    "Panel", "load_panel", "read_panel_meta", "save_panel", "normalize_features", "rank_label", "sample_index",
    "gather_windows", "Splits", "make_splits", "synthesize", "ingest_ohlcv",
]
