"""The instrument rooms (drivers, mocks) show their dependencies: no import cycle, no import hidden in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("drivers", "mocks")


def _module(path: Path) -> str:
    return ".".join(("stslive", *path.relative_to(ROOT).with_suffix("").parts))


def _stslive_imports(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            names.update(a.name for a in child.names)
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            names.add(child.module)
            names.update(f"{child.module}.{a.name}" for a in child.names)  # `from stslive.mocks import film`
    return {n for n in names if n.startswith("stslive.")}


def _sources(room: str) -> dict[str, ast.Module]:
    return {_module(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted((ROOT / room).glob("*.py"))}


@pytest.mark.parametrize("room", ROOMS)
def test_no_import_inside_a_function(room: str) -> None:
    hidden = [
        f"{module}:{inner.lineno} in {func.name}()"
        for module, tree in _sources(room).items()
        for func in ast.walk(tree)
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(func)
        if isinstance(inner, ast.Import | ast.ImportFrom)
    ]
    assert not hidden, hidden


@pytest.mark.parametrize("room", ROOMS)
def test_no_import_cycle(room: str) -> None:
    sources = _sources(room)
    graph = {m: _stslive_imports(tree) & set(sources) for m, tree in sources.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError(" -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_lab_does_not_know_its_servers() -> None:
    lab = _sources("mocks")["stslive.mocks.lab"]
    servers = {"stslive.mocks.nanonis_server", "stslive.mocks.lab_servers"}
    assert not _stslive_imports(lab) & servers
