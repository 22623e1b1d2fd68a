"""One pyvisa session with the habits every stslive driver needs.

Contract: timeouts (open and I/O, s) from configuration; ``TCP_NODELAY`` on
``TCPIP::host::port::SOCKET`` sessions (set on the underlying socket, as pyvisa-py refuses the
VISA attribute; without it a small request waits for the peer's delayed ACK); a refused TCP
connection reported at open time; typed errors (:class:`~stslive.drivers.errors.InstrumentTimeout`,
:class:`~stslive.drivers.errors.InstrumentConnectionError`); a lost connection reopened at most
``reconnect_attempts`` times with a doubling delay, an idempotent exchange repeated once on the
new connection; the session closed after a timeout so a late reply is never read as the next
answer; ``close()`` idempotent. Text instruments use :meth:`VisaSession.query` /
:meth:`VisaSession.write`; the Nanonis binary protocol uses :meth:`VisaSession.transaction`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import pyvisa
from pyvisa import constants
from pyvisa.errors import VisaIOError
from pyvisa.resources import MessageBasedResource

from stslive.drivers.errors import ConfigError, InstrumentConnectionError, InstrumentTimeout
from stslive.drivers.tomlfile import check_keys

log = logging.getLogger(__name__)

T = TypeVar("T")

# VISA status codes that mean "the link is gone" rather than "the peer is slow".
_CONNECTION_CODES = frozenset(
    {
        constants.StatusCode.error_connection_lost,
        constants.StatusCode.error_io,
        constants.StatusCode.error_resource_not_found,
        constants.StatusCode.error_invalid_object,
    }
)


@dataclass(frozen=True)
class VisaSettings:
    """How to reach one instrument.

    Parameters
    ----------
    resource
        VISA resource string, e.g. ``"TCPIP::127.0.0.1::6501::SOCKET"`` or ``"GPIB0::8::INSTR"``.
    timeout_s
        I/O timeout of one read or write (s).
    open_timeout_s
        Timeout for opening the session (s).
    reconnect_attempts
        How many times a lost connection is reopened before giving up (0 = never).
    reconnect_delay_s
        First delay between reopen attempts (s); doubles after each failure.
    backend
        pyvisa backend (``"@py"`` for pyvisa-py, ``""`` for the system VISA library).
    read_termination, write_termination
        Text termination; ``None`` for binary protocols (termination char OFF: pyvisa-py would
        otherwise stop a binary read at every ``0x0A`` byte).
    bridge
        A GPIB-Ethernet (or -USB) bridge to open before ``resource``, as pyvisa-py (>= 0.8)
        names it: ``PRLGX-TCPIP::host::1234::INTFC`` or ``PRLGX-ASRL::/dev/ttyUSB0::INTFC``;
        ``resource`` is then ``GPIB::<address>::INSTR`` on that bridge. ``None``: no bridge.
    """

    resource: str
    timeout_s: float = 5.0
    open_timeout_s: float = 5.0
    reconnect_attempts: int = 2
    reconnect_delay_s: float = 0.1
    backend: str = "@py"
    read_termination: str | None = None
    write_termination: str | None = None
    bridge: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.resource, str) or "::" not in self.resource:
            raise ConfigError(
                f"'resource' = {self.resource!r} is not a VISA resource string; use e.g. TCPIP::127.0.0.1::6501::SOCKET"
            )
        for key in ("timeout_s", "open_timeout_s", "reconnect_delay_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"'{key}' = {value!r} must be a number of seconds")
        for key in ("timeout_s", "open_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"'{key}' = {getattr(self, key)!r} must be > 0 seconds")
        if (
            isinstance(self.reconnect_attempts, bool)
            or not isinstance(self.reconnect_attempts, int)
            or self.reconnect_attempts < 0
        ):
            raise ConfigError(f"'reconnect_attempts' = {self.reconnect_attempts!r} must be an integer >= 0")
        if not self.reconnect_delay_s >= 0:
            raise ConfigError(f"'reconnect_delay_s' = {self.reconnect_delay_s!r} must be >= 0 seconds")
        if self.bridge is not None and not (
            self.bridge.upper().startswith("PRLGX-") and self.bridge.upper().endswith("::INTFC")
        ):
            raise ConfigError(
                f"'bridge' = {self.bridge!r} is not a bridge resource; use PRLGX-TCPIP::host::1234::INTFC "
                "(GPIB-Ethernet) or PRLGX-ASRL::/dev/ttyUSB0::INTFC (GPIB-USB)"
            )
        if self.bridge is not None and not self.resource.upper().startswith("GPIB"):
            raise ConfigError(f"'resource' = {self.resource!r} behind a bridge must be GPIB::<address>::INSTR")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], **defaults: Any) -> VisaSettings:
        """Build from a config table (TOML); unknown keys raise ConfigError naming them.

        ``defaults`` supply values the table does not give (e.g. a driver's termination).
        """
        check_keys(table, (f.name for f in fields(cls)), what="instrument settings")
        if "resource" not in table and "resource" not in defaults:
            raise ConfigError("instrument setting 'resource' (the VISA resource string) is missing")
        return cls(**{**defaults, **dict(table)})

    @property
    def is_tcp_socket(self) -> bool:
        """True for ``TCPIP::host::port::SOCKET`` resources."""
        parts = self.resource.upper().split("::")
        return parts[0].startswith("TCPIP") and parts[-1] == "SOCKET"


def set_tcp_nodelay(resource: MessageBasedResource) -> bool:
    """Disable Nagle's algorithm on a TCPIP SOCKET session; True if it was set.

    pyvisa-py keeps the Python socket as the session's ``interface``; other VISA libraries take
    the attribute.
    """
    sock = underlying_socket(resource)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    resource.set_visa_attribute(constants.ResourceAttribute.tcpip_nodelay, constants.VI_TRUE)
    return True


def underlying_socket(resource: MessageBasedResource) -> socket.socket | None:
    """The Python socket under a pyvisa-py ``TCPIP::...::SOCKET`` session, or ``None``.

    pyvisa-py keeps the connected socket as the session's ``interface``; other VISA libraries
    (NI-VISA, Keysight) do not expose one, and serial/GPIB sessions have none, so callers must
    handle ``None`` (set the VISA attribute instead, or skip a socket-level check).

    Parameters
    ----------
    resource
        An open pyvisa message-based resource.

    Returns
    -------
    socket.socket or None
        The connected socket, for socket options (``TCP_NODELAY``), a non-blocking peek at the
        peer's state, or reading a large binary reply straight from the socket.
    """
    sessions = getattr(getattr(resource, "visalib", None), "sessions", None)
    session = sessions.get(getattr(resource, "session", None)) if isinstance(sessions, dict) else None
    sock = getattr(session, "interface", None)
    return sock if isinstance(sock, socket.socket) else None


def peer_closed(resource: MessageBasedResource) -> bool:
    """True if the peer of a pyvisa-py socket session has closed (or reset) the connection.

    pyvisa-py reports a closed peer only as a read timeout; a non-blocking peek tells the two
    apart (``b""`` means end of stream).
    """
    sock = underlying_socket(resource)
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def compound_query_count(message: str) -> int:
    """Number of queries (commands with ``?``) in a ``;``-separated text message."""
    return sum("?" in command for command in message.split(";"))


class VisaSession:
    """A reconnecting pyvisa session for one instrument.

    Parameters
    ----------
    settings
        Resource, timeouts, reconnect policy.
    instrument
        Short instrument name used in error messages (``"nanonis"``, ``"sr830"`` ...).
    resource_manager
        An existing ``pyvisa.ResourceManager``; by default one is made for ``settings.backend``
        and closed with the session.
    """

    def __init__(
        self,
        settings: VisaSettings,
        *,
        instrument: str,
        resource_manager: pyvisa.ResourceManager | None = None,
    ) -> None:
        self.settings = settings
        self.instrument = instrument
        self._rm = resource_manager
        self._own_rm = resource_manager is None
        self._resource: MessageBasedResource | None = None
        self._bridge: Any = None  # the open bridge (INTFC) resource under a GPIB resource, if any
        # One exchange at a time: a request and its reply must not interleave with another's.
        self._lock = threading.RLock()
        self.reconnects = 0  # re-opens after the first open (lost connections, timeouts)
        self._opened_before = False
        # Set by a driver whose instrument answers each query of a ';' compound line on its own
        # terminated line (SR830 manual p. 5-2); see query().
        self.separate_replies = False

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Open the session now (otherwise the first exchange opens it)."""
        with self._lock:
            if self._resource is None:
                self._open_with_retries()

    @property
    def is_open(self) -> bool:
        """True while a session is held."""
        return self._resource is not None

    @property
    def resource(self) -> MessageBasedResource:
        """The open pyvisa resource (opened on demand)."""
        with self._lock:
            if self._resource is None:
                self._open_with_retries()
            assert self._resource is not None
            return self._resource

    def reset(self) -> None:
        """Drop the connection (e.g. after a reply that put the stream out of step); the next
        exchange reopens it."""
        with self._lock:
            self._drop()

    def close(self) -> None:
        """Close the resource (and the resource manager if owned); safe to call twice."""
        with self._lock:
            self._drop()
            if self._own_rm and self._rm is not None:
                self._rm.close()
                self._rm = None

    def __enter__(self) -> VisaSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- exchanges ----------------------------------------------------------------------------
    def transaction(self, fn: Callable[[MessageBasedResource], T], *, what: str, idempotent: bool = True) -> T:
        """Run one request/reply exchange ``fn(resource)`` with typed errors and reconnect.

        Parameters
        ----------
        fn
            Does the whole exchange on the resource and returns its result.
        what
            Names the exchange in error messages (e.g. the command).
        idempotent
            If true, a connection lost during the exchange is repaired and the exchange repeated
            once; if false the error is raised (the command may have run).
        """
        with self._lock:
            repeated = False
            while True:
                resource = self.resource
                try:
                    return fn(resource)
                except VisaIOError as exc:
                    if exc.error_code == constants.StatusCode.error_timeout and not peer_closed(resource):
                        self._drop()
                        raise InstrumentTimeout(
                            self.instrument,
                            f"no complete reply to {what} within {self.settings.timeout_s:g} s from "
                            f"{self.settings.resource}; check the instrument is responsive or raise timeout_s",
                        ) from exc
                    if exc.error_code != constants.StatusCode.error_timeout and exc.error_code not in _CONNECTION_CODES:
                        raise InstrumentConnectionError(self.instrument, f"VISA error during {what}: {exc}") from exc
                    cause: Exception = exc
                except (ConnectionError, OSError) as exc:
                    cause = exc
                self._drop()
                if repeated or not idempotent or self.settings.reconnect_attempts == 0:
                    raise InstrumentConnectionError(
                        self.instrument,
                        f"connection to {self.settings.resource} lost during {what} ({cause}); "
                        + ("the command may have run; " if not idempotent else "")
                        + "the next call reconnects",
                    ) from cause
                log.warning("%s: connection lost during %s (%s); reconnecting", self.instrument, what, cause)
                repeated = True

    def write_raw(self, data: bytes) -> None:
        """Write bytes as one VISA write (call inside :meth:`transaction`)."""
        self.resource.write_raw(data)

    def read_exact(self, resource: MessageBasedResource, count: int) -> bytes:
        """Read exactly ``count`` bytes, ignoring termination characters."""
        if count == 0:
            return b""
        data = resource.read_bytes(count, break_on_termchar=False)
        if len(data) != count:
            raise ConnectionError(f"short read: {len(data)} of {count} bytes")
        return bytes(data)

    def query(self, message: str, *, idempotent: bool = True) -> str:
        """Text query (write then read the reply), stripped of the termination.

        A compound message (``"LIAS?;ERRS?;*ESR?"``) costs one round trip and returns its replies
        joined by ``;`` as IEEE 488.2 instruments send them. If :attr:`separate_replies` is set
        the instrument answers each query on its own line; one line per query of the message is
        then read (in the same exchange) and the lines are joined by ``;``.
        """
        count = compound_query_count(message) if self.separate_replies else 1
        if count <= 1:
            return self.transaction(lambda r: r.query(message).strip(), what=repr(message), idempotent=idempotent)

        def exchange(r: MessageBasedResource) -> str:
            r.write(message)
            return ";".join(r.read().strip() for _ in range(count))

        return self.transaction(exchange, what=repr(message), idempotent=idempotent)

    def write(self, message: str, *, idempotent: bool = True) -> None:
        """Text write."""
        self.transaction(lambda r: r.write(message), what=repr(message), idempotent=idempotent)

    # -- internals ----------------------------------------------------------------------------
    def _manager(self) -> pyvisa.ResourceManager:
        if self._rm is None:
            self._rm = pyvisa.ResourceManager(self.settings.backend)
        return self._rm

    def _open_with_retries(self) -> None:
        delay = self.settings.reconnect_delay_s
        attempts = 1 + self.settings.reconnect_attempts
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                self._resource = self._open_once()
                if self._opened_before:
                    self.reconnects += 1
                self._opened_before = True
                return
            except (VisaIOError, OSError, ValueError) as exc:
                last = exc
                log.info(
                    "%s: open %s failed (%s), attempt %d/%d",
                    self.instrument,
                    self.settings.resource,
                    exc,
                    attempt + 1,
                    attempts,
                )
        raise InstrumentConnectionError(
            self.instrument,
            f"cannot open {self.settings.resource} after {attempts} attempt(s) ({last}); check the instrument "
            "(or `stslive mock-lab`) is running at that address",
        ) from last

    def _open_once(self) -> MessageBasedResource:
        s = self.settings
        if s.bridge is not None and self._bridge is None:
            # pyvisa-py routes GPIB resources through a Prologix bridge opened first on that board
            self._bridge = self._manager().open_resource(
                s.bridge, open_timeout=int(s.open_timeout_s * 1000), timeout=int(s.timeout_s * 1000)
            )
        opened = self._manager().open_resource(
            s.resource, open_timeout=int(s.open_timeout_s * 1000), timeout=int(s.timeout_s * 1000)
        )
        # duck-typed, not isinstance: tests hand out replay resources that are not pyvisa classes
        if not hasattr(opened, "read_bytes"):
            opened.close()
            raise ValueError(f"{s.resource} is not a message-based resource")
        resource = cast(MessageBasedResource, opened)
        try:
            if s.bridge is None:  # behind a bridge, pyvisa-py ends reads at the bridge's LF (set on its INTFC)
                resource.read_termination = s.read_termination
            # pyvisa types write_termination as str; None (no termination) is what binary protocols need
            resource.write_termination = s.write_termination  # type: ignore[assignment]
            if s.is_tcp_socket:
                sock = underlying_socket(resource)
                # pyvisa-py's non-blocking connect reports success on a refused port.
                if sock is not None and (err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)):
                    raise ConnectionRefusedError(err, f"connection refused ({err})")
                set_tcp_nodelay(resource)
        except BaseException:
            resource.close()
            raise
        return resource

    def _drop(self) -> None:
        for name in ("_resource", "_bridge"):  # the instrument first, then the bridge under it
            resource = getattr(self, name)
            if resource is None:
                continue
            setattr(self, name, None)
            try:
                resource.close()
            except (VisaIOError, OSError) as exc:  # already dead: nothing left to release
                log.debug("%s: close after failure: %s", self.instrument, exc)
