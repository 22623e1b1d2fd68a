"""Which stored channels the analysis reads: THE naming rule for the current and the lock-in.

Pure functions of channel names (Nanonis style, e.g. ``"Current (A)"``, ``"LI Demod 1 X (A)"``);
the offline analysis, the live analyser and the flags all pick through :func:`pick_channels`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from stslive.drivers.errors import AnalysisError

__all__ = ["ChannelPick", "check_sweep_is_bias", "pick_channels"]


class ChannelPick(NamedTuple):
    """Indices of the chosen channels (None: not present)."""

    current: int | None
    lockin: int | None


_CURRENT = re.compile(r"^current\b", re.IGNORECASE)
_INTERNAL_LOCKIN = re.compile(r"^LI Demod \d+ X\b", re.IGNORECASE)
_EXTERNAL_LOCKIN = re.compile(r"^Input \d+\b", re.IGNORECASE)
_BIAS = re.compile(r"^bias\b", re.IGNORECASE)
_BACKWARD = re.compile(r"\[bwd\]", re.IGNORECASE)


def pick_channels(names: list[str], *, current: str | None = None, lockin: str | None = None) -> ChannelPick:
    """Choose the current and lock-in channels by name.

    Parameters
    ----------
    names : list of str
        Channel names as stored (Nanonis style, e.g. ``"Current (A)"``, ``"LI Demod 1 X (A)"``).
    current, lockin : str, optional
        Exact names to use instead of the automatic choice.

    Returns
    -------
    ChannelPick
        The current is the first forward channel named "Current ..."; the lock-in is the first
        forward "LI Demod n X ..." (Nanonis internal lock-in), else the first "Input n ..."
        (external lock-in on an auxiliary input), else None.

    Raises
    ------
    AnalysisError
        An explicit name is not among ``names``, or no usable channel exists; the message lists
        the available channels.
    """
    return _pick_channels(tuple(names), current, lockin)


# Cached per channel list: the live analyser asks for every batch of 1-10 spectra (six regex
# searches each time). ChannelPick is immutable, so a cached one cannot be altered by a caller.
@lru_cache(maxsize=64)
def _pick_channels(names_key: tuple[str, ...], current: str | None, lockin: str | None) -> ChannelPick:
    """:func:`pick_channels` of the channel list ``names_key`` (an exception is not cached)."""
    names = list(names_key)

    def explicit(name: str, what: str) -> int:
        if name not in names:
            raise AnalysisError(f"{what} channel {name!r} not found; available channels: {names}")
        return names.index(name)

    def first(pattern: re.Pattern[str]) -> int | None:
        hits = [i for i, n in enumerate(names) if pattern.search(n) and not _BACKWARD.search(n)]
        return hits[0] if hits else None

    i_current = explicit(current, "current") if current is not None else first(_CURRENT)
    if lockin is not None:
        i_lockin: int | None = explicit(lockin, "lock-in")
    else:
        i_lockin = first(_INTERNAL_LOCKIN)
        if i_lockin is None:
            i_lockin = first(_EXTERNAL_LOCKIN)
    if i_current is None and i_lockin is None:
        raise AnalysisError(
            f"no current ('Current (A)') or lock-in ('LI Demod 1 X (A)', 'Input 2 (V)') channel found; "
            f"available channels: {names}; name one with --current/--lockin"
        )
    return ChannelPick(i_current, i_lockin)


def check_sweep_is_bias(sweep_signal_name: str) -> None:
    """Refuse a spectroscopy whose swept signal is not the bias (e.g. a Z spectroscopy)."""
    if not _BIAS.search(sweep_signal_name.strip()):
        raise AnalysisError(
            f"the sweep signal is {sweep_signal_name!r}, not the bias: Delta and alpha need I(V) "
            f"spectra (sweep signal 'Bias (V)'); this file cannot be analysed as STS"
        )
