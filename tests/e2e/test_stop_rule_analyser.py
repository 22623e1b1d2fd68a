"""The stop rule end to end: a progressive scan of the simulated film, ``stslive analyser`` following
it, and the scan ending early when the analyser's 90 % intervals are narrow enough.

Processes as in a lab: the analyser (``stslive analyser``) and the scan (``stslive scan``) are
subprocesses; the simulated lab runs in this process. The limit is loose (the film here is small)
so the test is about the loop: intervals published by the analyser, read by the scan, the run
ended with the reason in its archive and the summary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.jobs.supervisor import toml_text
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY = 64, 48
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stslive(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stslive.acquisition.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )


def test_a_progressive_scan_stops_when_the_analysers_intervals_are_narrow(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=11, ny=NY, nx=NX, speed=0)
    stream, results = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources,
            nx=NX,
            ny=NY,
            pixel_m=lab.pixel_m,
            n_points=801,
            stream={"pub": stream, "control": ""},
            grid={"order": "progressive"},
            # l_Delta (23 nm) has no upper bound on a film this small: the rule names the other two
            stop={
                "results": results,
                "figures": ["l_alpha_nm", "rho_cross_0"],
                "max_relative_width": 1.5,
                "min_pixels": 300,
            },
        )
        (tmp_path / "run.toml").write_text(toml_text(config.to_dict()), encoding="utf-8")
        analyser = stslive(
            "analyser", "--connect", stream, "--bind", results, "--archive", "run.h5", "--snapshot-every", "100",
            "--dynes-width-meV", "0.1", "--once", cwd=tmp_path,
        )  # fmt: skip
        try:
            assert analyser.stdout is not None and "results on" in analyser.stdout.readline()
            scan = stslive("scan", "--config", "run.toml", "--out", "run.h5", "--wait-subscribers", "20", cwd=tmp_path)
            out, err = scan.communicate(timeout=240)
            assert scan.returncode == 0, err[-2000:]
        finally:
            if analyser.poll() is None:
                analyser.send_signal(signal.SIGINT)
            analyser.communicate(timeout=60)
    with open_archive(tmp_path / "run.h5") as reader:
        measured = int(reader.measured.sum())
        stop = reader.documents["stop"]
    print(stop["reason"], stop["stop_rule"])
    assert 300 <= measured < NX * NY  # ended early, after the rule's minimum
    assert stop["exit_status"] == "success" and stop["reason"].startswith("stop rule met at ")
    assert stop["stop_rule"]["verdict"]["met"] and stop["stop_rule"]["results"] == results
    assert out.strip().splitlines()[-1].endswith(stop["reason"])
    assert "flagged" in out and "flagged: unknown" not in out  # the scan followed the analyser's results
