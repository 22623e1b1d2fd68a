"""The generic line (text instrument) server behind the simulated SR830/SR860 and LakeShore 372.

:class:`LineServer` reads lines ended by LF or CR (an instrument on GPIB ends a message with LF,
on RS232 with LF or CR), splits them into ``;``-separated commands, applies the transport
faults of its :class:`FaultPlan` and hands each command to :meth:`LineServer.execute`; the
replies to one line go out in one write, each ended by :attr:`LineServer.reply_termination`.
:meth:`LineServer.process` is the same without a socket (a GPIB bridge simulation calls it).
A refused command gets no reply and sets bits of the IEEE 488.2 standard event status register,
kept with the instrument's settings in an :class:`InstrumentState`.
"""

from __future__ import annotations

import abc
import logging
import re
import socket
import threading
import time
from dataclasses import replace
from typing import Any, Generic, TypeVar

from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.tcp import TcpServerBase

log = logging.getLogger(__name__)

#: ``*ESR?`` bits (IEEE 488.2) a refused command sets.
ESR_EXECUTION_ERROR = 1 << 4
ESR_COMMAND_ERROR = 1 << 5

S = TypeVar("S")


class InstrumentState(Generic[S]):
    """Thread-safe holder of a text instrument's frozen settings and its ``*ESR?`` register.

    The server threads and the mock lab read and change the settings concurrently; holding one
    frozen dataclass swapped under a lock gives every reader a consistent copy without copying.

    Parameters
    ----------
    settings
        The initial frozen settings (a dataclass instance).
    """

    def __init__(self, settings: S) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._esr = 0

    def snapshot(self) -> S:
        """The present settings, as one consistent frozen copy."""
        with self._lock:
            return self._settings

    def update(self, **changes: Any) -> S:
        """Change fields of the settings atomically; returns the new snapshot."""
        with self._lock:
            self._settings = replace(self._settings, **changes)  # type: ignore[type-var]
            return self._settings

    def flag_esr(self, bits: int) -> None:
        """Set standard-event status bits (command/execution error)."""
        with self._lock:
            self._esr |= bits

    def take_esr(self) -> int:
        """Read and clear ``*ESR?``, as the instrument does."""
        with self._lock:
            esr, self._esr = self._esr, 0
            return esr


_HEADER = re.compile(r"^\s*(\*?[A-Za-z]+)(\?)?\s*(.*?)\s*$")


def split_command(command: str) -> tuple[str, bool, list[str]]:
    """``"OUTP? 1"`` -> (``"OUTP"``, True, [``"1"``]); header upper-cased, arguments stripped."""
    match = _HEADER.match(command)
    if match is None:
        return command.strip().upper(), False, []
    header, query, rest = match.groups()
    args = [a.strip() for a in rest.split(",")] if rest else []
    return header.upper(), query is not None, args


class EsrRefusal(Exception):
    """A command the simulated instrument refuses: no reply, ``esr_bits`` set in ``*ESR?``.

    Raised by :meth:`LineServer.execute`; the server sets the bits in its :class:`InstrumentState`.
    """

    def __init__(self, esr_bits: int) -> None:
        super().__init__(esr_bits)
        self.esr_bits = esr_bits


class LineServer(TcpServerBase):
    """Threaded TCP server for ``\\n``-terminated text instruments, with fault injection.

    Answers ``*IDN?`` (:attr:`identity`) and ``*ESR?`` (read and cleared from ``state``) itself;
    subclasses implement :meth:`execute` for every other command (reply line or None).

    Parameters
    ----------
    instrument
        Name used for fault lookup (``"sr830"``, ``"ls372"``).
    state
        The instrument's settings and ``*ESR?`` register, shared with the mock lab.
    identity
        The ``*IDN?`` reply line.
    host, port
        Where to listen; port 0 picks a free port (see :attr:`address`).
    faults
        The fault plan; ``None`` for a fault-free instrument.
    reply_termination
        Appended to every reply.
    """

    def __init__(
        self,
        instrument: str,
        state: InstrumentState[Any],
        *,
        identity: str,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        reply_termination: str = "\n",
    ) -> None:
        super().__init__(instrument, host=host, port=port)
        self.state = state
        self.identity = identity
        self.faults = faults
        self.reply_termination = reply_termination

    # -- subclass interface ----------------------------------------------------------------
    @abc.abstractmethod
    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        """Run one command; return the reply line for a query. Raise EsrRefusal to refuse."""

    def split(self, line: str) -> list[str]:
        """Commands on one received line (``;``-separated by default)."""
        return [c for c in line.split(";") if c.strip()]

    def reply_lines(self, replies: list[str]) -> list[str]:
        """The reply lines sent for the query replies of one received line, in order.

        Default (SR830 manual p. 5-2): "If multiple queries are sent on one command line ...
        the answers will be returned individually, each with a terminator."
        """
        return replies

    # -- per connection (TcpServerBase.serve) ---------------------------------------------
    def serve(self, conn: socket.socket) -> None:
        """Read lines ended by LF or CR and run their commands until the peer closes."""
        buffer = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buffer += chunk.replace(b"\r", b"\n")
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode("ascii", errors="replace").strip()
                if not line:
                    continue  # the LF of a CR LF pair
                out = self.process(line)
                if out is None:
                    return
                if out:  # all reply lines of one command line in one write
                    conn.sendall(out)

    def process(self, line: str) -> bytes | None:
        """The reply bytes to one received line (b"" if none); None if the connection is to drop."""
        replies: list[str] = []
        for command in self.split(line):
            keep_open, reply = self._serve_command(command)
            if not keep_open:
                return None
            if reply is not None:
                replies.append(reply)
        if not replies:
            return b""
        return "".join(r + self.reply_termination for r in self.reply_lines(replies)).encode("ascii")

    def _serve_command(self, command: str) -> tuple[bool, str | None]:
        """Handle one command: (False, None) when the connection is to be closed, else the reply."""
        header, is_query, args = split_command(command)
        fault = self.faults.on_command(self.instrument, header) if self.faults is not None else None
        if fault is not None:
            log.info("%s: fault %s on %r", self.instrument, fault.kind.value, command)
            if fault.kind is FaultKind.CONNECTION_DROP:
                return False, None
            if fault.kind is FaultKind.NO_REPLY:
                return True, None
            if fault.kind is FaultKind.ERROR_REPLY:
                self.state.flag_esr(ESR_EXECUTION_ERROR)
                return True, None
            if fault.kind is FaultKind.DELAY:
                time.sleep(float(fault.params["delay_s"]))
        if header == "*IDN" and is_query:
            return True, self.identity
        if header == "*ESR" and is_query:
            return True, str(self.state.take_esr())
        try:
            return True, self.execute(header, is_query, args)
        except EsrRefusal as refused:
            log.info("%s: refused %r", self.instrument, command)
            self.state.flag_esr(refused.esr_bits)
            return True, None
