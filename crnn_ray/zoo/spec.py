"""The model spec grammar: one string names one architecture (see docs/zoo.md).

A spec string is the model's identity everywhere (configs, trial names, checkpoints, leaderboards), so it
must be short, readable next to the report's notation, and canonical: `encode(parse(s)) == s` for
canonical strings, and `canonical(s)` maps the accepted variants (whitespace, upper case, the report's own
spellings such as `_2layer(layer1(batch:1,kernel:3), ...)` or `CNN1d(5,1)*3+...+linear`) to one form.
One hand-written recursive-descent parser; every error is a `CliError` naming the token and its position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from crnn_ray.io import CliError

RECURRENT_FAMILIES = ("convgru", "convlstm")
FAMILIES = RECURRENT_FAMILIES + ("cnn1d",)

#: default hidden width (channels of the hidden map) of a recurrent layer
DEFAULT_RECURRENT_WIDTH = 16
#: default base width (channels) of a CNN1d stack
DEFAULT_CNN_WIDTH = 32
DEFAULT_DROPOUT = 0.5  # torch's default drop probability
DEFAULT_FEATUREDROPOUT = 0.5
DEFAULT_AVG_KERNEL = 3

RECURRENT_OPTIONS = {"w": DEFAULT_RECURRENT_WIDTH}
CNN_OPTIONS = {"w": DEFAULT_CNN_WIDTH, "pad": "same"}
PAD_VALUES = ("same", "valid")

# recurrent pipeline op names (longest first so `featuredropout` is not read as something shorter)
RECURRENT_OPS = ("featuredropout", "batchnorm", "dropout", "conv", "relu", "avg")
# CNN1d item words (longest first: `avgpool` before `avg`, `down_sample` before `down`)
CNN_WORDS = ("featuredropout", "down_sample", "batchnorm", "avgpool", "dropout", "linear", "cnn1d", "cnn1",
             "conv", "down", "relu", "avg")


@dataclass(frozen=True)
class Op:
    """One op of a recurrent layer's input pipeline. args: conv (kernel|None, width|None); avg (kernel,);
    dropout/featuredropout (p,); others ()."""

    name: str
    args: tuple = ()
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Layer:
    """One recurrent layer: layout "1" (b1: the conv slides along the entries) or "n" (bn: entries are
    channels, a pointwise map) and the kernel of its convs."""

    layout: str
    kernel: int
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class RecurrentSpec:
    family: str  # "convgru" | "convlstm"
    pipelines: tuple  # tuple[tuple[Op, ...], ...]: one per layer, or one shared by every layer
    layers: tuple  # tuple[Layer, ...]
    options: tuple = ()  # sorted ((key, value), ...) of non-default options
    text: str = field(default="", compare=False)

    def option(self, key):
        return dict(self.options).get(key, RECURRENT_OPTIONS[key])

    def pipeline_for(self, i: int) -> tuple:
        return self.pipelines[0] if len(self.pipelines) == 1 else self.pipelines[i]


@dataclass(frozen=True)
class Item:
    """One CNN1d item: kind in conv (args (kernel, stride)), avg, avgpool, relu, batchnorm,
    dropout/featuredropout (args (p,)), down (children), group (children); repeated `repeat` times."""

    kind: str
    args: tuple = ()
    children: tuple = ()
    repeat: int = 1
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class CnnSpec:
    family: str  # "cnn1d"
    items: tuple  # tuple[Item, ...]
    options: tuple = ()
    text: str = field(default="", compare=False)

    def option(self, key):
        return dict(self.options).get(key, CNN_OPTIONS[key])


ModelSpec = Union[RecurrentSpec, CnnSpec]


def spec_error(text: str, pos: int, message: str) -> CliError:
    """A one-line error naming the spec, the character position (0-based) and the token found there."""
    token = _token_at(text, pos)
    return CliError(f"model spec {text!r}: {message} at position {pos} (token {token!r})")


def _token_at(text: str, pos: int) -> str:
    if pos >= len(text):
        return "<end>"
    end = pos + 1
    if text[pos].isalnum() or text[pos] in "._":
        while end < len(text) and (text[end].isalnum() or text[end] in "."):
            end += 1
    return text[pos:end]


class _Parser:
    def __init__(self, text: str):
        if not isinstance(text, str):
            raise CliError(f"model spec must be a string, got {type(text).__name__}")
        self.text = text
        self.low = text.lower()
        self.i = 0

    # -- low level -------------------------------------------------------------------------------------
    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def fail(self, message: str, pos: int | None = None) -> CliError:
        return spec_error(self.text, self.i if pos is None else pos, message)

    def peek(self, s: str) -> bool:
        self.ws()
        return self.low.startswith(s, self.i)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.i += len(s)
            return True
        return False

    def expect(self, s: str, what: str | None = None) -> None:
        if not self.accept(s):
            raise self.fail(f"expected {what or repr(s)}")

    def word(self, words) -> tuple[str, int] | None:
        """Match one of `words` (case-insensitive) that is not followed by more letters."""
        self.ws()
        for w in words:
            if self.low.startswith(w, self.i):
                nxt = self.low[self.i + len(w): self.i + len(w) + 1]
                if nxt.isalpha():
                    continue
                pos = self.i
                self.i += len(w)
                return w, pos
        return None

    def integer(self, what: str) -> int:
        self.ws()
        start = self.i
        while self.i < len(self.text) and self.text[self.i].isdigit():
            self.i += 1
        if start == self.i:
            raise self.fail(f"expected {what}")
        return int(self.text[start:self.i])

    def number(self, what: str) -> float:
        self.ws()
        start = self.i
        while self.i < len(self.text) and (self.text[self.i].isdigit() or self.text[self.i] in ".eE-+"):
            self.i += 1
        try:
            return float(self.text[start:self.i])
        except ValueError:
            raise self.fail(f"expected {what}", start) from None

    def end(self) -> None:
        self.ws()
        if self.i != len(self.text):
            raise self.fail("unexpected text after the spec")

    # -- grammar ---------------------------------------------------------------------------------------
    def spec(self) -> ModelSpec:
        fam = self.word(("convgru", "convlstm", "cnn1d"))
        if fam is None:
            raise self.fail(f"unknown model family (expected one of {', '.join(FAMILIES)})")
        family = fam[0]
        self.expect("(")
        if family == "cnn1d":
            items = self.items(top=True)
            self.expect(")")
            options = self.options(CNN_OPTIONS)
            self.end()
            return CnnSpec(family, items, options, self.text)
        pipelines = [self.pipeline()]
        while self.accept("+"):
            pipelines.append(self.pipeline())
        self.expect(")", "'+' or ')'")
        layers_pos = self.i
        layers = self.layers()
        options = self.options(RECURRENT_OPTIONS)
        self.end()
        if len(pipelines) not in (1, len(layers)):
            raise self.fail(f"{len(pipelines)} pipelines for {len(layers)} layers (give one per layer, or one "
                            f"shared by all)", layers_pos)
        width = dict(options).get("w", DEFAULT_RECURRENT_WIDTH)
        pipes = tuple(self._normalise_pipeline(p, layers if len(pipelines) == 1 else [layers[i]], width)
                      for i, p in enumerate(pipelines))
        return RecurrentSpec(family, pipes, tuple(layers), options, self.text)

    def pipeline(self) -> tuple:
        ops = [self.op()]
        while self.accept("_"):
            ops.append(self.op())
        return tuple(ops)

    def op(self) -> Op:
        found = self.word(RECURRENT_OPS)
        if found is None:
            raise self.fail(f"unknown op (expected one of {', '.join(sorted(RECURRENT_OPS))})")
        name, pos = found
        args: tuple = ()
        if name == "conv":
            k = w = None
            if self.accept("("):
                k = self.positive("conv kernel")
                if self.accept(","):
                    w = self.positive("conv width")
                self.expect(")")
            args = (k, w)
        elif name == "avg":
            k = DEFAULT_AVG_KERNEL
            if self.accept("("):
                k = self.positive("avg kernel")
                self.expect(")")
            if k % 2 == 0:
                raise self.fail(f"avg kernel {k} must be odd (it keeps the length)", pos)
            args = (k,)
        elif name in ("dropout", "featuredropout"):
            args = (self.probability(DEFAULT_DROPOUT if name == "dropout" else DEFAULT_FEATUREDROPOUT),)
        return Op(name, args, pos)

    def positive(self, what: str) -> int:
        pos = self.i
        v = self.integer(what)
        if v < 1:
            raise self.fail(f"{what} must be >= 1", pos)
        return v

    def probability(self, default: float) -> float:
        if not self.accept("("):
            return default
        self.ws()
        pos = self.i
        p = self.number("a probability")
        if not 0.0 <= p < 1.0:
            raise self.fail(f"drop probability {p:g} must be in [0, 1)", pos)
        self.expect(")")
        return p

    def layers(self) -> list[Layer]:
        self.ws()
        pos = self.i
        if self.accept("x"):
            n = self.positive("layer count")
            self.expect("[")
            layers = [self.layer()]
            while self.accept(","):
                layers.append(self.layer())
            self.expect("]", "',' or ']'")
        elif self.accept("_"):  # the report's spelling: _2layer(layer1(batch:1,kernel:3), ...)
            n = self.positive("layer count")
            self.expect("layer")
            self.expect("(")
            layers = [self.report_layer(1)]
            while self.accept(","):
                layers.append(self.report_layer(len(layers) + 1))
            self.expect(")", "',' or ')'")
        else:
            raise self.fail("expected the layer list 'xN[...]'")
        if n != len(layers):
            raise self.fail(f"layer count {n} but {len(layers)} layer settings", pos)
        return layers

    def layer(self) -> Layer:
        self.ws()
        pos = self.i
        if not self.accept("b"):
            raise self.fail("expected a layer setting like 'b1k3' or 'bnk1'")
        if self.accept("1"):
            layout = "1"
        elif self.accept("n"):
            layout = "n"
        else:
            raise self.fail("expected layout '1' or 'n' after 'b'")
        self.expect("k", "'k<kernel>'")
        return Layer(layout, self.positive("kernel"), pos)

    def report_layer(self, index: int) -> Layer:
        self.ws()
        pos = self.i
        self.expect("layer")
        num_pos = self.i
        if self.integer("layer number") != index:
            raise self.fail(f"expected layer{index}", num_pos)
        self.expect("(")
        self.expect("batch")
        self.expect(":")
        self.ws()
        if self.accept("1"):
            layout = "1"
        elif self.accept("n"):
            layout = "n"
        else:
            raise self.fail("expected batch:1 or batch:n")
        self.expect(",")
        self.expect("kernel")
        self.expect(":")
        k = self.positive("kernel")
        self.expect(")")
        return Layer(layout, k, pos)

    def options(self, allowed: dict) -> tuple:
        if not self.accept("{"):
            return ()
        out: dict = {}
        while True:
            self.ws()
            pos = self.i
            key = self.word(tuple(sorted(allowed, key=len, reverse=True)))
            if key is None:
                raise self.fail(f"unknown option (expected one of {', '.join(sorted(allowed))})")
            self.expect("=")
            if key[0] == "pad":
                v = self.word(PAD_VALUES)
                if v is None:
                    raise self.fail(f"pad must be one of {', '.join(PAD_VALUES)}")
                value = v[0]
            else:
                value = self.positive(key[0])
            if key[0] in out:
                raise self.fail(f"option {key[0]!r} given twice", pos)
            out[key[0]] = value
            if not self.accept(","):
                break
        self.expect("}", "',' or '}'")
        return tuple(sorted((k, v) for k, v in out.items() if v != allowed[k]))

    # -- CNN1d -----------------------------------------------------------------------------------------
    def items(self, top: bool = False) -> tuple:
        items = [self.item()]
        while self.accept("+"):
            if top and self.peek("linear"):
                pos = self.i
                self.word(("linear",))
                self.ws()
                if not self.peek(")"):
                    raise self.fail("'linear' (the readout) may only come last", pos)
                break
            items.append(self.item())
        return tuple(items)

    def item(self) -> Item:
        self.ws()
        pos = self.i
        if self.accept("("):
            children = self.items()
            self.expect(")", "'+' or ')'")
            item = Item("group", (), children, 1, pos)
        elif self.peek("c") and self.low[self.i + 1: self.i + 2].isdigit():
            self.i += 1
            k = self.positive("kernel")
            self.expect("s", "'s<stride>'")
            s = self.positive("stride")
            item = Item("conv", (k, s), (), 1, pos)
        else:
            found = self.word(CNN_WORDS)
            if found is None or found[0] == "linear":
                raise self.fail("unknown CNN1d item (expected cKsS, avg, avgpool, relu, batchnorm, dropout, "
                                "featuredropout, down(...) or (...))")
            name = found[0]
            if name in ("cnn1d", "cnn1", "conv"):  # the report's CNN1d(k,s)
                self.expect("(")
                k = self.positive("kernel")
                self.expect(",")
                s = self.positive("stride")
                self.expect(")")
                item = Item("conv", (k, s), (), 1, pos)
            elif name in ("down", "down_sample"):
                self.expect("(")
                self.ws()
                if self.low[self.i: self.i + 1].isdigit():  # the report's down_sample(3,1)
                    cpos = self.i
                    k = self.positive("kernel")
                    self.expect(",")
                    s = self.positive("stride")
                    children: tuple = (Item("conv", (k, s), (), 1, cpos),)
                else:
                    children = self.items()
                self.expect(")", "'+' or ')'")
                item = Item("down", (), children, 1, pos)
            elif name in ("dropout", "featuredropout"):
                item = Item(name, (self.probability(DEFAULT_DROPOUT if name == "dropout"
                                                    else DEFAULT_FEATUREDROPOUT),), (), 1, pos)
            else:
                item = Item(name, (), (), 1, pos)
        if self.accept("*"):
            n = self.positive("repeat count")
            item = Item(item.kind, item.args, item.children, n, item.pos)
        return item

    # -- normalisation ---------------------------------------------------------------------------------
    def _normalise_pipeline(self, ops: tuple, layers: list[Layer], width: int) -> tuple:
        if not any(op.name == "conv" for op in ops):
            raise self.fail("a pipeline needs a conv (it makes the gates)", ops[0].pos)
        kernels = {layer.kernel for layer in layers}
        layer_k = kernels.pop() if len(kernels) == 1 else None
        out = []
        for op in ops:
            if op.name == "conv":
                k, w = op.args
                if w == width:
                    w = None
                if w is not None and k is None:
                    k = layer_k
                if w is None and k is not None and k == layer_k:
                    k = None
                op = Op("conv", (k, w), op.pos)
            out.append(op)
        return tuple(out)


def parse(spec: str) -> ModelSpec:
    """Parse a spec string (canonical or an accepted variant) into a ModelSpec; CliError on bad input."""
    if isinstance(spec, (RecurrentSpec, CnnSpec)):
        return spec
    parser = _Parser(spec)
    if not spec.strip():
        raise CliError("model spec is empty")
    return parser.spec()


def _fmt_p(p: float) -> str:
    return format(p, "g")


def _encode_op(op: Op) -> str:
    if op.name == "conv":
        k, w = op.args
        if w is not None:
            return f"conv({k},{w})"
        return f"conv({k})" if k is not None else "conv"
    if op.name == "avg":
        return "avg" if op.args[0] == DEFAULT_AVG_KERNEL else f"avg({op.args[0]})"
    if op.name in ("dropout", "featuredropout"):
        default = DEFAULT_DROPOUT if op.name == "dropout" else DEFAULT_FEATUREDROPOUT
        return op.name if op.args[0] == default else f"{op.name}({_fmt_p(op.args[0])})"
    return op.name


def _encode_item(item: Item) -> str:
    if item.kind == "conv":
        s = f"c{item.args[0]}s{item.args[1]}"
    elif item.kind == "down":
        s = "down(" + "+".join(_encode_item(c) for c in item.children) + ")"
    elif item.kind == "group":
        s = "(" + "+".join(_encode_item(c) for c in item.children) + ")"
    elif item.kind in ("dropout", "featuredropout"):
        default = DEFAULT_DROPOUT if item.kind == "dropout" else DEFAULT_FEATUREDROPOUT
        s = item.kind if item.args[0] == default else f"{item.kind}({_fmt_p(item.args[0])})"
    else:
        s = item.kind
    return s if item.repeat == 1 else f"{s}*{item.repeat}"


def _encode_options(options: tuple) -> str:
    return "" if not options else "{" + ",".join(f"{k}={v}" for k, v in options) + "}"


def encode(spec: ModelSpec) -> str:
    """The canonical string of a parsed spec."""
    if isinstance(spec, CnnSpec):
        return "cnn1d(" + "+".join(_encode_item(i) for i in spec.items) + ")" + _encode_options(spec.options)
    pipes = "+".join("_".join(_encode_op(op) for op in p) for p in spec.pipelines)
    layers = ",".join(f"b{layer.layout}k{layer.kernel}" for layer in spec.layers)
    return f"{spec.family}({pipes})x{len(spec.layers)}[{layers}]" + _encode_options(spec.options)


def canonical(spec: str) -> str:
    """Normalise an accepted spelling (whitespace, case, the report's notation) to the canonical string."""
    return encode(parse(spec))


def family_of(spec: str | ModelSpec) -> str:
    return parse(spec).family
