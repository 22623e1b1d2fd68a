"""What every command shares: option parsers (grids, endpoints, ``--set KEY=VALUE``, client keys),
size checks, fresh output folders, output.

Each parser raises :class:`~stslive.drivers.errors.ConfigError` naming the option and an example,
so every command reports a bad value as one line (the dispatcher prints it) instead of a usage
dump. Commands call them in ``run``, not as argparse ``type=`` (argparse replaces the message).
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stslive.acquisition.formats.security import Security
from stslive.acquisition.sizes import FILM_BYTES_PER_PIXEL, archive_bytes, require
from stslive.drivers.errors import ConfigError

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")
# tcp://HOST:PORT (HOST a name, an address, [IPv6] or * to bind), ipc://PATH, inproc://NAME
_ENDPOINT = re.compile(r"tcp://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5})|ipc://.+|inproc://.+")


def parse_grid(
    text: str,
    *,
    option: str = "--grid",
    what: str = "columns x rows",
    minimum: tuple[int, int] = (1, 1),
    example: str = "300x250",
) -> tuple[int, int]:
    """``"NXxNY"`` (columns x rows, as a scan is described: ``300x250``) -> ``(nx, ny)``.

    Parameters
    ----------
    text
        The option's value; case and blanks around the numbers do not matter (``" 5 X 7 "``).
    option
        The option's name, for the message.
    what
        What the two numbers are, for the message (``"width x height in pixels"`` for a window).
    minimum
        Smallest ``(nx, ny)`` accepted.
    example
        A valid value, for the message.

    Raises
    ------
    ConfigError
        Not two whole numbers separated by ``x``, or below ``minimum`` (a grid's memory and disk
        are checked by :func:`require_film`).
    """
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) < minimum[0] or int(match[2]) < minimum[1]:
        least = "" if minimum == (1, 1) else f", at least {minimum[0]}x{minimum[1]}"
        raise ConfigError(f"{option} {text!r}: give {what}{least}, e.g. {example}")
    return int(match[1]), int(match[2])


def require_film(
    nx: int, ny: int, *, option: str, channels: int = 3, points: int = 1601, out: Path | None = None
) -> None:
    """Refuse a simulated film of ``nx`` x ``ny`` pixels that cannot fit before anything is built.

    The film's maps must fit in the memory available now; with ``out``, the archive of its whole
    scan (``channels`` x ``points`` float32 per pixel) must fit on the disk there.

    Raises
    ------
    ConfigError
        Naming ``option`` with its value, the estimate and what is available.
    """
    n = nx * ny
    disk = archive_bytes(n, channels=channels, points=points) if out is not None else 0
    require(f"{option} {nx}x{ny}", memory_bytes=n * FILM_BYTES_PER_PIXEL, disk_bytes=disk, disk_path=out)


def parse_endpoint(text: str, *, option: str = "--connect", example: str = "tcp://127.0.0.1:5560") -> str:
    """A ZeroMQ endpoint given on the command line, checked before any socket sees it.

    Raises
    ------
    ConfigError
        Not ``tcp://HOST:PORT`` (port 0-65535), ``ipc://PATH`` or ``inproc://NAME``.
    """
    match = _ENDPOINT.fullmatch(text.strip())
    if match is None or (match[1] is not None and int(match[1]) > 65535):
        raise ConfigError(f"{option} {text!r}: give a ZeroMQ endpoint, e.g. {example}")
    return text.strip()


def fresh_folder(folder: Path, *, option: str, overwrite: bool, writes: Iterable[str]) -> Path:
    """Make ``folder`` ready for a command's outputs, so no file of an earlier run is mixed in.

    A folder that does not exist is created; an empty one is used. One holding any of the
    command's outputs (``writes``: names or glob patterns) is refused unless ``overwrite``, which
    removes exactly those first; anything else in it is left alone and does not count.

    Raises
    ------
    ConfigError
        ``folder`` is a file, or holds outputs of an earlier run and ``overwrite`` is false.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder}: is a file; give a folder (it is created if absent)")
    patterns = list(writes)
    earlier = sorted({p for pattern in patterns for p in folder.glob(pattern)}) if folder.is_dir() else []
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise ConfigError(
            f"{option} {folder}: holds the outputs of an earlier run ({names}); give a new folder, "
            "or --overwrite to replace them"
        )
    for path in earlier:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def parse_assignments(
    items: Iterable[str] | None, *, option: str = "--set", known: Iterable[str] | None = None
) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}`` (both stripped; a later KEY wins).

    Parameters
    ----------
    items
        The option's values (``action="append"``; None when it was not given).
    option
        The option's name, for messages.
    known
        The valid keys; None leaves the keys to the caller.

    Raises
    ------
    ConfigError
        An item without ``=`` or with an empty key, or a key not in ``known``; the message lists
        the valid keys when they are given.
    """
    valid = None if known is None else list(known)
    hint = "" if valid is None else f" Valid keys: {', '.join(valid)}."
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE.{hint}")
        if valid is not None and key not in valid:
            raise ConfigError(f"{option}: unknown key {key!r}.{hint}")
        out[key] = value.strip()
    return out


def client_security(keys: str | None, client: str | None) -> Security | None:
    """CURVE client keys from ``--keys KEYDIR --client NAME`` (both or neither); None without keys.

    Raises
    ------
    ConfigError
        One option without the other.
    """
    if (keys is None) != (client is None):
        raise ConfigError(
            "--keys KEYDIR and --client NAME go together: the client key pair is "
            "KEYDIR/clients/NAME.key_secret (made by 'stslive keys --client NAME')"
        )
    return None if keys is None else Security.from_dir(keys, client=client)


def forward(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Options ``names`` of ``args`` as keyword arguments, for a job whose parameters carry the
    options' names (``--latency-n`` -> ``latency_n``)."""
    return {name: getattr(args, name) for name in names}


def say(text: str) -> None:
    """Print one line (or block) to stdout at once: the jobs' progress reaches a pipe as it happens."""
    print(text, flush=True)
