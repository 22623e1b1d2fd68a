"""Every command line of the README, as written: parsed by the real parser, and the cheap ones run.

The README's ``stslive`` lines are read from the file itself. A synopsis (``[--rate N | --as-recorded]``,
``{analysis,scan,...}``, ``pause|resume``) is expanded into every form it names, and each form must
parse with the command's own parser: an option the README names but the command lacks fails here.
A concrete line is run as written here (ports replaced by free ones, files in a temporary folder),
or listed in :data:`ELSEWHERE` with the test that runs it (a full-size benchmark or soak takes
minutes; the same command runs there at a small size). A README line in neither fails the test.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stslive.acquisition.cli import bench, build_parser
from stslive.acquisition.control import send_command
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.jobs.supervisor import toml_text
from stslive.drivers.errors import InstrumentTimeout
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Prose that names a command without being a command line.
MENTIONS = {"stslive demo", "stslive analyse", "stslive keys", "stslive analyse --set", "stslive watch"}
#: Concrete README lines run by another test (file), usually at a smaller size.
ELSEWHERE = {
    "stslive demo --headless --grid 64x48 --out demo-out": "tests/e2e/test_demo.py",
    "stslive bench analysis --grid 300x250 --sample 300": "tests/test_readme.py",
    "stslive bench scan --grid 60x50 --compare": "tests/e2e/test_scan_pipeline.py",
    "stslive bench stream": "tests/acquisition/test_bench_stream.py",
    "stslive bench analyser --calibrated": "tests/live/test_analyser_bench.py",
    "stslive bench convergence --out DIR": "tests/acquisition/test_bench_convergence.py",
    "stslive bench analyser": "tests/live/test_analyser_bench.py",
    "stslive bench viewer --grid 300x250 --rate 1000 --seconds 10": "tests/test_cli.py",
    "stslive bench campaign --workdir DIR --repeat 2": "tests/test_cli.py",
    "stslive soak --grid 300x250 --seed 0 --out soak-out --duration-hint 2400": "tests/e2e/test_soak.py",
}
#: Placeholders of synopses -> a value the parser takes.
PLACEHOLDERS = {
    "EP": "tcp://127.0.0.1:5556",
    "N": "2",
    "S": "5",
    "X": "0",
    "NXxNY": "8x6",
    "RES": "TCPIP::127.0.0.1::1::SOCKET",
    "ADDRESS": "tcp://127.0.0.1:8786",
    "KEY=VALUE": "gap_eV=1.5e-3",
}


def readme_commands() -> list[str]:
    """Every ``stslive ...`` line of the README (backquoted, indented or after ``&&``), chains split."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"(?:`|^[ \t]+|&& )(stslive [a-z][^`\n]*)", text, flags=re.MULTILINE)
    out: list[str] = []
    for match in found:
        for part in match.split(" && "):
            part = part.split("  #")[0].strip()
            if part.startswith("stslive ") and part not in out:
                out.append(part)
    return out


def is_synopsis(line: str) -> bool:
    """A line with optional parts, alternatives or placeholders the parser needs a value for."""
    marks = any(mark in line for mark in ("[", "{", "|", "...", " NAME --help"))
    return marks or any(token in PLACEHOLDERS for token in line.split())


def expand(text: str) -> list[str]:
    """Every form a synopsis names: ``[A | B]`` -> A, B; ``[A]`` -> A; ``{a,b}`` -> a, b; ``a|b`` -> a, b.

    ``[OPTIONS]`` (a benchmark's own) becomes ``--help``: its parser must build and answer.
    """
    text = text.replace("\\|", "|").replace("...", " ").replace("[OPTIONS]", "--help")
    for pattern, sep in ((r"\[([^\[\]]*)\]", "|"), (r"\{([^{}]*)\}", ","), (r"(\S*\|\S*)", "|")):
        m = re.search(pattern, text)
        if m:
            return [v for alt in m[1].split(sep) for v in expand(text[: m.start()] + alt.strip() + text[m.end() :])]
    if " NAME --help" in text:
        return [text.replace("NAME", name) for name in bench.BENCHMARKS]
    return [" ".join(text.split())]


