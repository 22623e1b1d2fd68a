"""A simulated Prologix-style GPIB-Ethernet bridge with simulated GPIB instruments behind it.

Contract (Prologix GPIB-ETHERNET / GPIB-USB manuals): the bridge listens on TCP (port 1234 on
the real one). A host line ends with an unescaped CR or LF; ESC escapes the next byte (CR, LF,
ESC, ``+`` inside data). A line starting ``++`` is a bridge command: ``addr``, ``auto``, ``eoi``,
``eos`` (0 CR LF, 1 CR, 2 LF, 3 nothing appended), ``eot_enable``, ``eot_char``, ``mode``,
``read [eoi|char]``, ``read_tmo_ms``, ``clr``, ``spoll``, ``ver``, ``savecfg``, ``rst``; any
other line is data for the addressed instrument. The instrument's output is held until it is
read: ``++read`` (or every write with ``++auto 1``) passes it to the host unmodified. Each
instrument behind it is a :class:`~stslive.mocks.line_server.LineServer` that is never started,
used through :meth:`~stslive.mocks.line_server.LineServer.process`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

from stslive.mocks.line_server import LineServer
from stslive.mocks.tcp import TcpServerBase

log = logging.getLogger(__name__)

VERSION = "Prologix GPIB-ETHERNET Controller version 01.06.06.00"
_ESC = 0x1B
_EOS = {0: b"\r\n", 1: b"\r", 2: b"\n", 3: b""}


class PrologixServer(TcpServerBase):
    """The bridge on ``host:port`` with ``instruments`` at their GPIB primary addresses.

    Parameters
    ----------
    instruments
        GPIB primary address (0-30) -> the simulated instrument answering there.
    host, port
        Where to listen (0 = a free port).
    """

    def __init__(self, instruments: Mapping[int, LineServer], *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__("prologix", host=host, port=port)
        self.instruments = dict(instruments)
        self.commands: list[str] = []  # every ++ command received, in order (for tests)

    @property
    def intfc_resource(self) -> str:
        """The pyvisa-py resource of this bridge: ``PRLGX-TCPIP::host::port::INTFC``."""
        host, port = self.address
        return f"PRLGX-TCPIP::{host}::{port}::INTFC"

    def serve(self, conn: socket.socket) -> None:
        """Split the host's bytes into lines (ESC-aware) and act on each until the peer closes."""
        state = _Bridge(self)
        line = bytearray()
        escaped = False
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            for byte in chunk:
                if escaped:
                    line.append(byte)
                    escaped = False
                elif byte == _ESC:
                    escaped = True
                elif byte in (0x0A, 0x0D):
                    if line:
                        out = state.line(bytes(line))
                        if out:
                            conn.sendall(out)
                    line.clear()
                else:
                    line.append(byte)


class _Bridge:
    """Settings and held output of one host connection."""

    def __init__(self, server: PrologixServer) -> None:
        self.server = server
        self.addr = 0
        self.auto = 0
        self.eos = 0
        self.eot_enable = 0
        self.eot_char = b"\n"
        self.held: dict[int, bytes] = {}

    def line(self, raw: bytes) -> bytes:
        """What the bridge sends back for one host line."""
        if raw.startswith(b"++"):
            return self.command(raw[2:].decode("ascii", errors="replace").strip())
        device = self.server.instruments.get(self.addr)
        if device is None:
            return b""  # nobody listens at that address: the data goes nowhere
        # the eos terminator is appended on the bus; the instrument takes the message without it
        message = (raw + _EOS[self.eos]).decode("ascii", errors="replace").strip()
        out = device.process(message)
        if out:
            self.held[self.addr] = self.held.get(self.addr, b"") + out
        return self._read() if self.auto else b""

    def command(self, text: str) -> bytes:
        self.server.commands.append(text)
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name == "addr":
            if not arg:
                return f"{self.addr}\n".encode()
            self.addr = int(arg.split()[0])
        elif name in ("auto", "eos", "eot_enable"):
            if not arg:
                return f"{getattr(self, name)}\n".encode()
            setattr(self, name, int(arg))
        elif name == "eot_char":
            self.eot_char = bytes([int(arg)])
        elif name == "read":
            return self._read()
        elif name == "ver":
            return f"{VERSION}\n".encode()
        elif name == "spoll":
            return b"0\n"
        elif name == "clr":
            self.held.pop(self.addr, None)
        elif name not in ("mode", "eoi", "read_tmo_ms", "savecfg", "rst", "ifc", "loc", "llo", "trg"):
            log.info("prologix: unrecognised command ++%s", text)
        return b""

    def _read(self) -> bytes:
        out = self.held.pop(self.addr, b"")
        if out and self.eot_enable:
            out += self.eot_char
        return out
