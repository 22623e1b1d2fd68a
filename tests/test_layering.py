"""Imports go downwards only (ARCHITECTURE.md "Layout"): mocks and drivers know nothing of
acquisition; live knows only the stream/archive formats, so it installs on a viewing machine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORMAT_MODULES = {
    "stslive.acquisition.formats.archive",
    "stslive.acquisition.formats.recording",
    "stslive.acquisition.formats.nanonis3ds",
    "stslive.acquisition.formats.codec",
    "stslive.acquisition.formats.documents",
    "stslive.acquisition.formats.fields",
    "stslive.acquisition.formats.publisher",
    "stslive.acquisition.formats.subscriber",
    "stslive.acquisition.formats.runmodel",
    "stslive.acquisition.formats.security",
    "stslive.acquisition.formats.version",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.count(".") == 1:  # `from stslive.live import theory` names a module
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {n for n in names if n.startswith("stslive.")}


def _allowed(package: str, module: Path, name: str) -> bool:
    if name.startswith(f"stslive.{package}") or name in ("stslive.drivers.errors", "stslive.drivers.tomlfile"):
        return True
    if package == "drivers":
        return False
    if package == "mocks":
        return name.startswith("stslive.drivers") or name == "stslive.live.theory"
    if package == "live":
        if name.startswith("stslive.mocks") and "bench" in module.stem:
            return True  # benchmarks simulate their own input
        return name in FORMAT_MODULES
    return True  # acquisition composes the others (scan, simulate, demo)


@pytest.mark.parametrize("package", ["drivers", "mocks", "live"])
def test_imports_go_downwards(package):
    offenders = [
        f"{module.relative_to(ROOT)} imports {name}"
        for module in sorted((ROOT / package).glob("*.py"))
        for name in sorted(_imports(module))
        if not _allowed(package, module, name)
    ]
    assert not offenders, "\n".join(offenders)
