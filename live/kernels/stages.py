"""CPU time per stage of the batch analysis (for ``stslive bench analysis``); free when disabled."""

from __future__ import annotations

import time

__all__ = ["NO_CLOCK", "Clock"]


class Clock:
    """CPU seconds per analysis stage of one thread; a no-op when disabled.

    Thread CPU time, not wall time: on a shared machine it measures what a stage costs, not how
    long another process held the core.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        self._t = time.thread_time() if enabled else 0.0

    def lap(self, stage: str) -> None:
        """Charge the CPU time since the previous lap to ``stage``."""
        if self.enabled:
            now = time.thread_time()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
            self._t = now


#: The disabled clock, for callers that do not time.
NO_CLOCK = Clock(False)
