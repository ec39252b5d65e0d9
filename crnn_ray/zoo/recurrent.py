"""The convgru / convlstm families: conv-recurrent stacks whose input-to-gate transforms are op pipelines.

The report replaced the recurrent cell's first linear map (input -> gates) with small conv pipelines that
slide over the FEATURE axis (the cross-section of one day), then kept one linear readout. Each layer's
state is a map [channels, positions]; the cell equations are exactly torch.nn.GRU / torch.nn.LSTM's with
the two matrix products replaced by convs (so a bn/kernel-1 layer with a bare `conv` IS torch's cell).

Speed: the input pipeline does not depend on the hidden state, so it runs once over all B*L timesteps;
the Python loop over the lookback only does the hidden conv and the gate arithmetic (no data-dependent
control flow, so torch.compile can trace it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crnn_ray.zoo.errors import spec_error
from crnn_ray.zoo.ops import OpContext, build_op
from crnn_ray.zoo.spec import RECURRENT, Layer, RecurrentSpec, register_family

# -- the cells: how many gates the input/hidden transforms make, and one step of the recurrence ------------

def gru_step(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """torch.nn.GRU: r, z, n; the reset gate scales the hidden transform."""
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h, c


def lstm_step(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """torch.nn.LSTM: i, f, g, o."""
    i_g, f_g, g_g, o_g = (gi + gh).chunk(4, dim=1)
    c = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
    return torch.sigmoid(o_g) * torch.tanh(c), c


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: `gates` maps of the hidden width per transform, and `step(gi, gh, h, c) -> (h, c)`
    (c is the LSTM's cell state; cells without one return it unchanged)."""

    gates: int
    step: Callable


GRU = Cell(3, gru_step)
LSTM = Cell(4, lstm_step)


# -- the input pipeline ------------------------------------------------------------------------------------

def build_pipeline(ops: tuple, ctx: OpContext, gate_channels: int) -> nn.Sequential:
    """Modules of one input pipeline (from the op table); its last conv outputs `gate_channels`, earlier
    convs their width. Every op must keep the positions: the gates meet the hidden map position by position."""
    last_conv = max(i for i, op in enumerate(ops) if op.name == "conv")
    modules = []
    for i, op in enumerate(ops):
        ctx.out_channels = gate_channels if i == last_conv else None
        built = build_op(ctx, op.name, op.args, op.pos)
        if built.length != ctx.length:  # pragma: no cover - the op table only lets length-keeping ops in
            raise spec_error(ctx.text, op.pos, f"{op.name} changes the {ctx.length} positions of a pipeline")
        modules.append(built.module)
        ctx.channels = built.channels
    ctx.out_channels = None
    return nn.Sequential(*modules)


def hidden_width(ops: tuple, default: int) -> int:
    """Hidden channels of a layer: the width written on its pipeline's last conv, else the spec default."""
    convs = [op for op in ops if op.name == "conv"]
    w = convs[-1].args[1]
    return default if w is None else w


# -- the layers and the net --------------------------------------------------------------------------------

