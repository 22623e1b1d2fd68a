"""LakeShore 372 driver on recorded exchanges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from stslive.drivers.errors import ControllerError, InstrumentReplyError, SafetyLimitError
from stslive.drivers.lakeshore import LakeShore372, check_channel
from stslive.drivers.protocols import Thermometer
from stslive.drivers.scpi import RecordedSession


@contextmanager
def thermometer(exchanges: list[tuple[str, str | None]], channel: str | int = "A") -> Iterator[LakeShore372]:
    """A driver on recorded exchanges; leaving the block with an exchange unused fails the test."""
    with RecordedSession(exchanges, instrument="ls372") as session:
        yield LakeShore372(session, channel=channel)


def test_temperature_checks_reading_status_first():
    with thermometer(
        [("*IDN?", "LSCI,MODEL372,LSA1234,1.4"), ("RDGST? 6", "000"), ("KRDG? 6", "+3.012000E-01")], channel=6
    ) as t:
        assert isinstance(t, Thermometer)
        assert t.identity() == "LSCI,MODEL372,LSA1234,1.4"
        assert t.temperature() == pytest.approx(0.3012)


def test_reading_status_bits_raise_with_their_names():
    with thermometer([("RDGST? A", "192")]) as t:  # T over range + T under range bits
        with pytest.raises(ControllerError, match="temperature over range; temperature under range"):
            t.temperature()


def test_zero_kelvin_means_no_curve():
    with thermometer([("RDGST? A", "0"), ("KRDG? A", "+0.000000E+00")]) as t:
        with pytest.raises(ControllerError, match="no calibration curve"):
            t.temperature()


@pytest.mark.parametrize(
    "exchanges, call",
    [
        ([("RDGST? A", "0"), ("KRDG? A", "T.OVER")], "temperature"),
        ([("RDGST? A", "999")], "temperature"),
        ([("SCAN?", "05")], "scanner_channel"),
        ([("SCAN?", "17,0")], "scanner_channel"),
        ([("RDGR? A", "")], "resistance"),
    ],
)
def test_garbage_replies_raise(exchanges, call):
    with thermometer(exchanges) as t:
        with pytest.raises(InstrumentReplyError):
            getattr(t, call)()


def test_scanner_channel_round_trip():
    with thermometer([("SCAN?", "05,1"), ("SCAN 3,0", None)]) as t:
        assert t.scanner_channel() == (5, True)
        t.set_scanner_channel(3)


def test_channels_are_checked_before_sending():
    assert check_channel(" a ") == "A" and check_channel(16) == "16"
    for bad in (0, 17, "B"):
        with pytest.raises(SafetyLimitError):
            check_channel(bad)
    with thermometer([]) as t:
        with pytest.raises(SafetyLimitError):
            t.set_scanner_channel(0)
        t.close()
        assert isinstance(t.session, RecordedSession) and t.session.closed
