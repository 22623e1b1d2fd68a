"""The Nanonis driver's sweep against a simulated controller that behaves like a real one.

The simulated controller leaves the bias where a sweep ended unless Reset Bias is on, knows
its release, selects channels by Signals-Manager slot before R11798, and stops a sweep from a
second connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from stslive.drivers.errors import ControllerError, SweepStopped
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.protocols import SpectroscopyConfig, SpectroscopyTiming
from stslive.drivers.visa import VisaSettings
from stslive.mocks.faults import FaultPlan
from stslive.mocks.lab import SWEEP_CHANNEL, MockLab
from stslive.mocks.nanonis_server import NanonisServer

V_SET = -0.010


@pytest.fixture(scope="module")
def film() -> Any:
    from stslive.mocks.film import FilmParams, make_film

    return make_film(FilmParams(ny=4, nx=4, seed=3, n_points=101))


@pytest.fixture
def lab(film: Any) -> MockLab:
    return MockLab(film, speed=0, faults=FaultPlan())


@pytest.fixture
def server(lab: MockLab) -> Iterator[NanonisServer]:
    srv = NanonisServer(lab).start()
    yield srv
    srv.stop()


def _driver(server: NanonisServer, timeout_s: float = 2.0) -> NanonisController:
    return NanonisController(VisaSettings(server.resource, timeout_s=timeout_s))


def _config(hold: bool = True, channels: tuple[str, ...] = ("Current (A)",), **timing: float) -> SpectroscopyConfig:
    return SpectroscopyConfig(channels, -0.02, 0.03, 101, SpectroscopyTiming(**timing), z_controller_hold=hold)


def test_the_set_point_bias_is_back_before_the_feedback_after_every_sweep(server: NanonisServer, lab: MockLab) -> None:
    assert not lab.stm.reset_bias  # the controller starts with Reset Bias off, as a lab may leave it
    with _driver(server) as stm:
        stm.set_bias(V_SET)
        stm.set_setpoint(150e-12)
        stm.configure_spectroscopy(_config())
        assert lab.stm.reset_bias and lab.stm.z_controller_hold  # configured and read back
        first = stm.run_spectrum()
        assert lab.stm.feedback_on and lab.stm.bias_V == pytest.approx(V_SET)
        assert lab.stm.regulated_bias_V == pytest.approx(V_SET)  # regulated at -10 mV, not at +30 mV
        second = stm.run_spectrum()
    # both sweeps are normalised at the same set-point: I(V_set) = -150 pA
    for spectrum in (first, second):
        bias, current = spectrum.channel(SWEEP_CHANNEL), spectrum.channel("Current (A)")
        assert np.interp(V_SET, bias, current) == pytest.approx(-150e-12, abs=8e-12)


def test_even_with_reset_bias_off_the_driver_restores_the_bias(server: NanonisServer, lab: MockLab) -> None:
    with _driver(server) as stm:
        stm.set_bias(V_SET)
        stm.configure_spectroscopy(_config())
        lab.stm.reset_bias = False  # somebody switched it off on the controller's screen
        stm.run_spectrum()
        assert lab.stm.bias_V == pytest.approx(V_SET) and lab.stm.regulated_bias_V == pytest.approx(V_SET)


def test_feedback_hold_false_reaches_the_module(server: NanonisServer, lab: MockLab) -> None:
    with _driver(server) as stm:
        stm.configure_spectroscopy(_config(hold=False))
        assert lab.stm.z_controller_hold is False
        stm.configure_spectroscopy(_config(hold=True))
        assert lab.stm.z_controller_hold is True


def test_advanced_properties_refused_stop_the_configuration(film: Any) -> None:
    fault = {"kind": "error_reply", "instrument": "nanonis", "command": "BiasSpectr.AdvPropsSet", "at_call": 1}
    lab = MockLab(film, speed=0, faults=FaultPlan.from_list([fault]))
    with NanonisServer(lab) as srv, _driver(srv) as stm:
        with pytest.raises(ControllerError, match="AdvPropsSet"):
            stm.configure_spectroscopy(_config())


def test_timing_read_back_is_what_the_controller_rounded(server: NanonisServer) -> None:
    with _driver(server) as stm:
        stm.configure_spectroscopy(_config(settling_s=70e-6, integration_s=120e-6))
        # 50 us cycles: 70 -> 50 us, 120 -> 100 us; the Start timeout uses 101 x 150 us
        assert stm._sweep_time_s == pytest.approx(101 * 150e-6, rel=1e-5)


# -- releases -------------------------------------------------------------------------------------
def test_release_is_read_at_connect(server: NanonisServer) -> None:
    with _driver(server) as stm:
        release = stm.release()
        assert (release.rt_release, release.uses_slots) == (13632, False)
        assert "R13632" in stm.identity() and "signal index" in stm.identity()


@pytest.mark.parametrize("unknown_command", ["error", "silent"])
def test_older_release_records_the_channels_asked_for(lab: MockLab, unknown_command: str) -> None:
    with NanonisServer(lab, release=10862, unknown_command=unknown_command) as srv, _driver(srv, 0.5) as stm:
        assert stm.release().uses_slots and not stm.release().known
        stm.configure_spectroscopy(_config(channels=("Current (A)", "Z (m)")))
        assert lab.channel_names() == ("Current (A)", "Z (m)")
        assert stm.get_spectroscopy_channels() == ("Current (A)", "Z (m)")
        spectrum = stm.run_spectrum()
        assert spectrum.channels == (SWEEP_CHANNEL, "Current (A)", "Z (m)")
        assert "Signals-Manager slot" in stm.identity()


def test_configured_release_skips_the_probe(lab: MockLab) -> None:
    with NanonisServer(lab, release=10862, unknown_command="silent") as srv:
        stm = NanonisController(VisaSettings(srv.resource, timeout_s=2.0), release=10862)
        with stm:
            t0 = time.perf_counter()
            stm.configure_spectroscopy(_config(channels=("Z (m)",)))
            assert time.perf_counter() - t0 < 1.0 and srv.unknown == []
            assert lab.channel_names() == ("Z (m)",)


# -- stopping ---------------------------------------------------------------------------------------
def test_stop_from_another_thread_ends_the_sweep_with_the_tip_in_feedback_at_the_set_point(film: Any) -> None:
    lab = MockLab(film, speed=1.0, faults=FaultPlan())
    with NanonisServer(lab) as srv, _driver(srv, timeout_s=2.0) as stm:
        stm.set_bias(V_SET)
        stm.configure_spectroscopy(_config(settling_s=10e-3, integration_s=10e-3))  # 2 s sweep
        outcome: list[BaseException] = []

        def sweep() -> None:
            try:
                stm.run_spectrum()
            except BaseException as exc:  # noqa: BLE001  examined below
                outcome.append(exc)

        thread = threading.Thread(target=sweep)
        t0 = time.perf_counter()
        thread.start()
        while not lab.stm.sweeping:
            time.sleep(0.005)
        time.sleep(0.2)
        assert stm.stop_sweep(timeout_s=1.0)
        thread.join(5)
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.2, f"the stop waited {elapsed:.2f} s (a whole sweep is 2 s)"
        assert len(outcome) == 1 and isinstance(outcome[0], SweepStopped)
        assert lab.stm.feedback_on and lab.stm.bias_V == pytest.approx(V_SET)
        assert lab.stm.regulated_bias_V == pytest.approx(V_SET)
        lab.speed = 0.0
        assert stm.run_spectrum().data.shape == (2, 101)  # the next sweep runs normally


def test_a_stop_before_the_sweep_prevents_it(server: NanonisServer, lab: MockLab) -> None:
    with _driver(server) as stm:
        stm.set_bias(V_SET)
        stm.configure_spectroscopy(_config())
        assert stm.stop_sweep()
        before = lab.faults.spectrum
        with pytest.raises(SweepStopped, match="before the sweep"):
            stm.run_spectrum()
        assert lab.faults.spectrum == before and lab.stm.feedback_on
