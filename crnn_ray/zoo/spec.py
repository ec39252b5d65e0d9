"""The model spec grammar: one string names one architecture (see docs/zoo.md).

A spec string is the model's identity everywhere (configs, trial names, checkpoints, leaderboards), so it
must be short, readable next to the report's notation, and canonical: `encode(parse(s)) == s` for
canonical strings, and `canonical(s)` maps the accepted variants (whitespace, upper case, the report's own
spellings such as `_2layer(layer1(batch:1,kernel:3), ...)` or `CNN1d(5,1)*3+...+linear`) to one form.
One hand-written recursive-descent parser; every error is a `CliError` naming the token and its position.

The family word picks a `Family` from `FAMILIES` (filled by `register_family` in the family modules); the
family's `Grammar` reads its body: the recurrent grammar (`RECURRENT`) or the CNN1d grammar (`CNN`). Op
words, their arguments and their canonical spelling come from the op table (ops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from crnn_ray.io import CliError
from crnn_ray.zoo import ops
from crnn_ray.zoo.errors import spec_error
from crnn_ray.zoo.ops import PIPELINE, PLACE, REQUIRED, STACK, OpDef

#: default hidden width (channels of the hidden map) of a recurrent layer
DEFAULT_RECURRENT_WIDTH = 16
#: default base width (channels) of a CNN1d stack
DEFAULT_CNN_WIDTH = 32

RECURRENT_OPTIONS = {"w": DEFAULT_RECURRENT_WIDTH}
CNN_OPTIONS = {"w": DEFAULT_CNN_WIDTH, "pad": "same"}
PAD_VALUES = ("same", "valid")

#: every word accepted as a recurrent pipeline op (from the op table, longest first)
RECURRENT_OPS = tuple(ops.words(PIPELINE))


@dataclass(frozen=True)
class Op:
    """One op of a recurrent layer's input pipeline: an op table name (ops.OPS) and its arguments,
    e.g. conv (kernel|None, width|None), smooth (kernel,), dropout/featuredropout (p,)."""

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
    family: str  # a family with the RECURRENT grammar: "convgru" | "convlstm"
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
    """One CNN1d item: an op (kind = its op table name, e.g. cnn1d (kernel, stride), pool, avgpool, relu,
    dropout (p,)), a `down` block or a `group` (children); repeated `repeat` times."""

    kind: str
    args: tuple = ()
    children: tuple = ()
    repeat: int = 1
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class CnnSpec:
    family: str  # a family with the CNN grammar: "cnn1d"
    items: tuple  # tuple[Item, ...]
    options: tuple = ()
    text: str = field(default="", compare=False)

    def option(self, key):
        return dict(self.options).get(key, CNN_OPTIONS[key])


ModelSpec = Union[RecurrentSpec, CnnSpec]


# -- the family registry -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grammar:
    """How a family's body is read (after `family(`, to the end of the spec) and written back."""

    parse: Callable[[_Parser, str], ModelSpec]  # (parser, family name) -> spec
    encode: Callable[[ModelSpec], str]


@dataclass(frozen=True)
class Family:
    """One model family: its word, the grammar of its spec and the builder of its module."""

    name: str
    grammar: Grammar
    build: Callable  # (spec, n_features, lookback) -> nn.Module [B, lookback, n_features] -> [B]


#: family word -> Family, in registration order (the family modules register on import: see __init__.py)
FAMILIES: dict[str, Family] = {}


def register_family(name: str, grammar: Grammar):
    """Decorator registering a module builder `(spec, n_features, lookback) -> nn.Module` as family `name`:

        @register_family("convgru", RECURRENT)
        def convgru(spec, n_features, lookback): ...
    """
    if not name.isalnum() or name != name.lower():
        raise ValueError(f"family name {name!r} must be lower-case letters and digits")
    if name in FAMILIES:
        raise ValueError(f"family {name!r} is registered twice")

    def register(build):
        FAMILIES[name] = Family(name, grammar, build)
        return build

    return register


