"""CNN1d stacks over time (channels = features), as in the report's section 4, with one linear readout.

Width schedule (the report: widths rise, `down_sample` brings them back down): every conv outputs the
current width; a conv with stride > 1 doubles it (length halves, channels double); the first conv of a
`down(...)` block halves it. `avg` halves the length (AvgPool1d(2, 2), ceil mode); `avgpool` collapses
time to length 1. The time length is tracked while building, so a stack that cannot fit the lookback
fails at build time with the offending token's position.
"""

from __future__ import annotations

import torch
from torch import nn

from crnn_ray.zoo.spec import CnnSpec, Item, spec_error


class _Builder:
    def __init__(self, spec: CnnSpec, n_features: int, lookback: int):
        self.text = spec.text
        self.pad = spec.option("pad")
        self.channels = n_features
        self.width = spec.option("w")
        self.length = lookback
        self.modules: list[nn.Module] = []

    def items(self, items: tuple, halve_first: bool = False) -> None:
        for item in items:
            for _ in range(item.repeat):
                halve_first = self.item(item, halve_first)

    def item(self, item: Item, halve_first: bool) -> bool:
        """Add one item; returns whether the next conv must still halve the width (inside down(...))."""
        kind = item.kind
        if kind == "conv":
            k, s = item.args
            padding = k // 2 if self.pad == "same" else 0
            length = (self.length + 2 * padding - k) // s + 1
            if length < 1:
                raise spec_error(self.text, item.pos, f"conv c{k}s{s} shrinks the time length {self.length} "
                                 f"below 1 (pad={self.pad})")
            width = self.width * (2 if s > 1 else 1)
            if halve_first:
                width = max(1, width // 2)
                halve_first = False
            self.modules.append(nn.Conv1d(self.channels, width, k, stride=s, padding=padding))
            self.channels = self.width = width
            self.length = length
        elif kind == "avg":
            self.modules.append(nn.AvgPool1d(2, stride=2, ceil_mode=True))
            self.length = -(-self.length // 2)
        elif kind == "avgpool":
            self.modules.append(nn.AdaptiveAvgPool1d(1))
            self.length = 1
        elif kind == "relu":
            self.modules.append(nn.ReLU())
        elif kind == "batchnorm":
            self.modules.append(nn.BatchNorm1d(self.channels))
        elif kind == "dropout":
            self.modules.append(nn.Dropout(item.args[0]))
        elif kind == "featuredropout":
            self.modules.append(nn.Dropout1d(item.args[0]))
        elif kind == "down":
            before = len(self.modules)
            self.items(item.children, halve_first=True)
            if not any(isinstance(m, nn.Conv1d) for m in self.modules[before:]):
                raise spec_error(self.text, item.pos, "down(...) needs a conv (it reduces the width)")
        elif kind == "group":
            halve_first = self._group(item, halve_first)
        else:  # pragma: no cover - the parser only makes the kinds above
            raise spec_error(self.text, item.pos, f"unknown CNN1d item {kind!r}")
        return halve_first

    def _group(self, item: Item, halve_first: bool) -> bool:
        for child in item.children:
            for _ in range(child.repeat):
                halve_first = self.item(child, halve_first)
        return halve_first


class CNN1dNet(nn.Module):
    """Conv1d stack over the lookback (input [B, L, F] -> [B, F, L]) and one linear readout -> [B]."""

    def __init__(self, spec: CnnSpec, n_features: int, lookback: int):
        super().__init__()
        self.spec_text = spec.text
        builder = _Builder(spec, n_features, lookback)
        builder.items(spec.items)
        self.body = nn.Sequential(*builder.modules)
        self.out_channels, self.out_length = builder.channels, builder.length
        self.readout = nn.Linear(builder.channels * builder.length, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(x.transpose(1, 2)).flatten(1)).squeeze(-1)
