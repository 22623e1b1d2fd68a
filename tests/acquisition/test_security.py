"""CURVE security over real ZeroMQ sockets, on 127.0.0.1 only.

No test sends traffic to or binds a non-loopback address: CURVE is exercised on loopback with
keys required (a socket given a Security always requires them), and the refusal of LAN
addresses without keys is checked by :func:`check_bind` before anything is bound.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from stslive.acquisition.cli import main
from stslive.acquisition.control import ControlServer, send_command
from stslive.acquisition.formats.documents import ArraySpec, EventDoc, StartDoc
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.security import (
    Security,
    authenticator_running,
    bind_server,
    check_bind,
    secure_client,
    secure_server,
)
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.acquisition.state import RunStateMachine
from stslive.drivers.errors import ConfigError, InstrumentTimeout, StreamError

LOCAL = "tcp://127.0.0.1:0"
NON_LOOPBACK = [
    "tcp://0.0.0.0:5556",
    "tcp://*:5556",
    "tcp://192.168.1.20:5556",
    "tcp://10.0.0.1:5557",
    "tcp://eth0:5556",
    "tcp://[fe80::1]:5556",
    "tcp://scanpc.lab:5556",
]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory made by ``stslive keys``: server, viewer 'screen', controller 'alice'."""
    root = tmp_path_factory.mktemp("keys")
    assert main(["keys", "--dir", str(root)]) == 0
    assert main(["keys", "--dir", str(root), "--client", "screen", "--role", "viewer"]) == 0
    assert main(["keys", "--dir", str(root), "--client", "alice", "--role", "control"]) == 0
    # a well-formed key pair nobody allowed: made beside, never copied to viewers/ or controllers/
    (root / "outsider").mkdir()
    zmq.auth.create_certificates(root / "outsider", "mallory")
    return root


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()  # hangs if an authenticator or socket were left open: part of the check


def outsider(keydir: Path) -> Security:
    return Security(client_secret=keydir / "outsider" / "mallory.key_secret", server_public=keydir / "server.key")


def start_run(pub: RunPublisher) -> None:
    pub.start(
        grid={"nx": 2, "ny": 1},
        channel_names=("Bias (V)",),
        channel_units=("V",),
        n_points=4,
        setpoint_sets=({"id": 0},),
        instruments={},
        software_version="test",
    )
    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(1, 4))})


def publish_until(pub: RunPublisher, sub: RunSubscriber, *, timeout_s: float) -> list[EventDoc]:
    """Publish events every 20 ms until ``sub`` received one or ``timeout_s`` passed."""
    got: list[EventDoc] = []
    deadline = time.monotonic() + timeout_s
    ix = 0
    while not got and time.monotonic() < deadline:
        pub.event(
            arrays={"spectra": np.full((1, 4), ix, np.float32)},
            ix=ix % 2,
            iy=0,
            x_m=0.0,
            y_m=0.0,
            setpoint_set_id=0,
            timestamps={"end": time.time()},
            temperature_before_K=None,
            temperature_after_K=None,
        )
        ix += 1
        while (doc := sub.poll(0.02)) is not None:
            if isinstance(doc, EventDoc):
                got.append(doc)
    return got