def parses(line: str) -> None:
    """Parse ``line`` with the command's own parser (and a benchmark's); fails the test if it does not."""
    argv = [PLACEHOLDERS.get(token, token) for token in shlex.split(line)[1:]]
    try:
        args = build_parser(argv[0]).parse_args(argv)
        if argv[0] == "bench":
            parser = argparse.ArgumentParser(prog=f"stslive bench {args.benchmark}")
            bench.load(args.benchmark).add_arguments(parser)
            parser.parse_args(args.options)
    except SystemExit as exc:
        assert exc.code == 0, f"the README's {line!r} does not parse ({argv})"


COMMANDS = readme_commands()
SYNOPSES = [line for line in COMMANDS if is_synopsis(line)]
CONCRETE = [line for line in COMMANDS if not is_synopsis(line) and line not in MENTIONS]


def test_the_readme_is_read() -> None:
    assert len(COMMANDS) > 30 and "stslive scan --config run.toml --out run.h5" in CONCRETE


@pytest.mark.parametrize("line", [form for line in SYNOPSES for form in expand(line)])
def test_every_form_of_every_synopsis_parses(line: str) -> None:
    parses(line)


@pytest.mark.parametrize("line", CONCRETE)
def test_every_concrete_line_parses_and_is_run_here_or_elsewhere(line: str) -> None:
    parses(line)
    # the table's names for the files the lines below use
    same = line.replace("RUN.toml", "run.toml").replace("RUN.h5", "run.h5").replace("FILE.h5", "film.h5")
    assert same in RUN_HERE or line in ELSEWHERE, f"{line!r}: run it in tests/test_readme.py or name its test"
    if line in ELSEWHERE:
        test_file = ROOT / ELSEWHERE[line]
        assert test_file.is_file() and shlex.split(line)[1] in test_file.read_text(encoding="utf-8")


def test_the_first_commands_output_folder_is_ignored_by_git() -> None:
    first = next(line for line in COMMANDS if "--headless" in line and "--out" in line)
    out = shlex.split(first)[shlex.split(first).index("--out") + 1]
    assert f"/{out}/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


# -- the concrete lines, run --------------------------------------------------------------------------
RUN_HERE: set[str] = set()


