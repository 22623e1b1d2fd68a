"""The simulated Nanonis server: conformance with the official client, the driver through
pyvisa-py, and each injected fault surfacing as its typed error."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from stslive.drivers.errors import (
    ControllerError,
    InstrumentConnectionError,
    InstrumentTimeout,
    SafetyLimitError,
)
from stslive.drivers.nanonis import NanonisController, SafetyLimits
from stslive.drivers.protocols import (
    CURRENT_CHANNEL,
    LOCKIN_X_CHANNEL,
    ScanFrame,
    SpectroscopyConfig,
    SpectroscopyTiming,
    StmController,
)
from stslive.drivers.visa import VisaSettings
from stslive.mocks.faults import FaultPlan
from stslive.mocks.lab import SIGNAL_NAMES, SWEEP_CHANNEL, MockLab
from stslive.mocks.nanonis_server import NanonisServer

nanonis_spm = pytest.importorskip("nanonis_spm")


@pytest.fixture(scope="module")
def film() -> Any:
    from stslive.mocks.film import FilmParams, make_film

    return make_film(FilmParams(ny=6, nx=6, seed=2, n_points=201))


def _server(film: Any, faults: list[dict[str, Any]] | None = None) -> tuple[MockLab, NanonisServer]:
    lab = MockLab(film, speed=0, faults=FaultPlan.from_list(faults or []))
    return lab, NanonisServer(lab).start()


@pytest.fixture
def served(film: Any) -> Iterator[tuple[MockLab, NanonisServer]]:
    lab, server = _server(film)
    yield lab, server
    server.stop()


@pytest.fixture
def official(served: tuple[MockLab, NanonisServer]) -> Iterator[Any]:
    sock = socket.create_connection(served[1].address, timeout=5)
    yield nanonis_spm.Nanonis(sock)
    sock.close()


def _values(reply: tuple[Any, ...]) -> list[Any]:
    error, _raw, values = reply
    assert error == "", error
    return values


def test_official_client_every_command(served: tuple[MockLab, NanonisServer], official: Any) -> None:
    lab, _ = served
    n = official
    _values(n.Bias_Set(-0.02))
    assert _values(n.Bias_Get())[0] == pytest.approx(-0.02)
    _values(n.ZCtrl_SetpntSet(2e-10))
    assert _values(n.ZCtrl_SetpntGet())[0] == pytest.approx(2e-10)
    assert _values(n.Current_Get())[0] == pytest.approx(-2e-10)  # regulated at the set-point
    assert _values(n.ZCtrl_OnOffGet())[0] == 1
    assert np.isfinite(_values(n.ZCtrl_ZPosGet())[0])
    _values(n.Scan_FrameSet(0.0, 0.0, 4e-9, 4e-9, 0.0))
    assert _values(n.Scan_FrameGet()) == pytest.approx([0.0, 0.0, 4e-9, 4e-9, 0.0])
    _values(n.FolMe_XYPosSet(1e-9, -1e-9, 1))
    assert _values(n.FolMe_XYPosGet(0)) == pytest.approx([1e-9, -1e-9])
    lix = SIGNAL_NAMES.index(LOCKIN_X_CHANNEL)
    _values(n.BiasSpectr_ChsSet([0, lix]))
    # (ChsGet: this client reads a count the protocol document does not send; test_nanonis_conformance)
    assert lab.channel_names() == (CURRENT_CHANNEL, LOCKIN_X_CHANNEL)
    _values(n.BiasSpectr_LimitsSet(-0.03, 0.03))
    assert _values(n.BiasSpectr_LimitsGet()) == pytest.approx([-0.03, 0.03])
    _values(n.BiasSpectr_PropsSet(0, 1, 2, 101, 0.0, 2, 2))
    assert (lab.stm.points, lab.stm.backward) == (101, False)
    timing = [0.1, 0.0, 0.05, 10.0, 1e-3, 2e-3, 0.0, 0.2]
    _values(n.BiasSpectr_TimingSet(*timing))
    assert _values(n.BiasSpectr_TimingGet()) == pytest.approx(timing)
    _values(n.BiasSpectr_AdvPropsSet(1, 0, 0, 0))  # Reset Bias on: the bias returns after the sweep
    _values(n.ZCtrl_OnOffSet(0))
    assert lab.stm.feedback_on is False
    start = _values(n.BiasSpectr_Start(1, ""))
    assert start[2] == [SWEEP_CHANNEL, CURRENT_CHANNEL, LOCKIN_X_CHANNEL]
    data = start[5]
    assert data.shape == (3, 101)
    np.testing.assert_allclose(data[0], np.linspace(-0.03, 0.03, 101), atol=1e-7)
    assert np.all(np.diff(data[1][:40]) > -5e-12)  # current rises with bias, up to noise
    vals = _values(n.Signals_ValsGet([1, 3], 0))
    assert [v[0] for v in vals[1]] == pytest.approx([-0.02, 1e-9])
    assert _values(n.Signals_NamesGet())[2] == list(SIGNAL_NAMES)


def test_unknown_command_gets_error_reply_and_connection_stays(official: Any) -> None:
    error, _raw, _ = official.quickSend("Foo.Bar", [], [], [])
    assert "Unknown command" in error
    assert _values(official.Bias_Get())[0] == pytest.approx(-0.010, rel=1e-6)


def test_refused_request_gets_the_reason(official: Any) -> None:
    error, _raw, _ = official.FolMe_XYPosSet(1e-6, 0.0, 1)
    assert "outside the scan frame" in error
    assert _values(official.FolMe_XYPosGet(0)) == [0.0, 0.0]


# -- the real driver through pyvisa-py ----------------------------------------------------------
def _driver(server: NanonisServer, **settings: Any) -> NanonisController:
    return NanonisController(VisaSettings(server.resource, **{"timeout_s": 2.0, **settings}))


def test_driver_full_spectrum_cycle(served: tuple[MockLab, NanonisServer]) -> None:
    lab, server = served
    with _driver(server) as stm:
        assert isinstance(stm, StmController)
        stm.set_bias(-0.01)
        stm.set_setpoint(1e-10)
        x, y = lab.position_of(2, 3)
        stm.move_tip(x, y)
        assert stm.get_tip_position() == pytest.approx((x, y))
        stm.configure_spectroscopy(
            SpectroscopyConfig((CURRENT_CHANNEL, LOCKIN_X_CHANNEL), -0.02, 0.02, 161, SpectroscopyTiming(1e-4, 1e-4))
        )
        assert stm.get_spectroscopy_channels() == (CURRENT_CHANNEL, LOCKIN_X_CHANNEL)
        spectrum = stm.run_spectrum()
        assert spectrum.channels == (SWEEP_CHANNEL, CURRENT_CHANNEL, LOCKIN_X_CHANNEL)
        assert spectrum.data.dtype == np.float32 and spectrum.data.shape == (3, 161)
        # normalised to the set-point at V_set = -10 mV (within the film's current noise)
        i_vset = np.interp(-0.01, spectrum.channel(SWEEP_CHANNEL), spectrum.channel(CURRENT_CHANNEL))
        assert i_vset == pytest.approx(-1e-10, abs=5e-12)
        assert stm.get_feedback() is True  # restored after the held sweep
        assert spectrum.parameters[:2] == pytest.approx([-0.02, 0.02])
        values = stm.read_signals(("X (m)", "Bias (V)"))
        assert values["X (m)"] == pytest.approx(x) and values["Bias (V)"] == pytest.approx(-0.01)


def test_driver_safety_limits_send_nothing(served: tuple[MockLab, NanonisServer]) -> None:
    lab, server = served
    stm = NanonisController(VisaSettings(server.resource, timeout_s=2.0), limits=SafetyLimits(bias_max_V=0.5))
    with stm:
        stm.get_bias()
        before = server.requests
        with pytest.raises(SafetyLimitError, match="safety limits"):
            stm.set_bias(0.75)
        with pytest.raises(SafetyLimitError, match="set-point"):
            stm.set_setpoint(1e-7)
        with pytest.raises(SafetyLimitError, match="sweep end"):
            stm.configure_spectroscopy(SpectroscopyConfig((CURRENT_CHANNEL,), -0.1, 0.9, 11))
        assert server.requests == before
        frame_reads = server.requests
        with pytest.raises(SafetyLimitError, match="outside the scan frame"):
            stm.move_tip(1e-6, 0.0)
        assert server.requests == frame_reads + 1  # only Scan.FrameGet went out
        stm.set_scan_frame(ScanFrame(0.0, 0.0, 4e-6, 4e-6))
        stm.move_tip(1e-6, 0.0)
        assert lab.stm.x_m == pytest.approx(1e-6)


# -- faults -------------------------------------------------------------------------------------
def test_no_reply_is_instrument_timeout_and_next_call_reconnects(film: Any) -> None:
    lab, server = _server(film, [{"kind": "no_reply", "instrument": "nanonis", "command": "Bias.Get", "at_call": 1}])
    try:
        with _driver(server, timeout_s=0.3) as stm:
            t0 = time.perf_counter()
            with pytest.raises(InstrumentTimeout) as info:
                stm.get_bias()
            assert isinstance(info.value, TimeoutError)
            assert time.perf_counter() - t0 < 2.0
            assert stm.get_bias() == pytest.approx(-0.010, rel=1e-6)  # in step again
        assert [f.kind.value for f in lab.faults.fired] == ["no_reply"]
    finally:
        server.stop()


def test_error_reply_is_controller_error_with_the_message(film: Any) -> None:
    fault = {
        "kind": "error_reply",
        "instrument": "nanonis",
        "command": "Bias.Set",
        "at_call": 1,
        "params": {"message": "Bias module locked by the scan", "code": 7},
    }
    lab, server = _server(film, [fault])
    try:
        with _driver(server) as stm:
            with pytest.raises(ControllerError, match="Bias module locked by the scan") as info:
                stm.set_bias(0.02)
            assert info.value.code == 1  # the protocol's error status, whatever code the fault names
            assert lab.stm.bias_V == pytest.approx(-0.010)  # not executed
            stm.set_bias(0.02)
            assert lab.stm.bias_V == pytest.approx(0.02)
    finally:
        server.stop()


def test_connection_drop_during_start_is_connection_error_and_feedback_restored(film: Any) -> None:
    fault = {"kind": "connection_drop", "instrument": "nanonis", "command": "BiasSpectr.Start", "at_call": 1}
    lab, server = _server(film, [fault])
    try:
        with _driver(server, timeout_s=0.5) as stm:
            stm.configure_spectroscopy(SpectroscopyConfig((CURRENT_CHANNEL,), -0.02, 0.02, 21))
            with pytest.raises(InstrumentConnectionError, match="may have run") as info:
                stm.run_spectrum()
            assert isinstance(info.value, ConnectionError)
            assert lab.stm.feedback_on is True  # the driver reconnected and restored it
            assert lab.faults.spectrum == 0  # the dropped Start took no spectrum
            assert stm.run_spectrum().data.shape == (2, 21)
            assert lab.faults.spectrum == 1
    finally:
        server.stop()


def test_connection_drop_on_a_query_is_repaired_transparently(film: Any) -> None:
    fault = {"kind": "connection_drop", "instrument": "nanonis", "command": "Bias.Get", "at_call": 1}
    lab, server = _server(film, [fault])
    try:
        with _driver(server, timeout_s=0.5) as stm:
            assert stm.get_bias() == pytest.approx(-0.010, rel=1e-6)
        assert lab.faults.calls("nanonis", "Bias.Get") == 2
    finally:
        server.stop()


def test_delay_longer_than_timeout_times_out_shorter_passes(film: Any) -> None:
    faults = [
        {"kind": "delay", "instrument": "nanonis", "command": "Current.Get", "at_call": 1, "params": {"delay_s": 0.05}},
        {"kind": "delay", "instrument": "nanonis", "command": "Current.Get", "at_call": 2, "params": {"delay_s": 0.6}},
    ]
    _lab, server = _server(film, faults)
    try:
        with _driver(server, timeout_s=0.3) as stm:
            t0 = time.perf_counter()
            stm.get_current()
            assert time.perf_counter() - t0 >= 0.05
            with pytest.raises(InstrumentTimeout):
                stm.get_current()
            time.sleep(0.4)  # let the late reply land on the dropped connection
            assert stm.get_current() == pytest.approx(-1.5e-10, rel=1e-6)
    finally:
        server.stop()
