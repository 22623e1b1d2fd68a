"""State machine, command table, control socket and temperature suspender (no instruments)."""

from __future__ import annotations

import json

import pytest
import zmq

from stslive.acquisition.control import ControlServer, send_command
from stslive.acquisition.state import CommandRefused, RunStateMachine
from stslive.acquisition.suspenders import TemperatureSuspender


def machine(log: list | None = None) -> RunStateMachine:
    def validate(iy: int, ix: int) -> None:
        if iy < 0 or ix < 0:
            raise CommandRefused("outside")

    return RunStateMachine(
        [0, 1], validate_pixel=validate, on_change=(lambda e, f: log.append((e, f))) if log is not None else None
    )


def test_transitions_and_pause_reasons() -> None:
    log: list = []
    m = machine(log)
    with pytest.raises(CommandRefused, match="not allowed while idle"):
        m.execute("pause", {})
    m.begin()
    assert m.execute("pause", {})["state"] == "paused"
    m.suspend("temperature", kelvin=2.0)
    with pytest.raises(CommandRefused, match="temperature"):
        m.execute("resume", {})
    assert m.state == "paused" and m.pause_reasons == {"temperature"}
    m.release("temperature")
    assert m.state == "running"
    m.execute("abort", {})
    assert m.state == "stopping" and m.exit_status == "abort"
    m.finish()
    assert m.state == "done"
    events = [e for e, _ in log]
    assert events[:2] == ["run_started", "paused"] and "resume_refused" in events and events[-1] == "done"


def test_failures_pause_is_resumed_by_the_operator() -> None:
    m = machine()
    m.begin()
    m.suspend("failures", consecutive=3)
    assert m.execute("resume", {})["state"] == "running"


def test_remeasure_and_set_commands() -> None:
    m = machine()
    m.begin()
    assert m.execute("remeasure", {"pixels": [[1, 2], [0, 0], [1, 2]]})["remeasure_queued"] == 2
    assert m.pop_remeasure() == (1, 2) and m.pop_remeasure() == (0, 0) and m.pop_remeasure() is None
    for bad in ({"pixels": []}, {"pixels": [[1]]}, {"pixels": [[1, True]]}, {"pixels": [[-1, 0]]}, {"x": 1}):
        with pytest.raises(CommandRefused):
            m.execute("remeasure", bad)
    assert m.execute("set", {"setpoint_set": 1})["active_set"] == 1
    with pytest.raises(CommandRefused, match="ID one of"):
        m.execute("set", {"setpoint_set": 7})
    with pytest.raises(CommandRefused, match="unknown command"):
        m.execute("explode", {})


def test_remeasure_carries_its_reason() -> None:
    m = machine()
    m.begin()
    m.execute("remeasure", {"pixels": [[0, 1]], "reason": "tip change flagged"})
    m.execute("remeasure", {"pixels": [[2, 2]]})
    assert m.pop_remeasure_request() == ((0, 1), "tip change flagged")
    assert m.pop_remeasure_request() == ((2, 2), "remeasure command")
    for bad in ({"pixels": [[0, 1]], "reason": ""}, {"pixels": [[0, 1]], "reason": 3}):
        with pytest.raises(CommandRefused, match="reason"):
            m.execute("remeasure", bad)


def test_control_socket_replies_and_counts_malformed_requests() -> None:
    ctx = zmq.Context()
    m = machine()
    m.begin()
    server = ControlServer(m, "tcp://127.0.0.1:0", context=ctx).start()
    try:
        assert send_command(server.endpoint, "pause", context=ctx) == {
            "ok": True,
            "state": "paused",
            "pause_reasons": ["user"],
            "active_set": 0,
            "remeasure_queued": 0,
            "error": None,
        }
        reply = send_command(server.endpoint, "set", setpoint_set=9, context=ctx)
        assert reply["ok"] is False and "ID one of" in reply["error"] and reply["state"] == "paused"
        sock = ctx.socket(zmq.REQ)
        sock.connect(server.endpoint)
        for raw in (b"\xff\xfe", b"[1, 2]", b'{"cmd": "pause"}', b"not json"):
            sock.send(raw)
            reply = json.loads(sock.recv())
            assert reply["ok"] is False and reply["error"] and reply["state"] == "paused"
        sock.close()
        assert server.malformed == 4 and server.refused == 1
        assert send_command(server.endpoint, "resume", context=ctx)["state"] == "running"
    finally:
        server.close()
        ctx.term()


def test_control_socket_refuses_non_loopback() -> None:
    from stslive.drivers.errors import StreamError

    with pytest.raises(StreamError, match="refusing"):
        ControlServer(machine(), "tcp://0.0.0.0:5999")


def test_temperature_suspender_hold_time() -> None:
    now = [0.0]
    s = TemperatureSuspender(0.0, 0.5, hold_s=2.0, clock=lambda: now[0])
    assert s.check(0.3) == "ok"
    assert s.check(0.8) == "suspend"
    assert s.check(float("nan")) == "wait"
    assert s.check(0.3) == "wait"  # back in band at t = 0
    now[0] = 1.0
    assert s.check(0.9) == "wait"  # left again: the hold restarts
    assert s.check(0.3) == "wait"  # in band since t = 1
    now[0] = 2.9
    assert s.check(0.3) == "wait"
    now[0] = 3.0
    assert s.check(0.3) == "resume" and not s.suspended
    assert s.check(0.3) == "ok"


def test_a_refused_control_key_times_out_every_time_never_hangs(tmp_path) -> None:
    """A REQ whose CURVE handshake is refused has no peer; sending must not wait for one for ever."""
    import time

    from stslive.acquisition.cli import main
    from stslive.acquisition.formats.security import Security
    from stslive.drivers.errors import InstrumentTimeout

    assert main(["keys", "--dir", str(tmp_path), "--client", "screen", "--role", "viewer"]) == 0
    m = RunStateMachine([0])
    m.begin()
    ctx = zmq.Context()
    server = ControlServer(m, "tcp://127.0.0.1:0", context=ctx, security=Security.from_dir(tmp_path)).start()
    viewer = Security.from_dir(tmp_path, client="screen")  # a viewer key: refused by the control socket
    try:
        for _ in range(20):
            t0 = time.monotonic()
            with pytest.raises(InstrumentTimeout, match="no reply"):
                send_command(server.endpoint, "abort", timeout_s=0.2, context=ctx, security=viewer)
            assert time.monotonic() - t0 < 2.0
        assert m.state == "running" and server.handled == 0
    finally:
        server.close()
        ctx.term()


def test_nobody_at_the_endpoint_is_a_timeout_within_the_time_given() -> None:
    import socket
    import time

    from stslive.drivers.errors import InstrumentTimeout

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout, match="no reply from"):
        send_command(f"tcp://127.0.0.1:{port}", "status", timeout_s=0.3)
    assert time.monotonic() - t0 < 1.5
