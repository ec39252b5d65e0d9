"""What a run printed, kept with what it made: `sweep.log` in the experiment, `score.log` in the score folder.

Why a tee of sys.stdout / sys.stderr in the driver: the epoch lines come from Ray's workers and reach the console
through the driver's log monitor, which writes them to sys.stdout / sys.stderr (looked up at each write), so one
tee sees exactly what the user saw — the driver's lines, the workers', warnings and tracebacks — also under
`ray job submit`, where the console is the job's log. Ray colours its worker prefixes with ANSI codes even when
the console is a file; the log never has them, and neither does a console that is not a terminal.

Lines printed before the output folder exists (the config checks) are held in memory and written when it is
attached; a resumed sweep appends to its log after a separator line.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from crnn_ray.provenance import utc_now

__all__ = ["ConsoleLog", "console_log", "strip_ansi", "ANSI_RE", "Progress", "duration", "PROGRESS_EVERY_S"]

#: seconds between two progress lines of a long step
PROGRESS_EVERY_S = 30.0

#: CSI sequences (colours, cursor moves), character-set designations and the two-byte escapes
ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


def duration(seconds: float) -> str:
    """4m10s, 1h02m, 35s."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """`[score] rows 41 % (1,234,567/3,000,000), 52,310 rows/s, ETA 34s` every `every_s` of a long step.

    `add(n)` may be called from several threads (the in-process predictor's chunk threads); a step that ends
    within `every_s` prints nothing, so small jobs stay quiet."""

    def __init__(self, tag: str, total: int, unit: str = "rows", every_s: float = PROGRESS_EVERY_S):
        self.tag, self.total, self.unit, self.every_s = tag, max(0, int(total)), unit, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += int(n)
            now = time.monotonic()
            if now - self.last < self.every_s or self.done >= self.total:
                return
            self.last = now
        print(self.line(now), flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.done / self.total if self.total else 100.0
        eta = f", ETA {duration((self.total - self.done) / rate)}" if rate > 0 else ""
        return (f"[{self.tag}] {self.unit} {share:.0f} % ({self.done:,}/{self.total:,}), {rate:,.0f} {self.unit}/s"
                f"{eta}")


class _Tee(io.TextIOBase):
    """A stream that writes to the console (ANSI codes removed unless it is a terminal) and to the log."""

    def __init__(self, console: TextIO, log: "ConsoleLog"):
        super().__init__()
        self._console, self._log = console, log
        try:
            self._tty = bool(console.isatty())
        except (AttributeError, ValueError):
            self._tty = False

    def write(self, text: str) -> int:
        self._console.write(text if self._tty else strip_ansi(text))
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._console.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return self._tty

    def fileno(self) -> int:  # faulthandler, subprocess: the real descriptor
        return self._console.fileno()

    @property
    def encoding(self):  # noqa: D401 - what print() and Ray ask of a stream
        return getattr(self._console, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self._console, name)


class ConsoleLog:
    """The tee's sink: a memory buffer until `attach(path)`, then the file (appended, line by line)."""

    def __init__(self):
        self._lock = threading.Lock()  # Ray's log monitor thread prints beside the main thread
        self._buffer: io.StringIO | None = io.StringIO()
        self._file: TextIO | None = None
        self.path: Path | None = None

    def write(self, text: str) -> None:
        text = strip_ansi(text)
        with self._lock:
            if self._file is not None:
                try:
                    self._file.write(text)
                except OSError:  # a full disk must not turn every print into an error: the log stops
                    self._close_file()
            elif self._buffer is not None:
                self._buffer.write(text)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.flush()
                except OSError:
                    self._close_file()

    def text(self) -> str:
        """What was printed so far and not yet in a file (the whole run's lines when never attached)."""
        with self._lock:
            return self._buffer.getvalue() if self._buffer is not None else ""

    def attach(self, path: str | Path, *, append: bool = False) -> None:
        """From now on write into `path` (created, or appended to after a separator when `append`), starting
        with what was held in memory."""
        path = Path(path)
        with self._lock:
            handle = open(path, "a" if append else "w", encoding="utf-8", buffering=1)
            if append and path.stat().st_size:
                handle.write(f"\n---- resumed {utc_now()} ----\n")
            handle.write(self._buffer.getvalue() if self._buffer is not None else "")
            self._file, self._buffer, self.path = handle, None, path

    def _close_file(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass
        self._file = None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._close_file()


@contextmanager
def console_log() -> Iterator[ConsoleLog]:
    """Tee sys.stdout and sys.stderr into a ConsoleLog for the block; the streams are restored after."""
    log = ConsoleLog()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
    try:
        yield log
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved
        log.close()