class ConvRecurrentLayer(nn.Module):
    """One conv-recurrent layer (GRU/LSTM cell) over a sequence of maps [B, L, C_in, P] -> [B, L, C, P]."""

    def __init__(self, family: str, ops: tuple, layer: Layer, in_channels: int, positions: int,
                 default_width: int, text: str, cell: Cell):
        super().__init__()
        if layer.kernel % 2 == 0:
            raise spec_error(text, layer.pos, f"kernel {layer.kernel} must be odd (the conv keeps the length)")
        if layer.kernel > positions:
            raise spec_error(text, layer.pos, f"kernel {layer.kernel} is larger than the {positions} positions "
                             f"of layout b{layer.layout} here (bn has 1 position: use k1)")
        self.family = family
        self.gates = cell.gates
        self.step = cell.step
        self.hidden = hidden_width(ops, default_width)
        self.positions = positions
        ctx = OpContext(text, in_channels, positions, default_width, kernel=layer.kernel)
        self.input_transform = build_pipeline(ops, ctx, self.gates * self.hidden)
        self.hidden_transform = nn.Conv1d(self.hidden, self.gates * self.hidden, layer.kernel,
                                          padding=layer.kernel // 2)

    def _hidden_gates(self, h: torch.Tensor) -> torch.Tensor:
        if self.positions == 1:  # pointwise layout: a plain matrix product is the same map, and faster
            w = self.hidden_transform.weight[:, :, 0]
            return F.linear(h[:, :, 0], w, self.hidden_transform.bias).unsqueeze(-1)
        return self.hidden_transform(h)

    def forward(self, x: torch.Tensor, keep_sequence: bool = True) -> torch.Tensor:
        b, steps, c_in, p = x.shape
        gi = self.input_transform(x.reshape(b * steps, c_in, p)).reshape(b, steps, self.gates * self.hidden, p)
        return self.recur(gi, keep_sequence)

    def recur(self, gi: torch.Tensor, keep_sequence: bool = True) -> torch.Tensor:
        """The recurrence over input gates gi [B, L, gates*C, P] (the input pipeline's output) -> [B, L, C, P]
        (or only the last step, [B, 1, C, P])."""
        b, steps, _, p = gi.shape
        # unbind once: indexing gi[:, t] per step would make autograd build a full-size zero gradient per step
        gi_steps = gi.unbind(1)
        h = gi.new_zeros(b, self.hidden, p)
        c = gi.new_zeros(b, self.hidden, p)
        outs = []
        for t in range(steps):
            h, c = self.step(gi_steps[t], self._hidden_gates(h), h, c)
            if keep_sequence:
                outs.append(h)
        return torch.stack(outs, dim=1) if keep_sequence else h.unsqueeze(1)


def layout_input(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Lay a sequence of states [B, L, C, P] out for a layer: b1 slides along positions (a plain vector,
    P == 1, becomes one channel along which the conv slides); bn makes every entry a channel."""
    b, steps, c, p = x.shape
    if layout == "n":
        return x.reshape(b, steps, c * p, 1)
    if p == 1:
        return x.reshape(b, steps, 1, c)
    return x


class ConvRecurrentNet(nn.Module):
    """A stack of conv-recurrent layers over [B, L, F] and one linear readout of the last state -> [B]."""

    def __init__(self, spec: RecurrentSpec, n_features: int, lookback: int, cell: Cell):
        super().__init__()
        self.spec_text = spec.text
        width = spec.option("w")
        layers = []
        channels, positions = n_features, 1  # the raw feature vector, as a [F, 1] map before layout
        for i, layer in enumerate(spec.layers):
            if layer.layout == "n":
                channels, positions = channels * positions, 1
            elif positions == 1:
                channels, positions = 1, channels
            module = ConvRecurrentLayer(spec.family, spec.pipeline_for(i), layer, channels, positions, width,
                                        spec.text, cell)
            layers.append(module)
            channels = module.hidden
        self.layers = nn.ModuleList(layers)
        self.layouts = [layer.layout for layer in spec.layers]
        self.state_size = channels * positions
        self.readout = nn.Linear(self.state_size, 1)

    def sequence(self, x: torch.Tensor, keep_sequence: bool = True) -> torch.Tensor:
        """States of the last layer [B, L, C*P] (or only the last step, [B, 1, C*P])."""
        h = x.unsqueeze(-1)  # [B, L, F, 1]
        last = len(self.layers) - 1
        for i, (layer, layout) in enumerate(zip(self.layers, self.layouts)):
            h = layer(layout_input(h, layout), keep_sequence=keep_sequence or i < last)
        return h.flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.sequence(x, keep_sequence=False)[:, -1]).squeeze(-1)

    # -- prediction over many overlapping windows: each day's input gates once ----------------------------
    # The first layer's input pipeline sees one day's feature vector at a time, so over windows that overlap
    # (every stock of consecutive days) it can run once per (day, stock) cell instead of once per window and
    # step: `first_gates` over the cells, then `from_first_gates` over each window's gathered gates. The same
    # ops on the same values as forward(); only the batches the pipeline runs in differ.

    def first_gates(self, cells: torch.Tensor) -> torch.Tensor:
        """The first layer's input gates of N cells' feature vectors [N, F] -> [N, gates*C, P]."""
        x = layout_input(cells[:, None, :, None], self.layouts[0])  # [N, 1, C_in, P]
        n, _, c_in, p = x.shape
        return self.layers[0].input_transform(x.reshape(n, c_in, p))

    def from_first_gates(self, gi: torch.Tensor) -> torch.Tensor:
        """forward() from the first layer's input gates of each window [B, L, gates*C, P] -> [B]."""
        last = len(self.layers) - 1
        h = self.layers[0].recur(gi, keep_sequence=last > 0)
        for i in range(1, last + 1):
            h = self.layers[i](layout_input(h, self.layouts[i]), keep_sequence=i < last)
        return self.readout(h.flatten(2)[:, -1]).squeeze(-1)


# -- the families: the recurrent grammar with a GRU or an LSTM cell ---------------------------------------

@register_family("convgru", RECURRENT)
def convgru(spec: RecurrentSpec, n_features: int, lookback: int) -> nn.Module:
    return ConvRecurrentNet(spec, n_features, lookback, GRU)


@register_family("convlstm", RECURRENT)
def convlstm(spec: RecurrentSpec, n_features: int, lookback: int) -> nn.Module:
    return ConvRecurrentNet(spec, n_features, lookback, LSTM)
