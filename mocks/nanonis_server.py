"""A simulated Nanonis controller: a TCP server speaking the Nanonis TCP protocol from a MockLab.

Contract: frames as in :mod:`stslive.drivers.nanonis_codec`, one ``sendall`` per reply. An
unknown command gets an error reply (status -1) and the connection stays open; a body that does
not parse or a request the lab refuses (outside the scan frame, negative set-point ...) gets an
error reply (status -2) with the reason; a request with the send-response flag cleared is
executed and not answered. Transport faults (``lab.faults.on_command("nanonis", name)``):
``connection_drop`` closes the socket, ``delay`` answers ``delay_s`` late, ``no_reply`` neither
executes nor answers, ``error_reply`` answers with the fault's message and code unexecuted.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import ControllerError, InstrumentReplyError
from stslive.drivers.protocols import ScanFrame, SpectroscopyTiming
from stslive.mocks.faults import FaultKind
from stslive.mocks.lab import FIXED_PARAMETERS, PARAMETERS, SIGNAL_NAMES, MockLab
from stslive.mocks.tcp import TcpServerBase

log = logging.getLogger(__name__)

UNKNOWN_COMMAND_STATUS = -1
REFUSED_STATUS = -2

Handler = Callable[[MockLab, dict[str, Any]], list[Any]]


# -- command handlers: arguments by field name -> return values in table order ----------------
def _frame_set(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    if not (a["width_m"] > 0 and a["height_m"] > 0):
        raise ControllerError("nanonis", "scan frame width and height must be > 0", command="Scan.FrameSet")
    with lab.lock:
        lab.stm.frame = ScanFrame(a["center_x_m"], a["center_y_m"], a["width_m"], a["height_m"], a["angle_deg"])
    return []


def _frame_get(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    with lab.lock:
        f = lab.stm.frame
    return [f.center_x_m, f.center_y_m, f.width_m, f.height_m, f.angle_deg]


def _limits_set(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    with lab.lock:
        lab.stm.start_V, lab.stm.end_V = float(a["start_V"]), float(a["end_V"])
    return []


def _props_set(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    # Nanonis convention: 0 = no change; u16 flags 1 = on, 2 = off.
    if a["points"] < 0 or a["sweeps"] < 0 or a["points"] == 1:
        raise ControllerError(
            "nanonis", "number of points must be >= 2 and sweeps >= 1 (0 = no change)", command="BiasSpectr.PropsSet"
        )
    with lab.lock:
        st = lab.stm
        st.points = a["points"] or st.points
        st.sweeps = a["sweeps"] or st.sweeps
        st.backward = {0: st.backward, 1: True, 2: False}.get(a["backward"], st.backward)
        st.z_offset_m = float(a["z_offset_m"])
    return []


def _props_get(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    with lab.lock:
        st = lab.stm
        return [0, st.sweeps, 1 if st.backward else 0, st.points, lab.channel_names(), PARAMETERS, FIXED_PARAMETERS]


def _timing_set(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    values = {k: float(v) for k, v in a.items()}
    negative = [k for k, v in values.items() if v < 0 and k != "z_offset_m"]
    if negative:
        raise ControllerError("nanonis", f"timing values must be >= 0: {negative}", command="BiasSpectr.TimingSet")
    with lab.lock:
        lab.stm.timing = SpectroscopyTiming(**values)
    return []


def _timing_get(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    with lab.lock:
        t = lab.stm.timing
    return [getattr(t, f) for f, _ in codec.COMMANDS["BiasSpectr.TimingGet"].returns]


def _start(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    sweep = lab.run_sweep()
    if not a["get_data"]:
        return [(), np.zeros((0, 0), np.float32), ()]
    return [sweep.channels, sweep.data, sweep.parameters]


def _vals_get(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    return [lab.signal_values(a["indexes"])]


def _chs_get(lab: MockLab, a: dict[str, Any]) -> list[Any]:
    with lab.lock:
        return [np.asarray(lab.stm.channel_slots, np.int32), lab.channel_names()]


def _get(*exprs: Callable[[MockLab], Any]) -> Handler:
    """A query handler: the return values read from the lab under its lock."""

    def handler(lab: MockLab, a: dict[str, Any]) -> list[Any]:
        with lab.lock:
            return [expr(lab) for expr in exprs]

    return handler


def _act(action: Callable[[MockLab, dict[str, Any]], object]) -> Handler:
    """A set handler: performs the action, returns no values."""

    def handler(lab: MockLab, a: dict[str, Any]) -> list[Any]:
        action(lab, a)
        return []

    return handler


HANDLERS: dict[str, Handler] = {
    "Bias.Set": _act(lambda lab, a: lab.set_bias(a["bias_V"])),
    "Bias.Get": _get(lambda lab: lab.stm.bias_V),
    "Current.Get": lambda lab, a: [lab.point_values()[0]],
    "ZCtrl.OnOffSet": _act(lambda lab, a: lab.set_feedback(bool(a["on"]))),
    "ZCtrl.OnOffGet": _get(lambda lab: int(lab.stm.feedback_on)),
    "ZCtrl.SetpntSet": _act(lambda lab, a: lab.set_setpoint(a["setpoint"])),
    "ZCtrl.SetpntGet": _get(lambda lab: lab.stm.setpoint_A),
    "ZCtrl.ZPosGet": _get(lambda lab: lab.z_m()),
    "FolMe.XYPosSet": _act(lambda lab, a: lab.move_tip(a["x_m"], a["y_m"])),
    "FolMe.XYPosGet": _get(lambda lab: lab.stm.x_m, lambda lab: lab.stm.y_m),
    "BiasSpectr.ChsSet": _act(lambda lab, a: lab.set_channels(a["indexes"])),
    "BiasSpectr.ChsGet": _chs_get,
    "BiasSpectr.LimitsSet": _limits_set,
    "BiasSpectr.LimitsGet": _get(lambda lab: lab.stm.start_V, lambda lab: lab.stm.end_V),
    "BiasSpectr.PropsSet": _props_set,
    "BiasSpectr.PropsGet": _props_get,
    "BiasSpectr.TimingSet": _timing_set,
    "BiasSpectr.TimingGet": _timing_get,
    "BiasSpectr.Start": _start,
    "Scan.FrameSet": _frame_set,
    "Scan.FrameGet": _frame_get,
    "Signals.ValsGet": _vals_get,
    "Signals.NamesGet": _get(lambda lab: SIGNAL_NAMES),
}
assert set(HANDLERS) == set(codec.COMMANDS), "every table command needs a handler"


class NanonisServer(TcpServerBase):
    """The simulated controller on ``host:port`` (port 0 = a free port).

    Parameters
    ----------
    lab
        The shared lab state the commands act on (its fault plan is consulted per request).
    host, port
        Where to listen.
    """

    def __init__(self, lab: MockLab, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__("nanonis", host=host, port=port)
        self.lab = lab
        self.requests = 0

    # -- protocol (TcpServerBase.serve) ---------------------------------------------------
    def serve(self, conn: socket.socket) -> None:
        """Read request frames and answer them until the peer closes or a frame is malformed."""
        while True:
            head = _recv_exact(conn, codec.HEADER_SIZE)
            if head is None:
                return
            try:
                header = codec.decode_header(head)
            except InstrumentReplyError as exc:
                log.warning("closing connection on a malformed header: %s", exc)
                return  # without a valid size the stream cannot be resynchronised
            body = _recv_exact(conn, header.body_size)
            if body is None:
                return
            if not self._serve_request(conn, header, body):
                return

    def _serve_request(self, conn: socket.socket, header: codec.Header, body: bytes) -> bool:
        """Answer one request; False to close the connection."""
        self.requests += 1
        name = header.name
        fault = self.lab.faults.on_command(self.instrument, name)
        reply: bytes | None
        if fault is not None and fault.kind is FaultKind.CONNECTION_DROP:
            log.info("fault: dropping the connection on %s", name)
            return False
        if fault is not None and fault.kind is FaultKind.NO_REPLY:
            log.info("fault: no reply to %s", name)
            return True
        if fault is not None and fault.kind is FaultKind.DELAY:
            time.sleep(float(fault.params["delay_s"]))
        if fault is not None and fault.kind is FaultKind.ERROR_REPLY:
            reply = self._error_reply(name, int(fault.params["code"]), str(fault.params["message"]))
        else:
            reply = self._execute(name, body)
        if header.send_response:
            conn.sendall(reply)  # one write per frame
        return True

    def _execute(self, name: str, body: bytes) -> bytes:
        handler = HANDLERS.get(name)
        if handler is None:
            return codec.encode_error_response(name, UNKNOWN_COMMAND_STATUS, f"unknown command {name!r}")
        try:
            args = codec.decode_request(codec.COMMANDS[name], body)
            values = handler(self.lab, args)
        except (ControllerError, InstrumentReplyError) as exc:
            return self._error_reply(name, REFUSED_STATUS, exc.detail)
        return codec.encode_response(name, values)

    @staticmethod
    def _error_reply(name: str, status: int, message: str) -> bytes:
        if name in codec.COMMANDS:
            return codec.encode_response(name, None, status=status, description=message)
        return codec.encode_error_response(name, status, message)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None if the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
