"""What the soak (:mod:`.soak`) watches: the run stream as delivered, and the processes' memory.

:class:`StreamWatch` counts every event and failed-pixel document on the scan's stream across
all scan processes of a run (a resumed scan restarts its sequence numbers); :class:`MemoryLog`
keeps each process's peak RSS per third of the run, to tell a leak from allocator noise.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import zmq

from stslive.acquisition.formats.documents import EventDoc, FailedPixelDoc, decode
from stslive.drivers.errors import StreamError

PHASES = ("start", "middle", "end")
#: RSS growth (MB) from the first to the last third of a run tolerated as noise, not a leak.
RSS_SLACK_MB = 100.0


class StreamWatch:
    """Counts what the scan puts on its stream, across every scan process (a raw SUB socket).

    A raw socket, not :class:`~stslive.acquisition.formats.subscriber.RunSubscriber`: a resumed
    scan restarts ``seq`` at 0 for the same run, which seq bookkeeping would call duplicates.
    """

    def __init__(self, endpoint: str) -> None:
        self.events: Counter[tuple[int, int]] = Counter()
        self.failed: Counter[tuple[int, int]] = Counter()
        self.kinds: Counter[str] = Counter()
        self.malformed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._thread = threading.Thread(target=self._run, name="soak-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            frames = self._sock.recv_multipart(copy=False)
            try:
                doc = decode(frames)
            except StreamError:
                self.malformed += 1
                continue
            with self._lock:
                self.kinds[type(doc).__name__] += 1
                if isinstance(doc, EventDoc):
                    self.events[(doc.iy, doc.ix)] += 1
                elif isinstance(doc, FailedPixelDoc):
                    self.failed[(doc.iy, doc.ix)] += 1

    def seen(self) -> int:
        """Distinct pixels delivered as measured or failed so far."""
        with self._lock:
            return len(set(self.events) | set(self.failed))

    def snapshot(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(pixels failed and not measured since, pixels measured), sorted."""
        with self._lock:
            return sorted(set(self.failed) - set(self.events)), sorted(self.events)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close(linger=0)
        self._ctx.term()


@dataclass
class MemoryLog:
    """RSS samples per role (MB), binned by run progress into start/middle/end thirds."""

    peaks: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: int = 0

    def sample(self, role: str, pid: int, progress: float) -> None:
        import psutil  # the test extra: only the soak needs it (`stslive soak` checks it is there)

        try:
            rss = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:  # exited between the liveness check and the read
            return
        phase = PHASES[min(2, int(progress * 3))]
        by_phase = self.peaks.setdefault(role, {})
        by_phase[phase] = max(by_phase.get(phase, 0.0), rss)
        self.samples += 1

    def growth(self) -> dict[str, float | None]:
        """Peak RSS at the end minus at the start, MB per role (None if a phase has no sample)."""
        return {
            role: (round(p["end"] - p["start"], 1) if "start" in p and "end" in p else None)
            for role, p in self.peaks.items()
        }

    def bounded(self, roles: tuple[str, ...] = ("lab", "scan", "analyser")) -> bool:
        """True if no role's end peak exceeds its start peak by more than max(RSS_SLACK_MB, 50 %).

        Growth that follows run length (a leak per pixel) shows as end >> start; a fixed
        allowance absorbs allocator noise and the analyser's growing correlation snapshots.
        """
        for role in roles:
            p = self.peaks.get(role, {})
            if "start" not in p or "end" not in p:
                return False
            if p["end"] - p["start"] > max(RSS_SLACK_MB, 0.5 * p["start"]):
                return False
        return True
