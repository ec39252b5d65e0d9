"""One config mechanism for every YAML the project reads (sweeps, scoring, the zoo) and for TrainConfig.

A config section is a dataclass; each field declares its default and its check with `setting(...)`, so the
dataclass is the schema: the allowed keys, the defaults and the checks all come from it and live in one
place. `read_section` checks a YAML mapping against such a dataclass; `Checker` carries the file name so
every error is one line `file: key: what is wrong`, e.g.
`quickstart.yaml: training.lr: expected a positive number, got 'abc'`.

Why not pydantic (it ships with ray[default])? Its messages are multi-line and name `loc` tuples; turning
them into the one-line `file: key: what` form costs more code than these few checks, and the grid axes
(a list where a scalar is expected) and YAML 1.1's `1e-3`-is-a-string need custom handling either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from crnn_ray.io import CliError, close_match

__all__ = ["Checker", "suggest_key", "KEY_SYNONYMS", "setting", "read_section", "section_keys", "section_dict",
           "load_yaml", "show", "add_flags", "flag_values", "flag_name", "default_text", "value_text", "path",
           "number", "positive_int", "nonneg_int", "int_at_least", "positive_number", "nonneg_number", "boolean", "text",
           "choice", "optional", "auto_or", "names", "section"]

#: check(checker, value, key) -> the value to keep (converted), or raise checker.fail(key, ...)
Check = Callable[["Checker", Any, str], Any]

#: words other libraries use for a key spelled otherwise here: an unknown key close to one of them is answered
#: with "did you mean" its key (only where that key is allowed); never read as the key itself
KEY_SYNONYMS = {"learning_rate": "lr", "l2": "weight_decay", "wd": "weight_decay", "num_epochs": "epochs",
                "max_epochs": "epochs", "max_grad_norm": "grad_clip", "clip_grad_norm": "grad_clip",
                "gradient_clip": "grad_clip", "seq_len": "lookback", "sequence_length": "lookback",
                "models": "variants", "seeds": "seed"}


class Checker:
    """Builds the one-line errors of one source (a file name, or e.g. "train config")."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> CliError:
        return CliError(f"{self.source}: {key}: {msg}" if key else f"{self.source}: {msg}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | list[str]) -> dict:
        """`value` as a mapping ({} for None) whose keys are all in `allowed`."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {show(value)}")
        for k in value:
            if k not in allowed:
                hint = suggest_key(str(k), allowed)
                raise self.fail(f"{key}.{k}" if key else str(k), "unknown key ("
                                + (f"did you mean {hint!r}?; " if hint else "") + f"allowed: {', '.join(allowed)})")
        return value

    def grid(self, value: Any, key: str, one: Check) -> Any:
        """A scalar, or a non-empty list of distinct ones (a grid axis); a one-element list is its scalar."""
        if isinstance(value, list):
            if not value:
                raise self.fail(key, "an empty list gives an empty grid")
            out = [one(self, v, f"{key}[{i}]") for i, v in enumerate(value)]
            if len(set(map(repr, out))) != len(out):
                raise self.fail(key, f"duplicate values in {show(value)}")
            return out if len(out) > 1 else out[0]
        return one(self, value, key)


def suggest_key(word: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    """The allowed key an unknown one most likely meant: a typo (`lookbak`), another spelling (`top-k`) or a
    near-miss of another library's word for it (`learnig_rate` -> `lr`, KEY_SYNONYMS); None when none is close."""
    words = [*allowed, *(w for w, target in KEY_SYNONYMS.items() if target in allowed and w not in allowed)]
    match = close_match(word, words, lambda s: s.lower().replace("-", "_"))
    return KEY_SYNONYMS.get(match, match) if match not in allowed else match


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            num = float(value.strip())
        except ValueError:
            return None
        return num if math.isfinite(num) else None
    return None


# --------------------------------------------------------------------------------------------------- checks
def _number(kind: str, integer: bool, ok: Callable[[float], bool]) -> Check:
    def check(c: Checker, value: Any, key: str):
        num = _as_number(value)
        if num is None or (integer and num != int(num)) or not ok(num):
            raise c.fail(key, f"expected {kind}, got {show(value)}")
        return int(num) if integer else float(num)
    return check


number = _number("a number", False, lambda v: True)
positive_int = _number("a positive integer", True, lambda v: v > 0)
nonneg_int = _number("a non-negative integer", True, lambda v: v >= 0)
positive_number = _number("a positive number", False, lambda v: v > 0)
nonneg_number = _number("a non-negative number", False, lambda v: v >= 0)


def int_at_least(low: int) -> Check:
    return _number(f"an integer >= {low}", True, lambda v: v >= low)


def boolean(c: Checker, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise c.fail(key, f"expected true or false, got {show(value)}")
    return value


def text(c: Checker, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise c.fail(key, f"expected a string, got {show(value)}")
    return value


def choice(*options: str) -> Check:
    def check(c: Checker, value: Any, key: str) -> str:
        text(c, value, key)
        if value not in options:
            raise c.fail(key, f"expected one of {', '.join(options)}, got {show(value)}")
        return value
    return check


def optional(inner: Check) -> Check:
    """`inner`, or null."""
    return lambda c, value, key: None if value is None else inner(c, value, key)


def auto_or(inner: Check) -> Check:
    """The word "auto", or `inner`."""
    return lambda c, value, key: "auto" if value == "auto" else inner(c, value, key)


def names(c: Checker, value: Any, key: str) -> list[str]:
    """A non-empty list of distinct non-empty strings (column names)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise c.fail(key, f"expected a non-empty list of column names, got {show(value)}")
    if len(set(value)) != len(value):
        raise c.fail(key, "duplicate column names")
    return list(value)


def section(cls: type) -> Check:
    """A nested mapping read as the dataclass `cls` (see read_section)."""
    return lambda c, value, key: cls(**read_section(c, cls, value, key))


# ------------------------------------------------------------------------------------------------- schemas
def setting(default: Any = dataclasses.MISSING, *, check: Check | None = None, yaml_key: str | None = None,
            sweep: bool = False, default_factory: Any = dataclasses.MISSING, help: str | None = None,
            flag: bool = False, yaml: bool = True, required: bool = False, metavar: str | None = None,
            switch: bool = False) -> Any:
    """A dataclass field with its check.

    yaml_key: where the field lives in YAML when that differs from its name (a dotted path such as
    "early_stopping.metric" nests it). sweep: a sweep config may give a list of values (one grid axis).
    flag: the field is also the command-line flag `--field-name` (add_flags), with `help` and the field's
    default as its help default; yaml=False: a command-line flag only (not a YAML key); required: the flag
    must be given. switch: a true / false / "auto" setting whose flag works like a boolean's (`--x`, `--no-x`)
    and also takes a value (`--x auto`).
    """
    meta = {"check": check, "yaml_key": yaml_key, "sweep": sweep, "help": help, "flag": flag, "yaml": yaml,
            "required": required, "metavar": metavar, "switch": switch}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _yaml_path(f: dataclasses.Field) -> tuple[str, ...]:
    return tuple((f.metadata.get("yaml_key") or f.name).split("."))


def _yaml_fields(cls: type, skip: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of `cls` that are YAML keys (not command-line-only flags), less `skip`."""
    return [f for f in dataclasses.fields(cls) if f.name not in skip and f.metadata.get("yaml", True)]


def section_keys(cls: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Top-level YAML keys of a section, in field order."""
    out: list[str] = []
    for f in _yaml_fields(cls, skip):
        head = _yaml_path(f)[0]
        if head not in out:
            out.append(head)
    return tuple(out)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise TypeError(f"field {f.name} has no default")


def read_section(c: Checker, cls: type, raw: Any, key: str, *, lists: bool = False,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Checked values of `cls`'s fields from the YAML mapping `raw` at `key` (defaults where absent).

    Unknown keys are refused (naming the allowed ones). `lists=True` lets the fields declared with
    `sweep=True` hold a list (one grid axis). Fields in `skip` are neither read nor allowed.
    """
    fields = _yaml_fields(cls, skip)
    raw = c.mapping(raw, key, section_keys(cls, skip))
    nested_allowed: dict[str, list[str]] = {}
    for f in fields:
        path = _yaml_path(f)
        if len(path) > 1:
            nested_allowed.setdefault(path[0], []).append(path[1])
    for head, allowed in nested_allowed.items():
        c.mapping(raw.get(head), f"{key}.{head}" if key else head, tuple(allowed))
    out: dict[str, Any] = {f.name: _default(f) for f in dataclasses.fields(cls) if f.name not in skip}
    for f in fields:
        path = _yaml_path(f)
        where = ".".join(([key] if key else []) + list(path))
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) or {}
        if path[-1] not in node:
            out[f.name] = _default(f)
            continue
        value, check = node[path[-1]], f.metadata.get("check")
        if check is None:
            out[f.name] = value
        elif lists and f.metadata.get("sweep"):
            out[f.name] = c.grid(value, where, check)
        else:
            out[f.name] = check(c, value, where)
    return out


def load_yaml(path: str | Path, what: str = "config") -> Any:
    """Parsed YAML of a file; one-line CliError naming the file (and line) when absent or malformed."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CliError(f"{path.name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def section_dict(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's values as its YAML section (the inverse of read_section: nested keys nested again)."""
    out: dict[str, Any] = {}
    for f in _yaml_fields(type(obj), skip):
        *heads, last = _yaml_path(f)
        node = out
        for part in heads:
            node = node.setdefault(part, {})
        value = getattr(obj, f.name)
        node[last] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


# ------------------------------------------------------------------------------------------- command line
def path(c: Checker, value: Any, key: str) -> Path:
    """A filesystem path (not checked for existence here)."""
    if isinstance(value, Path):
        return value
    return Path(text(c, value, key))


def flag_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def default_text(f: dataclasses.Field) -> str:
    """The field's default as its --help shows it."""
    return value_text(_default(f))


def value_text(value: Any) -> str:
    """A setting's value as --help states it: on / off, none, or the value."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per `setting(..., flag=True)` field of `cls`: its name, help and help default come from the
    field, so the flag, the YAML key and the default cannot disagree. Absent flags leave no attribute
    (argparse.SUPPRESS): flag_values tells given from defaulted."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag"):
            continue
        doc = f.metadata.get("help") or ""
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.metadata.get("required"):
            kw["required"] = True
        else:
            doc += f" (default: {default_text(f)})"
        if isinstance(_default(f), bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.metadata.get("switch"):
            kw.update(nargs="?", const=True, type=_switch_value, metavar="{true,false,auto}")
            parser.add_argument("--no-" + flag_name(f)[2:], dest=f.name, action="store_const", const=False,
                                default=argparse.SUPPRESS, help=f"= {flag_name(f)} false")
        elif f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag_name(f), help=doc.strip(), **kw)


def _switch_value(text_: str) -> Any:
    """A switch flag's value: true / false (yes / no, 1 / 0) or auto."""
    word = text_.strip().lower()
    if word == "auto":
        return "auto"
    if word in ("true", "yes", "1", "on"):
        return True
    if word in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text_!r}")


def flag_values(cls: type, args: argparse.Namespace, source: str = "command line") -> dict[str, Any]:
    """{field: checked value} of the flags given on the command line (each through its field's check)."""
    c = Checker(source)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag") or not hasattr(args, f.name):
            continue
        value, check = getattr(args, f.name), f.metadata.get("check")
        out[f.name] = value if check is None or isinstance(value, bool) else check(c, value, flag_name(f))
    return out
