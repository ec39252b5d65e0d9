"""The experiment directory before Ray starts: which config and folder a run uses, its data checked, and its
Tune generations.

Why a stage of its own: every check (config, resume compatibility, Tune's saved state, the panel, each split's
parts, the walk-forward windows) runs here before the cluster is touched, and nothing is written or removed
until they have all passed (`write_experiment` is the one write). A bad config or a damaged experiment thus
fails in one line, without a Ray start, and never half-replaces an experiment.

    resolve_experiment   --config / --name / --resume / --overwrite -> (config, directory, replace?)
    prepare_experiment   make or find the panel, cut and check the splits (or walk-forward windows)
    plan_generations     the Tune experiments of the sweep (walk_forward windows added on --resume get their own)
    write_experiment     after every check: replace (--overwrite), move the panel in, write config.yaml (with
                         the run's provenance: crnn_ray/provenance.py)
    finish_experiment    stamp the run's end time into config.yaml
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from crnn_ray.data import (describe_windows, load_panel, make_splits, read_panel_meta, sample_index, save_panel,
                           synthesize, walk_forward_splits)
from crnn_ray.data.synth import summary
from crnn_ray.io import CliError, atomic_path
from crnn_ray.provenance import provenance, utc_now
from crnn_ray.sweep.config import SweepConfig, load_config, parse_config, synth_kwargs

__all__ = ["resolve_experiment", "prepare_experiment", "describe_panel", "plan_generations", "write_experiment",
           "finish_experiment", "Prepared"]


def resolve_experiment(config_path, storage, name, resume: bool, overwrite: bool) -> tuple[SweepConfig, Path, bool]:
    """The config to run, the experiment directory, and whether an existing experiment will be replaced
    (--overwrite). Nothing is written or removed here: that waits until every check has passed."""
    _check_storage(storage)
    if resume:
        if overwrite:
            raise CliError("--resume and --overwrite exclude each other: continue the experiment, or start it again")
        if name is None and config_path is None:
            raise CliError("--resume needs --name (or --config, whose name is used)")
        given = load_config(config_path) if config_path is not None else None
        exp_dir = Path(storage).resolve() / _checked_name(name or given.name)
        saved = exp_dir / "config.yaml"
        if not saved.is_file():
            raise CliError(f"{saved}: not found: nothing to resume (start the sweep without --resume)")
        cfg = _saved_config(saved, exp_dir)
        if given is not None and not _same_config(given, cfg):
            raise CliError(f"{config_path}: differs from the experiment's {saved}; resume without --config "
                           "or start a new experiment with another --name"
                           + (" (of data.walk_forward only `windows` may change)" if cfg.walk_forward else ""))
        if given is not None and cfg.walk_forward:  # walk_forward.windows may grow: the production path
            given.name = cfg.name
            return given, exp_dir, False
        return cfg, exp_dir, False
    if config_path is None:
        raise CliError("--config is required (or --resume with --name)")
    cfg = load_config(config_path)
    if name is not None:
        cfg.name = _checked_name(name)
    exp_dir = Path(storage).resolve() / cfg.name
    exists = (exp_dir / "tune").exists() or (exp_dir / "trials.parquet").exists()
    if exists and not overwrite:
        raise CliError(f"{exp_dir}: experiment exists; continue it with --resume, or pass --overwrite "
                       "or another --name")
    return cfg, exp_dir, exists


def _check_storage(storage) -> None:
    """--storage is a directory every node mounts: a URI (s3://, gs://) would silently become a local folder
    named `s3:` (Path resolves it against the current directory), so it is refused in one line."""
    if "://" in str(storage):
        raise CliError(f"--storage {storage}: expected a directory path (a filesystem every node mounts, e.g. "
                       "EFS/NFS at /mnt/crnn/runs); URIs such as s3:// are not supported")


def _checked_name(name: str) -> str:
    """An experiment name as the config's `name:` key allows it (one folder inside --storage: no `..`, no
    slash), for --name on a new run and on --resume alike."""
    return parse_config({"name": name, "variants": ["x"]}, source="--name", resolve=False).name


def _corrupt(path: Path, what: str) -> CliError:
    return CliError(f"{path}: corrupt ({what}); start again with --overwrite")


def _saved_config(saved: Path, exp_dir: Path) -> SweepConfig:
    """The experiment's own config.yaml, checked like any config; a damaged file is named as such."""
    try:
        raw = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _corrupt(saved, f"not valid YAML{f' at line {mark.line + 1}' if mark is not None else ''}") from None
    if not isinstance(raw, dict):
        raise _corrupt(saved, "not a mapping")
    raw.pop("resolved", None)  # what the sweep derived (panel path, split dates, ...): informational
    return parse_config(raw, source=saved.name, default_name=exp_dir.name)


