"""The cnn1d family: Conv1d stacks over time (channels = features), as in the report's section 4, with one
linear readout.

Width schedule (the report: widths rise, `down_sample` brings them back down): every conv outputs the
current width; a conv with stride > 1 doubles it (length halves, channels double); the first conv of a
`down(...)` block halves it. `avg` (the op `pool`) halves the length (AvgPool1d(2, 2), ceil mode); `avgpool`
collapses time to length 1. The modules come from the op table (ops.py); this builder only keeps the
bookkeeping: the width, the `down(...)` halving and the time length, so a stack that cannot fit the
lookback fails at build time with the offending token's position.
"""

from __future__ import annotations

import torch
from torch import nn

from crnn_ray.zoo.errors import spec_error
from crnn_ray.zoo.ops import OpContext, build_op
from crnn_ray.zoo.spec import CNN, CnnSpec, Item, register_family


class _Builder:
    def __init__(self, spec: CnnSpec, n_features: int, lookback: int):
        self.ctx = OpContext(spec.text, n_features, lookback, spec.option("w"), pad=spec.option("pad"))
        self.modules: list[nn.Module] = []

    def items(self, items: tuple) -> None:
        for item in items:
            for _ in range(item.repeat):
                self.item(item)

    def item(self, item: Item) -> None:
        """Add one item. Inside down(...) the first conv halves the width; a group passes that on, and
        after the block the halving state is what it was before it."""
        ctx = self.ctx
        if item.kind == "group":
            self.items(item.children)
        elif item.kind == "down":
            before, outer = len(self.modules), ctx.halve
            ctx.halve = True
            self.items(item.children)
            ctx.halve = outer
            if not any(isinstance(m, nn.Conv1d) for m in self.modules[before:]):
                raise spec_error(ctx.text, item.pos, "down(...) needs a conv (it reduces the width)")
        else:
            built = build_op(ctx, item.kind, item.args, item.pos)
            self.modules.append(built.module)
            ctx.channels, ctx.length = built.channels, built.length
            if isinstance(built.module, nn.Conv1d):  # a conv sets the width the next one starts from
                ctx.width, ctx.halve = built.channels, False


@register_family("cnn1d", CNN)
class CNN1dNet(nn.Module):
    """Conv1d stack over the lookback (input [B, L, F] -> [B, F, L]) and one linear readout -> [B]."""

    def __init__(self, spec: CnnSpec, n_features: int, lookback: int):
        super().__init__()
        self.spec_text = spec.text
        builder = _Builder(spec, n_features, lookback)
        builder.items(spec.items)
        self.body = nn.Sequential(*builder.modules)
        self.out_channels, self.out_length = builder.ctx.channels, builder.ctx.length
        self.readout = nn.Linear(self.out_channels * self.out_length, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(x.transpose(1, 2)).flatten(1)).squeeze(-1)

