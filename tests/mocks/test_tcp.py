"""The shared TCP lifecycle of the simulated instruments (mocks/tcp.py)."""

from __future__ import annotations

import socket
import time

import pytest

from stslive.mocks.lab import MockLab
from stslive.mocks.ls372_server import LS372Server
from stslive.mocks.nanonis_server import NanonisServer
from stslive.mocks.sr830_server import SR830Server


@pytest.fixture(params=["nanonis", "sr830", "ls372"])
def server(request):
    if request.param == "nanonis":
        return NanonisServer(MockLab.from_seed(seed=0, ny=4, nx=4))
    return SR830Server() if request.param == "sr830" else LS372Server()


def test_lifecycle_and_stop_with_a_client_connected(server):
    with pytest.raises(RuntimeError, match="not started"):
        server.address
    with server as started:
        assert started is server and server.start() is server  # starting twice keeps the binding
        host, port = server.address
        assert server.resource == f"TCPIP::{host}::{port}::SOCKET" and port > 0
        client = socket.create_connection((host, port), timeout=2.0)
        time.sleep(0.05)  # let the server accept it
        t0 = time.perf_counter()
        server.stop()
        assert time.perf_counter() - t0 < 2.0  # connected clients are closed, not waited for
        client.settimeout(2.0)
        assert client.recv(16) == b""  # the client sees the instrument go away
        client.close()
    server.stop()  # twice is fine
