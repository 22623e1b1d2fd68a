"""How far a run is: pixels, rate, time left, state; one line for a terminal, one summary at the end.

The engine keeps a :class:`RateMeter` and answers :meth:`ScanEngine.progress` with a
:class:`RunProgress`; the control socket's ``status`` reply, the terminal's progress line
(:func:`progress_line`) and the end-of-run summary (:func:`summary_line`) all show those same
figures. The rate is that of the recent pixels while measuring, so a pause (temperature, failures,
the operator) stops the clock instead of stretching the estimate: while paused the time left is
the time the run needs once it goes on.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: Pixels the rate is averaged over: long enough to smooth the scatter of sweep times, short
#: enough to follow a change of set-point set or sweep speed within a minute of pixels.
RATE_WINDOW = 200


class RateMeter:
    """Pixels per second over the last :data:`RATE_WINDOW` pixels recorded while running.

    :meth:`pause` starts a new window (the gap of a pause is no measuring time); until the new
    window holds two pixels, the rate measured before the pause stands.
    """

    def __init__(self, *, window: int = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)
        self._clock = clock
        self._before = math.nan

    def tick(self) -> None:
        """One more pixel recorded now."""
        self._times.append(self._clock())

    def pause(self) -> None:
        """The run paused: keep the rate so far and measure afresh after it."""
        rate = self._window_rate()
        if math.isfinite(rate):
            self._before = rate
        self._times.clear()

    def rate(self) -> float:
        """Pixels per second (NaN before two pixels were recorded)."""
        rate = self._window_rate()
        return rate if math.isfinite(rate) else self._before

    def _window_rate(self) -> float:
        times = list(self._times)  # a copy: the engine's thread appends while a reader looks
        if len(times) < 2 or times[-1] <= times[0]:
            return math.nan
        return (len(times) - 1) / (times[-1] - times[0])


@dataclass(frozen=True)
class RunProgress:
    """A run's figures at one moment (pixels of the whole archive unless said otherwise).

    Attributes
    ----------
    state, pause_reasons
        The state machine's state and why it is paused (``user``, ``temperature``, ``failures``,
        ``stop_rule``).
    total
        Pixels of the plan.
    measured, failed
        Pixels measured / recorded as failed in the archive (earlier segments included).
    remaining
        Pixels of the plan this run still has to visit.
    this_run
        Pixels recorded (measured or failed) by this segment of the run.
    rate_px_s
        Recent pixels per second while measuring (NaN until known).
    eta_s
        Seconds left at that rate (NaN until known); excludes any pause.
    elapsed_s
        Wall time since this segment started (s).
    flagged
        Pixels the analyser flagged, when the scan follows its results (else None).
    """

    state: str
    total: int
    measured: int
    failed: int
    remaining: int
    this_run: int
    rate_px_s: float
    elapsed_s: float
    pause_reasons: tuple[str, ...] = ()
    flagged: int | None = None
    eta_s: float = field(init=False)

    def __post_init__(self) -> None:
        eta = self.remaining / self.rate_px_s if self.rate_px_s > 0 else math.nan
        object.__setattr__(self, "eta_s", 0.0 if self.remaining == 0 else eta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe figures (NaN as None), for the control socket's ``status`` reply."""
        out = asdict(self)
        out["pause_reasons"] = list(self.pause_reasons)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def duration_text(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; ``"--"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--"
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days} d " if days else "") + f"{h}:{m:02d}:{s:02d}"


def progress_line(p: RunProgress) -> str:
    """One line: ``1382 of 3072 pixels (45 %), 2 failed, 121 pixels/s, 0:00:14 left, running``."""
    done = p.measured + p.failed
    share = 100.0 * done / p.total if p.total else 100.0
    rate = "--" if not math.isfinite(p.rate_px_s) else f"{p.rate_px_s:.3g}"
    state = p.state + (f" ({', '.join(p.pause_reasons)})" if p.pause_reasons else "")
    left = duration_text(p.eta_s) + (" once resumed" if p.state == "paused" and math.isfinite(p.eta_s) else "")
    parts = [f"{done} of {p.total} pixels ({share:.0f} %)", f"{p.failed} failed"]
    if p.flagged is not None:
        parts.append(f"{p.flagged} flagged")
    parts += [f"{rate} pixels/s", f"{left} left", state]
    return ", ".join(parts)


def summary_line(p: RunProgress, *, exit_status: str, reason: str) -> str:
    """The end of a run: what was measured, how long it took, and why it ended."""
    flagged = "flagged: unknown (no analyser followed)" if p.flagged is None else f"{p.flagged} flagged"
    rate = p.this_run / p.elapsed_s if p.elapsed_s > 0 else math.nan
    why = f": {reason}" if reason else ""
    return (
        f"{p.measured} of {p.total} pixels measured, {p.failed} failed, {flagged}; this run {p.this_run} "
        f"pixels in {duration_text(p.elapsed_s)} ({rate:.3g} pixels/s); exit {exit_status}{why}"
    )
