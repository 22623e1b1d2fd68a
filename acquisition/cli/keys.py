"""``stslive keys``: create the ZeroMQ CURVE key pairs for remote monitoring and control.

Examples::

    stslive keys --dir ~/.stslive/keys                         # server key pair (once per scan machine)
    stslive keys --dir ~/.stslive/keys --client screen --role viewer    # read-only control-room screen
    stslive keys --dir ~/.stslive/keys --client alice --role control    # may pause/abort/re-measure

Layout (also in :mod:`stslive.acquisition.formats.security`)::

    KEYDIR/server.key, server.key_secret       the scan machine's pair (public part to clients)
    KEYDIR/clients/NAME.key, NAME.key_secret    each client's pair (secret part to that client)
    KEYDIR/viewers/NAME.key                     allowed read-only clients
    KEYDIR/controllers/NAME.key                 allowed control clients

Revoke a client by deleting its ``.key`` from ``viewers/`` or ``controllers/``; it applies at
the client's next connection. Existing pairs are never overwritten unless ``--force``: a new
server pair locks every client out until they get the new ``server.key``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import zmq.auth

from stslive.acquisition.formats.security import CLIENTS_DIR, CONTROLLERS_DIR, VIEWERS_DIR
from stslive.drivers.errors import ConfigError

_ROLE_DIRS = {"viewer": VIEWERS_DIR, "control": CONTROLLERS_DIR}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive keys``."""
    parser.add_argument("--dir", required=True, type=Path, metavar="KEYDIR", help="key directory (created if absent)")
    parser.add_argument(
        "--server",
        default="server",
        metavar="NAME",
        help="server key pair name (default: server); created if it does not exist",
    )
    parser.add_argument("--client", metavar="NAME", help="also create a client key pair NAME (needs --role)")
    parser.add_argument("--role", choices=sorted(_ROLE_DIRS), help="viewer: read-only; control: may send commands")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing pair of the same name (the server pair only when no --client is given)",
    )


def _name(value: str, option: str) -> str:
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{option} {value!r}: use 1-64 letters, digits, '_', '-' or '.' (it becomes a file name)")
    return value


def _create_pair(folder: Path, name: str, *, force: bool) -> tuple[Path, Path]:
    """``folder/name.key`` and ``folder/name.key_secret`` (secret mode 0600), refusing to overwrite."""
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing} already exist; pass --force to replace them (clients holding the old key "
            "will be refused), or choose another name"
        )
    # create_certificates writes with the process umask; tighten it so the secret is never
    # world-readable, not even for the moment between writing and chmod
    old_umask = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    Path(made_public).chmod(0o644)
    return Path(made_public), Path(made_secret)


def run(args: argparse.Namespace) -> int:
    """Create the directories, the server pair if missing, and the optional client pair."""
    if (args.client is None) != (args.role is None):
        raise ConfigError("--client NAME and --role viewer|control go together")
    keydir: Path = args.dir
    if keydir.exists() and not keydir.is_dir():
        raise ConfigError(f"--dir {keydir}: is a file; give a folder for the keys (it is created if absent)")
    server = _name(args.server, "--server")
    for sub in (CLIENTS_DIR, VIEWERS_DIR, CONTROLLERS_DIR):
        (keydir / sub).mkdir(parents=True, exist_ok=True)
    server_secret = keydir / f"{server}.key_secret"
    if (args.force and args.client is None) or not server_secret.exists():
        public, secret = _create_pair(keydir, server, force=args.force)
        print(f"server key pair: {public} (give to clients), {secret} (keep on this machine)")
    else:
        print(f"server key pair: {server_secret} exists, kept")
    if args.client is not None:
        client = _name(args.client, "--client")
        role_dir = keydir / _ROLE_DIRS[args.role]
        other_dir = keydir / _ROLE_DIRS["control" if args.role == "viewer" else "viewer"]
        public, secret = _create_pair(keydir / CLIENTS_DIR, client, force=args.force)
        # one role per client: a re-created viewer must not keep an old control entry
        (other_dir / public.name).unlink(missing_ok=True)
        allowed = Path(shutil.copyfile(public, role_dir / public.name))
        print(
            f"client {client!r} ({args.role}): allowed as {allowed}; give the client {secret} "
            f"and {keydir / (server + '.key')}"
        )
    for role, sub in _ROLE_DIRS.items():
        names = sorted(p.stem for p in (keydir / sub).glob("*.key"))
        print(f"{role} keys in {keydir / sub}: {', '.join(names) or 'none'}")
    return 0
