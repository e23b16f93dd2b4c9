"""The package's import graph has no circle, and ``python -m gpulayers.train`` loads each module once.

The rule for the graph (built with ``ast`` from the sources, nothing is imported):

- every ``import`` / ``from ... import`` statement anywhere in a module is an edge, at module level **and inside
  functions**: a lazy import that closes a loop is still a circle (``cli.main`` importing ``train`` while ``train``
  imports ``cli`` ran ``train.py`` twice), it only moves the failure to run time;
- statements under ``if TYPE_CHECKING:`` are not edges (they never run);
- ``from pkg import name`` is an edge to the submodule ``pkg.name`` when that file exists, else to ``pkg``;
- importing ``a.b.c`` also imports the packages ``a.b`` and ``a`` first, so those are edges too, except the importing
  module's own parent packages (they are already initialising when it runs).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpulayers"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` by the rule in this file's docstring."""
    files = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:
                prefix = here[: len(here) - node.level + 1]
                base = ".".join(prefix + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in files else base)
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {t for t in edges if t in files and t != name and t not in ancestors}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_imports_graph_covers_the_package():
    graph = import_graph(PACKAGE)
    assert {"gpulayers", "gpulayers.cli", "gpulayers.train", "gpulayers.training", "gpulayers.nn"} <= set(graph)
    assert "gpulayers.training" in graph["gpulayers.cli"]
    assert graph["gpulayers.train"] >= {"gpulayers.cli", "gpulayers.training"}


def test_imports_no_circle_in_the_package():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_training_does_not_reach_the_cli():
    graph = import_graph(PACKAGE)
    reached, todo = set(), ["gpulayers.training"]
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    assert "gpulayers.cli" not in reached and "gpulayers.train" not in reached


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    "files, expected",
    [
        # The old shape: a top-level import one way, a function-level import back.
        (
            {
                "pkg/__init__.py": "",
                "pkg/train.py": "from .cli import main\n",
                "pkg/cli.py": "def main():\n    from .train import fit\n",
            },
            ["pkg.cli", "pkg.train", "pkg.cli"],
        ),
        # Through a sub-package's __init__ (importing pkg.sub.a runs pkg/sub/__init__.py first).
        (
            {
                "pkg/__init__.py": "",
                "pkg/low.py": "from .sub.a import x\n",
                "pkg/sub/__init__.py": "from . import b\n",
                "pkg/sub/a.py": "x = 1\n",
                "pkg/sub/b.py": "from ..low import y\n",
            },
            ["pkg.low", "pkg.sub", "pkg.sub.b", "pkg.low"],
        ),
        # Acyclic: TYPE_CHECKING imports never run; a package importing its own submodules is fine.
        (
            {
                "pkg/__init__.py": "from . import a, b\n",
                "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
                "pkg/b.py": "from . import a\nimport pkg.a\n",
            },
            None,
        ),
    ],
    ids=["function-level", "via-package-init", "acyclic"],
)
def test_imports_cycle_finder_controls(tmp_path, files, expected):
    assert find_cycle(import_graph(_write(tmp_path, files))) == expected


def test_imports_python_m_train_loads_each_module_once():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpulayers.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m gpulayers.train" in proc.stdout
    loaded = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(gpulayers[\w.]*)\s*$", proc.stderr, flags=re.M)
    assert "gpulayers.cli" in loaded and "gpulayers.training" in loaded  # the parse found the lines
    # train.py runs once, as __main__: importing it as gpulayers.train as well would run it a second time.
    assert "gpulayers.train" not in loaded
    assert len(loaded) == len(set(loaded)), sorted(m for m in loaded if loaded.count(m) > 1)
    assert "RuntimeWarning" not in proc.stderr


def test_imports_train_reexports_the_training_loop():
    from gpulayers import cli, train, training

    assert train.fit is training.fit and train.evaluate is training.evaluate and train.fit_sgd is training.fit_sgd
    assert train.main is cli.main