# -- the parser --------------------------------------------------------------------------------------------

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

    def positive(self, what: str) -> int:
        pos = self.i
        v = self.integer(what)
        if v < 1:
            raise self.fail(f"{what} must be >= 1", pos)
        return v

    def end(self) -> None:
        self.ws()
        if self.i != len(self.text):
            raise self.fail("unexpected text after the spec")

    # -- the spec: family word, then the family's grammar ----------------------------------------------
    def spec(self) -> ModelSpec:
        found = self.word(sorted(FAMILIES, key=len, reverse=True))
        if found is None:
            raise self.fail(f"unknown model family (expected one of {', '.join(FAMILIES)})")
        family = FAMILIES[found[0]]
        self.expect("(")
        return family.grammar.parse(self, family.name)

    # -- op words (the op table) -----------------------------------------------------------------------
    def op(self, place: str, unknown: str) -> tuple[str, tuple, int]:
        """One op word allowed in `place` with its arguments -> (op table name, args, position)."""
        self.ws()
        pos = self.i
        for d in ops.OPS.values():  # compact forms first: c3s2
            lead = d.short.split("{}")[0] if d.short else ""
            if lead and place in d.where and self.low.startswith(lead, self.i) \
                    and self.low[self.i + len(lead): self.i + len(lead) + 1].isdigit():
                return d.name, self.short_args(d), pos
        allowed = ops.words(place)
        found = self.word(allowed)
        if found is None:
            elsewhere = {w: d for other in PLACE if other != place for w, d in ops.words(other).items()}
            wrong = self.word(elsewhere)
            if wrong is not None:
                d = elsewhere[wrong[0]]
                raise self.fail(f"{wrong[0]!r} is a {PLACE[d.where[0]]} ({d.about}), not a {PLACE[place]}", pos)
            raise self.fail(unknown)
        d = allowed[found[0]]
        return d.name, self.op_args(d, found[0], pos), pos

    def short_args(self, d: OpDef) -> tuple:
        """`c3s2`: the short form's literal pieces around positive ints, one per Param."""
        pieces = d.short.split("{}")
        self.i += len(pieces[0])
        args = []
        for n, param in enumerate(d.params):
            args.append(self.positive(param.what))
            if pieces[n + 1]:
                nxt = f"<{d.params[n + 1].what}>" if n + 1 < len(d.params) else ""
                self.expect(pieces[n + 1], f"'{pieces[n + 1]}{nxt}'")
        return tuple(args)

    def op_args(self, d: OpDef, spelled: str, pos: int) -> tuple:
        """`word` or `word(a, b)`: trailing arguments with a default may be left out."""
        if not d.params:
            return ()
        values: list = []
        if self.accept("("):
            for n, param in enumerate(d.params):
                if n and not self.accept(","):
                    if any(p.default is REQUIRED for p in d.params[n:]):
                        raise self.fail("expected ','")
                    break
                values.append(self.value(param, spelled, pos))
            self.expect(")")
        elif any(p.default is REQUIRED for p in d.params):
            raise self.fail("expected '('")
        return tuple(values) + tuple(p.default for p in d.params[len(values):])

    def value(self, param, spelled: str, pos: int):
        if param.kind == "p":
            self.ws()
            start = self.i
            p = self.number("a probability")
            if not 0.0 <= p < 1.0:
                raise self.fail(f"drop probability {p:g} must be in [0, 1)", start)
            return p
        what = f"{spelled} {param.what}"
        v = self.positive(what)
        if param.odd and v % 2 == 0:
            raise self.fail(f"{what} {v} must be odd (it keeps the length)", pos)
        return v

    # -- options ---------------------------------------------------------------------------------------
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

    # -- the recurrent grammar: (pipeline + ...) xN[layer, ...] {options} ------------------------------
    def recurrent(self, family: str) -> RecurrentSpec:
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
        unknown = f"unknown op (expected one of {', '.join(sorted(RECURRENT_OPS))})"
        pipeline = [Op(*self.op(PIPELINE, unknown))]
        while self.accept("_"):
            pipeline.append(Op(*self.op(PIPELINE, unknown)))
        return tuple(pipeline)

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

    def _normalise_pipeline(self, ops_: tuple, layers: list[Layer], width: int) -> tuple:
        """Drop a conv's kernel/width where they equal the layer's kernel / the spec's width."""
        if not any(op.name == "conv" for op in ops_):
            raise self.fail("a pipeline needs a conv (it makes the gates)", ops_[0].pos)
        kernels = {layer.kernel for layer in layers}
        layer_k = kernels.pop() if len(kernels) == 1 else None
        out = []
        for op in ops_:
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

    # -- the CNN1d grammar: item + ... [+ linear] ) {options} ------------------------------------------
    def cnn(self, family: str) -> CnnSpec:
        items = self.items(top=True)
        self.expect(")")
        options = self.options(CNN_OPTIONS)
        self.end()
        return CnnSpec(family, items, options, self.text)

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
        elif self.word(("down_sample", "down")):
            self.expect("(")
            self.ws()
            if self.low[self.i: self.i + 1].isdigit():  # the report's down_sample(3,1)
                cpos = self.i
                k = self.positive("kernel")
                self.expect(",")
                s = self.positive("stride")
                children: tuple = (Item("cnn1d", (k, s), (), 1, cpos),)
            else:
                children = self.items()
            self.expect(")", "'+' or ')'")
            item = Item("down", (), children, 1, pos)
        else:
            stack_words = ", ".join(["cKsS"] + sorted(w for w, d in ops.words(STACK).items() if not d.short))
            name, args, _ = self.op(STACK, f"unknown CNN1d item (expected {stack_words}, down(...) or (...))")
            item = Item(name, args, (), 1, pos)
        if self.accept("*"):
            n = self.positive("repeat count")
            item = Item(item.kind, item.args, item.children, n, item.pos)
        return item


