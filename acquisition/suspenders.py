"""Suspenders: conditions that pause a run and resume it by themselves (after Bluesky's).

A suspender only judges readings; the engine reads the instrument, asks :meth:`check` and
moves the state machine. Keeping the clock injectable makes the hold time testable without
sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from stslive.drivers.errors import ConfigError

Verdict = Literal["ok", "suspend", "wait", "resume"]


@dataclass
class TemperatureSuspender:
    """Pause while the temperature is outside ``[min_K, max_K]``; resume after ``hold_s`` inside.

    :meth:`check` returns

    - ``"ok"``: in the band and not suspended;
    - ``"suspend"``: just left the band (or read NaN: an unreadable thermometer is not "in band");
    - ``"wait"``: suspended, out of the band or back in it for less than ``hold_s``;
    - ``"resume"``: suspended and in the band for at least ``hold_s`` (s).
    """

    min_K: float
    max_K: float
    hold_s: float = 5.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    suspended: bool = field(default=False, init=False)
    _inside_since: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 <= self.min_K < self.max_K) or self.hold_s < 0:
            raise ConfigError(f"suspender: need 0 <= min_K ({self.min_K}) < max_K ({self.max_K}) and hold_s >= 0")

    def in_band(self, kelvin: float) -> bool:
        """True if ``min_K <= kelvin <= max_K`` (NaN is outside)."""
        return not math.isnan(kelvin) and self.min_K <= kelvin <= self.max_K

    def check(self, kelvin: float) -> Verdict:
        """Judge one reading (K); see the class docstring for the verdicts."""
        inside = self.in_band(kelvin)
        if not self.suspended:
            if inside:
                return "ok"
            self.suspended, self._inside_since = True, None
            return "suspend"
        if not inside:
            self._inside_since = None
            return "wait"
        now = self.clock()
        if self._inside_since is None:
            self._inside_since = now
        if now - self._inside_since >= self.hold_s:
            self.suspended, self._inside_since = False, None
            return "resume"
        return "wait"
