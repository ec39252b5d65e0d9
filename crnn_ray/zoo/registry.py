"""The zoo's ids (configs/zoo/*.yaml), the variant resolver, and the model builder.

Sweeps, scoring and the CLI name models by zoo id ("convgru/m25"), by glob ("convgru/*") or by an inline
spec string; this module turns all three into (variant_id, canonical spec) pairs and specs into modules.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from crnn_ray.config import Checker, choice, load_yaml, number, optional, read_section, setting, text
from crnn_ray.io import CliError, close_match
from crnn_ray.zoo.spec import FAMILIES, ModelSpec, canonical, encode, parse

#: where the zoo's YAML files live (override with CRNN_RAY_ZOO_DIR)
ZOO_DIR = Path(__file__).resolve().parents[2] / "configs" / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    id: str
    family: str
    spec: str  # canonical spec string
    seed_ic: float | None  # the report's IC (reference value, private data)
    seed_pnl: float | None  # the report's pnl (reference value, private data)
    note: str = ""


def zoo_dir() -> Path:
    return Path(os.environ.get("CRNN_RAY_ZOO_DIR", ZOO_DIR))


@dataclass
class _EntryFields:
    """One entry of a configs/zoo/<family>.yaml file (the schema: keys, defaults, checks)."""

    id: str = setting(None, check=text)
    spec: str = setting(None, check=text)
    seed_ic: float | None = setting(None, check=optional(number))   # the report's IC (reference only)
    seed_pnl: float | None = setting(None, check=optional(number))  # the report's pnl (reference only)
    note: str = setting("", check=optional(text))


@dataclass
class _FileFields:
    family: str = setting(None, check=lambda c, v, k: choice(*FAMILIES)(c, v, k))
    entries: list = setting(None)


def load_zoo(directory: str | os.PathLike | None = None) -> dict[str, ZooEntry]:
    """All zoo entries by id, from every *.yaml under `directory` (default configs/zoo).

    Each file is read through the project's one config mechanism (crnn_ray/config.py): one-line errors
    `<file>: <key>: what is wrong`.
    """
    directory = Path(directory) if directory is not None else zoo_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CliError(f"{directory}: no zoo files (*.yaml)")
    zoo: dict[str, ZooEntry] = {}
    for path in files:
        c = Checker(str(path))
        doc = _FileFields(**read_section(c, _FileFields, load_yaml(path, "zoo"), ""))
        if doc.family is None:
            raise c.fail("family", f"missing (one of {', '.join(FAMILIES)})")
        if not isinstance(doc.entries, list):
            raise c.fail("entries", "expected a list of entries (id, spec, seed_ic, seed_pnl, note)")
        for n, raw in enumerate(doc.entries):
            where = f"entries[{n}]"
            e = _EntryFields(**read_section(c, _EntryFields, raw, where))
            for key in ("id", "spec"):
                if getattr(e, key) is None:
                    raise c.fail(f"{where}.{key}", "missing")
            if not e.id.startswith(doc.family + "/"):
                raise c.fail(f"{where}.id", f"{e.id!r} must start with '{doc.family}/'")
            if e.id in zoo:
                raise c.fail(f"{where}.id", f"{e.id!r} is defined twice")
            try:
                spec = parse(e.spec)
            except CliError as exc:
                raise c.fail(f"{e.id}.spec", str(exc)) from None
            if spec.family != doc.family:
                raise c.fail(f"{e.id}.spec", f"a {spec.family} spec in the {doc.family} file")
            zoo[e.id] = ZooEntry(e.id, doc.family, canonical(e.spec), e.seed_ic, e.seed_pnl, str(e.note or ""))
    return zoo


def resolve_variants(items: list[str], zoo: dict[str, ZooEntry] | None = None) -> list[tuple[str, str]]:
    """Zoo ids, fnmatch globs ("convgru/*") or inline spec strings -> [(variant_id, canonical spec)].

    Inline specs get variant_id == their canonical spec. Order is kept; duplicates are dropped.
    """
    if isinstance(items, str):
        items = [items]
    zoo = load_zoo() if zoo is None else zoo
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise CliError(f"model item {item!r} is not a zoo id, glob or spec")
        item = item.strip()
        if item in zoo:
            out.setdefault(item, zoo[item].spec)
        elif "(" in item:
            spec = canonical(item)
            out.setdefault(spec, spec)
        elif any(ch in item for ch in "*?["):
            matched = [i for i in zoo if fnmatch.fnmatchcase(i, item)]
            if not matched:
                raise CliError(f"model glob {item!r} matches no zoo id")
            for i in matched:
                out.setdefault(i, zoo[i].spec)
        else:
            hint = suggest_id(item, zoo)
            raise CliError(f"unknown zoo id {item!r} (" + (f"did you mean {hint!r}?; " if hint else "")
                           + "see `python -m crnn_ray.zoo list`)")
    return list(out.items())


def _id_normal(zoo_id: str) -> str:
    """An id with its numbers as numbers: `convgru/m1` and `convgru/m01` are one id to a reader."""
    return re.sub(r"\d+", lambda m: str(int(m.group())), zoo_id.lower())


def suggest_id(item: str, zoo: dict[str, ZooEntry]) -> str | None:
    """The zoo id an unknown one most likely meant (zero padding, case, a typo), for the error's "did you mean";
    why: the families number their entries differently (convgru/m01, convlstm/m3)."""
    return close_match(item, zoo, _id_normal)


def build_model(spec: str | ModelSpec, n_features: int, lookback: int, *, compile: bool = False) -> nn.Module:
    """The module of a spec: [B, lookback, n_features] -> [B]. compile=True wraps it in torch.compile."""
    if not isinstance(n_features, int) or n_features < 1:
        raise CliError(f"n_features must be a positive integer, got {n_features!r}")
    if not isinstance(lookback, int) or lookback < 1:
        raise CliError(f"lookback must be a positive integer, got {lookback!r}")
    parsed = parse(spec)
    model = FAMILIES[parsed.family].build(parsed, n_features, lookback)
    model.spec = encode(parsed)  # the canonical string, for checkpoints and logs
    return maybe_compile(model) if compile else model


def maybe_compile(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Compile `model` in place with torch.compile (nn.Module.compile) when enabled, and return it.

    In place, so the module keeps its class, `.spec` and state_dict keys (no `_orig_mod.` prefix): checkpoints
    of compiled and eager models are interchangeable. The recurrent loop is traceable (no data-dependent
    control flow); the first call pays the compile time.
    """
    if enabled:
        model.compile()
    return model


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