def parse(spec: str | ModelSpec) -> ModelSpec:
    """Parse a spec string (canonical or an accepted variant) into a ModelSpec; CliError on bad input."""
    if not isinstance(spec, str) and getattr(spec, "family", None) in FAMILIES:
        return spec  # already parsed
    parser = _Parser(spec)
    if not spec.strip():
        raise CliError("model spec is empty")
    return parser.spec()


# -- the encoder -------------------------------------------------------------------------------------------

def _encode_op(name: str, args: tuple) -> str:
    """The canonical spelling of one op: its short form, else its written word with the arguments up to
    the last one that is not its default."""
    d = ops.OPS[name]
    if d.short:
        return d.short.format(*args)
    shown = list(args)
    while shown and shown[-1] == d.params[len(shown) - 1].default:
        shown.pop()
    word = d.written or d.name
    return word if not shown else word + "(" + ",".join(
        format(v, "g") if isinstance(v, float) else str(v) for v in shown) + ")"


def _encode_item(item: Item) -> str:
    if item.kind == "down":
        s = "down(" + "+".join(_encode_item(c) for c in item.children) + ")"
    elif item.kind == "group":
        s = "(" + "+".join(_encode_item(c) for c in item.children) + ")"
    else:
        s = _encode_op(item.kind, item.args)
    return s if item.repeat == 1 else f"{s}*{item.repeat}"


def _encode_options(options: tuple) -> str:
    return "" if not options else "{" + ",".join(f"{k}={v}" for k, v in options) + "}"


def _encode_recurrent(spec: RecurrentSpec) -> str:
    pipes = "+".join("_".join(_encode_op(op.name, op.args) for op in p) for p in spec.pipelines)
    layers = ",".join(f"b{layer.layout}k{layer.kernel}" for layer in spec.layers)
    return f"{spec.family}({pipes})x{len(spec.layers)}[{layers}]" + _encode_options(spec.options)


def _encode_cnn(spec: CnnSpec) -> str:
    return f"{spec.family}(" + "+".join(_encode_item(i) for i in spec.items) + ")" + _encode_options(spec.options)


#: the two body grammars a family can reuse
RECURRENT = Grammar(_Parser.recurrent, _encode_recurrent)
CNN = Grammar(_Parser.cnn, _encode_cnn)


def encode(spec: ModelSpec) -> str:
    """The canonical string of a parsed spec."""
    return FAMILIES[spec.family].grammar.encode(spec)


def canonical(spec: str) -> str:
    """Normalise an accepted spelling (whitespace, case, the report's notation) to the canonical string."""
    return encode(parse(spec))


def family_of(spec: str | ModelSpec) -> str:
    return parse(spec).family
