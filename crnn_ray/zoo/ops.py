"""The op table: every op word of the grammar, where it may stand, its arguments and its PyTorch module.

One place decides what each word means, so the parser (spec.py), the canonical encoder, the recurrent
pipelines and the CNN1d stack all read the same entry, and docs/zoo.md has one table to describe. An op
stands in a recurrent input pipeline (PIPELINE: it works along the positions and must keep their number,
since the gates meet the hidden map position by position) and/or in a CNN1d stack (STACK: it works along
time and may change the length, which the stack tracks). Every op works on a map [N, channels, length].

To add an op word: add one `OpDef` to `OPS` below (and a row to docs/zoo.md); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from crnn_ray.zoo.errors import spec_error

PIPELINE = "pipeline"
STACK = "stack"
BOTH = (PIPELINE, STACK)
#: how errors name a place
PLACE = {PIPELINE: "recurrent pipeline op", STACK: "CNN1d item"}

DEFAULT_DROPOUT = 0.5  # torch's default drop probability
DEFAULT_FEATUREDROPOUT = 0.5
DEFAULT_SMOOTH_KERNEL = 3
REQUIRED = object()  # a Param without a default must be written


@dataclass(frozen=True)
class Param:
    """One argument of an op word: a positive int ("int") or a drop probability in [0, 1) ("p")."""

    what: str  # for error messages ("kernel" -> "conv kernel must be >= 1")
    kind: str = "int"
    default: object = REQUIRED
    odd: bool = False  # a length-keeping kernel must be odd


@dataclass
class OpContext:
    """What an op needs to know to build itself: where it sits and how big its input is."""

    text: str  # the spec string (for error messages)
    channels: int  # channels of the op's input
    length: int  # pipeline: the positions the convs slide along; stack: the time length
    width: int  # pipeline: default output channels of a non-final conv; stack: the current width
    kernel: int = 1  # pipeline: the layer's kernel (a bare conv's)
    out_channels: int | None = None  # pipeline: this conv's outputs when it is the last one (the gates)
    pad: str = "same"  # stack: conv padding
    halve: bool = False  # stack: the next conv halves the width (the first conv of a down(...))


class Built(NamedTuple):
    module: nn.Module
    channels: int  # output channels
    length: int  # output length


@dataclass(frozen=True)
class OpDef:
    """One op word. `name` is its explicit spelling (unique in the table); `written` is what the canonical
    encoder writes when that differs (the report's word); `aliases` are further accepted spellings; `short`
    is a compact form with int fields (c{}s{} for cnn1d(k,s)). Spellings are unique within a place."""

    name: str
    where: tuple  # PIPELINE and/or STACK
    build: Callable[[OpContext, tuple, int], Built]  # (ctx, args, position of the word) -> Built
    params: tuple = ()  # tuple[Param, ...]
    about: str = ""  # one phrase: what it does (errors, docs)
    written: str | None = None
    aliases: tuple = ()
    short: str | None = None

    @property
    def spellings(self) -> tuple:
        return (self.name,) + ((self.written,) if self.written else ()) + self.aliases


# -- builders ----------------------------------------------------------------------------------------------

def _conv(ctx: OpContext, args: tuple, pos: int) -> Built:
    k, w = args
    k = ctx.kernel if k is None else k
    if k % 2 == 0:
        raise spec_error(ctx.text, pos, f"conv kernel {k} must be odd (the conv keeps the length)")
    if k > ctx.length:
        raise spec_error(ctx.text, pos, f"conv kernel {k} is larger than the {ctx.length} positions it "
                         "slides along (layout bn has 1 position: use kernel 1, or layout b1)")
    out = ctx.out_channels if ctx.out_channels is not None else (w or ctx.width)
    return Built(nn.Conv1d(ctx.channels, out, k, padding=k // 2), out, ctx.length)


def _cnn_conv(ctx: OpContext, args: tuple, pos: int) -> Built:
    k, s = args
    padding = k // 2 if ctx.pad == "same" else 0
    length = (ctx.length + 2 * padding - k) // s + 1
    if length < 1:
        raise spec_error(ctx.text, pos, f"conv c{k}s{s} shrinks the time length {ctx.length} below 1 "
                         f"(pad={ctx.pad})")
    width = ctx.width * (2 if s > 1 else 1)  # length halves, channels double
    if ctx.halve:
        width = max(1, width // 2)
    return Built(nn.Conv1d(ctx.channels, width, k, stride=s, padding=padding), width, length)


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


def _smooth(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(MeanFilter(args[0], ctx.length), ctx.channels, ctx.length)


def _pool(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(nn.AvgPool1d(2, stride=2, ceil_mode=True), ctx.channels, -(-ctx.length // 2))


def _avgpool(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(nn.AdaptiveAvgPool1d(1), ctx.channels, 1)


def _batchnorm(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(nn.BatchNorm1d(ctx.channels), ctx.channels, ctx.length)


def _relu(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(nn.ReLU(), ctx.channels, ctx.length)


def _dropout(ctx: OpContext, args: tuple, pos: int) -> Built:
    return Built(nn.Dropout(args[0]), ctx.channels, ctx.length)


def _featuredropout(ctx: OpContext, args: tuple, pos: int) -> Built:
    # Dropout1d zeroes whole channels of [N, C, L] with probability p (p = DROP probability, as in torch)
    return Built(nn.Dropout1d(args[0]), ctx.channels, ctx.length)


# -- the table ---------------------------------------------------------------------------------------------

def _table(*defs: OpDef) -> dict[str, OpDef]:
    """Name -> OpDef, refusing a spelling used twice in one place (the parser could not tell them apart)."""
    seen: dict[tuple, str] = {}
    for d in defs:
        for word in d.spellings:
            if not word.isalnum() or word != word.lower():  # `_` separates pipeline ops
                raise ValueError(f"op spelling {word!r} must be lower-case letters and digits")
            for place in d.where:
                if (place, word) in seen:
                    raise ValueError(f"op spelling {word!r} is used by {seen[place, word]} and {d.name} "
                                     f"in a {PLACE[place]}")
                seen[place, word] = d.name
    return {d.name: d for d in defs}


_KERNEL_OR_LAYER = Param("kernel", default=None)  # None: the layer's kernel
_WIDTH_OR_SPEC = Param("width", default=None)  # None: the spec's w (or the gates, for the last conv)

OPS: dict[str, OpDef] = _table(
    OpDef("conv", (PIPELINE,), _conv, (_KERNEL_OR_LAYER, _WIDTH_OR_SPEC),
          about="length-keeping Conv1d; the pipeline's last conv makes the gates"),
    OpDef("cnn1d", (STACK,), _cnn_conv, (Param("kernel"), Param("stride")),
          about="Conv1d over time with a stride; sets the width", aliases=("cnn1", "conv"), short="c{}s{}"),
    OpDef("smooth", (PIPELINE,), _smooth, (Param("kernel", default=DEFAULT_SMOOTH_KERNEL, odd=True),),
          about="length-keeping moving mean", written="avg"),
    OpDef("pool", (STACK,), _pool, about="AvgPool1d(2, 2): halves the length", written="avg"),
    OpDef("avgpool", (STACK,), _avgpool, about="AdaptiveAvgPool1d(1): time to length 1"),
    OpDef("batchnorm", BOTH, _batchnorm, about="BatchNorm1d"),
    OpDef("relu", BOTH, _relu, about="ReLU"),
    OpDef("dropout", BOTH, _dropout, (Param("p", "p", DEFAULT_DROPOUT),), about="Dropout(p)"),
    OpDef("featuredropout", BOTH, _featuredropout, (Param("p", "p", DEFAULT_FEATUREDROPOUT),),
          about="Dropout1d(p): zeroes whole channels"),
)


def words(place: str) -> dict[str, OpDef]:
    """Every spelling accepted in `place` -> its OpDef, longest first (so `featuredropout` is tried before
    `dropout`)."""
    found = {w: d for d in OPS.values() if place in d.where for w in d.spellings}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def build_op(ctx: OpContext, name: str, args: tuple, pos: int) -> Built:
    """The module of one op at `ctx`, with the channels and length it outputs."""
    return OPS[name].build(ctx, args, pos)
