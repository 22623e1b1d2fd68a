"""The real SR830 driver against the simulated SR830 through pyvisa-py, with injected faults."""

from __future__ import annotations

import socket
import time

import pytest

from stslive.drivers.errors import (
    ControllerError,
    InstrumentConnectionError,
    InstrumentTimeout,
    LockInOverload,
)
from stslive.drivers.sr830 import SrsLockIn, open_lockin
from stslive.drivers.visa import VisaSettings
from stslive.mocks.faults import FaultPlan
from stslive.mocks.sr830_server import LockInState, SR830Server

TIMEOUT_S = 0.5


def connect(server: SR830Server, **kwargs) -> SrsLockIn:
    return open_lockin(
        VisaSettings(server.resource, timeout_s=TIMEOUT_S, backend="@py", reconnect_delay_s=0.01), **kwargs
    )


def plan(*faults: dict) -> FaultPlan:
    return FaultPlan.from_list(list(faults))


def test_settings_persist_in_the_shared_state():
    state = LockInState()
    with SR830Server(state) as server, connect(server, model="SR830") as li:
        assert server.resource.startswith("TCPIP::127.0.0.1::") and server.address[1] > 0
        li.set_frequency(973.0)
        li.set_amplitude(0.5)
        li.set_time_constant(30e-3)
        li.set_sensitivity(20e-6)
        snap = state.snapshot()
        assert (snap.frequency_hz, snap.amplitude_v, snap.time_constant_s, snap.sensitivity_v) == (
            973.0,
            0.5,
            30e-3,
            20e-6,
        )
        assert snap.modulation_at_bias_v_rms == pytest.approx(0.5e-3)
        assert li.settings()["time_constant"] == 30e-3
        state.set_signal(3e-6, -4e-6)
        reading = li.read()
        assert reading.x == pytest.approx(3e-6) and reading.r == pytest.approx(5e-6)
        assert reading.theta_deg == pytest.approx(-53.130102, rel=1e-5)


def test_sr860_model_speaks_scal_and_zero_based_snap():
    state = LockInState("SR860")
    with SR830Server(state) as server, connect(server) as li:
        assert li.model.name == "SR860"
        li.set_sensitivity(1e-6)
        li.set_time_constant(1e-6)
        assert state.snapshot().sensitivity_v == 1e-6 and li.get_time_constant() == 1e-6
        state.set_signal(1e-7, 0.0)
        assert li.read().x == pytest.approx(1e-7)


def test_wrong_model_is_refused_and_named():
    with SR830Server(LockInState("SR860")) as server:
        with pytest.raises(ControllerError, match="is an SR860, not the configured SR830"):
            connect(server, model="SR830")


def test_unknown_command_sets_command_error_bit():
    with SR830Server() as server, connect(server) as li:
        li.session.write("BOGUS 1")
        assert li.session.query("*ESR?") == "32"


def test_no_reply_raises_instrument_timeout_and_recovers():
    faults = plan({"kind": "no_reply", "instrument": "sr830", "command": "FREQ", "at_call": 1})
    with SR830Server(faults=faults) as server, connect(server) as li:
        with pytest.raises(InstrumentTimeout) as info:
            li.get_frequency()
        assert isinstance(info.value, TimeoutError)
        assert li.get_frequency() == 1000.0  # reopened: no stale reply in the way


def test_delay_is_waited_for():
    faults = plan({"kind": "delay", "instrument": "sr830", "command": "SLVL", "at_call": 1, "params": {"delay_s": 0.2}})
    with SR830Server(faults=faults) as server, connect(server) as li:
        t0 = time.perf_counter()
        assert li.get_amplitude() == 1.0
        assert time.perf_counter() - t0 >= 0.2


def test_connection_drop_is_repaired_by_one_reconnect():
    faults = plan({"kind": "connection_drop", "instrument": "sr830", "command": "OFLT", "at_call": 1})
    with SR830Server(faults=faults) as server, connect(server) as li:
        assert li.get_time_constant() == 0.1
        assert [f.kind.value for f in faults.fired] == ["connection_drop"]
        assert faults.calls("sr830", "OFLT") == 2  # the query was repeated on the new connection


