"""Reading configuration: TOML files and typed tables, with errors that name what to fix.

Contract: :func:`read_toml` turns every way a file can be unreadable into a ConfigError naming
the file and the option; :func:`check_keys` and :func:`dataclass_from_mapping` refuse unknown
(and missing) keys, listing the known ones, in the caller's error type. Every layer may import
this module (it imports only :mod:`stslive.drivers.errors`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from stslive.drivers.errors import ConfigError, StsliveError

T = TypeVar("T")


def read_toml(path: str | Path, *, what: str, option: str) -> dict[str, Any]:
    """Parse ``path`` as TOML.

    Parameters
    ----------
    path
        The file.
    what
        What the file is, for messages (``"run config"``, ``"fault file"``).
    option
        The command-line option that names it (``"--config"``), so the message says what to fix.

    Raises
    ------
    ConfigError
        Missing file, not UTF-8, or not valid TOML.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found; check the {option} path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a file; check the {option} path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
        raise ConfigError(f"{what} {path}: not UTF-8 text ({exc}); save it as UTF-8") from None


def check_keys(
    data: Mapping[str, Any], known: Iterable[str], *, what: str, error: type[StsliveError] = ConfigError
) -> None:
    """Refuse keys of ``data`` not in ``known``; the message lists the known ones.

    Parameters
    ----------
    data
        The table (TOML table, ``--set`` pairs, a decoded document).
    known
        The allowed keys.
    what
        What the table is, for the message (``"[stream]"``, ``"kernel option"``).
    error
        The error type to raise (ConfigError for user input, AnalysisError or StreamError elsewhere).
    """
    allowed = set(known)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise error(f"{what}: unknown key(s) {unknown}; known keys: {sorted(allowed)}")


def dataclass_from_mapping(
    cls: type[T], data: Mapping[str, Any], *, what: str, error: type[StsliveError] = ConfigError
) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and missing required keys raise ``error``.

    Values are passed as they are; the dataclass validates them (``__post_init__``).
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    check_keys(data, (f.name for f in fields), what=what, error=error)
    missing = [
        f.name
        for f in fields
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    if missing:
        raise error(f"{what}: missing key(s) {missing}")
    return cls(**dict(data))
