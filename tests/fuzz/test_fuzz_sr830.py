"""Fuzz: the SR830/SR860 reply parsers on whatever a faulty lock-in (or a wrong device) prints.

Every reply must give a finite number of the right kind or raise an InstrumentError (a
StsliveError) with a message. Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.drivers.errors import InstrumentError, InstrumentReplyError
from stslive.drivers.scpi import parse_float, parse_floats, parse_int
from stslive.drivers.sr830 import MODELS, LockInWarning, SrsLockIn, model_from_identity

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)

#: Replies a confused instrument prints: numbers, near-numbers, overflow, other devices' lines.
numberish = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.from_regex(r"\A[ +-]?\d{0,6}\.?\d{0,6}([eE][+-]?\d{1,4})?\s*\Z"),
    st.sampled_from(
        [
            "1e999",
            "-1e400",
            "9" * 5000,
            "nan",
            "inf",
            "\u0663.5",
            "1,2",
            "",
            " \r\n",
            "LSCI,MODEL372,123,1.0",
            "Stanford_Research_Systems,SR830,s/n1,ver1.07",
        ]
    ),
)


class _Replies:
    """A TextSession whose every query answers with the next drawn reply."""

    instrument = "sr830"

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def query(self, message: str) -> str:
        return self.data.draw(numberish, label=message)

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@FUZZ
@given(numberish)
def test_parse_float_and_int(reply: str) -> None:
    for parse in (parse_float, parse_int):
        try:
            value = parse("sr830", reply, what="X?")
        except InstrumentReplyError as exc:
            assert reply[:10] in str(exc) or str(exc)
            continue
        assert math.isfinite(value)


@FUZZ
@given(st.lists(numberish, max_size=5).map(",".join))
def test_parse_floats(reply: str) -> None:
    try:
        values = parse_floats("sr830", reply, what="SNAP?", count=4)
    except InstrumentReplyError:
        return
    assert len(values) == 4 and all(math.isfinite(v) for v in values)


@FUZZ
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_driver_reads(model: str, data: st.DataObject) -> None:
    """Every getter, SNAP?, the status registers and check() on drawn replies."""
    lockin = SrsLockIn(_Replies(data), MODELS[model], verify_sets=False)  # type: ignore[arg-type]
    calls = [*(lambda n=n: lockin.get(n) for n in MODELS[model].settings), lockin.read, lockin.status, lockin.check]
    for call in calls:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LockInWarning)
                call()
        except InstrumentError as exc:
            assert str(exc)


@FUZZ
@given(numberish)
def test_identity_lines(line: str) -> None:
    try:
        assert model_from_identity(line).name in MODELS
    except InstrumentError as exc:
        assert "*IDN?" in str(exc)


@pytest.mark.parametrize("reply", ["1e999", "-1e400", "9" * 5000])
def test_regression_overflowing_numbers_are_reply_errors(reply: str) -> None:
    """Found by this fuzzing: '1e999' parsed to inf, 5000 digits raised a bare ValueError."""
    with pytest.raises(InstrumentReplyError):
        parse_float("sr830", reply, what="FREQ?")
    if reply.isdigit():
        with pytest.raises(InstrumentReplyError):
            parse_int("sr830", reply, what="SENS?")
