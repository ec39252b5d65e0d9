"""The model zoo: spec grammar, op table, ConvGRU/ConvLSTM/CNN1d families, the registry of ids (docs/zoo.md).

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

# isort: off
# The family modules: importing one registers its family (spec.register_family), in this order (the order
# errors and `list --family` show). A new family is one module plus its line here (docs/zoo.md).
from crnn_ray.zoo import recurrent  # noqa: F401  (convgru, convlstm)
from crnn_ray.zoo import cnn1d  # noqa: F401
# isort: on

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
