"""The package's import graph: every import statement, lazy ones in functions included, read from the source.

It must run one way (no module reaches itself through its imports) and the product must not depend on the
training lab: only the lab itself and the ``lab`` command's CLI module import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "amdet_audit"
LAB = "amdet_audit.lab"
MAY_IMPORT_LAB = {"amdet_audit.cli.lab"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def imported(tree: ast.AST, name: str, modules: set[str]) -> set[str]:
    """Modules of the package that ``name``'s source imports (outside ``if TYPE_CHECKING:`` blocks)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package(name) else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)  # a parent package runs first for any import; only names taken count
            if len(submodules) < len(node.names):
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported(ast.parse(path.read_text(encoding="utf-8")), name, set(files))
            for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_the_reader_sees_lazy_relative_and_package_imports() -> None:
    modules = {"amdet_audit", "amdet_audit.sources", "amdet_audit.sources.canary", "amdet_audit.lab",
               "amdet_audit.lab.corpus"}
    source = ("from typing import TYPE_CHECKING\nfrom . import canary\nif TYPE_CHECKING:\n"
              "    from amdet_audit.lab import corpus\ndef f():\n    import amdet_audit.lab.corpus\n")
    assert imported(ast.parse(source), "amdet_audit.sources", modules) == {"amdet_audit.sources.canary",
                                                                           "amdet_audit.lab.corpus"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_imports_run_one_way() -> None:
    edges = graph()
    assert len(edges) > 50  # the whole package was read
    assert cycles(edges) == []


def test_only_the_lab_command_imports_the_lab() -> None:
    offenders = {name: sorted(m for m in deps if m == LAB or m.startswith(LAB + "."))
                 for name, deps in graph().items()
                 if not (name == LAB or name.startswith(LAB + ".")) and name not in MAY_IMPORT_LAB}
    assert {k: v for k, v in offenders.items() if v} == {}
