"""The real LakeShore 372 driver against the simulated one through pyvisa-py."""

from __future__ import annotations

import pytest

from stslive.drivers.errors import ControllerError, InstrumentTimeout
from stslive.drivers.lakeshore import LakeShore372, open_thermometer
from stslive.drivers.visa import VisaSettings
from stslive.mocks.faults import FaultPlan
from stslive.mocks.ls372_server import LS372Server, ThermometerState
from stslive.mocks.sr830_server import SR830Server


def connect(server: LS372Server, channel="A") -> LakeShore372:
    return open_thermometer(VisaSettings(server.resource, timeout_s=0.5, backend="@py"), channel=channel)


def test_temperature_scanner_and_resistance():
    state = ThermometerState(base_k=0.3, channel_offsets_k={"2": 0.05})
    with LS372Server(state) as server, connect(server, channel=2) as t:
        assert t.identity().startswith("LSCI,MODEL372,")
        assert t.temperature() == pytest.approx(0.35)
        assert t.resistance() == pytest.approx(state.resistance("2"))
        t.set_scanner_channel(2)
        assert t.scanner_channel() == (2, False)
        assert state.snapshot().scanner_channel == 2
        state.update(excursion_k=0.1)
        assert t.temperature() == pytest.approx(0.45)


def test_temperature_excursion_fault_follows_the_spectrum_window():
    faults = FaultPlan.from_list(
        [{"kind": "temperature_excursion", "from_spectrum": 1, "to_spectrum": 2, "params": {"kelvin": 0.5}}]
    )
    with LS372Server(faults=faults) as server, connect(server) as t:
        assert t.temperature() == pytest.approx(0.3)
        faults.end_spectrum()
        assert t.temperature() == pytest.approx(0.8)
        faults.end_spectrum()
        assert t.temperature() == pytest.approx(0.3)
        assert faults.fired_spectra("temperature_excursion") == {1}


def test_no_reply_is_a_timeout():
    faults = FaultPlan.from_list([{"kind": "no_reply", "instrument": "ls372", "command": "KRDG", "at_call": 1}])
    with LS372Server(faults=faults) as server, connect(server) as t:
        with pytest.raises(InstrumentTimeout):
            t.temperature()
        assert t.temperature() == pytest.approx(0.3)


def test_another_instrument_at_the_address_is_named():
    with SR830Server() as server:
        with pytest.raises(ControllerError, match="not a LakeShore 372"):
            open_thermometer(
                VisaSettings(server.resource, timeout_s=0.5, read_termination="\n", write_termination="\n"), channel="A"
            )


def test_only_the_last_query_of_a_line_is_answered():
    # Lake Shore "Message Strings": the instrument responds only to the last query it receives.
    import socket

    with LS372Server(ThermometerState(base_k=0.25)) as server:
        with socket.create_connection(server.address, timeout=2.0) as sock:
            sock.sendall(b"RDGST? A;KRDG? A\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(4096)
            assert reply == b"+2.500000E-01\r\n"
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(4096)