def _same_config(a: SweepConfig, b: SweepConfig) -> bool:
    """Equal as resolved configs, whatever the names and however data.path was written."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["name"] = ""
        if d["data"].get("walk_forward"):  # windows may be added to a walk-forward experiment
            d["data"]["walk_forward"] = {k: v for k, v in d["data"]["walk_forward"].items() if k != "windows"}
        if d["data"]["path"]:
            d["data"]["path"] = str(Path(d["data"]["path"]).expanduser().resolve())
    return da == db


@dataclass
class Prepared:
    """The checked data of a sweep, not yet written anywhere (see write_experiment)."""

    panel: object
    splits: object                  # the (static) split; with walk_forward the newest window's
    panel_path: Path                # where the panel lives (once written, for a synthetic one)
    new_panel: Path | None          # a freshly synthesised panel in a temporary file, to move into place
    resolved: dict                  # config.yaml's contents
    windows: list = None            # walk_forward: every window's Splits, oldest first; else [splits]
    started: str | None = None      # when this run began (UTC ISO): its provenance's `started`
    resume: bool = False            # --resume: config.yaml keeps the earlier runs' provenance


def _reusable_synth(path: Path, want: dict) -> bool:
    """An existing synthetic panel is reused only if it was made with exactly the config's parameters."""
    if not path.is_file():
        return False
    try:
        params = (read_panel_meta(path) or {}).get("params") or {}
    except CliError:
        return False
    return all(params.get(k) == v for k, v in want.items())


def _staging_dir(exp_dir: Path) -> Path:
    """A fresh folder beside the experiment (`.NAME.staging-XXXX` in --storage), on the same filesystem, so the
    new panel moves in with one rename whatever --storage is (NFS, EFS, a tmpfs): a rename out of $TMPDIR fails
    across filesystems. Removed when a check fails (run_sweep) or once the panel moved in."""
    exp_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{exp_dir.name}.staging-", dir=exp_dir.parent))


def prepare_experiment(cfg: SweepConfig, exp_dir: Path, resume: bool = False) -> Prepared:
    """Make or find the data, load the panel, cut and check the splits: every data check, no write.

    A synthetic panel already in the experiment is reused only when its stored parameters are the config's;
    a stale one (say, left by a failed run of another config) is regenerated — except on --resume, where the
    trained models depend on it, so a mismatch is an error.
    """
    src, started = cfg.source, utc_now()
    new_panel = None
    if cfg.data.synth is not None:
        panel_path = exp_dir / "data" / "panel.parquet"
        kwargs = synth_kwargs(cfg.data.synth)
        if not _reusable_synth(panel_path, kwargs):
            if resume and panel_path.exists():
                raise CliError(f"{src}: data.synth: {panel_path} was made with other parameters than the "
                               "config's; start again with --overwrite")
            df, meta = synthesize(**kwargs)
            new_panel = _staging_dir(exp_dir) / "panel.parquet"
            save_panel(df, new_panel, meta)
            print(summary(df, meta), flush=True)
    else:
        panel_path = Path(cfg.data.path).expanduser().resolve()
        if not panel_path.is_file():
            raise CliError(f"{src}: data.path: file not found: {panel_path}")
    try:
        try:
            panel = load_panel(new_panel or panel_path, features=cfg.data.features, labels=[cfg.data.label])
        except CliError as exc:
            raise CliError(f"{src}: data: {exc}") from None
        _check_panel_size(cfg, panel, panel_path)
        windows = _checked_windows(cfg, panel, panel_path.name)
        cfg.check_grid_size(len(windows))
    except BaseException:
        if new_panel is not None:
            shutil.rmtree(new_panel.parent, ignore_errors=True)
        raise
    if new_panel is not None:
        panel.meta["path"] = str(panel_path)  # where it will be: checkpoints record this path
    resolved = cfg.to_dict()
    if cfg.data.path is not None:  # absolute, so --resume works from any directory
        resolved["data"]["path"] = str(panel_path)
    resolved["resolved"] = {"panel": str(panel_path), "splits": windows[-1].dates(panel.dates),
                            "variants": [list(v) for v in cfg.resolved_variants],
                            "n_trials": len(cfg.grid(len(windows)))}
    if cfg.walk_forward:
        resolved["resolved"]["windows"] = [w.dates(panel.dates) for w in windows]
    return Prepared(panel, windows[-1], panel_path, new_panel, resolved, windows, started, resume)


