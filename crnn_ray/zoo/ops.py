"""Op registry: turns the ops of a spec (avg, conv, batchnorm, relu, dropout, featuredropout) into modules.

One place decides what each word of the grammar means in PyTorch, so the recurrent cells and the CNN1d
stack agree and docs/zoo.md has one table to describe. Every op works on a map [N, channels, positions].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from crnn_ray.zoo.spec import Op, spec_error


@dataclass
class OpContext:
    """What an op needs to know to build itself: where it sits and how big its input is."""

    text: str  # the spec string (for error messages)
    channels: int  # channels of the op's input
    positions: int  # length of the axis the convs slide along
    kernel: int  # the layer's kernel (default for a bare conv)
    width: int  # default output channels of a non-final conv
    out_channels: int | None = None  # output channels of this conv when it is the pipeline's last conv


def _conv(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    k, w = op.args
    k = ctx.kernel if k is None else k
    if k % 2 == 0:
        raise spec_error(ctx.text, op.pos, f"conv kernel {k} must be odd (the conv keeps the length)")
    if k > ctx.positions:
        raise spec_error(ctx.text, op.pos, f"conv kernel {k} is larger than the {ctx.positions} positions it "
                         "slides along (layout bn has 1 position: use kernel 1, or layout b1)")
    out = ctx.out_channels if ctx.out_channels is not None else (w or ctx.width)
    return nn.Conv1d(ctx.channels, out, k, padding=k // 2), out


class MeanFilter(nn.Module):
    """Length-keeping moving average over the positions (kernel k, stride 1), a true mean at the edges.

    Same result as AvgPool1d(k, 1, k // 2, count_include_pad=False), written as k shifted adds: on the
    small maps of the recurrent cells that is several times faster than the pooling kernel (bench/zoo_bench.py).
    """

    def __init__(self, kernel: int, positions: int):
        super().__init__()
        self.kernel, self.positions = kernel, positions
        ones = torch.ones(1, 1, positions)
        count = F.avg_pool1d(ones, kernel, 1, kernel // 2, count_include_pad=True) * kernel
        self.register_buffer("inv_count", (1.0 / count).reshape(positions), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.kernel // 2
        if half == 0 or self.positions == 1:  # one position: the mean of one value
            return x
        length = x.shape[-1]
        padded = F.pad(x, (half, half))
        total = padded[..., 0:length]
        for j in range(1, self.kernel):
            total = total + padded[..., j:j + length]
        return total * self.inv_count

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, positions={self.positions}"


def _avg(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    return MeanFilter(op.args[0], ctx.positions), ctx.channels


def _batchnorm(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    return nn.BatchNorm1d(ctx.channels), ctx.channels


def _relu(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    return nn.ReLU(), ctx.channels


def _dropout(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    return nn.Dropout(op.args[0]), ctx.channels


def _featuredropout(ctx: OpContext, op: Op) -> tuple[nn.Module, int]:
    # Dropout1d zeroes whole channels of [N, C, P] with probability p (p = DROP probability, as in torch)
    return nn.Dropout1d(op.args[0]), ctx.channels


#: op name -> builder(ctx, op) -> (module, output channels)
OPS: dict[str, Callable[[OpContext, Op], tuple[nn.Module, int]]] = {
    "conv": _conv,
    "avg": _avg,
    "batchnorm": _batchnorm,
    "relu": _relu,
    "dropout": _dropout,
    "featuredropout": _featuredropout,
}


def build_pipeline(ops: tuple, ctx: OpContext, gate_channels: int) -> nn.Sequential:
    """Modules of one input pipeline; its last conv outputs `gate_channels`, earlier convs their width."""
    last_conv = max(i for i, op in enumerate(ops) if op.name == "conv")
    modules = []
    for i, op in enumerate(ops):
        ctx.out_channels = gate_channels if i == last_conv else None
        module, ctx.channels = OPS[op.name](ctx, op)
        modules.append(module)
    ctx.out_channels = None
    return nn.Sequential(*modules)


def hidden_width(ops: tuple, default: int) -> int:
    """Hidden channels of a layer: the width written on its pipeline's last conv, else the spec default."""
    convs = [op for op in ops if op.name == "conv"]
    w = convs[-1].args[1]
    return default if w is None else w
