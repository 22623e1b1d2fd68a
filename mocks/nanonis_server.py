"""A simulated Nanonis controller: a TCP server speaking the Nanonis TCP protocol from a MockLab.

Contract: frames and layouts of :mod:`stslive.mocks.nanonis_protocol` (written from the
protocol document), one ``sendall`` per reply. Each connection executes its commands serially;
``BiasSpectr.Start`` keeps its connection busy until the sweep ends, and ``BiasSpectr.Stop``
from another connection ends it early (the points not reached are NaN). A command that fails
(bad arguments, a request the lab refuses) is answered with its return arguments zeroed and the
error section set (status 1, the reason). A command the release does not know is answered the
same way (``unknown_command="error"``) or not at all (``"silent"``): the protocol document does
not say which a real controller does. ``release`` selects the layouts: from R11798 on channels
are signal indexes (0-127) and ``Util.VersionGet`` exists; before, ``BiasSpectr.ChsSet`` takes
Signals-Manager slots (``Signals.InSlotsGet``). Times are rounded to whole real-time cycles
(50 us). A request with the send-response flag cleared is executed and not answered.

Transport faults (``lab.faults.on_command("nanonis", name)``): ``connection_drop`` closes the
socket, ``delay`` answers ``delay_s`` late, ``no_reply`` neither executes nor answers,
``error_reply`` answers with the fault's message unexecuted.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from stslive.drivers.errors import ControllerError
from stslive.drivers.protocols import ScanFrame, SpectroscopyTiming
from stslive.mocks import nanonis_protocol as wire
from stslive.mocks.faults import FaultKind
from stslive.mocks.lab import (
    FIXED_PARAMETERS,
    PARAMETERS,
    RT_PERIOD_S,
    SIGNAL_NAMES,
    SLOT_SIGNALS,
    MockLab,
    check_bias,
)
from stslive.mocks.tcp import TcpServerBase

log = logging.getLogger(__name__)

#: The first release (RT engine) whose ChsSet takes signal indexes; an independent client's switch.
FULL_SIGNAL_LIST_RELEASE = 11798
DEFAULT_RELEASE = 13632  # "Generic 5e", the release of the reference simulator grids
PRODUCT_LINE = "Nanonis SPM Control Software"

Handler = Callable[["NanonisServer", list[Any]], list[Any]]
_TIMING_FIELDS = (
    "z_averaging_s",
    "z_offset_m",
    "initial_settling_s",
    "max_slew_rate_V_per_s",
    "settling_s",
    "integration_s",
    "end_settling_s",
    "z_control_s",
)
_TIMES = frozenset(_TIMING_FIELDS) - {"z_offset_m", "max_slew_rate_V_per_s"}


class Refused(Exception):
    """A command the simulated controller refuses; its text goes into the error section."""


def _flag(value: int, current: bool, what: str) -> bool:
    """A tri-state u16 of a Set command: 0 = no change, 1 = on, 2 = off."""
    if value not in (0, 1, 2):
        raise Refused(f"{what} = {value}: use 0 (no change), 1 (on) or 2 (off)")
    return current if value == 0 else value == 1


def round_time(seconds: float) -> float:
    """A time as the controller keeps it: the nearest whole number of real-time cycles."""
    return round(seconds / RT_PERIOD_S) * RT_PERIOD_S


# -- handlers: (server, arguments in document order) -> return values in document order --------
def _frame_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    if not (a[2] > 0 and a[3] > 0):
        raise Refused("scan frame width and height must be > 0")
    with srv.lab.lock:
        srv.lab.stm.frame = ScanFrame(*(float(v) for v in a))
    return []


def _frame_get(srv: NanonisServer, a: list[Any]) -> list[Any]:
    f = srv.lab.stm.frame
    return [f.center_x_m, f.center_y_m, f.width_m, f.height_m, f.angle_deg]


def _chs_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    indexes = [int(i) for i in a[0]]
    if srv.old_layout:  # slots of the Signals Manager
        bad = [i for i in indexes if not 0 <= i < len(SLOT_SIGNALS)]
        if bad:
            raise Refused(f"channel slot {bad[0]} is not one of the {len(SLOT_SIGNALS)} Signals Manager slots")
        indexes = [SLOT_SIGNALS[i] for i in indexes]
    bad = [i for i in indexes if not 0 <= i < len(SIGNAL_NAMES)]
    if bad:
        raise Refused(f"channel index {bad[0]} is not a signal (0..{len(SIGNAL_NAMES) - 1})")
    with srv.lab.lock:
        srv.lab.stm.channel_slots = tuple(indexes)
    return []


def _chs_get(srv: NanonisServer, a: list[Any]) -> list[Any]:
    signals = srv.lab.stm.channel_slots
    if srv.old_layout:
        return [[SLOT_SIGNALS.index(i) for i in signals]]
    return [list(signals), [SIGNAL_NAMES[i] for i in signals]]


def _props_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    save_all, sweeps, backward, points, z_offset, autosave, dialog = a
    if sweeps < 0 or points < 0 or points == 1:
        raise Refused("number of points must be >= 2 and number of sweeps >= 1 (0 = no change)")
    st = srv.lab.stm
    with srv.lab.lock:
        _flag(save_all, False, "Save all")
        _flag(autosave, False, "Autosave")
        _flag(dialog, False, "Show save dialog")
        st.backward = _flag(backward, st.backward, "Backward sweep")
        st.points = points or st.points
        st.sweeps = sweeps or st.sweeps
        if math.isfinite(z_offset):
            st.z_offset_m = float(z_offset)
    return []


def _props_get(srv: NanonisServer, a: list[Any]) -> list[Any]:
    st = srv.lab.stm
    head = [0, st.sweeps, int(st.backward), st.points]
    if srv.old_layout:
        return [*head, srv.lab.channel_names(), PARAMETERS, FIXED_PARAMETERS]
    return [*head, PARAMETERS, FIXED_PARAMETERS, 0, 0]


def _adv_props_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    st = srv.lab.stm
    with srv.lab.lock:
        values = (
            _flag(a[0], st.reset_bias, "Reset Bias"),
            _flag(a[1], st.z_controller_hold, "Z-Controller Hold"),
            _flag(a[2], st.record_final_z, "Record final Z"),
            _flag(a[3], st.lockin_run, "Lockin Run"),
        )
        st.reset_bias, st.z_controller_hold, st.record_final_z, st.lockin_run = values
    return []


def _adv_props_get(srv: NanonisServer, a: list[Any]) -> list[Any]:
    st = srv.lab.stm
    return [int(st.reset_bias), int(st.z_controller_hold), int(st.record_final_z), int(st.lockin_run)]


def _limits_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    try:
        for volts in a[:2]:
            check_bias(float(volts), command="BiasSpectr.LimitsSet")
    except ControllerError as exc:
        raise Refused(exc.detail) from None
    with srv.lab.lock:
        srv.lab.stm.start_V, srv.lab.stm.end_V = float(a[0]), float(a[1])
    return []


def _timing_set(srv: NanonisServer, a: list[Any]) -> list[Any]:
    values = dict(zip(_TIMING_FIELDS, (float(v) for v in a), strict=True))
    negative = [k for k in _TIMES if values[k] < 0]
    if negative or not values["max_slew_rate_V_per_s"] > 0:
        raise Refused(f"times must be >= 0 and the slew rate > 0 (got {sorted(negative) or 'slew rate'})")
    rounded = {k: round_time(v) if k in _TIMES else v for k, v in values.items()}
    with srv.lab.lock:
        srv.lab.stm.timing = SpectroscopyTiming(**rounded)
    return []


def _timing_get(srv: NanonisServer, a: list[Any]) -> list[Any]:
    t = srv.lab.stm.timing
    return [getattr(t, f) for f in _TIMING_FIELDS]


def _start(srv: NanonisServer, a: list[Any]) -> list[Any]:
    if srv.lab.stm.sweeping:
        raise Refused("a bias spectroscopy is already running")
    sweep = srv.lab.run_sweep()
    if not a[0]:
        return [(), np.zeros((0, 0), np.float32), ()]
    return [sweep.channels, sweep.data, sweep.parameters]


def _lab(action: Callable[[MockLab, list[Any]], object]) -> Handler:
    """A set handler acting on the lab (its ControllerError becomes a refusal)."""

    def handler(srv: NanonisServer, a: list[Any]) -> list[Any]:
        try:
            action(srv.lab, a)
        except ControllerError as exc:
            raise Refused(exc.detail) from None
        return []

    return handler


def _get(*exprs: Callable[[MockLab], Any]) -> Handler:
    def handler(srv: NanonisServer, a: list[Any]) -> list[Any]:
        with srv.lab.lock:
            return [expr(srv.lab) for expr in exprs]

    return handler


def _signal_values(srv: NanonisServer, a: list[Any]) -> list[Any]:
    try:
        return [srv.lab.signal_values(a[0])]
    except ControllerError as exc:
        raise Refused(exc.detail) from None


HANDLERS: dict[str, Handler] = {
    "Bias.Set": _lab(lambda lab, a: lab.set_bias(a[0])),
    "Bias.Get": _get(lambda lab: lab.stm.bias_V),
    "Current.Get": lambda srv, a: [srv.lab.point_values()[0]],
    "ZCtrl.OnOffSet": _lab(lambda lab, a: lab.set_feedback(bool(a[0]))),
    "ZCtrl.OnOffGet": _get(lambda lab: int(lab.stm.feedback_on)),
    "ZCtrl.SetpntSet": _lab(lambda lab, a: lab.set_setpoint(a[0])),
    "ZCtrl.SetpntGet": _get(lambda lab: lab.stm.setpoint_A),
    "ZCtrl.ZPosGet": _get(lambda lab: lab.z_m()),
    "FolMe.XYPosSet": _lab(lambda lab, a: lab.move_tip(a[0], a[1])),
    "FolMe.XYPosGet": _get(lambda lab: lab.stm.x_m, lambda lab: lab.stm.y_m),
    "Scan.FrameSet": _frame_set,
    "Scan.FrameGet": _frame_get,
    "Signals.NamesGet": lambda srv, a: [SIGNAL_NAMES],
    "Signals.InSlotsGet": lambda srv, a: [[SIGNAL_NAMES[i] for i in SLOT_SIGNALS], list(SLOT_SIGNALS)],
    "Signals.ValsGet": _signal_values,
    "BiasSpectr.Open": lambda srv, a: [],
    "BiasSpectr.Start": _start,
    "BiasSpectr.Stop": _lab(lambda lab, a: lab.stop_sweep()),
    "BiasSpectr.StatusGet": _get(lambda lab: int(lab.stm.sweeping)),
    "BiasSpectr.ChsSet": _chs_set,
    "BiasSpectr.ChsGet": _chs_get,
    "BiasSpectr.PropsSet": _props_set,
    "BiasSpectr.PropsGet": _props_get,
    "BiasSpectr.AdvPropsSet": _adv_props_set,
    "BiasSpectr.AdvPropsGet": _adv_props_get,
    "BiasSpectr.LimitsSet": _limits_set,
    "BiasSpectr.LimitsGet": _get(lambda lab: lab.stm.start_V, lambda lab: lab.stm.end_V),
    "BiasSpectr.TimingSet": _timing_set,
    "BiasSpectr.TimingGet": _timing_get,
    "Util.VersionGet": lambda srv, a: [PRODUCT_LINE, "Generic 5", srv.release, srv.release],
}
assert set(HANDLERS) == set(wire.LAYOUTS), "every command of the protocol table needs a handler"


class NanonisServer(TcpServerBase):
    """The simulated controller on ``host:port`` (port 0 = a free port).

    Parameters
    ----------
    lab
        The shared lab state the commands act on (its fault plan is consulted per request).
    host, port
        Where to listen.
    release
        RT engine release the controller pretends to be (``Util.VersionGet``); below
        :data:`FULL_SIGNAL_LIST_RELEASE` it has the older layouts and no ``Util.VersionGet``.
    unknown_command
        ``"error"``: a command it does not know is answered with the error section set;
        ``"silent"``: it is not answered at all (the client times out).
    """

    lab: MockLab
    release: int

    def __init__(
        self,
        lab: MockLab,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        release: int = DEFAULT_RELEASE,
        unknown_command: Literal["error", "silent"] = "error",
    ) -> None:
        if unknown_command not in ("error", "silent"):
            raise ValueError(f"unknown_command must be 'error' or 'silent', got {unknown_command!r}")
        super().__init__("nanonis", host=host, port=port)
        self.lab = lab
        self.release = int(release)
        self.old_layout = self.release < FULL_SIGNAL_LIST_RELEASE
        self.unknown_command = unknown_command
        self.layouts = wire.layouts_for(self.old_layout)
        self.requests = 0
        self.unknown: list[str] = []  # names of the unknown commands received, in order

    # -- protocol (TcpServerBase.serve) ---------------------------------------------------
    def serve(self, conn: socket.socket) -> None:
        """Read request frames and answer them until the peer closes."""
        while True:
            head = _recv_exact(conn, wire.HEADER_SIZE)
            if head is None:
                return
            try:
                name, size, respond = wire.parse_header(head)
            except wire.ProtocolError as exc:
                log.warning("closing connection on a malformed header: %s", exc)
                return  # without a valid size the stream cannot be resynchronised
            body = _recv_exact(conn, size)
            if body is None:
                return
            self.requests += 1
            keep_open, reply = self._serve_request(name, body)
            if reply is not None and respond:
                conn.sendall(reply)  # one write per frame
            if not keep_open:
                return

    def _serve_request(self, name: str, body: bytes) -> tuple[bool, bytes | None]:
        """(keep the connection open, reply frame or None) for one request."""
        fault = self.lab.faults.on_command(self.instrument, name)
        if fault is not None and fault.kind is FaultKind.CONNECTION_DROP:
            log.info("fault: dropping the connection on %s", name)
            return False, None
        if fault is not None and fault.kind is FaultKind.NO_REPLY:
            log.info("fault: no reply to %s", name)
            return True, None
        if fault is not None and fault.kind is FaultKind.DELAY:
            time.sleep(float(fault.params["delay_s"]))
        layout = self.layouts.get(name)
        if layout is None:
            self.unknown.append(name)
            if self.unknown_command == "silent":
                return True, None
            return True, wire.failure(name, (), f"Unknown command name {name!r}")
        arg_types, return_types = layout
        if fault is not None and fault.kind is FaultKind.ERROR_REPLY:
            return True, wire.failure(name, return_types, str(fault.params["message"]))
        try:
            values = HANDLERS[name](self, wire.decode_arguments(arg_types, body))
        except (Refused, wire.ProtocolError) as exc:
            return True, wire.failure(name, return_types, str(exc))
        return True, wire.success(name, return_types, values)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None if the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
