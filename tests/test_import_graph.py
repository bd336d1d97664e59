"""No import loop inside ``relay/`` or ``agent/`` (issue 15).

The graph is read from the source with ``ast``, so it counts every import: the ones at
the top, the ones inside functions and the ones behind ``if TYPE_CHECKING:``. A loop
hidden in any of those still ties the modules together for a reader. Each strongly
connected component with more than one module is a loop, and the test names them all.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports, from anywhere in its file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    modules = _modules(package)
    return {m: {t for t in _imported(m, p) if t in modules and t != m} for m, p in modules.items()}


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_finder_sees_hidden_imports_and_loops(tmp_path: Path) -> None:
    source = tmp_path / "a.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from . import c\n"
    )
    assert {"p.b", "p.b.B", "p.c"} <= _imported("p.a", source)
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert loops(graph) == [["p.a", "p.b", "p.c"]]
    assert loops({"p.a": {"p.b"}, "p.b": set()}) == []


@pytest.mark.parametrize("package", ["relay", "agent"])
def test_no_import_loop(package: str) -> None:
    assert loops(import_graph(package)) == []


# ------------------------------------------------------------ SQL only in relay/store
SQL_TEXT = re.compile(r"\b(SELECT\s+\S.*\bFROM\b|INSERT\s+INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b"
                      r"|CREATE\s+TABLE\b|ALTER\s+TABLE\b)", re.S)  # fmt: skip
DATABASE_LIBRARIES = {"sqlalchemy", "sqlite3", "psycopg", "psycopg2"}


def sql_outside_store(root: Path) -> list[str]:
    """Modules of the relay outside ``store/`` that import a database library or hold a
    string that reads as SQL (issue 15: nothing outside relay/store/ writes SQL or sees a
    connection)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{rel}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in DATABASE_LIBRARIES]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_TEXT.search(node.value):
                found.append(f"{rel}:{node.lineno} SQL text")
    return found


def test_the_sql_finder_finds_what_it_is_for(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "ok.py").write_text("import sqlalchemy\nQ = 'SELECT id FROM jobs'\n")
    (tmp_path / "jobs.py").write_text("from sqlalchemy import text\nQ = '''UPDATE jobs\n SET status = 1'''\n")
    assert sql_outside_store(tmp_path) == ["jobs.py:1 imports sqlalchemy", "jobs.py:2 SQL text"]


def test_no_sql_outside_the_relay_store() -> None:
    assert sql_outside_store(ROOT / "relay") == []
