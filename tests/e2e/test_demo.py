"""``stslive demo`` end to end, as a user runs it: a subprocess, its files, its exit status.

The demo starts the mock lab, the scan and the analyser as processes of their own; these tests
check the headless run's outputs and that a failing or killed part stops everything, names the
part and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stslive.mocks.film import FilmParams

DEMO_TIMEOUT_S = 300  # a 16x12 run takes ~25 s on the 2-core machine under load


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.Popen(
        [sys.executable, "-m", "stslive.acquisition.cli", "demo", "--headless", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _descendants_after(proc: subprocess.Popen[str], out: Path) -> list[psutil.Process]:
    """Processes still alive that the demo started (matched by their --out folder in argv)."""
    alive = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(out) in cmd and p.pid != proc.pid and "stslive.acquisition.cli" in cmd:
            alive.append(p)
    return alive


def _no_orphans(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 15
    while (alive := _descendants_after(proc, out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in alive:  # do not leave them to the next test, but fail
        p.kill()
    assert not alive, f"orphan processes: {[p.info['cmdline'] for p in alive]}"


@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
def test_headless_demo_leaves_sane_results(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _demo("--grid", "16x12", "--out", str(out), "--seed", "3")
    stdout, stderr = proc.communicate(timeout=DEMO_TIMEOUT_S)
    assert proc.returncode == 0, stderr[-2000:]
    for name in ("run.h5", "run.toml", "run.analysis.h5", "maps.h5", "report.json", "maps.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["pixels_measured"] == report["pixels_in_grid"] == 16 * 12
    assert report["pixels_valid"] / report["pixels_measured"] >= 0.9
    film_meV = FilmParams(ny=12, nx=16, seed=3).delta_mean_eV * 1e3
    assert report["delta_mean_meV"] == pytest.approx(film_meV, rel=0.15)
    assert 0 < report["alpha_mean"] < 1
    png = (out / "screen.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert "192 of 192 pixels measured" in stdout
    assert "live analyser vs offline analysis" in stdout and "validity differs on 0" in stdout
    # one code path with the same options: live equals offline (a different noise range in the
    # offline CLI's defaults once moved Delta by up to 0.004 meV through the channels' weights)
    agree = re.search(r"max \|dDelta\| ([0-9.e+-]+) meV, max \|dalpha\| ([0-9.e+-]+)", stdout)
    assert agree is not None, stdout
    assert float(agree[1]) <= 1e-4 and float(agree[2]) <= 1e-5, agree[0]
    # the demo checks itself against the film's definition truth (accuracy goals: 0.03 meV, 0.003)
    truth = re.search(r"rms error Delta ([0-9.e+-]+) meV, alpha ([0-9.e+-]+) over (\d+) valid", stdout)
    assert truth is not None, stdout
    assert float(truth[1]) <= 0.03 and float(truth[2]) <= 0.003 and int(truth[3]) >= 0.9 * 192
    _no_orphans(proc, out)


@pytest.mark.timeout(120)
def test_failing_part_is_named_and_everything_stops(tmp_path: Path) -> None:
    faults = tmp_path / "faults.toml"
    faults.write_text('[[fault]]\nkind = "no_such_fault"\ninstrument = "nanonis"\n')
    out = tmp_path / "demo"
    proc = _demo("--grid", "8x6", "--out", str(out), "--faults", str(faults))
    _, stderr = proc.communicate(timeout=100)
    assert proc.returncode == 1
    assert "stslive demo: error: mock-lab: exited with status 1" in stderr
    assert "no_such_fault" in stderr  # the child's own message is quoted
    _no_orphans(proc, out)


@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
@pytest.mark.parametrize("delay_s", [0.0, 1.0], ids=["while-held", "measuring"])
def test_scan_killed_mid_run_stops_the_others(tmp_path: Path, delay_s: float) -> None:
    # delay 0: killed while the demo holds the scan paused for the analyser to attach, so the demo's
    # own control request meets a dead socket; the report must still name the scan's death, not the timeout
    out = tmp_path / "demo"
    proc = _demo("--grid", "40x30", "--out", str(out), "--speed", "200")  # ~8 ms sweeps: a run of >= 10 s
    scan = None
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while scan is None and time.monotonic() < deadline and proc.poll() is None:
        # wait until the analyser process is up too (the scan is held, or measuring soon after)
        parts = {}
        for p in psutil.Process(proc.pid).children():
            try:
                parts[" ".join(p.cmdline()).split("stslive.acquisition.cli ")[-1].split()[0]] = p
            except (psutil.NoSuchProcess, IndexError):  # a child that just ended, or not ours
                continue
        if "analyser" in parts and "scan" in parts:
            scan = parts["scan"]
        time.sleep(0.2)
    assert scan is not None, proc.communicate()[1][-2000:]
    time.sleep(delay_s)
    scan.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"stslive demo: error: scan: exited with status {-signal.SIGKILL}" in stderr
    _no_orphans(proc, out)


def test_control_silence_from_a_dead_scan_names_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's control requests to a scan that died report the scan's exit, not the socket's silence."""
    import zmq

    from stslive.acquisition.jobs import demo as demo_job
    from stslive.acquisition.jobs.supervisor import Supervisor
    from stslive.drivers.errors import InstrumentTimeout, ServiceError

    monkeypatch.setattr(demo_job, "CONTROL_TIMEOUT_S", 0.3)
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)  # accepts the request, never answers: a scan that stopped mid-reply
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        with Supervisor(tmp_path) as sup:
            sup.start("scan", ["scan", "--config", str(tmp_path / "missing.toml")], must_succeed=False)
            deadline = time.monotonic() + 60
            while sup.children["scan"].returncode is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sup.children["scan"].returncode not in (None, 0)
            with pytest.raises(ServiceError, match="scan: exited with status"):
                demo_job._command(endpoint, "resume", sup)
            with pytest.raises(ServiceError, match="scan: exited with status"):
                demo_job._hold_scan(endpoint, sup)
        with Supervisor(tmp_path / "alive") as sup:  # nobody died: the timeout itself is the report
            with pytest.raises(InstrumentTimeout, match="no reply"):
                demo_job._command(endpoint, "resume", sup)
    finally:
        silent.close()
