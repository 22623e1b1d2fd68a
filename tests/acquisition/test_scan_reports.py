"""A scan that reports: its progress line, ``control status``, the summary, the stop document, exit codes.

The figures come from :mod:`stslive.acquisition.progress`; the scans here run ``stslive scan``
in-process (``main``) against the simulated lab's TCP servers in this process.
"""

from __future__ import annotations

import io
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.cli.control import reply_text
from stslive.acquisition.cli.scan import ProgressReporter
from stslive.acquisition.control import send_command
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.jobs.supervisor import toml_text
from stslive.acquisition.progress import RateMeter, RunProgress, duration_text, progress_line, summary_line
from stslive.drivers.errors import InstrumentTimeout
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 6, 4, 101
pytestmark = pytest.mark.timeout(120)


# -- the figures ----------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_that_of_recent_pixels_and_a_pause_stops_its_clock() -> None:
    clock = Clock()
    meter = RateMeter(window=5, clock=clock)
    assert math.isnan(meter.rate())
    for _ in range(5):
        meter.tick()
        clock.now += 0.5
    assert meter.rate() == pytest.approx(2.0)
    meter.pause()
    clock.now += 3600.0  # an hour paused for the temperature
    meter.tick()
    assert meter.rate() == pytest.approx(2.0)  # the rate before the pause stands, not 2 pixels an hour
    clock.now += 0.25
    meter.tick()
    assert meter.rate() == pytest.approx(4.0)


def test_progress_line_and_summary_say_state_pause_reasons_and_time_left() -> None:
    p = RunProgress(
        state="paused",
        total=3072,
        measured=1380,
        failed=2,
        remaining=1690,
        this_run=1382,
        rate_px_s=120.0,
        elapsed_s=11.5,
        pause_reasons=("failures", "temperature"),
    )
    assert p.eta_s == pytest.approx(1690 / 120.0)
    assert progress_line(p) == (
        "1382 of 3072 pixels (45 %), 2 failed, 120 pixels/s, 0:00:14 once resumed left, paused (failures, temperature)"
    )
    done = RunProgress(
        state="done", total=10, measured=10, failed=0, remaining=0, this_run=4, rate_px_s=math.nan, elapsed_s=2.0
    )
    assert done.eta_s == 0.0 and done.to_dict()["rate_px_s"] is None
    assert summary_line(done, exit_status="success", reason="every pixel of the plan visited") == (
        "10 of 10 pixels measured, 0 failed, flagged: unknown (no analyser followed); this run 4 pixels in "
        "0:00:02 (2 pixels/s); exit success: every pixel of the plan visited"
    )
    assert duration_text(90061) == "1 d 1:01:01" and duration_text(math.nan) == "--"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeEngine:
    def __init__(self, progress: RunProgress) -> None:
        self._progress = progress

    def progress(self) -> RunProgress:
        return self._progress


def test_the_progress_line_is_rewritten_in_place_on_a_terminal_and_one_line_each_in_a_log() -> None:
    p = RunProgress(
        state="running", total=20, measured=5, failed=0, remaining=15, this_run=5, rate_px_s=5.0, elapsed_s=1.0
    )
    terminal = FakeTerminal()
    reporter = ProgressReporter(terminal, every_s=0.02)
    reporter.follow(FakeEngine(p))  # type: ignore[arg-type]
    time.sleep(0.2)
    reporter.close()
    text = terminal.getvalue()
    assert text.startswith("\rscan: 5 of 20 pixels (25 %), 0 failed, 5 pixels/s, 0:00:03 left, running\x1b[K")
    assert text.endswith("\n") and text.count("\n") == 1
    log = io.StringIO()
    reporter = ProgressReporter(log, every_s=0.02)
    reporter.follow(FakeEngine(p))  # type: ignore[arg-type]
    time.sleep(0.2)
    reporter.close()
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2 and all(line == "scan: " + progress_line(p) for line in lines)
    silent = io.StringIO()
    ProgressReporter(silent, every_s=0).follow(FakeEngine(p))  # type: ignore[arg-type]
    assert silent.getvalue() == ""


