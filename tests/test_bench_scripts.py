"""The benchmark scripts cannot rot silently: every bench/*.py imports as a module (its main is not run), and
every name it imports resolves, the imports inside its functions and in the code it hands to a subprocess
included (an import that only runs after the first sweep is what broke `make bench` once). A bench imports
nothing from tests/. The Makefile's bench target runs exactly the scripts README's Benchmarks table does not
mark "not in `make bench`", and that table lists every script. Nothing heavy runs here: no Ray, no training."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
TESTS = REPO / "tests"
SCRIPTS = sorted(BENCH.glob("*.py"))


@pytest.fixture
def import_state():
    """Scripts put the checkout on sys.path, and gpu_check.py a meta-path hook that refuses `import ray`:
    both are undone after each test, so nothing leaks into the rest of the session."""
    path, meta_path = list(sys.path), list(sys.meta_path)
    yield
    sys.path[:] = path
    sys.meta_path[:] = meta_path


def load_script(path: Path):
    """Import a bench script by file path under a private name (so `__name__ != "__main__"`: main not run)."""
    name = f"_bench_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _import_nodes(tree: ast.AST):
    """Every import statement of a module, at any depth, plus those of the Python source it keeps in
    module-level string constants (e.g. the serial loop a bench runs with `python -c`)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, ""
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            try:
                code = ast.parse(node.value.value)
            except SyntaxError:
                continue
            name = ", ".join(t.id for t in node.targets if isinstance(t, ast.Name))
            for inner in ast.walk(code):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    yield inner, f" (in the code string {name})"


def _not_under_tests(module, what: str) -> None:
    file = getattr(module, "__file__", None)
    assert file is None or TESTS not in Path(file).resolve().parents, f"{what} comes from tests/: {file}"


def _main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            if (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
                    and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)):
                return True
    return False


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bench_script_imports_and_every_name_it_imports_exists(path, import_state):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert _main_guard(tree), f"{path.name}: main must run under `if __name__ == \"__main__\":` only"

    module = load_script(path)
    assert callable(getattr(module, "main", None)), f"{path.name}: no main()"
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != module.__name__]  # gpu_check's hook

    for node, where in _import_nodes(tree):
        line = f"{path.name}:{node.lineno}{where}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in ("conftest", "tests"), f"{line}: imports from tests/"
                _not_under_tests(importlib.import_module(alias.name), f"{line}: {alias.name}")
            continue
        assert node.level == 0, f"{line}: relative import"
        assert node.module.split(".")[0] not in ("conftest", "tests"), f"{line}: imports from tests/"
        parent = importlib.import_module(node.module)
        _not_under_tests(parent, f"{line}: {node.module}")
        for alias in node.names:
            if not hasattr(parent, alias.name):  # a submodule not imported by its package yet
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    pytest.fail(f"{line}: `from {node.module} import {alias.name}`: no such name")
            assert hasattr(parent, alias.name), f"{line}: `from {node.module} import {alias.name}`: no such name"


def _readme_benchmarks() -> dict[str, bool]:
    """README's Benchmarks table: {script file name: whether `make bench` runs it}."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`bench/([^`\s]+)[^`]*`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = "not in `make bench`" not in m.group(2).lower()
    return rows


def _make_bench_scripts() -> list[str]:
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile has no bench target"
    return re.findall(r"\bbench/(\S+)", recipe.group(1))


def test_make_bench_runs_the_scripts_readme_puts_in_it():
    table = _readme_benchmarks()
    in_make = _make_bench_scripts()
    for name in in_make:
        assert (BENCH / name).is_file(), f"Makefile bench: bench/{name} does not exist"
    assert sorted(in_make) == sorted(n for n, runs in table.items() if runs), (
        "the Makefile's bench target and README's Benchmarks table disagree on what `make bench` runs")
    for path in sorted(BENCH.iterdir()):
        if path.suffix in (".py", ".sh"):
            # gpu_check.py is what gpu_check.sh runs
            assert path.name in table or f"{path.stem}.sh" in table, (
                f"bench/{path.name} is missing from README's Benchmarks table")