def runs(*lines: str):  # type: ignore[no-untyped-def]
    """Mark a test as the one that runs these README lines (each must be in the README)."""
    RUN_HERE.update(lines)

    def mark(test):  # type: ignore[no-untyped-def]
        return pytest.mark.parametrize("readme_lines", [lines], ids=["readme"])(test)

    return mark


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stslive(line: str, cwd: Path, *, ports: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run a README line (``stslive`` as this interpreter's module) in ``cwd``; returns stdout, checks exit 0."""
    argv = shlex.split(_with_ports(line, ports))
    proc = subprocess.run(
        [sys.executable, "-m", "stslive.acquisition.cli", *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, f"{line}: {proc.stderr[-2000:]}"
    return proc.stdout


def start(line: str, cwd: Path, ports: dict[str, str]) -> subprocess.Popen[str]:
    """A README line started as a process (a service, or a scan to steer), its ports replaced."""
    argv = shlex.split(_with_ports(line, ports))
    return subprocess.Popen(
        [sys.executable, "-m", "stslive.acquisition.cli", *argv[1:]],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )


def _with_ports(line: str, ports: dict[str, str] | None) -> str:
    for old, new in (ports or {}).items():
        line = line.replace(old, new)
    return line


@runs(
    "stslive theory",
    "stslive theory --set gap_eV=1.5e-3",
    "stslive keys --dir KEYDIR --server scanpc",
    "stslive keys --dir KEYDIR --client screen1 --role viewer",
    "stslive keys --dir KEYDIR --client alice --role control",
)
def test_theory_and_keys_as_written(readme_lines: tuple[str, ...], tmp_path: Path) -> None:
    outs = {line: stslive(line, tmp_path) for line in readme_lines}
    assert "ln^3(hbar omega_D / Delta)" in outs["stslive theory"] and "Delta = gap_K = 12 K" in outs["stslive theory"]
    assert "Delta = gap_K = 17.4 K" in outs["stslive theory --set gap_eV=1.5e-3"]
    keys = tmp_path / "KEYDIR"
    assert (keys / "scanpc.key").is_file() and (keys / "viewers" / "screen1.key").is_file()
    assert (keys / "controllers" / "alice.key").is_file()


@pytest.fixture
def lab_folder(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A simulated lab in this process and ``run.toml`` over it; yields (folder, README port -> free port)."""
    lab = MockLab.from_seed(seed=2, ny=6, nx=8, speed=1)  # real time: 401 points x 0.1 ms, a run of ~2 s
    ports = {":5556": f":{free_port()}", ":5557": f":{free_port()}", ":5560": f":{free_port()}"}
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources,
            nx=lab.nx,
            ny=lab.ny,
            pixel_m=lab.pixel_m,
            n_points=401,
            stream={"pub": f"tcp://127.0.0.1{ports[':5556']}", "control": f"tcp://127.0.0.1{ports[':5557']}"},
        )
        doc = config.to_dict()
        doc["setpoint_set"][0]["integration_s"] = 1e-4
        (tmp_path / "run.toml").write_text(toml_text(doc), encoding="utf-8")
        ports["SCAN-PC"] = "127.0.0.1"
        yield tmp_path, ports


def _pause_when_running(control: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if send_command(control, "pause", timeout_s=1.0)["ok"]:
                return
        except InstrumentTimeout:
            pass
        time.sleep(0.005)
    raise AssertionError("the scan never ran")


@runs(
    "stslive instruments --config run.toml",
    "stslive scan --config run.toml --check",
    "stslive scan --config run.toml --out run.h5",
    "stslive control --connect tcp://127.0.0.1:5557 status",
    "stslive scan --resume run.h5",
    "stslive analyser --connect tcp://SCAN-PC:5556 --archive run.h5 --bind tcp://127.0.0.1:5560",
    "stslive view run.h5 --connect tcp://127.0.0.1:5560",
)
def test_a_real_lab_as_written(readme_lines: tuple[str, ...], lab_folder: tuple[Path, dict[str, str]]) -> None:
    instruments, check, scan, status, resume, analyser, view = readme_lines
    folder, ports = lab_folder
    assert "nanonis" in stslive(instruments, folder, ports=ports).lower()
    assert "estimate 48 pixels" in stslive(check, folder, ports=ports)
    running = start(scan, folder, ports)
    try:
        _pause_when_running(f"tcp://127.0.0.1{ports[':5557']}")
        said = stslive(status, folder, ports=ports)
        assert said.startswith("scan: ") and "paused (user)" in said and "left" in said
        send_command(f"tcp://127.0.0.1{ports[':5557']}", "abort", timeout_s=20.0)  # a loaded machine is slow, not wrong
        _, err = running.communicate(timeout=60)
        assert running.returncode == 3, err
    finally:
        if running.poll() is None:
            running.kill()
    follower = start(analyser, folder, ports)
    screen = None
    try:
        assert follower.stdout is not None and "results on" in follower.stdout.readline()
        screen = start(view, folder, ports)
        summary = stslive(resume, folder, ports=ports)  # the rest of the run, followed by both
        assert "48 of 48 pixels measured" in summary and "exit success" in summary
        deadline = time.monotonic() + 60
        while not (folder / "run.analysis.h5").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (folder / "run.analysis.h5").is_file()
        assert screen.poll() is None, screen.communicate()[1]  # the screen is up and following
    finally:
        for proc in (screen, follower):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@runs("stslive bench lab")
def test_bench_lab_as_written(readme_lines: tuple[str, ...], tmp_path: Path) -> None:
    assert "Bias.Get" in stslive(readme_lines[0], tmp_path)


@pytest.mark.slow
@runs("stslive simulate --grid 300x250 --out film.h5", "stslive analyse film.h5 --out film-out")
def test_the_accuracy_commands_as_written(readme_lines: tuple[str, ...], tmp_path: Path) -> None:
    simulate, analyse = readme_lines
    try:
        assert "300 x 250 pixels" in stslive(simulate, tmp_path)
        stslive(analyse, tmp_path)
        assert (tmp_path / "film-out" / "report.json").is_file()
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 1.5 GB: not left for the session's end


def test_bench_analysis_at_a_small_size(tmp_path: Path) -> None:
    """The README's ``stslive bench analysis --grid 300x250 --sample 300`` (44 s) at a small grid."""
    out = stslive("stslive bench analysis --grid 12x8 --sample 12", tmp_path)
    assert "spectra/s" in out


def test_the_run_config_key_table_is_the_codes() -> None:
    from stslive.acquisition.config import keys_table

    assert keys_table() in README.read_text(encoding="utf-8")
