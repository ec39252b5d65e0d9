"""Checkpoint directory: the one format the loop writes, the sweep ships and the scorer reads.

A checkpoint is a directory (so Ray Train can ship it as a `ray.train.Checkpoint` as-is):

- `best.pt`   state dict of the best epoch (what the scorer loads),
- `last.pt`   state dict of the last epoch (what a resumed run continues from),
- `state.pt`  optimizer state, epoch, RNG states, early-stopping state, history, status,
- `meta.json` what a reader needs to rebuild the model and its inputs without the training config.

Every `.pt` file holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: loading a checkpoint never runs pickled code. The directory is written
through `atomic_path`, so a crash mid-write leaves no half checkpoint behind, and a write that fails (a full
disk) raises an OSError naming the checkpoint's file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from crnn_ray.io import CliError, atomic_path, to_json

BEST = "best.pt"
LAST = "last.pt"
STATE = "state.pt"
META = "meta.json"

#: keys every meta.json carries (docs/architecture.md, "Checkpoint directory")
META_KEYS = (
    "spec", "variant_id", "features", "n_features", "lookback", "label", "horizon", "normalisation",
    "rank_label", "splits", "panel", "seed", "epoch", "best_epoch", "valid_metrics", "params", "status",
)


def write_checkpoint(
    directory: str | os.PathLike,
    *,
    best_state: dict[str, torch.Tensor],
    last_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write the four files into `directory` (replaced whole, atomically) and return its path."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks keys {missing}")
    directory = Path(directory)
    files = {BEST: _to_cpu(best_state), LAST: _to_cpu(last_state), STATE: train_state}
    name = ""
    try:
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            for name, obj in files.items():
                _write_bytes(tmp / name, _serialised(obj))
            name = META
            _write_bytes(tmp / META, (to_json(meta) + "\n").encode())
    except OSError as exc:  # name the file the user would look for, not the temporary sibling it was written as
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno or 0), str(directory / name)) from None
    return directory


def _serialised(obj: Any) -> bytes:
    """torch.save into memory: written to a file directly, a full disk surfaces as an opaque RuntimeError of
    torch's zip writer ("unexpected pos ..."); written as bytes, it is the OSError (ENOSPC) it is, which the
    sweep turns into one line instead of retrying (crnn_ray.sweep.trial.DISK_ERRNOS)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, best state dict) of a checkpoint directory; CliError naming the file when missing or corrupt."""
    directory = Path(directory)
    return read_meta(directory), _load_pt(directory / BEST)


def load_train_state(directory: str | os.PathLike) -> tuple[dict[str, Any], dict, dict, dict]:
    """(meta, best state dict, last state dict, train state) — everything a resumed run needs."""
    directory = Path(directory)
    meta = read_meta(directory)
    best, last, state = _load_pt(directory / BEST), _load_pt(directory / LAST), _load_pt(directory / STATE)
    for key in ("epoch", "optimizer", "early_stopping", "history", "status"):
        if key not in state:
            raise CliError(f"{directory / STATE}: corrupt checkpoint state (key {key!r} missing)")
    return meta, best, last, state


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META
    if not Path(directory).is_dir():
        raise CliError(f"{directory}: checkpoint directory not found")
    if not path.is_file():
        raise CliError(f"{path}: checkpoint file missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: corrupt checkpoint meta ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise CliError(f"{path}: corrupt checkpoint meta (not a JSON object)")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise CliError(f"{path}: checkpoint meta lacks key {missing[0]!r}")
    return meta


def _load_pt(path: Path) -> Any:
    if not path.is_file():
        raise CliError(f"{path}: checkpoint file missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        # its first sentence, on one line (the message stays one line)
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:100]
        raise CliError(f"{path}: corrupt checkpoint file ({type(exc).__name__}{': ' + detail if detail else ''})"
                       ) from None


def _to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in state.items()}
