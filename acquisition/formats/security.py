"""Remote monitoring with ZeroMQ CURVE: key files, allowed-client folders and secured sockets.

Contract: a socket given no :class:`Security` may bind only to loopback, ``ipc://`` or
``inproc://`` (:func:`check_bind`); a socket given one is a CURVE server on any address, whose
ZAP authenticator admits only the client public keys in the allowed folders of its role
(``data``: the run stream and the analyser's results, ``viewers/`` and ``controllers/``;
``control``: the scan's control socket, ``controllers/`` only). The folders are read at every
handshake, so adding or deleting a key takes effect at the next connection. One authenticator
serves a whole ZeroMQ context: :func:`secure_server` starts it with the first socket and each
returns a :class:`ServerGuard`; releasing the last guard stops it. The key directory made by
``stslive keys`` is described in ``docs/formats.md``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, TypeAlias

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from stslive.drivers.errors import ConfigError, StreamError

__all__ = [
    "CONTROLLERS_DIR",
    "VIEWERS_DIR",
    "CLIENTS_DIR",
    "Role",
    "Security",
    "ServerGuard",
    "authenticator_running",
    "check_bind",
    "is_local_endpoint",
    "bind_server",
    "secure_client",
    "secure_server",
]

log = logging.getLogger(__name__)

Role: TypeAlias = Literal["data", "control"]

VIEWERS_DIR = "viewers"
CONTROLLERS_DIR = "controllers"
CLIENTS_DIR = "clients"
_HINT = "create keys with 'stslive keys --dir KEYDIR' (see stslive.acquisition.formats.security for the layout)"


@dataclass(frozen=True, kw_only=True)
class Security:
    """Where the CURVE keys of one side of a connection are (paths; nothing is read here).

    Parameters
    ----------
    server_secret
        The server's ``NAME.key_secret`` (server side: sockets that bind).
    viewers, controllers
        Folders of allowed client public keys (``*.key``), read-only and control clients.
    client_secret
        This client's ``NAME.key_secret`` (client side: sockets that connect).
    server_public
        The server's ``NAME.key`` (client side).
    """

    server_secret: Path | None = None
    viewers: Path | None = None
    controllers: Path | None = None
    client_secret: Path | None = None
    server_public: Path | None = None

    @classmethod
    def from_dir(cls, keydir: str | os.PathLike[str], *, server: str = "server", client: str | None = None) -> Security:
        """The standard layout of ``stslive keys`` under ``keydir`` (client fields only if ``client``)."""
        root = Path(keydir)
        return cls(
            server_secret=root / f"{server}.key_secret",
            viewers=root / VIEWERS_DIR,
            controllers=root / CONTROLLERS_DIR,
            client_secret=None if client is None else root / CLIENTS_DIR / f"{client}.key_secret",
            server_public=root / f"{server}.key",
        )

    def allowed_folders(self, role: Role) -> tuple[Path, ...]:
        """Folders whose keys may connect to a socket of ``role`` (see the module table)."""
        folders: tuple[Path | None, ...]
        if role == "control":
            folders = (self.controllers,)
        elif role == "data":
            folders = (self.viewers, self.controllers)
        else:
            raise ConfigError(f"socket role must be 'data' or 'control', not {role!r}")
        missing = [f for f in folders if f is None or not f.is_dir()]
        if missing:
            raise ConfigError(
                f"allowed-client folder(s) {[str(f) for f in missing]} for role {role!r} do not exist; {_HINT}"
            )
        return tuple(f for f in folders if f is not None)


# -- endpoints --------------------------------------------------------------------------------
def is_local_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and ``tcp://`` on loopback (127.0.0.0/8, ::1, localhost).

    Raises
    ------
    StreamError
        If ``endpoint`` is not ``TRANSPORT://ADDRESS`` or uses a transport other than these.
    """
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        raise StreamError(f"endpoint {endpoint!r} is not of the form TRANSPORT://ADDRESS, e.g. tcp://127.0.0.1:PORT")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        raise StreamError(f"endpoint {endpoint!r}: transport {transport!r} not supported; use tcp://127.0.0.1:PORT")
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: reachable from outside
        return False


