"""The ``stslive`` console script: dispatch, the shared option parsers, one error line, ``stslive bench``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stslive.acquisition.cli import COMMANDS, bench, build_parser, main
from stslive.acquisition.cli.common import parse_assignments, parse_grid
from stslive.acquisition.formats.version import software_version
from stslive.drivers.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("stslive ")
    assert main([]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_builds_its_arguments(name):
    parser = build_parser(name)  # imports the subcommand module and adds its arguments
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    assert text.startswith("usage: stslive " + name)
    assert sub.get_default("_run") is not None


def test_console_script_entry_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "stslive.acquisition.cli", "theory", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: stslive theory" in proc.stdout


def test_user_error_is_a_message_not_a_traceback(capsys):
    assert main(["theory", "--set", "no_such_key=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stslive theory: error:") and "Traceback" not in err


def test_version_is_the_one_software_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"stslive {software_version()}"


# -- shared option parsers -----------------------------------------------------------------------
def test_parse_grid_is_columns_by_rows():
    assert parse_grid("300x250") == (300, 250) and parse_grid(" 5 X 7 ") == (5, 7)
    assert parse_grid("1800x1100", minimum=(400, 300)) == (1800, 1100)


@pytest.mark.parametrize("text", ["300", "300x", "x250", "3x2x1", "12by8", "0x8", "8x0", "-3x4", "1.5x2", ""])
def test_parse_grid_refuses_with_the_option_and_an_example(text):
    with pytest.raises(ConfigError, match=r"--grid .*columns x rows, e\.g\. 300x250"):
        parse_grid(text)


def test_parse_grid_minimum_names_it():
    with pytest.raises(ConfigError, match=r"--size '399x300': give width x height, at least 400x300, e\.g\. 1x1"):
        parse_grid("399x300", option="--size", what="width x height", minimum=(400, 300), example="1x1")


def test_parse_assignments():
    assert parse_assignments(None) == {}
    assert parse_assignments([" a = 1 ", "b=x=y", "a=2"]) == {"a": "2", "b": "x=y"}
    assert parse_assignments(["a=1"], known=["a", "b"]) == {"a": "1"}
    for bad in (["a"], ["=1"], [" =1"]):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_assignments(bad)
    with pytest.raises(ConfigError, match=r"unknown key 'c'\. Valid keys: a, b\."):
        parse_assignments(["c=1"], known=["a", "b"])
    with pytest.raises(ConfigError, match=r"--film 'c': expected KEY=VALUE\. Valid keys: a\."):
        parse_assignments(["c"], option="--film", known=["a"])


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--grid", "64"],
        ["demo", "--grid", "1x3"],
        ["soak", "--grid", "24by16", "--out", "unused"],
        ["mock-lab", "--grid", "0x4"],
        ["simulate", "--grid", "4", "--out", "unused.h5"],
        ["bench", "scan", "--grid", "x"],
        ["bench", "analysis", "--grid", "3x"],
        ["bench", "viewer", "--grid", "3"],
        ["bench", "campaign", "--grid", "3", "--workdir", "unused"],
        ["view", "run.h5", "--size", "300x200"],
    ],
)
def test_a_bad_grid_is_one_line_and_exit_1(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it lands here
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"stslive {argv[0]}: error: --"), err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


# -- stslive bench -------------------------------------------------------------------------------
OWNED_BENCHMARKS = ("analysis", "scan", "analyser", "campaign", "viewer")


def test_one_bench_command_for_every_benchmark():
    assert list(bench.BENCHMARKS) == [*OWNED_BENCHMARKS, "lab", "stream", "convergence"]
    assert not [name for name in COMMANDS if name.startswith("bench") and name != "bench"]  # one spelling


@pytest.mark.parametrize("name", OWNED_BENCHMARKS)
def test_each_benchmark_has_its_command_line(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: stslive bench {name}") and bench.BENCHMARKS[name] in " ".join(out.split())
    module = bench.load(name)
    assert module.__name__ == f"stslive.acquisition.cli.bench_{name}"
    assert callable(module.add_arguments) and callable(module.run)


def test_bench_help_lists_every_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in bench.BENCHMARKS)


def test_a_benchmark_not_installed_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(bench.BENCHMARKS, "nothing", "a benchmark whose module does not exist")
    assert main(["bench", "nothing", "--grid", "3x3"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "stslive bench: error: benchmark 'nothing' is not available in this installation "
        "(no module stslive.acquisition.cli.bench_nothing)\n"
    )


def test_an_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nonsense"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_benchmark_missing_a_dependency_is_not_called_absent(monkeypatch):
    def broken(name):
        raise ModuleNotFoundError("No module named 'dask'", name="dask")

    monkeypatch.setattr(bench.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="dask"):
        bench.load("campaign")


def test_bench_options_reach_the_benchmark(capsys):
    assert main(["bench", "analyser", "--latency-n", "0"]) == 1
    assert "give -n, --latency-n" in capsys.readouterr().err


# -- the README and docs/architecture.md speak of this repository only ----------------------------
DOCS = [ROOT / "README.md", ROOT / "docs" / "architecture.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_name_only_commands_that_exist(path):
    text = path.read_text(encoding="utf-8")
    # command lines: in backquotes, indented code, or after && on the install line
    commands = set(re.findall(r"(?:`|^[ \t]+|&& )stslive ([a-z][a-z-]*)", text, flags=re.MULTILINE))
    assert commands and commands <= set(COMMANDS), commands - set(COMMANDS)
    named = set(re.findall(r"stslive bench ([a-z]+)", text))
    assert named <= set(bench.BENCHMARKS), named - set(bench.BENCHMARKS)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_refer_to_nothing_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared", "PHYSICS.md", "ARCHITECTURE.md", "STYLE.md", "python -m stslive"):
        assert outside not in text, outside
    assert not re.search(r"\bissue[- ]?\d", text, flags=re.IGNORECASE)
    paths = re.findall(r"`((?:docs|acquisition|live|mocks|drivers|tests)/[a-z0-9_./-]+\.(?:py|md|toml))`", text)
    assert paths
    for ref in paths:  # placeholders (acquisition/jobs/bench_NAME.py) are in capitals and not matched
        assert (ROOT / ref).is_file() or ref.startswith("docs/"), ref  # the other docs/ pages are being written


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (None, "film parameters {path} not found; check the --film path"),
        ("colour = 3\n", "unknown key(s) ['colour']"),
        ('sigma_rho_ohm = "high"\n', "film parameter sigma_rho_ohm = 'high' is not a valid float"),
        ("sigma_rho_ohm = \n", "not valid TOML"),
    ],
)
def test_mock_lab_film_file_errors_are_one_line(toml, message, tmp_path, capsys):
    path = tmp_path / "film.toml"
    if toml is not None:
        path.write_text(toml, encoding="utf-8")
    assert main(["mock-lab", "--film", str(path), "--grid", "4x4", "--nanonis-port", "0"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message.format(path=path) in err, err


def test_bench_viewer_reports_the_frame_rate(capsys, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert main(["bench", "viewer", "--grid", "20x10", "--rate", "200", "--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"frames \(refresh \+ full repaint, back to back\): \d+ = [\d.]+ fps", out), out
    assert "frame time ms: p50" in out and "grid 20x10" in out


def test_bench_campaign_compares_both_paths(capsys, tmp_path):
    pytest.importorskip("distributed")
    argv = ["bench", "campaign", "--grid", "6x4", "--maps", "2", "--workers", "1", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "campaign: 2 maps, 6x4, 48 spectra" in out and "maps identical: True" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign_6x4_T0.3K.h5", "campaign_6x4_T0.6K.h5"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_name_only_modules_that_exist(path):
    import importlib

    names = set(re.findall(r"`(stslive(?:\.[a-z_0-9]+)+)`", path.read_text(encoding="utf-8")))
    assert names
    for name in sorted(names):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attr = name.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), name
