"""Reading a TOML file with errors that name the file, the kind of file and the option to fix.

Shared by every TOML input (run config, fault file, flag thresholds, instrument table); it lives in
``stslive.drivers`` beside ``errors`` because that is the one layer all others may import.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from stslive.drivers.errors import ConfigError


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