def _check_panel_size(cfg: SweepConfig, panel, panel_path: Path) -> None:
    """A cross-sectional model needs a cross-section: at least 2 symbols (one gives every daily IC NaN, and a
    model 'ranked' on NaN), and more days than one lookback window plus the label horizon."""
    if panel.n_stocks < 2:
        raise CliError(f"{cfg.source}: data: {panel_path} has {panel.n_stocks} symbol(s); a cross-sectional IC "
                       "needs at least 2 (and tens for a meaningful one)")
    need = cfg.data.lookback + panel.horizon(cfg.data.label) + 1
    if panel.n_days < need:
        raise CliError(f"{cfg.source}: data: {panel_path} has {panel.n_days} day(s), fewer than data.lookback "
                       f"({cfg.data.lookback}) + the label horizon + 1 = {need}")


def _checked_windows(cfg: SweepConfig, panel, panel_name: str) -> list:
    """The static split as a list of one, or every walk-forward window; each checked by _check_parts."""
    src = cfg.source
    horizon = panel.horizon(cfg.data.label)
    try:
        if cfg.walk_forward:
            windows = walk_forward_splits(panel.dates, cfg.data.walk_forward, horizon)
        else:
            windows = [make_splits(panel.dates, cfg.data.splits, horizon)]
    except CliError as exc:
        raise CliError(f"{src}: data.{exc}") from None
    for w, splits in enumerate(windows):
        _check_parts(cfg, panel, splits, panel_name, f"window w{w:02d}: " if cfg.walk_forward else "")
    return windows


def _check_parts(cfg: SweepConfig, panel, splits, panel_name: str, where: str = "") -> None:
    """Every part long enough and every feature present where the models learn."""
    src, key = cfg.source, "data.walk_forward" if cfg.walk_forward else "data.splits"
    for part in ("valid", "select"):
        lo_hi = getattr(splits, part)
        if lo_hi is not None and lo_hi[1] - lo_hi[0] + 1 < cfg.data.min_part_days:
            raise CliError(f"{src}: {key}: {where}the {part} part has {lo_hi[1] - lo_hi[0] + 1} days, fewer than "
                           f"data.min_part_days ({cfg.data.min_part_days}): its IC would rest on too few days")
    lo, hi = splits.train
    for j, feature in enumerate(panel.features):
        if not np.isfinite(panel.X[lo:hi + 1, :, j]).any():
            raise CliError(f"{src}: data.features: {where}column {feature!r} has no finite value in the train "
                           f"part ({panel.dates[lo]}..{panel.dates[hi]}) of {panel_name}")
    label = panel.label(cfg.data.label)
    for part in ("train", "valid", "select"):
        lo_hi = getattr(splits, part)
        if lo_hi is not None and len(sample_index(panel.mask, label, cfg.data.lookback, *lo_hi)) == 0:
            raise CliError(f"{src}: data.lookback: {where}{cfg.data.lookback} leaves no {part} sample in days "
                           f"{lo_hi[0]}..{lo_hi[1]} of {panel_name}")


def describe_panel(cfg: SweepConfig, prep: Prepared) -> None:
    """Print what the sweep will learn from: the panel's shape and label, and its split (or each walk-forward
    window's dates)."""
    panel = prep.panel
    if cfg.walk_forward:
        print(f"panel: {panel.n_days} days x {panel.n_stocks} stocks x {len(panel.features)} features, "
              f"label {cfg.data.label}; walk-forward, {len(prep.windows)} window(s):", flush=True)
        for line in describe_windows(prep.windows, panel.dates):
            print(f"  {line}", flush=True)
    else:
        print(f"panel: {panel.n_days} days x {panel.n_stocks} stocks x {len(panel.features)} features, "
              f"label {cfg.data.label}; splits {json.dumps(prep.splits.dates(panel.dates))}", flush=True)


def write_experiment(prep: Prepared, exp_dir: Path, replace: bool) -> None:
    """After every check: replace an old experiment (--overwrite), move the new panel in, write config.yaml."""
    if replace and exp_dir.exists():
        shutil.rmtree(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if prep.new_panel is not None:
        prep.panel_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(prep.new_panel, prep.panel_path)
        shutil.rmtree(prep.new_panel.parent, ignore_errors=True)
    prep.resolved["resolved"]["provenance"] = _run_provenance(prep, exp_dir)
    _write_config(exp_dir, prep.resolved)


def _write_config(exp_dir: Path, doc: dict) -> None:
    with atomic_path(exp_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))


