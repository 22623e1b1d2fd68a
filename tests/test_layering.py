"""The folder rules of docs/architecture.md, checked on every module of every folder.

Imports go downwards only: drivers and mocks know nothing of acquisition; ``acquisition/formats``
is what a viewing machine installs, so it needs neither the drivers nor live; live reads runs
only through the formats; library code never imports the command lines (``acquisition/cli``) or
the tools (``acquisition/jobs``); argparse appears only in ``acquisition/cli``; no module takes a
private name of another. Every import counts, also one inside a function or a relative one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("drivers", "acquisition", "live", "mocks")
#: The drivers modules every layer may import: the error hierarchy and the TOML/table reader.
SHARED = ("stslive.drivers.errors", "stslive.drivers.tomlfile")
FORMATS = "stslive.acquisition.formats"
CLI = "stslive.acquisition.cli"
JOBS = "stslive.acquisition.jobs"


def module_paths() -> dict[str, Path]:
    """Dotted name -> file of every module in the four folders (``__init__`` names its package)."""
    out: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [folder, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(["stslive", *parts])] = path
    return out


MODULES = module_paths()


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of ``module``.

    ``from pkg import name`` counts as importing ``pkg.name`` where that is a module.
    """
    path = MODULES[module]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package(module).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub, []) if sub in MODULES else (base, [alias.name])


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _library(module: str) -> bool:
    return not (_within(module, CLI) or _within(module, JOBS))


#: (folder, what it may import besides SHARED, the rule); the folders not named may import any
#: folder below them.
RULES = (
    ("stslive.drivers", ("stslive.drivers",), "drivers import only drivers"),
    (
        "stslive.mocks",
        ("stslive.mocks", "stslive.drivers", "stslive.live.theory"),
        "mocks import only mocks, drivers and live.theory (the film's equations)",
    ),
    (FORMATS, (FORMATS,), "acquisition/formats imports nothing of stslive beyond itself and drivers.errors/tomlfile"),
    ("stslive.live", ("stslive.live", FORMATS), "live imports only live and acquisition/formats"),
)


def violation(module: str, name: str) -> str | None:
    """Why ``module`` may not import ``name`` (None when it may)."""
    if not name.startswith("stslive.") or name in SHARED:
        return None
    for folder, allowed, rule in RULES:
        if _within(module, folder) and not any(_within(name, a) for a in allowed):
            return rule
    if _library(module) and not _library(name):
        return "library code never imports acquisition/cli or acquisition/jobs"
    if _within(module, JOBS) and _within(name, CLI):
        return "a job never imports a command line"
    return None


def test_every_folder_is_walked() -> None:
    for expected in (
        "stslive.acquisition.formats.archive",
        "stslive.acquisition.cli",
        "stslive.acquisition.jobs.soak",
        "stslive.live.offline.report",
        "stslive.live.viewer.window",
    ):
        assert expected in MODULES


@pytest.mark.parametrize("folder", FOLDERS)
def test_imports_go_downwards(folder: str) -> None:
    offenders = [
        f"{MODULES[module].relative_to(ROOT)} imports {name}: {why}"
        for module in MODULES
        if _within(module, f"stslive.{folder}")
        for name, _ in imports(module)
        if (why := violation(module, name)) is not None
    ]
    assert not offenders, "\n".join(offenders)


def test_no_module_takes_a_private_name_of_another() -> None:
    offenders = [
        f"{MODULES[module].relative_to(ROOT)} takes {name}.{private}"
        for module in MODULES
        for name, names in imports(module)
        for private in names
        if private.startswith("_") and name.startswith("stslive.")
    ]
    assert not offenders, "\n".join(offenders)


def test_argparse_only_in_the_command_lines() -> None:
    offenders = [
        str(MODULES[module].relative_to(ROOT))
        for module in MODULES
        if not _within(module, CLI)
        for name, _ in imports(module)
        if name == "argparse"
    ]
    assert not offenders, "argparse outside acquisition/cli: " + ", ".join(offenders)


#: (importer, imported) -> the rule that refuses it
REFUSED = {
    ("stslive.drivers.nanonis", "stslive.acquisition.config"): "drivers import only drivers",
    ("stslive.mocks.lab", "stslive.live.pipeline"): "mocks import only",
    ("stslive.acquisition.formats.archive", "stslive.drivers.visa"): "acquisition/formats imports nothing",
    ("stslive.acquisition.formats.documents", "stslive.live.results"): "acquisition/formats imports nothing",
    ("stslive.acquisition.formats.publisher", "stslive.acquisition.config"): "acquisition/formats imports nothing",
    ("stslive.live.analyser", "stslive.acquisition.engine"): "live imports only",
    ("stslive.live.pipeline", "stslive.mocks.film"): "live imports only",
    ("stslive.acquisition.engine", "stslive.acquisition.jobs.demo"): "library code never",
    ("stslive.acquisition.scan", "stslive.acquisition.cli"): "library code never",
    ("stslive.acquisition.jobs.bench_scan", "stslive.acquisition.cli.scan"): "a job never imports a command line",
    ("stslive.acquisition.jobs.soak", "stslive.acquisition.cli.analyse"): "a job never imports a command line",
}
ALLOWED = [
    "stslive.live.pipeline -> stslive.acquisition.formats.recording",
    "stslive.live.analyser -> stslive.drivers.errors",
    "stslive.mocks.film -> stslive.live.theory",
    "stslive.acquisition.engine -> stslive.drivers.protocols",
    "stslive.acquisition.cli.bench_scan -> stslive.acquisition.jobs.bench_scan",
    "stslive.acquisition.jobs.demo -> stslive.live.results",
    "stslive.acquisition.jobs.soak -> stslive.live.offline.analyse",
]


@pytest.mark.parametrize(("pair", "rule"), REFUSED.items())
def test_the_rules_refuse(pair: tuple[str, str], rule: str) -> None:
    why = violation(*pair)
    assert why is not None and rule in why


@pytest.mark.parametrize("pair", ALLOWED)
def test_the_rules_allow(pair: str) -> None:
    module, name = pair.split(" -> ")
    assert violation(module, name) is None


def test_relative_and_function_level_imports_are_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "probe.py"
    path.write_text("from . import archive\n\ndef f():\n    from ..engine import ScanEngine\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "stslive.acquisition.formats.probe", path)
    found = {name for name, _ in imports("stslive.acquisition.formats.probe")}
    assert found == {"stslive.acquisition.formats.archive", "stslive.acquisition.engine"}
