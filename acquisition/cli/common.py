"""What every command shares: option parsers (grids, ``--set KEY=VALUE``, client keys), output.

Each parser raises :class:`~stslive.drivers.errors.ConfigError` naming the option and an example,
so every command reports a bad value as one line (the dispatcher prints it) instead of a usage
dump. Commands call them in ``run``, not as argparse ``type=`` (argparse replaces the message).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from typing import Any

from stslive.acquisition.formats.security import Security
from stslive.drivers.errors import ConfigError

_SIZE = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


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
        Not two whole numbers separated by ``x``, or below ``minimum``.
    """
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) < minimum[0] or int(match[2]) < minimum[1]:
        least = "" if minimum == (1, 1) else f", at least {minimum[0]}x{minimum[1]}"
        raise ConfigError(f"{option} {text!r}: give {what}{least}, e.g. {example}")
    return int(match[1]), int(match[2])


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
