"""The drivers' config tables (VISA settings, Nanonis safety limits): unknown keys and wrong types are named."""

from __future__ import annotations

import pytest

from stslive.drivers.errors import ConfigError
from stslive.drivers.nanonis import SafetyLimits
from stslive.drivers.visa import VisaSettings

RESOURCE = "TCPIP::127.0.0.1::6501::SOCKET"


def test_limits_from_a_table() -> None:
    assert SafetyLimits.from_mapping({"bias_max_V": 0.1, "setpoint_max_A": 1e-9}) == SafetyLimits(
        bias_max_V=0.1, setpoint_max_A=1e-9
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ({"bias_max": 0.1}, r"limits: unknown key\(s\) \['bias_max'\]; known keys: \['bias_max_V', "),
        ({"bias_max_V": "0.1"}, r"limits: bias_max_V = '0.1' must be a number"),
        ({"sweep_margin": True}, r"limits: sweep_margin = True must be a number"),
        ({"bias_min_V": "low"}, r"limits: bias_min_V = 'low' must be a number"),
    ],
)
def test_limits_name_the_bad_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SafetyLimits.from_mapping(table)


def test_visa_settings_from_a_table_with_defaults() -> None:
    settings = VisaSettings.from_mapping({"resource": RESOURCE, "timeout_s": 2}, read_termination="\n")
    assert (settings.timeout_s, settings.read_termination) == (2, "\n")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"resource": RESOURCE, "timeout": 2.0}, r"instrument settings: unknown key\(s\) \['timeout'\]"),
        ({"timeout_s": 2.0}, r"'resource' \(the VISA resource string\) is missing"),
        ({"resource": RESOURCE, "timeout_s": "5"}, r"'timeout_s' = '5' must be a number of seconds"),
        ({"resource": RESOURCE, "reconnect_delay_s": None}, r"'reconnect_delay_s' = None must be a number"),
        ({"resource": RESOURCE, "reconnect_attempts": True}, r"'reconnect_attempts' = True must be an integer"),
        ({"resource": RESOURCE, "open_timeout_s": 0}, r"'open_timeout_s' = 0 must be > 0 seconds"),
    ],
)
def test_visa_settings_name_the_bad_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VisaSettings.from_mapping(table)
