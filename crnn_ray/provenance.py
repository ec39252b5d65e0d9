"""Where a result came from: the code (git commit, dirty), the versions, the command, the times, the host and the
cluster. One block, written by the sweep into config.yaml (`resolved.provenance`) and by the scorer into
metrics.json (`provenance`), so a leaderboard or a tear sheet found months later still says what made it.

Why stdlib only and never an error: both commands call it at their end, and provenance must not be the reason a
run fails or slows down. Every probe (git, a package's version, Ray's resources) gives None when it cannot answer;
git runs with a short timeout; torch and Ray are asked through their installed metadata, not imported.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from crnn_ray import __version__
from crnn_ray.io import command_line

__all__ = ["PACKAGE_DIR", "cluster_resources", "git_state", "provenance", "relative_to", "utc_now", "versions"]

#: the crnn_ray source tree whose commit is recorded (git runs here, not in the caller's directory)
PACKAGE_DIR = Path(__file__).resolve().parent
#: seconds each git call may take (a slow network filesystem must not hold up the run)
GIT_TIMEOUT_S = 3.0
#: the distributions whose versions are recorded (besides crnn_ray's own and Python's)
PACKAGES = ("torch", "ray", "numpy", "pandas")


def utc_now() -> str:
    """Now, in UTC, as ISO 8601 to the second (`2024-06-03T21:04:05Z`): what `started` and `ended` hold."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(directory: Path, *args: str) -> str | None:
    """One git command's stdout in `directory`; None when git is missing, fails or times out."""
    try:
        done = subprocess.run(["git", *args], check=False, cwd=directory, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(directory: str | os.PathLike = PACKAGE_DIR) -> dict[str, Any]:
    """{"commit": sha, "dirty": bool} of the git checkout that holds the package's source; both None when the
    package is not a tracked part of a checkout (an installed wheel, a venv inside someone else's repository).

    dirty: a tracked file differs from the commit, or an untracked file sits inside the package (code the
    commit cannot reproduce); untracked files elsewhere in the checkout (notebooks, runs) do not count.
    GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock a concurrent git command holds."""
    directory = Path(directory)
    none = {"commit": None, "dirty": None}
    if not directory.is_dir() or _git(directory, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return none
    commit, prefix = _git(directory, "rev-parse", "HEAD"), _git(directory, "rev-parse", "--show-prefix")
    status = _git(directory, "status", "--porcelain", "--untracked-files=normal")
    if commit is None:
        return none
    if status is None or prefix is None:
        return {"commit": commit.strip(), "dirty": None}
    inside = prefix.strip()
    dirty = any(not line.startswith("??") or line[3:].startswith(inside) for line in status.splitlines() if line)
    return {"commit": commit.strip(), "dirty": dirty}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """crnn_ray (the running source's own), Python, and torch / Ray / numpy / pandas as installed (None: absent)."""
    return {"crnn_ray": __version__, "python": platform.python_version(), **{p: _version(p) for p in PACKAGES}}


def cluster_resources() -> dict[str, Any]:
    """What the run could use: Ray's cluster resources when this process already runs Ray (never starting it),
    else this machine's CPUs. Node keys (`node:<ip>`) are counted, not listed."""
    local = {"source": "local", "CPU": os.cpu_count()}
    ray = sys.modules.get("ray")
    try:
        if ray is None or not ray.is_initialized():
            return local
        res = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - a disconnected client or an API change: fall back, never fail the run
        return local
    out: dict[str, Any] = {"source": "ray"}
    out.update({k: float(v) for k, v in sorted(res.items()) if not k.startswith("node:")})
    out["nodes"] = sum(1 for k in res if k.startswith("node:") and k != "node:__internal_head__")
    return out


def relative_to(path: str | os.PathLike, base: str | os.PathLike) -> str | None:
    """`path` relative to `base` when it lies inside it (both resolved), else None."""
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return None


def provenance(started: str, ended: str | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """The block: started / ended (UTC ISO; ended None: still running or never finished), the command line
    (`python -m crnn_ray.<command> ...` under a command's main, else sys.argv), host, git, versions, resources."""
    return {"started": started, "ended": ended,
            "argv": list(argv) if argv is not None else command_line(),
            "hostname": socket.gethostname(),
            "git": git_state(),
            "versions": versions(),
            "resources": cluster_resources()}
