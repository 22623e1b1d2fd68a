"""SIGKILL a real ``stslive scan`` at seeded random moments, resume, and lose or repeat nothing.

The simulated lab runs in this process (TCP servers on free ports); each scan is a subprocess
started with ``--config`` the first time and ``--resume`` after every kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.plans import progressive_order
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 8, 5, 101
STARTUP_KILLS = 4
pytestmark = pytest.mark.timeout(120)

CONFIG = """
[run]
channels = ["Current (A)"]
[instruments.nanonis]
resource = "{nanonis}"
[instruments.thermometer]
resource = "{ls372}"
[grid]
width_m = {width}
height_m = {height}
nx = {nx}
ny = {ny}
order = "{order}"
[[setpoint_set]]
id = 0
name = "kill"
bias_setpoint_V = -0.010
current_setpoint_A = 150e-12
sweep_start_V = -0.04
sweep_end_V = 0.04
n_points = {points}
integration_s = 6e-4
[stream]
pub = "tcp://127.0.0.1:0"
control = ""
"""


def scan(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stslive.acquisition.cli", "scan", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# ``stslive scan`` with a marker line on stdout just before the archive is re-opened, so a kill
# can be timed into the few milliseconds of the resume start-up.
RESUME_MARKED = """
import sys
from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.cli import main
real = ArchiveWriter.open_for_resume.__func__
def marked(cls, *args, **kwargs):
    print("opening", flush=True)
    return real(cls, *args, **kwargs)
ArchiveWriter.open_for_resume = classmethod(marked)
sys.exit(main(["scan", "--resume", sys.argv[1]]))
"""


def kill_during_resume_start_up(path: Path, rng: random.Random) -> None:
    """Start a resume and SIGKILL it 0-12 ms after it starts re-opening the archive."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RESUME_MARKED, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "opening"
    time.sleep(rng.uniform(0.0, 0.012))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for_sweeps(proc: subprocess.Popen, lab: MockLab, target: int, *, timeout_s: float = 60.0) -> bool:
    """Wait until the lab has swept ``target`` spectra; False if the scan exited first."""
    deadline = time.monotonic() + timeout_s
    while lab.faults.spectrum < target:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"the scan made no progress in {timeout_s} s"
        time.sleep(0.002)
    return True


def test_kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    lab = MockLab.from_seed(seed=5, ny=NY, nx=NX, speed=1.0)  # 60 ms sweeps: ~2.4 s of scanning
    path = tmp_path / "run.h5"
    with LabServers.start(lab, sr830_port=None) as servers:
        res = servers.resources
        cfg = tmp_path / "run.toml"
        cfg.write_text(
            CONFIG.format(
                nanonis=res["nanonis"],
                ls372=res["ls372"],
                width=NX * lab.pixel_m,
                height=NY * lab.pixel_m,
                nx=NX,
                ny=NY,
                points=POINTS,
                order="serpentine",
            )
        )
        kills, startup_kills, measured_at_kill = 0, 0, []

        def kill(proc: subprocess.Popen) -> None:
            nonlocal kills
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            if path.exists():
                with open_archive(path, swmr=True) as reader:  # opens after every kill
                    measured_at_kill.append(int(reader.measured.sum()))

        def restart() -> subprocess.Popen:
            # a kill may land before the archive exists (it is created under a temporary name)
            return (
                scan("--resume", str(path))
                if path.exists()
                else scan("--config", str(cfg), "--out", str(path), "--overwrite")
            )

        proc = scan("--config", str(cfg), "--out", str(path))
        time.sleep(rng.uniform(0.0, 0.5))  # first kill: anywhere in start-up or archive creation
        if proc.poll() is None:
            kill(proc)
            proc = restart()
        while kills < 6:
            # Later kills are placed by the lab's sweep counter, not by wall time, so they land
            # mid-scan however slowly a loaded machine starts the process.
            if not wait_for_sweeps(proc, lab, lab.faults.spectrum + rng.randint(2, 6)):
                break  # the scan finished first
            time.sleep(rng.uniform(0.0, 0.06))  # anywhere within a sweep or the writes after it
            kill(proc)
            if kills == 2 and path.exists():
                for _ in range(STARTUP_KILLS):  # kills inside the resume start-up (regression)
                    kill_during_resume_start_up(path, rng)
                    startup_kills += 1
                    with open_archive(path, swmr=True) as reader:
                        measured_at_kill.append(int(reader.measured.sum()))
            proc = restart()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode() if proc.stderr else ""
        sweeps = lab.faults.spectrum
    assert startup_kills == STARTUP_KILLS
    print(
        f"kills {kills} (+{startup_kills} in resume start-up), measured at each kill {measured_at_kill}, "
        f"sweeps {sweeps}"
    )
    assert kills >= 3, "the seeded kills never hit a running scan"
    assert measured_at_kill == sorted(measured_at_kill)
    assert any(0 < m < NX * NY for m in measured_at_kill), f"no kill landed mid-scan: {measured_at_kill}"
    with open_archive(path) as reader:
        assert reader.measured.all() and not reader.failed.any()
        data = reader.read_pixels()
        meta = reader.pixel_meta
        resumes = [r for r in reader.log if r["event"] == "resume"]
        order = reader.geometry.visit_order()
    # every measured pixel is complete
    assert np.isfinite(data).all()
    # nothing measured twice: pixel start times increase along the visiting order, and the lab
    # swept at most one extra spectrum per kill (the one in flight)
    t = meta["t_start"][order[:, 0], order[:, 1]]
    assert np.all(np.diff(t) > 0)
    assert NX * NY <= sweeps <= NX * NY + kills + STARTUP_KILLS
    assert len(resumes) >= 1
    # the data are those of the film at each pixel (noise off, 8 sigma)
    truth = lab.film.spectra(*np.mgrid[:NY, :NX], bias_V=np.linspace(-0.04, 0.04, POINTS), noise=False)
    assert np.abs(data[:, :, 1] - truth.current_A).max() < 8 * lab.film.params.current_noise_A


