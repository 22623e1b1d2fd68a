"""A simulated SR830 (or SR860) lock-in on a TCP socket.

Contract: the command set of :mod:`stslive.mocks.srs_models` (from the manuals), over a line
server (:mod:`stslive.mocks.line_server`). The socket stands for the interface the lock-in is
on: ``interface="gpib"`` (behind a GPIB-Ethernet bridge; replies end with LF) or ``"rs232"``
(behind a serial device server; replies end with CR, SR830 manual p. 5-2). An SR830 sends its
replies only to the interface ``OUTX`` selects: a query from the other one gets no reply (the
host times out), as ``outx`` at power-on may leave it. The SR830 answers each query of a line
on its own line, the SR860 joins them with ``;``. A refused command gets no reply and sets
``*ESR?`` bit 4 (EXE) or 5 (CMD). :class:`LockInState` is shared with the mock lab, which
writes the demodulated signal and reads the modulation; a ``lockin_overload`` fault sets the
overload bits. Transport faults act on the command header (``"OUTP"``, ``"*IDN"``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from stslive.mocks import srs_models
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.line_server import ESR_COMMAND_ERROR, EsrRefusal, InstrumentState, LineServer
from stslive.mocks.srs_models import (
    CUROVLD_CH1_OUTPUT,
    CUROVLD_INPUT,
    LIAS_INPUT_OVERLOAD,
    LIAS_OUTPUT_OVERLOAD,
    LockInSettings,
)

__all__ = ["LockInSettings", "LockInState", "SR830Server"]

Interface = Literal["gpib", "rs232"]
_OUTX = {"rs232": 0, "gpib": 1}


class LockInState(InstrumentState[LockInSettings]):
    """Thread-safe lock-in state shared by the SR830 server and the mock lab.

    Parameters
    ----------
    model
        ``"SR830"`` or ``"SR860"``.
    **initial
        Initial values of :class:`~stslive.mocks.srs_models.LockInSettings` fields.
    """

    def __init__(self, model: str = "SR830", **initial: Any) -> None:
        super().__init__(srs_models.initial(model, **initial))
        self._lias_latched = 0

    def set_signal(self, x_v: float, y_v: float) -> None:
        """The demodulated signal the lock-in now sees (V); written by the lab per point.

        A signal above full scale latches the output-overload bit (SR830) until read, as a
        transient overload during a sweep must still show at the next status query.
        """
        with self._lock:
            self._settings = replace(self._settings, x_v=float(x_v), y_v=float(y_v))
            self._lias_latched |= self._present_bits(overload=False)

    def set_overload(self, on: bool) -> None:
        """Hold (or release) an input overload; on the SR830 the bit latches until read."""
        with self._lock:
            self._settings = replace(self._settings, overload=bool(on))
            self._lias_latched |= self._present_bits(overload=False)

    def take_overload_bits(self, *, overload: bool) -> int:
        """Read the overload bits in the model's layout (``LIAS?`` / ``CUROVLDSTAT?``).

        ``overload`` adds an input overload from outside the state (a fault window). The SR830
        reports what latched since the last read plus the present condition and clears the
        latch; the SR860's register is the present condition only.
        """
        with self._lock:
            now = self._present_bits(overload=overload)
            if self._settings.model == "SR830":
                bits, self._lias_latched = self._lias_latched | now, 0
                return bits
            return now

    def _present_bits(self, *, overload: bool) -> int:
        # caller holds the lock
        s = self._settings
        input_overload = overload or s.overload
        output_overload = max(abs(s.x_v), abs(s.y_v)) > s.sensitivity_v
        if s.model == "SR830":
            return (LIAS_INPUT_OVERLOAD if input_overload else 0) | (LIAS_OUTPUT_OVERLOAD if output_overload else 0)
        return (CUROVLD_INPUT if input_overload else 0) | (CUROVLD_CH1_OUTPUT if output_overload else 0)

    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        """Run one command of the model's set atomically (EsrRefusal if refused)."""
        with self._lock:
            reply, self._settings = srs_models.execute(self._settings, header, is_query, args)
        return reply

    def clear(self) -> None:
        """``*CLS``: clear the status registers."""
        with self._lock:
            self._esr = 0
            self._lias_latched = 0


class SR830Server(LineServer):
    """Simulated SR830/SR860 lock-in over TCP (see the module docstring).

    Parameters
    ----------
    state
        The shared :class:`LockInState` (a fresh SR830 by default).
    host, port, faults
        As for :class:`~stslive.mocks.line_server.LineServer`.
    serial
        Serial number printed by ``*IDN?``.
    interface
        Which interface the socket stands for: ``"gpib"`` (LF replies) or ``"rs232"`` (CR).
    outx
        The SR830's OUTX at power-on (0 RS232, 1 GPIB); default: the interface in use.
    """

    def __init__(
        self,
        state: LockInState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        serial: str = "s/n86001",
        interface: Interface = "gpib",
        outx: int | None = None,
    ) -> None:
        if interface not in _OUTX:
            raise ValueError(f"interface must be 'gpib' or 'rs232', got {interface!r}")
        self.state: LockInState = state if state is not None else LockInState()
        self.interface = interface
        model = self.state.snapshot().model
        self.state.update(outx=_OUTX[interface] if outx is None else int(outx))
        identity = f"Stanford_Research_Systems,{model},{serial},ver1.07"
        termination = "\r" if interface == "rs232" else "\n"
        super().__init__(
            "sr830", self.state, identity=identity, host=host, port=port, faults=faults, reply_termination=termination
        )

    def reply_lines(self, replies: list[str]) -> list[str]:
        snapshot = self.state.snapshot()
        if snapshot.model == "SR830" and snapshot.outx != _OUTX[self.interface]:
            return []  # replies go to the interface OUTX selects, not this one
        if snapshot.model == "SR860":
            return [";".join(replies)]  # SR860 ch. 4: several queries on a line, one ';'-joined reply
        return replies

    def _overloaded(self) -> bool:
        plan = self.faults
        return plan is not None and plan.active(FaultKind.LOCKIN_OVERLOAD, spectrum=plan.spectrum) is not None

    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        model = self.state.snapshot().model
        if header == "*CLS" and not is_query and not args:
            self.state.clear()
            return None
        status_query = {"SR830": "LIAS", "SR860": "CUROVLDSTAT"}[model]
        if header == status_query and is_query and not args:
            return str(self.state.take_overload_bits(overload=self._overloaded()))
        if header == "ERRS" and is_query and not args and model == "SR830":
            return "0"
        if header.startswith("*"):
            raise EsrRefusal(ESR_COMMAND_ERROR)
        return self.state.execute(header, is_query, args)
