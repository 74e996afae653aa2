"""Imports point one way (README, "Architecture"): the import-linter contracts in pyproject.toml,
no import cycles anywhere in the package, and nothing below the facade imports the top-level package.

grimp (import-linter's graph) reads every import statement, including those inside functions and
under ``TYPE_CHECKING``, so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter is a test extra: pip install -e '.[test]'")
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _contract(name_part: str) -> dict:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if name_part in c["name"])


def _layers() -> list[set[str]]:
    """Top to bottom; each a set of sibling module names."""
    return [{f"leyolo.{part.strip()}" for part in layer.replace(":", "|").split("|")}
            for layer in _contract("layers")["layers"]]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("leyolo", cache_dir=None)


def _upward(graph) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher or sibling one."""
    layers = _layers()

    def layer_of(module: str) -> int | None:
        for i, names in enumerate(layers):
            if any(module == n or module.startswith(n + ".") for n in names):
                return i
        return None

    bad = []
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = layer_of(importer), layer_of(imported)
            if a is None or b is None:
                continue
            def inside(module: str, package: str) -> bool:
                return module == package or module.startswith(package + ".")

            same_package = any(inside(importer, n) and inside(imported, n) for n in layers[a])
            if b < a or (b == a and not same_package):
                bad.append((importer, imported))
    return sorted(bad)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_import_linter_contracts_are_kept():
    # in a subprocess: import-linter configures logging with disable_existing_loggers, which
    # would silence the library's logger for the rest of the test session
    code = ("from importlinter.cli import lint_imports; "
            f"raise SystemExit(lint_imports(config_filename={str(PYPROJECT)!r}, no_cache=True, no_logo=True))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_no_upward_or_sibling_imports(graph):
    assert _upward(graph) == []


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_only_the_cli_imports_the_top_level_package(graph):
    importers = graph.find_modules_that_directly_import("leyolo")
    assert importers <= {"leyolo.cli", "leyolo.__main__"}, sorted(importers)


def test_the_checks_see_function_level_violations(graph):
    """The checks can fail: a lazy upward import and a two-module cycle are both reported."""
    graph = graph.copy() if hasattr(graph, "copy") else grimp.build_graph("leyolo", cache_dir=None)
    assert "leyolo.engine.trainer" in graph.modules
    graph.add_import(importer="leyolo.engine.trainer", imported="leyolo.api", line_number=1,
                     line_contents="    from ..api import Detector")
    assert ("leyolo.engine.trainer", "leyolo.api") in _upward(graph)
    assert any({"leyolo.engine.trainer", "leyolo.api"} <= set(c) for c in _cycles(graph))
    graph.add_import(importer="leyolo.deploy.base", imported="leyolo.inference.backends")
    assert ("leyolo.deploy.base", "leyolo.inference.backends") in _upward(graph)  # siblings stay apart
    detail = graph.get_import_details(importer="leyolo.tools.prune", imported="leyolo.api")
    assert detail and all(d["line_contents"].startswith("from ..api") for d in detail)  # read inside functions
