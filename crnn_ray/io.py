"""Atomic output and one-line user errors, shared by every command.

A command either leaves a complete output or none: everything is written to a temporary sibling and renamed
into place once whole. Bad input raises `CliError`, whose message is one line naming the file, column or key;
`cli_main` turns it into `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import difflib
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
        try:
            yield tmp
        except OSError as exc:  # a failed write names the target, not its temporary sibling (pyarrow names none)
            if exc.filename is None or str(exc.filename).startswith(str(tmp)):
                exc.filename = str(path) + ("" if exc.filename is None else str(exc.filename)[len(str(tmp)):])
            raise
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


@contextlib.contextmanager
def updated_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging copy of directory `path` (hard links of its files: no bytes copied) to add or replace
    files in; the whole folder is swapped in when the block succeeds (atomic_path), so a reader, or a kill at
    any point, sees the old folder or the new one, never a mix (e.g. new signal partitions beside an old
    metrics.json). An old folder a kill left between atomic_path's two renames is restored first."""
    path = Path(path)
    if not path.exists():
        stranded = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        if stranded:
            os.replace(stranded[-1], path)
    stage = None
    try:
        with atomic_path(path) as stage:
            if path.is_dir():
                shutil.copytree(path, stage, copy_function=_link_or_copy, symlinks=True)
            else:
                stage.mkdir()
            yield stage
    except OSError as exc:  # name the output the user gave, not its staging copy
        if stage is not None and exc.filename is not None and str(exc.filename).startswith(str(stage)):
            exc.filename = str(path) + str(exc.filename)[len(str(stage)):]
        raise


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (the staged folder shares the files' bytes); a copy where the filesystem has no links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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


def close_match(word: str, options: Iterable[str], normal: Callable[[str], str] = str) -> str | None:
    """The option `word` most likely meant, for a "did you mean" hint: the first option equal to it once both
    are `normal`ised (`--top_k` for `--top-k`, `m1` for `m01`), else difflib's closest (ratio >= 0.6), else None.
    Why: an unknown key, id or flag is usually a typo of a known one, and naming it saves a trip to --help."""
    by_normal: dict[str, str] = {}
    for option in options:
        by_normal.setdefault(normal(option), option)
    key = normal(word)
    if key in by_normal:
        return by_normal[key]
    got = difflib.get_close_matches(key, list(by_normal), n=1)
    return by_normal[got[0]] if got else None


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag of `parser` and of its subcommands' parsers (argparse reports a subcommand's unknown flag
    from the top parser)."""
    out: list[str] = []
    for action in parser._actions:
        out += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += [s for s in _option_strings(sub) if s not in out]
    return out


def _flag_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """`did you mean --top-k?; ` for argparse's "unrecognized arguments: --top_k 3" ('' when nothing is close)."""
    head = "unrecognized arguments: "
    if not message.startswith(head):
        return ""
    known = [s for s in _option_strings(parser) if s not in ("-h", "--help")]
    hints = []
    for token in message[len(head):].split():
        flag = token.split("=", 1)[0]
        match = close_match(flag, known, lambda s: s.lower().replace("_", "-")) if flag.startswith("-") else None
        if match is not None and match != flag:
            hints.append((flag, match))
    if not hints:
        return ""
    if len(hints) == 1:
        return f"did you mean {hints[0][1]}?; "
    return "did you mean " + ", ".join(f"{m} for {f}" for f, m in hints) + "?; "


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are CliErrors: the same one-line `error: ...` and exit status 2 as every
    other bad input, instead of the usage text; an unknown flag close to a known one is named
    (`unrecognized arguments: --top_k 3 (did you mean --top-k?; see --help)`)."""

    def error(self, message: str):
        raise CliError(f"{self.prog}: {message} ({_flag_hint(self, message)}see --help)")


def os_error_line(exc: OSError) -> str:
    """`<path>: <reason>` of a failed read or write (a full disk, a read-only or missing folder)."""
    where = exc.filename if exc.filename is not None else "?"
    reason = os.strerror(exc.errno) if isinstance(exc.errno, int) else (exc.strerror or type(exc).__name__)
    return f"{where}: {reason}"


#: the command line of the command running now (cli_main sets it; provenance records it)
_COMMAND: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("crnn_ray_command", default=None)


def command_line() -> list[str]:
    """The running command as it can be typed again: `<python> -m crnn_ray.<command> <args>` while a cli_main
    entry point runs (its argv may have been passed in rather than read from sys.argv), else sys.argv."""
    got = _COMMAND.get()
    return list(got) if got is not None else list(sys.argv)


def _module_of(fn: Callable) -> str | None:
    """The `python -m` module of an entry point (`crnn_ray.score` for crnn_ray/score/__main__.py)."""
    name = getattr(fn, "__module__", None) or ""
    if name == "__main__":  # run as `python -m ...`: the module's real name is in its spec
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None else ""
    name = name.removesuffix(".__main__")
    return name or None


def cli_main(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main(argv): CliError -> `error: <msg>` on stderr and exit status 2; so is an OSError
    naming a file (a full disk, an unwritable --out): `error: <path>: <reason>`, never a traceback. The command
    line is recorded for the run's provenance (command_line)."""

    def run(argv: list[str] | None = None) -> int:
        module = _module_of(main)
        args = list(sys.argv[1:] if argv is None else argv)
        token = _COMMAND.set([sys.executable, "-m", module, *args] if module else [sys.argv[0], *args])
        try:
            rc = main(argv)
        except CliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            if exc.filename is None:  # not a file's failure (e.g. a socket): not ours to summarise
                raise
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            return 2
        finally:
            _COMMAND.reset(token)
        return int(rc or 0)

    run.__doc__ = main.__doc__
    run.__name__ = getattr(main, "__name__", "main")
    return run
