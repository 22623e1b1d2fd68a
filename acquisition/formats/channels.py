"""Channel names of Nanonis-style recordings and THE rule that picks the current and the lock-in.

A name is ``base [tag] ... (unit) [tag] ...`` with tags ``bwd`` (backward sweep), ``AVG`` (mean
of several sweeps), a five-digit sweep number and ``filt`` (the controller's filtered copy), in
either place: Nanonis writes ``Current [bwd] (A)`` but ``Current (A) [filt]``
(:func:`parse_channel_name`). :func:`pick_channels` is the one choice of channels used by every
reader of spectra (offline analysis, live analyser, flags, replay, viewer): an explicit name
always wins; otherwise the current is the first forward "Current ..." channel and the lock-in
the first forward internal demodulator X ("LI Demod n X", "LIX n omega", "Lock-in X"), else the
first forward auxiliary input "Input n" not in amperes (an external lock-in's output reaches the
controller as a voltage; an input calibrated in A carries a preamplifier's current). A channel
chosen as the current is never also the lock-in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from stslive.drivers.errors import AnalysisError

__all__ = ["ChannelName", "ChannelPick", "check_sweep_is_bias", "parse_channel_name", "pick_channels"]

_TAG = re.compile(r"\s*\[(bwd|AVG|filt|\d{5})\]", re.IGNORECASE)
_UNIT = re.compile(r"\s*\(([^()]*)\)\s*$")
_CURRENT = re.compile(r"^current\b", re.IGNORECASE)
_INTERNAL_LOCKIN = re.compile(r"^(LI Demod \d+ X|LIX \d+ omega|Lock-in X)\b", re.IGNORECASE)
_EXTERNAL_LOCKIN = re.compile(r"^Input \d+\b", re.IGNORECASE)
_BIAS = re.compile(r"^bias\b", re.IGNORECASE)


class ChannelName(NamedTuple):
    """A channel name taken apart.

    Attributes
    ----------
    base : str
        The signal, e.g. ``"Current"``, ``"LI Demod 1 X"``, ``"Input 3"``.
    unit : str
        The unit in brackets, "" when none.
    backward, filtered : bool
        ``[bwd]`` and ``[filt]`` tags.
    sweep : str or int or None
        ``"AVG"`` (mean of the sweeps), the sweep number of a ``[0000n]`` tag, or None (a plain name).
    """

    base: str
    unit: str
    backward: bool
    filtered: bool
    sweep: str | int | None

    @property
    def forward(self) -> bool:
        """A forward sweep as recorded: not backward, not a filtered copy, not one sweep of several."""
        return not self.backward and not self.filtered and not isinstance(self.sweep, int)


def parse_channel_name(name: str) -> ChannelName:
    """Take a Nanonis channel name apart (tags before or after the unit, any order)."""
    tags = [t.lower() for t in _TAG.findall(name)]
    rest = _TAG.sub("", name).strip()
    unit_match = _UNIT.search(rest)
    unit = unit_match.group(1) if unit_match else ""
    base = rest[: unit_match.start()].strip() if unit_match else rest
    sweep: str | int | None = None
    for tag in tags:
        if tag == "avg":
            sweep = "AVG"
        elif tag.isdigit():
            sweep = int(tag)
    return ChannelName(base, unit, "bwd" in tags, "filt" in tags, sweep)


class ChannelPick(NamedTuple):
    """Indices of the chosen channels (None: not present)."""

    current: int | None
    lockin: int | None


def pick_channels(names: list[str], *, current: str | None = None, lockin: str | None = None) -> ChannelPick:
    """Choose the current and lock-in channels by name (the rule of the module docstring).

    Parameters
    ----------
    names : list of str
        Channel names as stored (Nanonis style, e.g. ``"Current (A)"``, ``"LI Demod 1 X (A)"``).
    current, lockin : str, optional
        Exact names to use instead of the automatic choice.

    Returns
    -------
    ChannelPick

    Raises
    ------
    AnalysisError
        An explicit name is not among ``names``, or no usable channel exists; the message lists
        the available channels.
    """
    return _pick_channels(tuple(names), current, lockin)


# Cached per channel list: the live analyser asks for every batch of 1-10 spectra. ChannelPick is
# immutable, so a cached one cannot be altered by a caller; an exception is not cached.
@lru_cache(maxsize=64)
def _pick_channels(names_key: tuple[str, ...], current: str | None, lockin: str | None) -> ChannelPick:
    names = list(names_key)
    parsed = [parse_channel_name(n) for n in names]

    def explicit(name: str, what: str) -> int:
        if name not in names:
            raise AnalysisError(f"{what} channel {name!r} not found; available channels: {names}")
        return names.index(name)

    def first(pattern: re.Pattern[str], *, exclude: int | None = None, not_unit: str | None = None) -> int | None:
        for i, p in enumerate(parsed):
            if i != exclude and p.forward and pattern.search(p.base) and p.unit != not_unit:
                return i
        return None

    i_current = explicit(current, "current") if current is not None else first(_CURRENT)
    if lockin is not None:
        i_lockin: int | None = explicit(lockin, "lock-in")
    else:
        i_lockin = first(_INTERNAL_LOCKIN, exclude=i_current)
        if i_lockin is None:
            i_lockin = first(_EXTERNAL_LOCKIN, exclude=i_current, not_unit="A")
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
