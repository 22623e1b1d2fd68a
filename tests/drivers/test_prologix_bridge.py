"""Instruments behind a GPIB-Ethernet (Prologix-style) bridge, through pyvisa-py's bridge resources."""

from __future__ import annotations

import pytest

from stslive.drivers.errors import ConfigError
from stslive.drivers.lakeshore import open_thermometer
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.visa import VisaSettings
from stslive.mocks.ls372_server import LS372Server
from stslive.mocks.prologix_server import PrologixServer
from stslive.mocks.sr830_server import LockInState, SR830Server


def test_lockin_and_thermometer_on_one_bridge() -> None:
    state = LockInState()
    with PrologixServer({8: SR830Server(state), 12: LS372Server()}) as bridge:
        lockin_settings = VisaSettings("GPIB0::8::INSTR", bridge=bridge.intfc_resource, timeout_s=1.0)
        with open_lockin(lockin_settings, model="SR830") as li:
            li.set_frequency(777.0)  # "FREQ 7.770000e+02": the '+' travels ESC-escaped
            assert state.snapshot().frequency_hz == 777.0 and li.get_frequency() == 777.0
            assert state.snapshot().outx == 1  # replies on GPIB
            assert not li.status().overloaded  # three answers on separate lines through the bridge
        thermo = VisaSettings("GPIB0::12::INSTR", bridge=bridge.intfc_resource, timeout_s=1.0)
        with open_thermometer(thermo, channel="A") as lakeshore:
            assert lakeshore.temperature() > 0
    # pyvisa-py configures the bridge, then addresses the instrument and reads until EOI
    assert bridge.commands[:6] == ["mode 1", "auto 0", "read_tmo_ms 50", "eos 3", "eoi 1", "eot_enable 0"]
    assert "addr 8" in bridge.commands and "read eoi" in bridge.commands


@pytest.mark.parametrize(
    ("resource", "bridge", "match"),
    [
        ("GPIB0::8::INSTR", "TCPIP::10.0.0.5::1234::SOCKET", "not a bridge resource"),
        ("TCPIP::10.0.0.5::1234::SOCKET", "PRLGX-TCPIP::10.0.0.5::1234::INTFC", "must be GPIB"),
    ],
)
def test_bridge_settings_are_checked(resource: str, bridge: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        VisaSettings(resource, bridge=bridge)
