"""The software version written into archives, run documents and reports (one definition)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def software_version() -> str:
    """Installed version of the ``stslive`` distribution (``"0+unknown"`` from a tree never installed)."""
    try:
        return version("stslive")
    except PackageNotFoundError:
        return "0+unknown"
