"""Fuzz: the simulated Nanonis on malformed requests, as a careless client would send them.

Every request with a valid header gets a reply whose error section is well formed (status 0 or
1, the description exactly its declared size), and the connection stays in step: the next
``Bias.Get`` is answered. Examples: ``STSLIVE_FUZZ_EXAMPLES`` (default 200).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.mocks import nanonis_protocol as wire
from stslive.mocks.lab import MockLab
from stslive.mocks.nanonis_server import NanonisServer

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)
# every command but Start (a sweep per example), and names the controller does not know
NAMES = [*sorted(n for n in wire.LAYOUTS if n != "BiasSpectr.Start"), "No.Such", "Bias.Gett", ""]


@pytest.fixture(scope="module")
def connection() -> Iterator[socket.socket]:
    lab = MockLab.from_seed(seed=0, ny=3, nx=3, speed=0)
    with NanonisServer(lab) as server, socket.create_connection(server.address, timeout=3) as sock:
        yield sock


def _exchange(sock: socket.socket, name: str, body: bytes) -> bytes:
    sock.sendall(name.encode().ljust(32, b"\0")[:32] + struct.pack(">iHH", len(body), 1, 0) + body)
    head = _read(sock, 40)
    (size,) = struct.unpack(">i", head[32:36])
    assert head[:32].rstrip(b"\0").decode() == name
    return _read(sock, size)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "the simulated controller closed the connection"
        buf += chunk
    return buf


@FUZZ
@given(name=st.sampled_from(NAMES), body=st.binary(max_size=64))
def test_any_body_gets_a_well_formed_reply_and_the_connection_stays(
    connection: socket.socket, name: str, body: bytes
) -> None:
    reply = _exchange(connection, name, body)
    status, size = struct.unpack(">Ii", reply[-8 - _tail(reply) : len(reply) - _tail(reply)])
    assert status in (0, 1) and size == _tail(reply)
    assert _exchange(connection, "Bias.Get", b"")[-8:] == b"\0" * 8


def _tail(reply: bytes) -> int:
    """Length of the error description at the end of a reply (found by its declared size)."""
    for n in range(len(reply) - 7):
        if struct.unpack(">i", reply[len(reply) - n - 4 : len(reply) - n])[0] == n:
            return n
    raise AssertionError(f"no error section in {reply.hex()}")


@pytest.mark.parametrize(
    ("name", "value"), [("Bias.Set", 1e30), ("Bias.Set", float("nan")), ("BiasSpectr.LimitsSet", -1e30)]
)
def test_a_bias_outside_the_output_range_is_refused_and_the_current_still_reads(
    connection: socket.socket, name: str, value: float
) -> None:
    """A bias no controller output can apply gets an error reply; Current.Get afterwards is answered.

    (A fuzzed Bias.Set of 1e30 V once made the simulated film allocate a grid of 1e34 samples.)
    """
    body = struct.pack(">f", value) + (struct.pack(">f", 0.01) if name == "BiasSpectr.LimitsSet" else b"")
    reply = _exchange(connection, name, body)
    assert b"outside the output range" in reply
    current = _exchange(connection, "Current.Get", b"")
    assert len(current) >= 4 and struct.unpack(">i", current[4:8])[0] == 0  # status 0: answered
