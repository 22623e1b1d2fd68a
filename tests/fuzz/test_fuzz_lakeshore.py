"""Fuzz: the LakeShore 372 reply parsing on garbage, overflow and other devices' replies.

Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.drivers.errors import InstrumentError
from stslive.drivers.lakeshore import LakeShore372

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)

replies = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[+-]?\d{0,5}\.?\d{0,5}([eE][+-]?\d{1,4})?(,[+-]?\d{1,3})?\r?\n?\Z"),
    st.integers(-(10**40), 10**40).map(str),
    st.sampled_from(["+1.234E+00", "-0.5", "0", "1e999", "256", "3,1", "17,0", "1,2,3", "nan", "9" * 5000]),
)


class _LineSession:
    """TextSession answering each query with a drawn line."""

    instrument = "ls372"

    def __init__(self, data: st.DataObject) -> None:
        self.draw = lambda label: data.draw(replies, label=label)

    def query(self, message: str) -> str:
        return self.draw(message)

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@FUZZ
@given(st.sampled_from(["A", 1, 16]), st.data())
def test_thermometer_reads(channel: str | int, data: st.DataObject) -> None:
    ls = LakeShore372(_LineSession(data), channel=channel)  # type: ignore[arg-type]
    for call in (ls.temperature, ls.resistance, ls.reading_status, ls.scanner_channel):
        try:
            value = call()
        except InstrumentError as exc:
            assert str(exc)
            continue
        if call == ls.temperature:
            assert math.isfinite(value) and value > 0
        elif call == ls.scanner_channel:
            assert 1 <= value[0] <= 16