def test_sigterm_stops_after_the_pixel_in_progress_with_exit_status_abort(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=8, ny=NY, nx=NX, speed=1.0)
    path = tmp_path / "run.h5"
    with LabServers.start(lab, sr830_port=None) as servers:
        res = servers.resources
        cfg = tmp_path / "run.toml"
        cfg.write_text(
            CONFIG.format(
                nanonis=res["nanonis"],
                ls372=res["ls372"],
                width=NX * lab.pixel_m,
                height=NY * lab.pixel_m,
                nx=NX,
                ny=NY,
                points=POINTS,
                order="serpentine",
            )
        )
        proc = scan("--config", str(cfg), "--out", str(path))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until a few pixels are in
            if path.exists():
                with open_archive(path, swmr=True) as reader:
                    if reader.measured.sum() >= 3:
                        break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 3, proc.stderr.read().decode() if proc.stderr else ""
    with open_archive(path) as reader:
        n = int(reader.measured.sum())
        stop = [r for r in reader.log if r["event"] == "stop"]
    assert 3 <= n < NX * NY
    assert stop and stop[-1]["exit_status"] == "abort" and stop[-1]["measured"] == n


def test_kill_9_in_progressive_order_then_resume_measures_every_pixel_once(tmp_path: Path) -> None:
    rng = random.Random(20261205)
    lab = MockLab.from_seed(seed=6, ny=NY, nx=NX, speed=1.0)
    path = tmp_path / "run.h5"
    with LabServers.start(lab, sr830_port=None) as servers:
        res = servers.resources
        cfg = tmp_path / "run.toml"
        geometry = {"width": NX * lab.pixel_m, "height": NY * lab.pixel_m, "nx": NX, "ny": NY}
        cfg.write_text(
            CONFIG.format(nanonis=res["nanonis"], ls372=res["ls372"], points=POINTS, order="progressive", **geometry)
        )
        proc = scan("--config", str(cfg), "--out", str(path))
        kills = 0
        while kills < 3 and wait_for_sweeps(proc, lab, lab.faults.spectrum + rng.randint(3, 8)):
            time.sleep(rng.uniform(0.0, 0.06))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = scan("--resume", str(path))
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode() if proc.stderr else ""
        sweeps = lab.faults.spectrum
    assert kills == 3
    with open_archive(path) as reader:
        assert reader.geometry.order == "progressive"
        assert reader.measured.all() and not reader.failed.any()
        assert not [r for r in reader.log if r["event"] == "pixel_replaced"]  # nothing measured twice
        order = reader.geometry.visit_order()
        t_start = reader.pixel_meta["t_start"]
    cells = progressive_order(NX, NY)
    assert np.array_equal(order, cells)
    # each pixel once, in the progressive order across the resumes. A kill costs at most two sweeps:
    # the one in flight and the pixel swept just before it, which is written while the next one sweeps
    # (README "Known limits"); under load the kill lands in that window now and then (44 of 40 seen)
    assert np.all(np.diff(t_start[cells[:, 0], cells[:, 1]]) > 0)
    assert NX * NY <= sweeps <= NX * NY + 2 * kills