# -- stslive keys ------------------------------------------------------------------------------
def test_keys_layout_and_secret_permissions(keydir: Path) -> None:
    assert sorted(p.name for p in (keydir / "viewers").iterdir()) == ["screen.key"]
    assert sorted(p.name for p in (keydir / "controllers").iterdir()) == ["alice.key"]
    for secret in (keydir / "server.key_secret", keydir / "clients" / "alice.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, secret_key = zmq.auth.load_certificate(secret)
        assert len(public) == 40 and secret_key is not None and len(secret_key) == 40
    allowed, _ = zmq.auth.load_certificate(keydir / "viewers" / "screen.key")
    assert allowed == zmq.auth.load_certificate(keydir / "clients" / "screen.key_secret")[0]
    assert zmq.auth.load_certificate(keydir / "viewers" / "screen.key")[1] is None  # no secret in the allow list


def test_keys_never_overwrite_without_force_and_one_role_per_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "--dir", str(tmp_path)]) == 0
    server_before = (tmp_path / "server.key_secret").read_bytes()
    assert main(["keys", "--dir", str(tmp_path)]) == 0  # kept, not replaced
    assert (tmp_path / "server.key_secret").read_bytes() == server_before
    assert main(["keys", "--dir", str(tmp_path), "--client", "bob", "--role", "control"]) == 0
    capsys.readouterr()
    assert main(["keys", "--dir", str(tmp_path), "--client", "bob", "--role", "viewer"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["keys", "--dir", str(tmp_path), "--client", "bob", "--role", "viewer", "--force"]) == 0
    assert not (tmp_path / "controllers" / "bob.key").exists()  # demoted: no longer a controller
    assert (tmp_path / "viewers" / "bob.key").exists()
    assert (tmp_path / "server.key_secret").read_bytes() == server_before  # --force with --client: client only
    assert main(["keys", "--dir", str(tmp_path), "--client", "carol"]) == 1
    assert "--role" in capsys.readouterr().err
    assert main(["keys", "--dir", str(tmp_path), "--client", "../evil", "--role", "viewer"]) == 1
    assert not (tmp_path / "evil.key").exists()


# -- refusing the network without keys (nothing is bound) --------------------------------------
@pytest.mark.parametrize("endpoint", NON_LOOPBACK)
def test_non_loopback_without_keys_refused_with_the_fix(endpoint: str) -> None:
    with pytest.raises(StreamError, match=r"stslive keys") as info:
        check_bind(endpoint, None)
    assert "CURVE" in str(info.value) and "127.0.0.1" in str(info.value)


@pytest.mark.parametrize("endpoint", NON_LOOPBACK)
def test_non_loopback_refused_by_every_binder_before_binding(endpoint: str, ctx: zmq.Context) -> None:
    with pytest.raises(StreamError, match="stslive keys"):
        RunPublisher(endpoint, context=ctx)
    with pytest.raises(StreamError, match="stslive keys"):
        RunPublisher(LOCAL, push_endpoint=endpoint, context=ctx)
    with pytest.raises(StreamError, match="stslive keys"):
        ControlServer(RunStateMachine([0]), endpoint, context=ctx)


@pytest.mark.parametrize("endpoint", NON_LOOPBACK)
def test_non_loopback_with_keys_passes_the_check(endpoint: str, keydir: Path) -> None:
    check_bind(endpoint, Security.from_dir(keydir))  # only checked: binding it is the user's decision
    with pytest.raises(ConfigError, match="server secret"):
        check_bind(endpoint, Security(viewers=keydir / "viewers"))


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5556",
        "tcp://127.3.2.1:1",
        "tcp://[::1]:5556",
        "tcp://localhost:5556",
        "ipc:///tmp/x.sock",
        "inproc://x",
    ],
)
def test_loopback_needs_no_keys(endpoint: str) -> None:
    check_bind(endpoint, None)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5556", "udp://127.0.0.1:5556", "pgm://eth0;239.1.1.1:5555"])
def test_malformed_or_unsupported_endpoint(endpoint: str) -> None:
    with pytest.raises(StreamError, match="tcp://127.0.0.1:PORT"):
        check_bind(endpoint, None)


def test_missing_keys_say_how_to_make_them(keydir: Path, tmp_path: Path, ctx: zmq.Context) -> None:
    empty = Security.from_dir(tmp_path, client="nobody")
    with pytest.raises(ConfigError, match="stslive keys"):
        RunPublisher(LOCAL, security=empty, context=ctx)
    with pytest.raises(ConfigError, match="stslive keys"):
        RunSubscriber("tcp://127.0.0.1:1", security=empty, context=ctx)
    with pytest.raises(ConfigError, match="controllers"):
        ControlServer(RunStateMachine([0]), LOCAL, context=ctx, security=empty)
    with pytest.raises(ConfigError, match=r"client=NAME"):  # a server-side Security used by a client
        RunSubscriber("tcp://127.0.0.1:1", security=Security.from_dir(keydir), context=ctx)
    assert not authenticator_running(ctx)


# -- the stream over CURVE on loopback ----------------------------------------------------------
def test_authorised_viewer_and_controller_receive_the_stream(keydir: Path, ctx: zmq.Context) -> None:
    pub = RunPublisher(LOCAL, security=Security.from_dir(keydir), context=ctx)
    try:
        assert authenticator_running(ctx)
        for client in ("screen", "alice"):
            with RunSubscriber(pub.pub_endpoint, security=Security.from_dir(keydir, client=client), context=ctx) as sub:
                if pub.run_uid is None:
                    pub.wait_for_subscribers(1, timeout_s=5.0)
                    start_run(pub)
                events = publish_until(pub, sub, timeout_s=5.0)
                assert events and events[0].arrays["spectra"].dtype == np.float32, client
    finally:
        pub.close()
    assert pub._guards[0].allowed >= 2 and pub._guards[0].denied == 0
    assert not authenticator_running(ctx)  # stopped with the last secured socket


@pytest.mark.parametrize("who", ["no keys", "unknown key"])
def test_unauthenticated_or_unknown_client_gets_nothing(who: str, keydir: Path, ctx: zmq.Context) -> None:
    pub = RunPublisher(LOCAL, push_endpoint=LOCAL, security=Security.from_dir(keydir), context=ctx)
    security = None if who == "no keys" else outsider(keydir)
    try:
        with (
            RunSubscriber(pub.pub_endpoint, security=security, context=ctx) as sub,
            RunSubscriber(pub.push_endpoint, mode="pull", security=security, context=ctx) as pull,
        ):
            with pytest.raises(StreamError, match="subscription"):  # its SUBSCRIBE never got through
                pub.wait_for_subscribers(1, timeout_s=0.5)
            start_run(pub)
            assert publish_until(pub, sub, timeout_s=0.5) == []
            assert pull.poll(0.2) is None and sub.poll(0.1) is None
            assert pub.backlog > 0  # PUSH found no authenticated peer: everything stayed local
            if who == "unknown key":
                assert pub._guards[0].denied >= 1  # refused by the authenticator, not a protocol mismatch
    finally:
        pub.close(linger_s=0)