def check_bind(endpoint: str, security: Security | None) -> None:
    """Refuse to bind ``endpoint`` beyond this machine without CURVE keys.

    Loopback, ``ipc://`` and ``inproc://`` are always allowed. Anything else (``*``, 0.0.0.0,
    a LAN address, an interface or host name) needs a :class:`Security` with a server key.
    Nothing is bound or sent here.

    Raises
    ------
    StreamError
        A non-local endpoint without keys (the message says to run ``stslive keys``), or a
        malformed endpoint.
    ConfigError
        A non-local endpoint whose :class:`Security` names no server secret key file.
    """
    if is_local_endpoint(endpoint):
        return
    if security is None:
        raise StreamError(
            f"refusing to bind {endpoint!r} without authentication: it would be reachable from the network. "
            f"Bind to tcp://127.0.0.1:PORT, or bind remotely with ZeroMQ CURVE keys: {_HINT}, "
            "then pass the key directory (e.g. --keys KEYDIR)."
        )
    if security.server_secret is None:
        raise ConfigError(f"binding {endpoint!r} beyond loopback needs the server secret key; {_HINT}")


# -- keys -------------------------------------------------------------------------------------
def _load(path: Path | None, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    if path is None:
        side = "Security.from_dir(KEYDIR, client=NAME)" if what.startswith("client") else "Security.from_dir(KEYDIR)"
        raise ConfigError(f"no {what} key file given; pass {side}, or {_HINT}")
    if not path.is_file():
        raise ConfigError(f"{what} key file {path} not found; {_HINT}")
    if secret and os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s is readable by other users; run 'chmod 600 %s' (anyone who reads it can impersonate it)", path, path
        )
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a ZeroMQ certificate ({exc}); {_HINT}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds no secret key; pass the NAME.key_secret file, not NAME.key")
    return public, secret_key


class _FolderKeys:
    """ZAP credentials provider: a client key is allowed if a ``*.key`` in one folder holds it.

    The folders are read at every handshake so that added or revoked keys apply at once
    (zmq.auth's ``configure_curve`` would snapshot one folder at start-up).
    """

    def __init__(self, folders: tuple[Path, ...]) -> None:
        self.folders = folders
        self.allowed = 0
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread with the client's z85 public key."""
        try:
            ok = any(key in zmq.auth.load_certificates(folder) for folder in self.folders)
        except (OSError, ValueError) as exc:  # a folder removed or a broken file: deny, loudly
            log.error("CURVE %s: cannot read allowed keys (%s); denying %s", domain, exc, key.decode(errors="replace"))
            ok = False
        if ok:
            self.allowed += 1
        else:
            self.denied += 1
            # a refused client retries every reconnect interval (0.1 s): log the first few, then rarely
            if self.denied <= 10 or self.denied % 1000 == 0:
                log.warning(
                    "CURVE %s: denied client key %s (not in %s); %d denied so far",
                    domain,
                    key.decode(errors="replace"),
                    [str(f) for f in self.folders],
                    self.denied,
                )
        return ok


class _ContextAuth:
    """One started ThreadAuthenticator per context, reference-counted by ServerGuards."""

    _lock = threading.Lock()
    _by_context: ClassVar[dict[int, _ContextAuth]] = {}

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self.auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        self.auth.start()
        self.users = 0
        self.providers: dict[str, _FolderKeys] = {}

    @classmethod
    def acquire(cls, context: zmq.Context, domain: str, folders: tuple[Path, ...]) -> _FolderKeys:
        with cls._lock:
            entry = cls._by_context.get(id(context))
            if entry is None:
                entry = cls._by_context[id(context)] = cls(context)
            entry.users += 1
            provider = entry.providers.get(domain)
            if provider is None:
                provider = entry.providers[domain] = _FolderKeys(folders)
                entry.auth.configure_curve_callback(domain=domain, credentials_provider=provider)
            return provider

    @classmethod
    def release(cls, context: zmq.Context) -> None:
        with cls._lock:
            entry = cls._by_context.get(id(context))
            if entry is None:
                return
            entry.users -= 1
            if entry.users <= 0:
                del cls._by_context[id(context)]
                entry.auth.stop()

    @classmethod
    def running(cls, context: zmq.Context) -> bool:
        with cls._lock:
            entry = cls._by_context.get(id(context))
            return entry is not None and entry.auth.is_alive()