def _run_provenance(prep: Prepared, exp_dir: Path) -> dict:
    """This run's provenance (written once the checks passed and Ray is up, so the cluster's resources are
    known); on --resume the earlier runs' blocks are kept, oldest first, under `earlier`: a resumed experiment's
    models may come from several commits and hosts."""
    block = provenance(prep.started or utc_now())
    if prep.resume:
        saved = _saved_resolved(exp_dir).get("provenance")
        if isinstance(saved, dict):
            earlier = [b for b in saved.get("earlier") or [] if isinstance(b, dict)]
            block["earlier"] = earlier + [{k: v for k, v in saved.items() if k != "earlier"}]
    return block


def finish_experiment(exp_dir: Path) -> None:
    """Stamp `resolved.provenance.ended` (UTC) into the experiment's config.yaml: the sweep finished (an
    interrupted or killed run leaves it null). Never fails the sweep: an unreadable config.yaml stays as it is."""
    path = Path(exp_dir) / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return
    block = ((doc or {}).get("resolved") or {}).get("provenance") if isinstance(doc, dict) else None
    if isinstance(block, dict):
        block["ended"] = utc_now()
        try:
            _write_config(Path(exp_dir), doc)
        except OSError as exc:  # the results are written; only the stamp is lost
            print(f"warning: {path}: end time not recorded ({exc.strerror or type(exc).__name__})", flush=True)


# ----------------------------------------------------------------------------------------------- generations
def _saved_resolved(exp_dir: Path) -> dict:
    """The `resolved` section of the experiment's config.yaml as the last run wrote it ({} when unreadable)."""
    try:
        return (yaml.safe_load((exp_dir / "config.yaml").read_text()) or {}).get("resolved") or {}
    except (OSError, yaml.YAMLError):
        return {}


def plan_generations(cfg: SweepConfig, exp_dir: Path, grid: list[dict], prep: Prepared, resume: bool) -> list[dict]:
    """The Tune experiments of this sweep, `[{"tune": dir name, "trials": [keys]}]`, oldest first.

    A fresh sweep is one generation (`tune/`). `--resume` after walk_forward gained windows adds one for the
    new windows' trials only (`tune-2/`, ...): Tune cannot add trials to a restored grid, and the trained
    windows stay as they were — which is checked here, since a moved window would leave its models trained on
    other dates than the experiment records.
    """
    keys = [t["key"] for t in grid]
    if not resume:
        return [{"tune": "tune", "trials": keys}]
    saved = _saved_resolved(exp_dir)
    generations = [dict(g) for g in saved.get("generations") or [{"tune": "tune", "trials": keys}]]
    old = saved.get("windows") or []
    if cfg.walk_forward and old:
        now = [w.dates(prep.panel.dates) for w in prep.windows]
        if len(now) < len(old):
            raise CliError(f"{cfg.source}: data.walk_forward.windows: {len(now)} window(s), fewer than the "
                           f"experiment's {len(old)}: windows may be added, not removed")
        for w, (a, b) in enumerate(zip(old, now)):
            if w == len(old) - 1 and a.get("test") and b.get("test") and a["test"][0] == b["test"][0] \
                    and b["test"][1] >= a["test"][1]:
                # the newest trained window's test part may have been cut by the panel's end: it grows with
                # the panel (its models and their data are the same)
                a, b = {**a, "test": None}, {**b, "test": None}
            if a != b:
                raise CliError(f"{cfg.source}: data.walk_forward: window w{w:02d} moved ({json.dumps(a)} -> "
                               f"{json.dumps(b)}): trained windows must stay as they were (give first_test as a "
                               "date, and only add days at the panel's end)")
    known = {k for g in generations for k in g["trials"]}
    unknown = sorted(known - set(keys))
    if unknown:
        raise CliError(f"{exp_dir / 'config.yaml'}: trial(s) {', '.join(unknown[:3])} of the experiment are not "
                       "in the config's grid; start a new experiment with another --name")
    new = [k for k in keys if k not in known]
    if new:
        windows = sorted({t["window"] for t in grid if t["key"] in set(new) and "window" in t})
        generations.append({"tune": f"tune-{len(generations) + 1}", "trials": new})
        print(f"resume: {len(new)} new trial(s)"
              + (f" for window(s) {', '.join(f'w{w:02d}' for w in windows)}" if windows else "")
              + f" in {generations[-1]['tune']}/; the experiment's {len(known)} earlier trial(s) are kept", flush=True)
    return generations

