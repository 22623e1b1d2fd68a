"""Every command's error boundary, as a user meets it: a process, its stderr, its exit status.

Each case runs ``stslive ...`` with bad input in a fresh process and asserts exactly one line on
stderr, a non-zero exit status and no traceback; ``--debug`` brings the traceback back. A closed
output pipe (``stslive theory --json | head``) is not an error of the user's: silent, status 141.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stslive.acquisition.cli import EXIT_CODES, EXIT_PIPE

ROOT = Path(__file__).resolve().parents[1]
BIG = "100000x100000"


def stslive(*args: str, cwd: Path, timeout: float = 60, **popen: object) -> subprocess.CompletedProcess[str]:
    """``stslive ARGS`` as a process in ``cwd``."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    options.setdefault("env", {**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    cmd = [sys.executable, "-m", "stslive.acquisition.cli", *args]
    return subprocess.run(cmd, cwd=cwd, text=True, timeout=timeout, **options)


def one_error_line(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """The one stderr line of a failed command; fails the test on anything else."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode not in (0, None), proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"stslive {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback TCP port something is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "EXISTING_FILE"
    path.write_text("not a folder\n")
    return path


def big_grid_config(tmp_path: Path) -> Path:
    path = tmp_path / "huge.toml"
    path.write_text(
        '[instruments.nanonis]\nresource = "TCPIP::127.0.0.1::1::SOCKET"\n'
        f"[grid]\nwidth_m = 1e-4\nheight_m = 1e-4\nnx = {BIG.split('x')[0]}\nny = {BIG.split('x')[1]}\n"
        '[[setpoint_set]]\nid = 0\nname = "map"\nbias_setpoint_V = -0.01\ncurrent_setpoint_A = 1.5e-10\n'
        "sweep_start_V = -0.04\nsweep_end_V = 0.04\nn_points = 1601\n",
        encoding="utf-8",
    )
    return path


CASES = {
    "mock-lab on a busy port": (["mock-lab", "--grid", "4x4", "--nanonis-port", "{port}"], "port is in use"),
    "demo --out a file": (["demo", "--headless", "--out", "{file}"], "is a file; give a folder"),
    "keys --dir a file": (["keys", "--dir", "{file}"], "is a file; give a folder"),
    "control --connect nonsense": (["control", "--connect", "nonsense", "status"], "give a ZeroMQ endpoint"),
    "view --connect nonsense": (["view", "--connect", "nonsense"], "give a ZeroMQ endpoint"),
    "view --size huge": (["view", "x.h5", "--snapshot", "x.png", "--size", BIG], "is larger than any screen"),
    "simulate --grid huge": (["simulate", "--grid", BIG, "--out", "x.h5"], "needs about 1.6 TB of memory"),
    "demo --grid huge": (["demo", "--headless", "--grid", BIG, "--out", "d"], "needs about 1.6 TB of memory"),
    "mock-lab --grid huge": (["mock-lab", "--grid", BIG, "--nanonis-port", "0"], "needs about 1.6 TB of memory"),
    "scan of a huge grid": (["scan", "--config", "{huge}", "--out", "x.h5"], f"grid {BIG}: needs about"),
    "control with nobody there": (
        ["control", "--connect", "tcp://127.0.0.1:{port}", "--timeout", "0.3", "status"],
        "no reply from",
    ),
    "analyser --out in no folder": (
        ["analyser", "--connect", "tcp://127.0.0.1:5556", "--out", "{file}/a.h5", "--once"],
        "is not a folder",
    ),
    "scan --resume of no file": (["scan", "--resume", "absent.h5"], "absent.h5"),
    "replay of a file that is no run": (["replay", "{file}"], "EXISTING_FILE"),
    "scan --resume of a .3ds grid": (
        ["scan", "--resume", "{grid}"],
        "a Nanonis .3ds or .dat: stslive analyse or replay it",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_and_a_non_zero_exit(case: str, tmp_path: Path, a_file: Path, busy_port: int) -> None:
    argv, message = CASES[case]
    grid = tmp_path / "grid.3ds"
    grid.write_bytes(b'Grid dim="2 x 2"\r\n:HEADER_END:\r\n')
    fill = {"port": str(busy_port), "file": str(a_file), "huge": str(big_grid_config(tmp_path)), "grid": str(grid)}
    args = [a.format(**fill) for a in argv]
    before = sorted(tmp_path.iterdir())
    proc = stslive(*args, cwd=tmp_path)
    line = one_error_line(proc, args[0])
    assert message in line, line
    assert proc.returncode == 1
    assert sorted(tmp_path.iterdir()) == before  # nothing written, nothing left behind


def test_a_second_mock_lab_names_the_port_the_first_holds(tmp_path: Path) -> None:
    ports = ["--nanonis-port", "0", "--sr830-port", "0", "--thermometer-port", "0"]
    first = subprocess.Popen(
        [sys.executable, "-m", "stslive.acquisition.cli", "mock-lab", "--grid", "4x4", *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        port = first.stdout.readline().split("::")[2]  # nanonis  TCPIP::127.0.0.1::PORT::SOCKET
        proc = stslive("mock-lab", "--grid", "4x4", "--nanonis-port", port, cwd=tmp_path)
        line = one_error_line(proc, "mock-lab")
        assert f"--nanonis-port {port} on 127.0.0.1: the port is in use" in line
    finally:
        first.terminate()
        first.communicate(timeout=30)


def test_a_replay_nobody_receives_is_an_error_not_a_success(tmp_path: Path) -> None:
    from stslive.acquisition.jobs.simulate import write_film_archive
    from stslive.mocks.film import FilmParams, make_film

    write_film_archive(make_film(FilmParams(ny=2, nx=3, seed=0, n_points=101)), tmp_path / "run.h5")
    blind = stslive("replay", "run.h5", "--bind", "tcp://127.0.0.1:0", "--wait-subscribers", "0", cwd=tmp_path)
    assert "nobody received the run: no subscriber on tcp://127.0.0.1:" in one_error_line(blind, "replay")
    waited = stslive("replay", "run.h5", "--bind", "tcp://127.0.0.1:0", "--wait-timeout", "0.5", cwd=tmp_path)
    assert "only 0 of 1 subscription(s) reached" in one_error_line(waited, "replay")


def test_the_screen_without_a_display_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = stslive("view", "run.h5", cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert "no display to open the screen on" in one_error_line(proc, "view")


def test_debug_brings_the_traceback_back(tmp_path: Path, a_file: Path) -> None:
    proc = stslive("keys", "--dir", str(a_file), "--debug", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("stslive keys: error: ")


def test_a_closed_output_pipe_is_silent(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as `| head` after its lines
    try:
        proc = stslive("theory", "--json", cwd=tmp_path, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert proc.returncode == EXIT_PIPE == 141 and proc.stderr == ""


def test_a_bug_is_one_line_with_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from stslive.acquisition.cli import main, theory

    def broken(args: object) -> int:
        raise TypeError("something the code did not expect")

    monkeypatch.setattr(theory, "run", broken)
    assert main(["theory"]) == 70
    err = capsys.readouterr().err
    assert err == (
        "stslive theory: internal error: TypeError: something the code did not expect "
        "(a bug: rerun with --debug and report it)\n"
    )


def test_exit_codes_are_documented_in_help_and_readme(capsys: pytest.CaptureFixture[str]) -> None:
    from stslive.acquisition.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert f"  {code} " in out
        assert f"| {code} |" in readme, code