def test_revoked_key_is_refused_at_next_connection(keydir: Path, tmp_path: Path, ctx: zmq.Context) -> None:
    # a private copy of the layout, so removing a key does not disturb the other tests
    root = tmp_path / "keys"
    assert main(["keys", "--dir", str(root), "--client", "screen", "--role", "viewer"]) == 0
    pub = RunPublisher(LOCAL, push_endpoint=LOCAL, security=Security.from_dir(root), context=ctx)
    client = Security.from_dir(root, client="screen")
    try:
        with RunSubscriber(pub.push_endpoint, mode="pull", security=client, context=ctx) as pull:
            start_run(pub)
            assert pub.flush(timeout_s=5.0)  # the backlog waits for the authenticated peer
            assert isinstance(pull.poll(5.0), StartDoc)
        (root / "viewers" / "screen.key").unlink()
        denied = pub._guards[0].denied
        with RunSubscriber(pub.push_endpoint, mode="pull", security=client, context=ctx) as pull:
            deadline = time.monotonic() + 5.0
            while pub._guards[0].denied == denied and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pub._guards[0].denied > denied  # the authenticator refused the revoked key
            for _ in range(10):
                pub.heartbeat("running")
                assert pull.poll(0.05) is None
            assert pub.backlog > 0  # no authenticated peer took them
    finally:
        pub.close(linger_s=0)


# -- the control socket: controllers only ---------------------------------------------------------
def test_raw_rep_control_socket_admits_controllers_only(keydir: Path, ctx: zmq.Context) -> None:
    rep = ctx.socket(zmq.REP)
    guard = secure_server(rep, Security.from_dir(keydir), role="control")
    rep.bind(LOCAL)
    endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        for client, allowed in (("screen", False), ("outsider", False), ("alice", True)):
            security = outsider(keydir) if client == "outsider" else Security.from_dir(keydir, client=client)
            with ctx.socket(zmq.REQ) as req:  # closed even if an assertion fails: ctx.term() must not hang
                req.linger = 0
                secure_client(req, security)
                req.connect(endpoint)
                req.send(b'{"command": "abort"}')
                arrived = bool(rep.poll(500))
                assert arrived is allowed, client
                if arrived:
                    assert rep.recv() == b'{"command": "abort"}'
                    rep.send(b"ok")
                    assert req.poll(2000) and req.recv() == b"ok"
        assert guard.denied >= 2 and guard.allowed >= 1
    finally:
        rep.close()
        guard.release()
        guard.release()  # idempotent


def test_viewer_key_cannot_control_the_scan(keydir: Path, ctx: zmq.Context) -> None:
    machine = RunStateMachine([0])
    machine.begin()
    server = ControlServer(machine, LOCAL, context=ctx, security=Security.from_dir(keydir)).start()
    try:
        for who in (Security.from_dir(keydir, client="screen"), outsider(keydir), None):
            with pytest.raises(InstrumentTimeout, match="no reply"):
                send_command(server.endpoint, "abort", timeout_s=0.5, context=ctx, security=who)
        assert machine.state == "running" and server.handled == 0
        reply = send_command(
            server.endpoint, "pause", timeout_s=5.0, context=ctx, security=Security.from_dir(keydir, client="alice")
        )
        assert reply["ok"] and reply["state"] == "paused"
    finally:
        server.close()
    assert server._guard is not None and server._guard.denied >= 2  # screen and mallory, by key
    assert not authenticator_running(ctx)


def test_data_and_control_sockets_share_one_authenticator(keydir: Path, ctx: zmq.Context) -> None:
    security = Security.from_dir(keydir)
    pub = RunPublisher(LOCAL, security=security, context=ctx)
    server = ControlServer(RunStateMachine([0]), LOCAL, context=ctx, security=security).start()
    pub.close()
    assert authenticator_running(ctx)  # the control socket still needs it
    server.close()
    assert not authenticator_running(ctx)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_world_readable_secret_is_warned_about(
    keydir: Path, tmp_path: Path, ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "keys"
    assert main(["keys", "--dir", str(root)]) == 0
    (root / "server.key_secret").chmod(0o644)
    with RunPublisher(LOCAL, security=Security.from_dir(root), context=ctx):
        pass
    assert "chmod 600" in caplog.text


def test_bind_server_closes_the_socket_and_names_what_failed() -> None:
    ctx = zmq.Context()
    first, second = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    try:
        assert bind_server(first, "tcp://127.0.0.1:0", None, role="data", what="the first stream") is None
        taken = first.getsockopt_string(zmq.LAST_ENDPOINT)
        with pytest.raises(StreamError, match=r"cannot bind the second stream to .*port in use"):
            bind_server(second, taken, None, role="data", what="the second stream")
        assert second.closed  # nothing left open behind the error
    finally:
        first.close(linger=0)
        second.close(linger=0)
        ctx.term()
