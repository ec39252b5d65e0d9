"""The zoo's ids (configs/zoo/*.yaml), the variant resolver, and the model builder.

Sweeps, scoring and the CLI name models by zoo id ("convgru/m25"), by glob ("convgru/*") or by an inline
spec string; this module turns all three into (variant_id, canonical spec) pairs and specs into modules.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from torch import nn

from crnn_ray.io import CliError
from crnn_ray.zoo.cnn1d import CNN1dNet
from crnn_ray.zoo.recurrent import ConvRecurrentNet
from crnn_ray.zoo.spec import FAMILIES, CnnSpec, ModelSpec, canonical, encode, parse

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


def _number(path: Path, key: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CliError(f"{path}: {key} must be a number, got {value!r}")
    return float(value)


def load_zoo(directory: str | os.PathLike | None = None) -> dict[str, ZooEntry]:
    """All zoo entries by id, from every *.yaml under `directory` (default configs/zoo)."""
    directory = Path(directory) if directory is not None else zoo_dir()
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CliError(f"{directory}: no zoo files (*.yaml)")
    zoo: dict[str, ZooEntry] = {}
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CliError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
            raise CliError(f"{path}: expected a mapping with 'family' and a list 'entries'")
        family = doc.get("family")
        if family not in FAMILIES:
            raise CliError(f"{path}: family must be one of {', '.join(FAMILIES)}, got {family!r}")
        for n, raw in enumerate(doc["entries"]):
            where = f"entries[{n}]"
            if not isinstance(raw, dict):
                raise CliError(f"{path}: {where} must be a mapping")
            unknown = set(raw) - {"id", "spec", "seed_ic", "seed_pnl", "note"}
            if unknown:
                raise CliError(f"{path}: {where} has unknown key {sorted(unknown)[0]!r}")
            for key in ("id", "spec"):
                if not isinstance(raw.get(key), str) or not raw[key].strip():
                    raise CliError(f"{path}: {where}.{key} is missing")
            entry_id = raw["id"]
            if not entry_id.startswith(family + "/"):
                raise CliError(f"{path}: {where}.id {entry_id!r} must start with '{family}/'")
            if entry_id in zoo:
                raise CliError(f"{path}: {where}.id {entry_id!r} is defined twice")
            try:
                spec = parse(raw["spec"])
            except CliError as exc:
                raise CliError(f"{path}: {entry_id}.spec: {exc}") from None
            if spec.family != family:
                raise CliError(f"{path}: {entry_id}.spec is a {spec.family} spec in the {family} file")
            zoo[entry_id] = ZooEntry(entry_id, family, canonical(raw["spec"]),
                                     _number(path, f"{entry_id}.seed_ic", raw.get("seed_ic")),
                                     _number(path, f"{entry_id}.seed_pnl", raw.get("seed_pnl")),
                                     str(raw.get("note") or ""))
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
            raise CliError(f"unknown zoo id {item!r} (see `python -m crnn_ray.zoo list`)")
    return list(out.items())


def build_model(spec: str | ModelSpec, n_features: int, lookback: int, *, compile: bool = False) -> nn.Module:
    """The module of a spec: [B, lookback, n_features] -> [B]. compile=True wraps it in torch.compile."""
    if not isinstance(n_features, int) or n_features < 1:
        raise CliError(f"n_features must be a positive integer, got {n_features!r}")
    if not isinstance(lookback, int) or lookback < 1:
        raise CliError(f"lookback must be a positive integer, got {lookback!r}")
    parsed = parse(spec)
    model = (CNN1dNet if isinstance(parsed, CnnSpec) else ConvRecurrentNet)(parsed, n_features, lookback)
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
