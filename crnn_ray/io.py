"""Atomic output and one-line user errors, shared by every command.

A command either leaves a complete output or none: everything is written to a temporary sibling and renamed
into place once whole. Bad input raises `CliError`, whose message is one line naming the file, column or key;
`cli_main` turns it into `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

# numpy and pyarrow are imported inside the functions that use them, on purpose: every command and
# crnn_ray.config import this module for CliError / atomic_path, and it stays stdlib-only.


class CliError(Exception):
    """A user-facing error: one line that names the file, column or key at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories. An existing target is replaced (a directory is swapped out and
    removed after the rename, so readers never see a half-written one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.datetime64,)):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text with numpy scalars/arrays and paths converted; NaN/inf become null (strict JSON)."""
    return json.dumps(_nan_to_none(obj), indent=indent, default=_json_default, sort_keys=False)


def _nan_to_none(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _nan_to_none(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if not math.isfinite(v) else v
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(obj) + "\n")


def write_parquet_atomic(data: Any, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write a DataFrame or pyarrow Table to Parquet atomically; `metadata` values are stored as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    if metadata:
        existing = dict(table.schema.metadata or {})
        existing.update({k.encode(): to_json(v, indent=None).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def parquet_dataset(path: str | os.PathLike, dictionary_columns: tuple[str, ...] = ()) -> Any:
    """A pyarrow dataset of a Parquet file or directory; `date=YYYY-MM-DD` folders supply a date32 `date`.

    The scorer's signals/ keep the date in the folder names only (docs/scoring.md, "Reading the signals"): the
    partition is typed date32 here instead of pyarrow's inferred string. A directory without `date=` folders,
    or whose files hold a `date` of another type (a hand-made layout), is read from the files' own columns.
    `dictionary_columns` (e.g. symbol) are read as Arrow dictionaries: one small dictionary and int32
    indices instead of a Python string per row.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary_columns)))
    path = Path(path)
    if not path.is_dir():
        return ds.dataset(str(path), format=fmt)
    plain = ds.dataset(str(path), format=fmt, partitioning=None)
    base = len(path.resolve().parts)
    if not any(p.startswith("date=") for f in plain.files for p in Path(f).resolve().parts[base:-1]):
        return plain
    try:
        return ds.dataset(plain.files, format=fmt, partition_base_dir=str(path),
                          partitioning=ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive"))
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # in-file dates of another type, or a folder date=foo
        return plain


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are CliErrors: the same one-line `error: ...` and exit status 2 as every
    other bad input, instead of the usage text."""

    def error(self, message: str):
        raise CliError(f"{self.prog}: {message} (see --help)")


def cli_main(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main(argv): CliError -> `error: <msg>` on stderr and exit status 2."""

    def run(argv: list[str] | None = None) -> int:
        try:
            rc = main(argv)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return int(rc or 0)

    run.__doc__ = main.__doc__
    run.__name__ = getattr(main, "__name__", "main")
    return run
