"""The model zoo: spec grammar, ConvGRU/ConvLSTM/CNN1d modules, the registry of ids (docs/zoo.md).

Plain PyTorch, no Ray: `build_model(spec, n_features, lookback)` maps [B, L, F] -> [B].
"""

from crnn_ray.zoo.registry import (
    ZooEntry,
    build_model,
    count_params,
    load_zoo,
    maybe_compile,
    resolve_variants,
)
from crnn_ray.zoo.spec import CnnSpec, ModelSpec, RecurrentSpec, canonical, encode, family_of, parse

__all__ = [
    "CnnSpec",
    "ModelSpec",
    "RecurrentSpec",
    "ZooEntry",
    "build_model",
    "canonical",
    "count_params",
    "encode",
    "family_of",
    "load_zoo",
    "maybe_compile",
    "parse",
    "resolve_variants",
]
