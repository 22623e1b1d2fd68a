"""Fuzz: the Nanonis codec and driver on replies from a faulty controller.

Random bytes, truncated and mutated valid frames must raise InstrumentReplyError or
ControllerError (both InstrumentError, a StsliveError) with a message, never anything else.
Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import InstrumentConnectionError, InstrumentError
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.visa import VisaSettings

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)

NAMES = sorted(codec.COMMANDS)
_SAMPLE: dict[str, Any] = {
    "f32": 1.5,
    "f64": -2.25,
    "i32": 7,
    "u16": 3,
    "u32": 9,
    "str": "Bias (V)",
    "i32[]": [1, 2, 3],
    "f32[]": [0.5, 1.5],
    "str[]": ["a", "bc"],
    "str[n]": ["a", "bc", "d"],  # counted by the i32[] before it (ChsGet)
    "f32[,]": np.ones((2, 3), np.float32),
}


def _sample_response(name: str, status: int = 0, description: str = "") -> bytes:
    types = codec.signature(name).return_types
    return codec.encode_response(name, [_SAMPLE[t] for t in types], status=status, description=description)


VALID = [_sample_response(n) for n in NAMES] + [_sample_response(n, 1, "not allowed") for n in NAMES[:5]]


def _decode(frame: bytes, name: str) -> None:
    """Header + body as the driver reads them; only InstrumentError may escape."""
    try:
        header = codec.decode_header(frame[: codec.HEADER_SIZE])
        codec.decode_response(name, header, frame[codec.HEADER_SIZE :])
    except InstrumentError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(min_size=40, max_size=40))
def test_random_headers(raw: bytes) -> None:
    try:
        header = codec.decode_header(raw)
    except InstrumentError:
        return
    assert header.body_size >= 0 and header.name


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=200))
def test_random_bodies(name: str, body: bytes) -> None:
    _decode(codec.encode_header(name, len(body), send_response=False) + body, name)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_truncated_and_mutated_frames(frame: bytes, data: st.DataObject) -> None:
    name = codec.decode_header(frame[:40]).name
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _decode(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw), name)


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=120))
def test_request_bodies(name: str, body: bytes) -> None:
    """The simulated server parses requests with the same codec: garbage is a typed error too."""
    try:
        codec.decode_request(codec.signature(name), body)
    except InstrumentError as exc:
        assert str(exc)


class _ScriptedSession:
    """Stands in for VisaSession: every exchange reads from ``reply`` (a faulty controller)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.pos = 0
        self.resets = 0

    def transaction(self, fn: Any, *, what: str, idempotent: bool = True) -> Any:
        return fn(self)

    def read_exact(self, resource: Any, count: int) -> bytes:
        chunk = self.reply[self.pos : self.pos + count]
        self.pos += count
        if len(chunk) != count:  # the real session turns a short read into this after its retries
            raise InstrumentConnectionError("nanonis", f"short read: {len(chunk)} of {count} bytes")
        return chunk

    # resource side
    timeout = 1000.0

    def write_raw(self, data: bytes) -> None:
        pass

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_driver_on_faulty_replies(frame: bytes, data: st.DataObject) -> None:
    """NanonisController.call with a reply that may be cut, flipped or for another command."""
    name = data.draw(st.sampled_from(NAMES))
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    session = _ScriptedSession(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
    ctl = NanonisController(VisaSettings(resource="TCPIP::127.0.0.1::6501::SOCKET"), session=session)  # type: ignore[arg-type]
    args = [_SAMPLE[t] for t in codec.signature(name).arg_types]
    try:
        ctl.call(name, *args)
    except InstrumentError as exc:
        assert str(exc)


def test_negative_sizes_are_reply_errors() -> None:
    """Named regression: negative counts in a body are refused, not read backwards."""
    body = codec._I32.pack(-5) + codec.encode_error()
    with pytest.raises(InstrumentError, match="negative"):
        codec.decode_response("Signals.NamesGet", codec.Header("Signals.NamesGet", len(body), False), body)
