"""The simulated SR830/SR860 reject what the manuals say the real ones reject, and the driver copes.

Raw lines on a socket (no driver) check the simulation against the manuals; the driver through
pyvisa-py checks what a lab on RS232 or GPIB needs (termination, OUTX).
"""

from __future__ import annotations

import socket

import pytest

from stslive.drivers.errors import InstrumentTimeout
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.visa import VisaSettings
from stslive.mocks.sr830_server import LockInState, SR830Server


def _talk(server: SR830Server, *lines: str, end: bytes = b"\n", wait_s: float = 0.2) -> bytes:
    """Send lines, return everything received within ``wait_s`` after the last one."""
    with socket.create_connection(server.address, timeout=2.0) as sock:
        for line in lines:
            sock.sendall(line.encode("ascii") + end)
        sock.settimeout(wait_s)
        out = b""
        try:
            while chunk := sock.recv(4096):
                out += chunk
        except TimeoutError:
            pass
    return out


def test_sr860_snap_takes_two_or_three_parameters() -> None:
    state = LockInState("SR860", x_v=1e-6)
    with SR830Server(state) as server:
        assert _talk(server, "SNAP? 0,1,2,3") == b""  # four parameters: no reply ...
        assert _talk(server, "*ESR?") == b"32\n"  # ... and the command-error bit
        assert _talk(server, "SNAP? 0,1,2").count(b",") == 2
        assert _talk(server, "SNAP? X,Y") == b"1.000000e-06,0\n"


def test_sr830_snap_takes_two_to_six_parameters_counted_from_one() -> None:
    with SR830Server(LockInState(x_v=2e-6)) as server:
        assert _talk(server, "SNAP? 1,2,3,4") == b"2.000000e-06,0,2.000000e-06,0\n"
        assert _talk(server, "SNAP? 1", "*ESR?") == b"32\n"
        assert _talk(server, "SNAP? 0,1", "*ESR?") == b"16\n"  # parameter 0 does not exist: EXE


def test_out_of_range_parameters_set_exe_and_change_nothing() -> None:
    state = LockInState()
    with SR830Server(state) as server:
        assert _talk(server, "FREQ 200000", "SLVL 10", "SENS 27", "*ESR?") == b"16\n"
        snap = state.snapshot()
        assert (snap.frequency_hz, snap.amplitude_v, snap.sensitivity_v) == (1000.0, 1.0, 1.0)
        _talk(server, "SLVL 0.0051", "FREQ 1234.5678")
        snap = state.snapshot()  # 2 mV steps; 5 digits
        assert snap.amplitude_v == pytest.approx(0.006) and snap.frequency_hz == pytest.approx(1234.6)


def test_harmonic_clamps_silently_and_frequency_beyond_the_limit_is_refused() -> None:
    state = LockInState(frequency_hz=60e3)
    with SR830Server(state) as server:
        assert _talk(server, "HARM 2", "*ESR?", "HARM?") == b"0\n1\n"  # clamped to 1, no error
        _talk(server, "FREQ 40000", "HARM 2")
        assert state.snapshot().harmonic == 2
        assert _talk(server, "FREQ 60000", "*ESR?") == b"16\n"  # 2 x 60 kHz > 102 kHz
        assert state.snapshot().frequency_hz == 40e3


def test_sr830_replies_only_on_the_interface_outx_selects() -> None:
    with SR830Server(interface="rs232", outx=1) as server:
        assert _talk(server, "*IDN?", end=b"\r") == b""
        assert _talk(server, "OUTX 0", "*IDN?", end=b"\r").endswith(b"ver1.07\r")  # CR on RS232


def test_sr860_knows_no_outx() -> None:
    with SR830Server(LockInState("SR860")) as server:
        assert _talk(server, "OUTX 1", "*ESR?") == b"32\n"


def _settings(server: SR830Server, **kw: object) -> VisaSettings:
    return VisaSettings(server.resource, timeout_s=0.5, reconnect_attempts=0, **kw)  # type: ignore[arg-type]


def test_driver_on_rs232_sends_outx_0_and_reads_cr_replies() -> None:
    state = LockInState()
    with SR830Server(state, interface="rs232", outx=1) as server:
        with open_lockin(_settings(server), interface="rs232") as li:
            assert li.model.name == "SR830" and state.snapshot().outx == 0
            li.set_frequency(777.0)
            assert li.get_frequency() == 777.0 and not li.status().errors
        # the same lock-in taken for a GPIB one: OUTX 1, LF expected - no reply arrives
        with pytest.raises(InstrumentTimeout):
            open_lockin(_settings(server), interface="gpib")


def test_driver_termination_from_the_config_keys() -> None:
    with SR830Server(interface="rs232", outx=0) as server:
        # a serial device server reached as a socket: the interface from the config, CR replies
        with open_lockin(_settings(server, read_termination="\r"), interface="rs232") as li:
            assert li.get_time_constant() == 0.1


def test_driver_on_an_sr860_clears_the_refused_outx() -> None:
    with SR830Server(LockInState("SR860")) as server, open_lockin(_settings(server)) as li:
        assert li.model.name == "SR860" and li.status().errors == ()
        li.set_sensitivity(1e-6)
        assert li.read().r == 0.0