def test_repeated_drops_raise_connection_error():
    faults = plan(
        *({"kind": "connection_drop", "instrument": "sr830", "command": "OFLT", "at_call": n} for n in (1, 2))
    )
    with SR830Server(faults=faults) as server, connect(server) as li:
        with pytest.raises(InstrumentConnectionError) as info:
            li.get_time_constant()
        assert isinstance(info.value, ConnectionError)


def test_error_reply_on_a_set_raises_controller_error():
    faults = plan({"kind": "error_reply", "instrument": "sr830", "command": "FREQ", "at_call": 1})
    state = LockInState()
    with SR830Server(state, faults=faults) as server, connect(server) as li:
        with pytest.raises(ControllerError, match="execution error"):
            li.set_frequency(500.0)
        assert state.snapshot().frequency_hz == 1000.0  # the refused command did not run


def test_lockin_overload_fault_sets_status_bits_while_active():
    faults = plan({"kind": "lockin_overload", "from_spectrum": 1, "to_spectrum": 2})
    with SR830Server(faults=faults) as server, connect(server) as li:
        assert not li.status().overloaded
        faults.end_spectrum()  # spectrum 1 is being prepared: inside the window
        with pytest.raises(LockInOverload, match="input"):
            li.check()
        assert li.status().input_overload  # still active
        faults.end_spectrum()
        assert not li.status().overloaded
        assert faults.fired_spectra("lockin_overload") == {1}


def test_transient_overload_latches_until_read_on_the_sr830():
    state = LockInState()
    with SR830Server(state) as server, connect(server) as li:
        state.set_overload(True)
        state.set_overload(False)
        assert li.status().input_overload  # latched while nobody was looking
        assert not li.status().overloaded  # reading cleared it


def test_signal_above_full_scale_is_an_output_overload():
    state = LockInState(sensitivity_v=1e-6)
    with SR830Server(state) as server, connect(server) as li:
        state.set_signal(2e-6, 0.0)
        status = li.status()
        assert status.output_overload and not status.input_overload


def test_server_stop_closes_clients_and_port_is_free():
    server = SR830Server().start()
    li = connect(server)
    host, port = server.address
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(InstrumentConnectionError):
        li.get_frequency()
    li.close()
    li.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def _raw_exchange(server: SR830Server, line: str, *, lines: int) -> list[str]:
    """Send one command line on a plain socket and read ``lines`` reply lines."""
    with socket.create_connection(server.address, timeout=2.0) as sock:
        sock.sendall(line.encode("ascii") + b"\n")
        buffer = b""
        while buffer.count(b"\n") < lines:
            chunk = sock.recv(4096)
            assert chunk, f"server closed after {buffer!r}"
            buffer += chunk
        sock.settimeout(0.05)  # nothing more may follow
        with pytest.raises(TimeoutError):
            sock.recv(4096)
    return buffer.decode("ascii").splitlines()


def test_compound_query_replies_follow_each_manual():
    # SR830 manual p. 5-2: each answer on its own line; SR860 manual ch. 4: one ';'-joined line.
    state = LockInState()
    state.set_overload(True)
    with SR830Server(state) as server:
        assert _raw_exchange(server, "LIAS?;ERRS?;*ESR?", lines=3) == ["1", "0", "0"]
        assert _raw_exchange(server, "FOO?;*ESR?", lines=1) == ["32"]  # refused query: no line, ESR bit 5
    with SR830Server(LockInState("SR860", overload=True)) as server:
        assert _raw_exchange(server, "CUROVLDSTAT?;*ESR?", lines=1) == ["16;0"]


@pytest.mark.parametrize("model, bits", [("SR830", "input_overload"), ("SR860", "input_overload")])
def test_driver_status_is_one_compound_query_through_pyvisa(model, bits):
    state = LockInState(model)
    with SR830Server(state) as server, connect(server, model=model) as li:
        assert li.session.separate_replies is (model == "SR830")
        assert not li.status().overloaded
        state.set_overload(True)
        assert getattr(li.status(), bits)
        state.set_overload(False)
        li.session.write("FOO")  # a refused command shows in *ESR? of the next status
        assert "command error" in " ".join(li.status().errors)
        li.set_time_constant(3e-3)  # the stream is still in step: a single query after compound ones
        assert li.get_time_constant() == 3e-3
