"""The simulated Nanonis against the protocol document and two independent clients.

Three clients, none of them stslive's driver: SPECS' ``nanonis_spm``, the version-aware
``nanonisTCP``, and a minimal one written here from the protocol document (R13742, pp. 24-32),
which also checks the bytes of the document's worked example.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from stslive.mocks.faults import FaultPlan
from stslive.mocks.lab import SIGNAL_NAMES, SLOT_SIGNALS, SWEEP_CHANNEL, MockLab
from stslive.mocks.nanonis_server import NanonisServer

nanonis_spm = pytest.importorskip("nanonis_spm")
nanonisTCP = pytest.importorskip("nanonisTCP")
from nanonisTCP.Bias import Bias  # noqa: E402
from nanonisTCP.BiasSpectr import BiasSpectr  # noqa: E402
from nanonisTCP.FolMe import FolMe  # noqa: E402
from nanonisTCP.ZController import ZController  # noqa: E402


@pytest.fixture(scope="module")
def film() -> Any:
    from stslive.mocks.film import FilmParams, make_film

    return make_film(FilmParams(ny=6, nx=6, seed=2, n_points=201))


@pytest.fixture
def lab(film: Any) -> MockLab:
    return MockLab(film, speed=0, faults=FaultPlan())


def _serve(lab: MockLab, **kwargs: Any) -> NanonisServer:
    return NanonisServer(lab, **kwargs).start()


@pytest.fixture
def server(lab: MockLab) -> Iterator[NanonisServer]:
    srv = _serve(lab)
    yield srv
    srv.stop()


# -- a minimal client written from the protocol document ----------------------------------------
def request(name: str, body: bytes = b"", respond: int = 1) -> bytes:
    """Header (name NUL-padded to 32, int32 body size, uint16 send-response, 2 unused) + body."""
    return name.encode("ascii").ljust(32, b"\0") + struct.pack(">iHH", len(body), respond, 0) + body


def exchange(sock: socket.socket, frame: bytes) -> tuple[str, bytes]:
    """Send one request, read one response: (echoed name, body)."""
    sock.sendall(frame)
    head = _read(sock, 40)
    name = head[:32].rstrip(b"\0").decode("ascii")
    (size,) = struct.unpack(">i", head[32:36])
    assert head[36:40] == b"\0\0\0\0"  # "last 4 bytes are currently not used"
    return name, _read(sock, size)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return buf


def error_of(body: bytes) -> tuple[int, str]:
    """The trailing error section: uint32 status, int32 size, description (no prefix of its own)."""
    for start in range(len(body) - 8, -1, -1):
        status, size = struct.unpack(">Ii", body[start : start + 8])
        if start + 8 + size == len(body) and status in (0, 1):
            return status, body[start + 8 :].decode()
    raise AssertionError(f"no error section in {body.hex()}")


@pytest.fixture
def raw(server: NanonisServer) -> Iterator[socket.socket]:
    with socket.create_connection(server.address, timeout=3) as sock:
        yield sock


def test_worked_example_of_the_document_byte_for_byte(raw: socket.socket, lab: MockLab) -> None:
    # p.28: FolMe.XYPosGet, wait for newest data = 1, exactly as the document spells the request
    frame = bytes.fromhex("466F6C4D652E5859506F73476574" + "00" * 18 + "00000004" + "0001" + "0000" + "00000001")
    assert frame == request("FolMe.XYPosGet", struct.pack(">I", 1))
    lab.stm.x_m, lab.stm.y_m = 5e-9, -5e-9
    name, body = exchange(raw, frame)
    # p.29: body size 24 = X, Y (float64), error status, error size; the values as printed there
    assert name == "FolMe.XYPosGet" and len(body) == 24
    assert body.hex().upper() == "3E35798EE2308C3A" + "BE35798EE2308C3A" + "00000000" + "00000000"
    # p.32: a Set without return arguments answers the error section only (body size 8)
    name, body = exchange(raw, request("FolMe.XYPosSet", struct.pack(">ddI", 1e-9, 1e-9, 1)))
    assert (name, body) == ("FolMe.XYPosSet", b"\0" * 8)


def test_an_error_is_status_1_and_its_description(raw: socket.socket) -> None:
    # outside the scan frame: refused; the document's error status is 1 = True, never -1/-2
    name, body = exchange(raw, request("FolMe.XYPosSet", struct.pack(">ddI", 1e-3, 0.0, 1)))
    status, text = error_of(body)
    assert (name, status) == ("FolMe.XYPosSet", 1) and "outside the scan frame" in text
    _, body = exchange(raw, request("Bias.Set", b"\0\0"))  # a short body: an error, connection kept
    assert error_of(body)[0] == 1
    _, body = exchange(raw, request("Bias.Get"))
    assert error_of(body) == (0, "") and len(body) == 4 + 8


def test_unknown_command_error_reply_or_silence(lab: MockLab) -> None:
    for mode in ("error", "silent"):
        srv = _serve(lab, unknown_command=mode)
        try:
            with socket.create_connection(srv.address, timeout=3) as sock:
                if mode == "error":
                    name, body = exchange(sock, request("Foo.Bar"))
                    assert name == "Foo.Bar" and error_of(body)[0] == 1 and "Foo.Bar" in error_of(body)[1]
                else:
                    sock.sendall(request("Foo.Bar"))
                    sock.settimeout(0.3)
                    with pytest.raises(TimeoutError):
                        sock.recv(1)
                    sock.settimeout(3)
                assert exchange(sock, request("Bias.Get"))[0] == "Bias.Get"  # still in step
            assert srv.unknown == ["Foo.Bar"]
        finally:
            srv.stop()


def test_no_reply_when_the_request_asks_for_none(raw: socket.socket, lab: MockLab) -> None:
    raw.sendall(request("Bias.Set", struct.pack(">f", 0.05), respond=0))
    assert exchange(raw, request("Bias.Get"))[1][:4] == struct.pack(">f", 0.05)
    assert lab.stm.bias_V == pytest.approx(0.05)


def test_times_are_rounded_to_whole_rt_cycles(raw: socket.socket) -> None:
    times = (1e-4, 0.0, 0.01234, 100.0, 7e-5, 2e-5, 0.0, 0.12)
    exchange(raw, request("BiasSpectr.TimingSet", struct.pack(">8f", *times)))
    _, body = exchange(raw, request("BiasSpectr.TimingGet"))
    got = struct.unpack(">8f", body[:32])
    # 50 us cycles: 12.34 ms -> 12.35 ms, 70 us -> 50 us, 20 us -> 0; offset and slew rate as sent
    assert got == pytest.approx((1e-4, 0.0, 0.01235, 100.0, 5e-5, 0.0, 0.0, 0.12), rel=1e-6, abs=1e-9)


def test_version_get_and_the_older_release_that_lacks_it(lab: MockLab, server: NanonisServer) -> None:
    with socket.create_connection(server.address, timeout=3) as sock:
        _, body = exchange(sock, request("Util.VersionGet"))
    n = struct.unpack(">i", body[:4])[0]
    product = body[4 : 4 + n].decode()
    m = struct.unpack(">i", body[4 + n : 8 + n])[0]
    version = body[8 + n : 8 + n + m].decode()
    host, rt = struct.unpack(">II", body[8 + n + m : 16 + n + m])
    assert (product, version, host, rt) == ("Nanonis SPM Control Software", "Generic 5", 13632, 13632)
    old = _serve(lab, release=10862)
    try:
        with socket.create_connection(old.address, timeout=3) as sock:
            assert error_of(exchange(sock, request("Util.VersionGet"))[1])[0] == 1
    finally:
        old.stop()


# -- SPECS' client ---------------------------------------------------------------------------------
def _ok(reply: tuple[Any, ...]) -> list[Any]:
    error, _raw, values = reply
    assert error == "", error
    return values


def test_official_client(server: NanonisServer, lab: MockLab) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        n = nanonis_spm.Nanonis(sock)
        # (its Util_VersionGet cannot decode any reply: type code "+*c" is not a struct format)
        _ok(n.Bias_Set(-0.02))
        assert _ok(n.Bias_Get())[0] == pytest.approx(-0.02)
        _ok(n.ZCtrl_SetpntSet(2e-10))
        assert _ok(n.Current_Get())[0] == pytest.approx(-2e-10)  # regulated at the set-point
        _ok(n.BiasSpectr_Open())
        _ok(n.BiasSpectr_ChsSet([0, SIGNAL_NAMES.index("LI Demod 1 X (A)")]))
        _ok(n.BiasSpectr_LimitsSet(-0.03, 0.03))
        _ok(n.BiasSpectr_PropsSet(0, 1, 2, 101, 0.0, 2, 2))
        props = _ok(n.BiasSpectr_PropsGet())
        assert props[1] == 1 and props[3] == 101
        _ok(n.BiasSpectr_AdvPropsSet(1, 1, 0, 0))
        assert _ok(n.BiasSpectr_AdvPropsGet()) == [1, 1, 0, 0]
        _ok(n.BiasSpectr_AdvPropsSet(2, 0, 0, 0))
        assert _ok(n.BiasSpectr_AdvPropsGet())[:2] == [0, 1]
        start = _ok(n.BiasSpectr_Start(1, ""))
        assert start[2] == [SWEEP_CHANNEL, "Current (A)", "LI Demod 1 X (A)"] and start[5].shape == (3, 101)
        # Reset Bias off: the bias stayed where the sweep ended
        assert _ok(n.Bias_Get())[0] == pytest.approx(0.03)
        _ok(n.BiasSpectr_Stop())
        assert error_of(n.BiasSpectr_StatusGet()[1])[0] == 0


# -- nanonisTCP, the independent version-aware client ---------------------------------------------
def _ntcp(server: NanonisServer, version: int) -> Any:
    host, port = server.address
    return nanonisTCP.nanonisTCP(host, port, max_buf_size=1 << 16, version=version)


def test_independent_client_newer_release(server: NanonisServer, lab: MockLab) -> None:
    client = _ntcp(server, 13632)
    try:
        Bias(client).Set(-0.015)
        assert Bias(client).Get() == pytest.approx(-0.015)
        ZController(client).OnOffSet(1)
        assert ZController(client).OnOffGet() == 1
        FolMe(client).XYPosSet(1e-9, -1e-9, 1)
        spectr = BiasSpectr(client)
        spectr.Open()
        spectr.ChsSet([0, SIGNAL_NAMES.index("Z (m)")])
        indexes, names = spectr.ChsGet()
        assert indexes == [0, 2] and names == ["Current (A)", "Z (m)"]
        spectr.LimitsSet(-0.02, 0.02)
        spectr.PropsSet(num_points=51)
        spectr.AdvPropsSet(reset_bias=1, z_controller_hold=1)
        assert lab.stm.reset_bias and lab.stm.z_controller_hold
        result = spectr.Start(get_data=1)
        assert list(result["data_dict"]) == [SWEEP_CHANNEL, "Current (A)", "Z (m)"]
        assert result["parameters"][:2] == pytest.approx([-0.02, 0.02])
        assert Bias(client).Get() == pytest.approx(-0.015)  # Reset Bias on: back to where it was
        assert spectr.StatusGet() == 0
    finally:
        client.close_connection()


def test_independent_client_older_release_selects_slots(lab: MockLab) -> None:
    srv = _serve(lab, release=10862)
    client = _ntcp(srv, 10862)
    try:
        spectr = BiasSpectr(client)
        slot = SLOT_SIGNALS.index(SIGNAL_NAMES.index("Z (m)"))
        spectr.ChsSet([1, slot])  # slot 1 holds the current
        assert spectr.ChsGet() == [1, slot]
        assert lab.channel_names() == ("Current (A)", "Z (m)")
        props = spectr.PropsGet()
        assert props["channels"] == ["Current (A)", "Z (m)"]
    finally:
        client.close_connection()
        srv.stop()


def test_stop_from_a_second_connection_ends_a_blocking_sweep(film: Any) -> None:
    lab = MockLab(film, speed=1.0, faults=FaultPlan())
    lab.stm.points = 201
    lab.stm.timing = lab.stm.timing.__class__(settling_s=5e-3, integration_s=5e-3)  # ~2 s sweep
    srv = _serve(lab)
    try:
        first, second = _ntcp(srv, 13632), _ntcp(srv, 13632)
        result: dict[str, Any] = {}
        sweeper = threading.Thread(target=lambda: result.update(BiasSpectr(first).Start(get_data=1)))
        t0 = time.perf_counter()
        sweeper.start()
        while not lab.stm.sweeping:
            time.sleep(0.01)
        assert BiasSpectr(second).StatusGet() == 1  # the second connection is served meanwhile
        time.sleep(0.2)
        BiasSpectr(second).Stop()
        sweeper.join(5)
        elapsed = time.perf_counter() - t0
        assert elapsed < 1.5 and BiasSpectr(second).StatusGet() == 0
        current = result["data_dict"]["Current (A)"]
        assert np.isfinite(current[0]) and np.isnan(current[-1])  # the points not reached are NaN
        first.close_connection()
        second.close_connection()
    finally:
        srv.stop()