def authenticator_running(context: zmq.Context) -> bool:
    """Whether a ZAP authenticator started by :func:`secure_server` is running on ``context``."""
    return _ContextAuth.running(context)


class ServerGuard:
    """What :func:`secure_server` set up; :meth:`release` it when the socket is closed.

    Attributes ``allowed``/``denied`` count handshakes the authenticator admitted or refused
    for this socket's role (shared by sockets of the same role and keys on one context).
    """

    def __init__(self, context: zmq.Context, provider: _FolderKeys, role: Role) -> None:
        self._context = context
        self._provider = provider
        self.role = role
        self._released = False

    @property
    def allowed(self) -> int:
        """Client handshakes admitted so far."""
        return self._provider.allowed

    @property
    def denied(self) -> int:
        """Client handshakes refused so far (unknown key, or a viewer on a control socket)."""
        return self._provider.denied

    def release(self) -> None:
        """Drop this socket's hold on the context's authenticator (stopped with the last); idempotent.

        Call before ``context.term()``: a running authenticator keeps the context open.
        """
        if not self._released:
            self._released = True
            _ContextAuth.release(self._context)


def _domain(role: Role, folders: tuple[Path, ...]) -> str:
    # one ZAP domain per (role, folders): sockets with other keys can share the context
    digest = hashlib.sha1("\0".join(str(f.resolve()) for f in folders).encode()).hexdigest()[:12]
    return f"stslive.{role}.{digest}"


def secure_server(socket: zmq.Socket, security: Security, *, role: Role) -> ServerGuard:
    """Make ``socket`` a CURVE server admitting only the allowed client keys of ``role``.

    Call before ``bind``. Starts the context's ZAP authenticator if it is not running.

    Parameters
    ----------
    socket
        A socket that will bind (PUB, XPUB, PUSH, REP, ROUTER).
    security
        Needs ``server_secret`` and the allowed folders of ``role``.
    role
        ``"data"`` (viewers and controllers) or ``"control"`` (controllers only).

    Raises
    ------
    ConfigError
        A key file or folder is missing or unreadable.
    """
    folders = security.allowed_folders(role)
    public, secret = _load(security.server_secret, "server secret", secret=True)
    domain = _domain(role, folders)
    provider = _ContextAuth.acquire(socket.context, domain, folders)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    socket.zap_domain = domain.encode()
    return ServerGuard(socket.context, provider, role)


def bind_server(
    socket: zmq.Socket, endpoint: str, security: Security | None, *, role: Role, what: str
) -> ServerGuard | None:
    """Bind ``socket`` to ``endpoint``, as a CURVE server of ``role`` when ``security`` is given.

    The one bind path of every stslive server socket (run stream, results stream, control):
    whatever fails, the socket is closed and the authenticator released before the error leaves.

    Returns
    -------
    ServerGuard or None
        Release it when the socket is closed (None without ``security``).

    Raises
    ------
    ConfigError
        A key file or folder is missing (from :func:`secure_server`).
    StreamError
        The endpoint cannot be bound (port in use, bad address); the message names ``what``.
    """
    guard = None
    try:
        if security is not None:
            guard = secure_server(socket, security, role=role)
        socket.bind(endpoint)
    except ConfigError:  # a key file or folder is missing: its message says how to make it
        socket.close()
        raise
    except zmq.ZMQError as exc:
        socket.close()
        if guard is not None:
            guard.release()
        raise StreamError(f"cannot bind {what} to {endpoint!r} ({exc}); is the port in use?") from exc
    return guard


def secure_client(socket: zmq.Socket, security: Security, server_public: bytes | Path | None = None) -> None:
    """Make ``socket`` a CURVE client with this client's key pair; call before ``connect``.

    Parameters
    ----------
    server_public
        The server's z85 public key (40 bytes) or its ``.key`` file; default
        ``security.server_public``.

    Raises
    ------
    ConfigError
        A key file is missing, or ``server_public`` is not a 40-character z85 key.
    """
    public, secret = _load(security.client_secret, "client secret", secret=True)
    if isinstance(server_public, bytes):
        server_key = server_public
    else:
        server_key, _ = _load(server_public or security.server_public, "server public", secret=False)
    if len(server_key) != 40:
        raise ConfigError(
            f"server public key must be 40 z85 characters, got {len(server_key)}; use the server's .key file"
        )
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_key
