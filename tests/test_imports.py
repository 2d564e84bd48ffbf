"""No import circles among zray's modules.

The graph is read from the source (the AST of every module): every ``import`` and
``from ... import`` at module level or inside a function, and every
``importlib.import_module("zray....")`` with a literal name. Imports under
``if TYPE_CHECKING:`` are left out: they never run. An edge to a package's
``__init__`` counts only when the package itself is imported (``from zray import X``
where X is not a submodule), not as a side effect of importing a submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in sorted((root / package).rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (p, is_pkg)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    """ast.walk, but not into ``if TYPE_CHECKING:`` bodies."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            todo.extend(n.orelse)
            continue
        todo.extend(ast.iter_child_nodes(n))


def import_graph(root: Path = ROOT, package: str = "zray") -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports."""
    mods = _modules(root, package)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        here = mod if is_pkg else mod.rpartition(".")[0]
        out: set[str] = set()
        for n in _walk(ast.parse(path.read_text(), str(path))):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = here.split(".")[: len(here.split(".")) - (n.level - 1)]
                    full = ".".join(base + ([n.module] if n.module else []))
                else:
                    full = n.module or ""
                # "from a import b": the submodule a.b if there is one, else a itself.
                names = [f"{full}.{a.name}" for a in n.names]
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == "import_module" and n.args
                  and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)):
                names = [n.args[0].value]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target is not None and target != mod:
                    out.add(target)
        graph[mod] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_in(comp: list[str], graph: dict[str, set[str]]) -> str:
    """One concrete circle through the component, for the failure message."""
    start = comp[0]
    members = set(comp)
    prev: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [start]
                while v != start:
                    path.append(v)
                    v = prev[v]
                return " -> ".join([start, *reversed(path[1:]), start])
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return ", ".join(comp)


def test_no_import_cycles():
    graph = import_graph()
    # The graph is really read: these edges exist (or the reader is broken).
    assert "zray.core_worker" in graph["zray.api"]
    assert "zray.protocol" in graph["zray.core_worker"]
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(
        f"{', '.join(c)} (e.g. {_path_in(c, graph)})" for c in found)


def test_reader_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a circle closed by a function-level import is one."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text(
        "import importlib\n\ndef g():\n    importlib.import_module('pkg.a')\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "e.py").write_text("from pkg import d\n")
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert graph["pkg.d"] == set()  # typing-only imports never run
    assert _path_in(cycles(graph)[0], graph) == "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"