def test_status_text_reads_the_reply() -> None:
    reply = {
        "ok": True,
        "state": "paused",
        "pause_reasons": ["temperature"],
        "active_set": 0,
        "remeasure_queued": 2,
        "progress": RunProgress(
            state="paused",
            total=100,
            measured=40,
            failed=1,
            remaining=59,
            this_run=41,
            rate_px_s=2.0,
            elapsed_s=30.0,
            pause_reasons=("temperature",),
        ).to_dict(),
    }
    assert reply_text("status", reply) == (
        "scan: 41 of 100 pixels (41 %), 1 failed, 2 pixels/s, 0:00:30 once resumed left, paused (temperature); "
        "active set 0, 2 re-measures queued"
    )
    assert reply_text("pause", {"ok": True, "state": "paused", "pause_reasons": ["user"]}) == (
        "pause accepted; the scan is paused (user)"
    )


# -- stslive scan ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lab_config(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A run config over a running simulated lab (fixed free control port); yields (TOML path, control endpoint)."""
    lab = MockLab.from_seed(seed=5, ny=NY, nx=NX, speed=1)  # real time: 101 points x 1 ms, a run of ~3 s
    control = f"tcp://127.0.0.1:{free_port()}"
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources,
            nx=NX,
            ny=NY,
            pixel_m=lab.pixel_m,
            n_points=POINTS,
            stream={"control": control, "pub": "tcp://127.0.0.1:0"},
        )
        doc = config.to_dict()
        doc["setpoint_set"][0]["integration_s"] = 1e-3
        path = tmp_path / "run.toml"
        path.write_text(toml_text(doc), encoding="utf-8")
        yield path, control


def test_a_scan_ends_with_a_summary_a_stop_document_and_a_resume_that_says_it_is_done(
    lab_config: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml, _ = lab_config
    run = tmp_path / "run.h5"
    assert main(["scan", "--config", str(toml), "--out", str(run), "--progress", "0", "--wait-subscribers", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"scan {run}: {NX * NY} of {NX * NY} pixels measured, 0 failed, flagged: unknown")
    assert out[-1].endswith("exit success: every pixel of the plan visited")
    with open_archive(run) as reader:
        stop = reader.documents["stop"]
    assert stop["exit_status"] == "success" and stop["reason"] == "every pixel of the plan visited"
    assert stop["progress"]["measured"] == NX * NY and stop["progress"]["remaining"] == 0
    assert stop["counts"]["event"] == NX * NY and stop["segment"] == 0
    assert main(["scan", "--resume", str(run)]) == 0  # nothing to do: says so, connects to nothing
    said = capsys.readouterr().out
    assert said == (
        f"{run}: nothing left to measure: {NX * NY} of {NX * NY} pixels measured, 0 failed "
        "(the run ended: every pixel of the plan visited)\n"
    )


def _drive(control: str, log: list[dict[str, Any]]) -> None:
    """Pause the scan as soon as it runs, ask its status, abort it with a reason."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            reply = send_command(control, "pause", timeout_s=2.0)
        except InstrumentTimeout:
            continue
        if reply["ok"]:
            break
        time.sleep(0.005)
    log.append(send_command(control, "status", timeout_s=5.0))
    log.append(send_command(control, "abort", reason="the tip crashed", timeout_s=5.0))


def test_an_aborted_scan_exits_3_with_its_reason_in_the_summary_and_the_archive(
    lab_config: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml, control = lab_config
    run = tmp_path / "run.h5"
    replies: list[dict[str, Any]] = []
    driver = threading.Thread(target=_drive, args=(control, replies), daemon=True)
    driver.start()
    code = main(["scan", "--config", str(toml), "--out", str(run), "--progress", "0", "--wait-subscribers", "0"])
    driver.join(timeout=30)
    assert code == 3
    status, abort = replies
    assert status["state"] == "paused" and status["pause_reasons"] == ["user"]
    progress = status["progress"]
    assert progress["total"] == NX * NY and progress["measured"] + progress["remaining"] in (NX * NY, NX * NY - 1)
    assert "eta_s" in progress and "rate_px_s" in progress
    assert abort["ok"] and abort["reason"] == "the tip crashed"
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.endswith("exit abort: the tip crashed")
    with open_archive(run) as reader:
        stop = reader.documents["stop"]
    assert stop["exit_status"] == "abort" and stop["reason"] == "the tip crashed"
    assert json.dumps(stop)  # JSON-safe throughout


def test_a_scan_whose_control_port_is_taken_leaves_nothing_that_blocks_the_rerun(
    lab_config: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml, control = lab_config
    run = tmp_path / "run.h5"
    port = int(control.rsplit(":", 1)[1])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        argv = ["scan", "--config", str(toml), "--out", str(run), "--progress", "0", "--wait-subscribers", "0"]
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "control socket" in err and "in use" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]
    assert main(argv) == 0  # the port is free again: the same command runs
