"""The shared mock lab: geometry, timing, physics faults, all servers together, the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from stslive.drivers.protocols import CURRENT_CHANNEL, LOCKIN_X_CHANNEL, SpectroscopyTiming
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.lab import SIGNAL_NAMES, MockLab
from stslive.mocks.lab_servers import LabServers


@pytest.fixture(scope="module")
def film() -> Any:
    from stslive.mocks.film import FilmParams, make_film

    return make_film(FilmParams(ny=5, nx=7, seed=4, n_points=201))


def _lab(film: Any, faults: list[dict[str, Any]] | None = None, **kw: Any) -> MockLab:
    lab = MockLab(film, faults=FaultPlan.from_list(faults or []), **{"speed": 0.0, **kw})
    lab.stm.reset_bias = True  # consecutive sweeps here start from the set-point bias
    return lab


def test_without_reset_bias_the_tip_regulates_at_the_sweep_end(film: Any) -> None:
    lab = MockLab(film, speed=0.0)
    assert not lab.stm.reset_bias
    lab.run_sweep()
    assert lab.stm.bias_V == pytest.approx(lab.stm.end_V) and lab.stm.regulated_bias_V == pytest.approx(lab.stm.end_V)
    lab.stm.reset_bias, lab.stm.bias_V = True, -0.01
    lab.run_sweep()
    assert lab.stm.bias_V == pytest.approx(-0.01)


def _sweep_current(lab: MockLab) -> tuple[np.ndarray, np.ndarray]:
    sweep = lab.run_sweep()
    return sweep.data[0], sweep.data[sweep.channels.index(CURRENT_CHANNEL)]


def test_pixel_geometry_round_trip_and_clipping(film: Any) -> None:
    lab = _lab(film)
    for iy, ix in [(0, 0), (4, 6), (2, 3)]:
        assert lab.pixel_of(*lab.position_of(iy, ix)) == (iy, ix)
    assert lab.pixel_of(1.0, -1.0) == (0, 6)
    frame = lab.stm.frame
    assert frame.contains(*lab.position_of(0, 0)) and frame.contains(*lab.position_of(4, 6))


def test_sweep_time_scales_with_speed(film: Any) -> None:
    slept: list[float] = []
    lab = _lab(film, speed=100.0, sleep=slept.append)
    lab.stm.timing = SpectroscopyTiming(settling_s=1e-3, integration_s=2e-3, initial_settling_s=0.1)
    lab.stm.points = 201
    sweep = lab.run_sweep()
    assert slept == [pytest.approx((0.1 + 201 * 3e-3) / 100)]
    assert sweep.duration_s == slept[0]
    assert _lab(film, speed=float("inf")).sweep_duration_s() == 0.0


def test_spectrum_is_normalised_at_the_regulated_setpoint(film: Any) -> None:
    lab = _lab(film)
    lab.set_bias(-0.02)
    lab.set_setpoint(2e-10)
    lab.set_feedback(False)
    lab.set_bias(0.0)  # frozen tip: the normalisation stays at (-20 mV, 200 pA)
    bias, current = _sweep_current(lab)
    assert np.interp(-0.02, bias, current) == pytest.approx(-2e-10, abs=3e-12)


def test_feedback_fail_normalises_to_a_wrong_current(film: Any) -> None:
    lab = _lab(film, [{"kind": "feedback_fail", "from_spectrum": 1, "to_spectrum": 2, "params": {"factor": 0.5}}])
    v_set = lab.stm.regulated_bias_V
    reached = []
    for _ in range(3):
        bias, current = _sweep_current(lab)
        reached.append(np.interp(v_set, bias, current))
    i_set = -lab.stm.setpoint_A
    assert reached[0] == pytest.approx(i_set, rel=0.05)
    assert reached[1] == pytest.approx(0.5 * i_set, rel=0.05)
    assert reached[2] == pytest.approx(i_set, rel=0.05)
    assert lab.faults.fired_spectra(FaultKind.FEEDBACK_FAIL) == {1}


def test_tip_change_scales_the_spectrum(film: Any) -> None:
    lab = _lab(film, [{"kind": "tip_change", "from_spectrum": 1, "params": {"factor": 0.6}}])
    _, healthy = _sweep_current(lab)
    _, changed = _sweep_current(lab)
    edge = np.r_[0:20, -20:0]  # large |V|: signal far above the noise
    assert np.mean(changed[edge] / healthy[edge]) == pytest.approx(0.6, rel=0.05)
    assert lab.faults.fired_spectra(FaultKind.TIP_CHANGE) == {1}


def test_temperature_excursion_for_its_spectra(film: Any) -> None:
    lab = _lab(
        film, [{"kind": "temperature_excursion", "from_spectrum": 2, "to_spectrum": 3, "params": {"kelvin": 1.5}}]
    )
    base = lab.temperature_K(spectrum=0)
    assert lab.temperature_K(spectrum=2) == pytest.approx(base + 1.5)
    assert lab.temperature_K(spectrum=3) == pytest.approx(base)


def test_lockin_channel_and_signals(film: Any) -> None:
    lab = _lab(film)
    lab.set_channels([SIGNAL_NAMES.index(LOCKIN_X_CHANNEL), 0])
    sweep = lab.run_sweep()
    assert sweep.channels[1:] == (LOCKIN_X_CHANNEL, CURRENT_CHANNEL)
    assert np.mean(sweep.data[1][-20:]) > 0  # dI/dV x V_mod is positive outside the gap
    # the external lock-in now sees the last point of the sweep through the preamplifier
    assert lab.lockin.snapshot().x_v > 0
    values = lab.signal_values([SIGNAL_NAMES.index("Bias (V)")])
    assert values[0] == pytest.approx(lab.stm.bias_V)


def test_start_servers_runs_all_three(film: Any) -> None:
    lab = _lab(film)
    with LabServers.start(lab) as servers:
        resources = servers.resources
        assert set(resources) == {"nanonis", "sr830", "ls372"}
        for name, server in (("sr830", servers.sr830), ("ls372", servers.thermometer)):
            with socket.create_connection(server.address, timeout=5) as s:
                s.sendall(b"*IDN?\n")
                reply = s.recv(200).decode()
            assert ("SR830" in reply) if name == "sr830" else ("MODEL372" in reply)
    with pytest.raises(RuntimeError):
        _ = servers.nanonis.address  # stopped


def test_mock_lab_cli_prints_resources_and_stops_on_sigterm() -> None:
    cmd = [
        sys.executable,
        "-m",
        "stslive.acquisition.cli",
        "mock-lab",
        "--nanonis-port",
        "0",
        "--sr830-port",
        "0",
        "--thermometer-port",
        "0",
        "--grid",
        "4x3",
        "--speed",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        names = [line.split()[0] for line in lines]
        assert names == ["nanonis", "sr830", "ls372"], lines
        assert all(line.split()[1].startswith("TCPIP::127.0.0.1::") for line in lines)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "mock-lab stopped" in out
