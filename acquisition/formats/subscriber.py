"""Receiving the run stream: a subscriber that never dies on bad input and sees every loss.

Contract: :class:`RunSubscriber` (SUB, may drop; or PULL, one consumer, no drop) decodes with
:func:`stslive.acquisition.formats.documents.decode`, counts rejected messages by reason and
goes on, checks events against their descriptor, and tracks ``seq`` per run and segment (a
resume opens a segment): losses, late joins and resumes are each a :class:`Gap`. A lower ``seq`` is
a duplicate only if the same measurement (``t_start``) of that pixel was already received. Since
a gap does not say which pixels were lost, :func:`recover_from_archive` rebuilds the events of
measured pixels never received from the archive, which is the record. The rule in full:
``docs/formats.md``.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq

from stslive.acquisition.formats.archive import EventOrder, Pixel, open_archive
from stslive.acquisition.formats.codec import MalformedMessage
from stslive.acquisition.formats.documents import (
    TOPIC_PREFIX,
    DescriptorDoc,
    Document,
    EventDoc,
    HeartbeatDoc,
    StartDoc,
    StopDoc,
    decode,
)
from stslive.acquisition.formats.security import Security, secure_client
from stslive.drivers.errors import ConfigError, StreamError, StsliveError

__all__ = ["Gap", "RunSubscriber", "RunTracker", "connect_socket", "missing_pixels", "recover_from_archive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gap:
    """Missing documents ``first_seq..last_seq`` (inclusive) of run ``run_uid``."""

    run_uid: str
    first_seq: int
    last_seq: int
    late_join: bool = False
    #: segment of the run the seqs belong to (0 = first start; +1 per resume)
    segment: int = 0
    #: the run was resumed: check the archive for pixels recorded while nobody published (a
    #: resume gap may span no seq at all, ``last_seq = first_seq - 1``, when its start arrived)
    resume: bool = False

    @property
    def size(self) -> int:
        """Number of missing documents (0 for a resume whose start arrived)."""
        return self.last_seq - self.first_seq + 1


@dataclass
class RunTracker:
    """What one consumer knows of one run: seq bookkeeping (per segment), pixels seen, its start/descriptor.

    ``pixels`` maps each pixel ``(iy, ix)`` received to the ``t_start`` (unix s) of the
    measurement received last (``None`` if the event had none): the identity of a measurement,
    so a re-measured pixel is new and the same measurement twice is a duplicate.
    """

    run_uid: str
    next_seq: int = 0
    #: [first, last, segment] ranges still missing (resume checks: last = first - 1)
    missing: list[list[int]] = field(default_factory=list)
    late_join: bool = False
    received: int = 0
    duplicates: int = 0
    segment: int = 0
    pixels: dict[Pixel, float | None] = field(default_factory=dict)
    start: StartDoc | None = None
    descriptors: dict[str, DescriptorDoc] = field(default_factory=dict)
    stop: StopDoc | None = None

    def observe(self, seq: int) -> Gap | Literal[False] | None:
        """Account for ``seq`` in the current segment: a new Gap, None (in order or a late fill),
        or False (below the expected seq and filling no gap: a duplicate or a new segment)."""
        if seq == self.next_seq:
            self.next_seq += 1
            return None
        if seq > self.next_seq:
            gap = Gap(self.run_uid, self.next_seq, seq - 1, late_join=self.received == 0, segment=self.segment)
            self.late_join |= gap.late_join
            self.missing.append([gap.first_seq, gap.last_seq, self.segment])
            self.next_seq = seq + 1
            return gap
        for i, (first, last, segment) in enumerate(self.missing):  # a late arrival may fill a known gap
            if segment == self.segment and first <= seq <= last:
                pieces = [[first, seq - 1, segment], [seq + 1, last, segment]]
                self.missing[i : i + 1] = [p for p in pieces if p[0] <= p[1]]
                return None
        return False

    def new_segment(self, seq: int, *, segment: int | None = None) -> Gap:
        """Open the next segment at document ``seq`` (0: its start arrived); returns its resume gap.

        ``segment`` is the start document's ``metadata["segment"]`` when known; a missed start
        counts one segment on. The previous segment's open ranges stay listed (only the archive
        can fill them now).
        """
        self.segment = segment if segment is not None and segment > self.segment else self.segment + 1
        gap = Gap(self.run_uid, 0, seq - 1, segment=self.segment, resume=True)
        self.missing.append([0, seq - 1, self.segment])
        self.next_seq = seq + 1
        return gap

    def observe_tail(self, last_seq: int) -> Gap | None:
        """A heartbeat says documents up to ``last_seq`` were sent: a Gap if some never came."""
        if last_seq < self.next_seq:
            return None
        gap = Gap(self.run_uid, self.next_seq, last_seq, segment=self.segment)
        self.missing.append([gap.first_seq, gap.last_seq, self.segment])
        self.next_seq = last_seq + 1
        return gap

    def is_duplicate(self, event: EventDoc) -> bool:
        """True if this measurement of the pixel (same ``t_start``) was already received."""
        key = (event.iy, event.ix)
        return key in self.pixels and self.pixels[key] == event.timestamps.get("t_start")

    @property
    def gaps(self) -> list[Gap]:
        """The ranges still missing (late join first), resume checks included."""
        return [
            Gap(
                self.run_uid,
                a,
                b,
                late_join=self.late_join and a == 0 and s == 0 and b >= a,
                segment=s,
                resume=s > 0 and a == 0,
            )
            for a, b, s in self.missing
        ]


def connect_socket(
    context: zmq.Context,
    endpoint: str,
    *,
    kind: int = zmq.SUB,
    topics: Iterable[bytes] = (),
    hwm: int = 100_000,
    security: Security | None = None,
) -> zmq.Socket:
    """A receiving socket (SUB with ``topics``, or PULL) connected to ``endpoint``, CURVE if ``security``.

    The one place a consumer socket is set up: the run stream's :class:`RunSubscriber` and the
    results stream's viewers. ``hwm`` is the receive high-water mark (messages); LINGER is 0.
    A missing key file raises its ConfigError, a bad endpoint :class:`StreamError`; the socket
    is closed on either.
    """
    sock = context.socket(kind)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    if kind == zmq.SUB:
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
    try:
        if security is not None:  # keys must be set before connect
            secure_client(sock, security)
        sock.connect(endpoint)
    except ConfigError:  # a key file is missing or invalid: the message says how to make one
        sock.close()
        raise
    except zmq.ZMQError as exc:
        sock.close()
        raise StreamError(f"cannot connect to {endpoint!r}: {exc}") from exc
    return sock


class RunSubscriber:
    """Consumer of the run stream over SUB or PULL.

    Parameters
    ----------
    endpoint
        Publisher endpoint to connect to, e.g. ``"tcp://127.0.0.1:5556"``.
    mode
        ``"sub"`` (connect to the publisher's PUB) or ``"pull"`` (its PUSH; one consumer only,
        since PUSH deals messages round-robin between peers).
    topics
        SUB topic prefixes. Sequence tracking is only meaningful when every kind is received
        (the default, ``b"stslive.run."``); with a narrower filter it is switched off.
    context
        ZeroMQ context (tests inject one); by default a private one, terminated on close.
    hwm
        Receive high-water mark (messages); raised so a burst is queued, not dropped.
    max_runs
        Runs whose trackers are kept (oldest forgotten first).
    security
        CURVE client keys (:class:`~stslive.acquisition.formats.security.Security` with
        ``client_secret`` and ``server_public``) for a publisher bound with keys; ``None``
        (default): plain connection, as to a loopback publisher without keys.

    Notes
    -----
    Like its ZeroMQ socket, a subscriber belongs to one thread. A lost stop document cannot be
    seen on the stream; a consumer that hears nothing for long should consult the archive.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        mode: Literal["sub", "pull"] = "sub",
        topics: Iterable[bytes] = (TOPIC_PREFIX,),
        context: zmq.Context | None = None,
        hwm: int = 100_000,
        max_runs: int = 16,
        security: Security | None = None,
    ) -> None:
        if mode not in ("sub", "pull"):
            raise StreamError(f"mode must be 'sub' or 'pull', not {mode!r}")
        topics = tuple(topics)
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        try:
            kind = zmq.SUB if mode == "sub" else zmq.PULL
            self._sock = connect_socket(self._ctx, endpoint, kind=kind, topics=topics, hwm=hwm, security=security)
        except StsliveError:
            if self._own_context:
                self._ctx.term()
            raise
        self.endpoint = endpoint
        self.mode = mode
        self.tracking = mode == "pull" or TOPIC_PREFIX in topics
        self._runs: collections.OrderedDict[str, RunTracker] = collections.OrderedDict()
        self._max_runs = max_runs
        self._new_gaps: list[Gap] = []
        self.rejected: collections.Counter[str] = collections.Counter()
        self.received = 0
        self.duplicates = 0

    # -- receiving --
    def poll(self, timeout_s: float = 0.0) -> Document | None:
        """The next valid document, or None if none arrived within ``timeout_s`` (s).

        Malformed messages, events that contradict their descriptor and duplicates are counted
        and skipped; they never raise.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # a waiting message needs no poll: pyzmq's Socket.poll builds a Poller per call,
                # which costs as much as decoding the event. Copied frames (bytes), not zmq.Frame:
                # one memcpy of an event costs less CPU than the Frame objects (measured with
                # stslive bench analyser)
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                if left_ms == 0 or not self._sock.poll(left_ms):
                    return None
                continue
            doc = self._accept(frames)
            if doc is not None:
                return doc

    def __iter__(self) -> Iterator[Document]:
        """Documents until the socket is idle for 1 s (use :meth:`iter` for other timeouts)."""
        return self.iter()

    def iter(self, *, idle_timeout_s: float = 1.0, until_stop: bool = False) -> Iterator[Document]:
        """Yield documents until none arrives for ``idle_timeout_s`` or, if ``until_stop``, a stop."""
        while (doc := self.poll(idle_timeout_s)) is not None:
            yield doc
            if until_stop and isinstance(doc, StopDoc):
                return

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= 10 or n % 1000 == 0:  # every reason is visible in the log without flooding it
            log.warning("run stream %s: %s (%d rejected for %s so far)", self.endpoint, message, n, reason)

    def _accept(self, frames: list[Any]) -> Document | None:
        try:
            doc = decode(frames)
        except MalformedMessage as exc:
            self._reject(exc.reason, str(exc))
            return None
        if not self.tracking or doc.run_uid is None:
            if self.tracking and isinstance(doc, HeartbeatDoc):  # it names where the last run ended
                ended = self._runs.get(doc.last_run_uid or "")
                if ended is not None:
                    self._gap(ended.observe_tail(doc.last_seq))
            self.received += 1
            return doc
        run = self._tracker(doc.run_uid)
        if isinstance(doc, EventDoc):
            descriptor = run.descriptors.get(doc.descriptor_uid)
            if descriptor is None and run.descriptors:
                self._reject("descriptor", f"event seq {doc.seq} names unknown descriptor {doc.descriptor_uid!r}")
                return None
            if descriptor is not None:
                try:
                    descriptor.check(doc)
                except MalformedMessage as exc:
                    self._reject(exc.reason, str(exc))
                    return None
        if isinstance(doc, StartDoc) and run.received > 0:  # a known run starts again: resumed
            self._gap(run.new_segment(doc.seq, segment=_segment_of(doc)))
        else:
            outcome = run.observe(doc.seq)
            if outcome is False:
                if isinstance(doc, EventDoc) and run.is_duplicate(doc):
                    run.duplicates += 1
                    self.duplicates += 1
                    log.debug(
                        "run %s: duplicate of pixel (%d, %d) at seq %d dropped", doc.run_uid, doc.iy, doc.ix, doc.seq
                    )
                    return None
                # below the expected seq and no duplicate: a resumed run whose start was missed
                self._gap(run.new_segment(doc.seq))
            else:
                self._gap(outcome)
        run.received += 1
        self.received += 1
        if isinstance(doc, EventDoc):
            run.pixels[(doc.iy, doc.ix)] = doc.timestamps.get("t_start")
        elif isinstance(doc, StartDoc):
            run.start = doc
            run.segment = max(run.segment, _segment_of(doc) or 0)
        elif isinstance(doc, DescriptorDoc):
            run.descriptors[doc.uid] = doc
        elif isinstance(doc, StopDoc):
            run.stop = doc
        return doc

    def _gap(self, gap: Gap | None) -> None:
        if gap is not None:
            self._new_gaps.append(gap)
            if gap.resume:
                log.warning(
                    "run %s resumed (segment %d)%s; check the archive for pixels recorded while nobody published",
                    gap.run_uid,
                    gap.segment,
                    f", its seq 0..{gap.last_seq} missed" if gap.size else "",
                )
                return
            log.warning(
                "run %s: %s seq %d..%d (%d documents); fill from the archive",
                gap.run_uid,
                "joined late, missed" if gap.late_join else "gap,",
                gap.first_seq,
                gap.last_seq,
                gap.size,
            )

    def _tracker(self, run_uid: str) -> RunTracker:
        run = self._runs.get(run_uid)
        if run is None:
            run = self._runs[run_uid] = RunTracker(run_uid)
            while len(self._runs) > self._max_runs:
                self._runs.popitem(last=False)
        return run

    # -- what was seen and what is missing --
    def run(self, run_uid: str) -> RunTracker:
        """The tracker of a run seen on this stream."""
        try:
            return self._runs[run_uid]
        except KeyError:
            raise StreamError(
                f"run {run_uid!r} has not been seen on {self.endpoint} (known: {list(self._runs)})"
            ) from None

    @property
    def runs(self) -> list[str]:
        """Run uids seen, oldest first."""
        return list(self._runs)

    def gaps(self, run_uid: str) -> list[Gap]:
        """Sequence ranges of ``run_uid`` still missing."""
        return self.run(run_uid).gaps

    def take_new_gaps(self) -> list[Gap]:
        """Gaps detected since the last call (to trigger recovery once per gap)."""
        gaps, self._new_gaps = self._new_gaps, []
        return gaps

    def seen_pixels(self, run_uid: str) -> set[Pixel]:
        """Pixels ``(iy, ix)`` whose event arrived (valid) for ``run_uid`` (or were recovered)."""
        return set(self.run(run_uid).pixels)

    def recover(self, archive_path: str | Path, run_uid: str, *, swmr: bool = True) -> Iterator[EventDoc]:
        """Events of ``run_uid`` measured in the archive but never received here (or received
        as another measurement: the archive's ``t_start`` differs, a re-measure).

        Each yielded pixel counts as seen; when the iteration completes, the run's seq gaps are
        cleared (the archive, not the stream, is the record: it holds every lost pixel).
        """
        run = self.run(run_uid)
        descriptor_uid = next(reversed(run.descriptors), "")
        for event in recover_from_archive(
            archive_path, run_uid=run_uid, exclude=run.pixels, descriptor_uid=descriptor_uid, swmr=swmr
        ):
            run.pixels[(event.iy, event.ix)] = event.timestamps.get("t_start")
            yield event
        run.missing.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for display: received, duplicates, rejected by reason, gaps per run."""
        return {
            "received": self.received,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected),
            "gaps": {uid: [(g.first_seq, g.last_seq) for g in run.gaps] for uid, run in self._runs.items()},
            "late_joins": [uid for uid, run in self._runs.items() if run.late_join],
            "segments": {uid: run.segment for uid, run in self._runs.items() if run.segment},
        }

    def close(self) -> None:
        """Close the socket (and the private context)."""
        self._sock.close(linger=0)
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> RunSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _segment_of(start: StartDoc) -> int | None:
    """The start document's ``metadata["segment"]`` (resume count), None if absent or not a count."""
    value = start.metadata.get("segment")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# -- recovery from the archive -------------------------------------------------------------------
def missing_pixels(measured: np.ndarray, seen: Iterable[Pixel]) -> list[Pixel]:
    """Pixels ``(iy, ix)`` marked measured in the archive but not in ``seen``, row-major order."""
    mask = np.asarray(measured, dtype=bool).copy()
    for iy, ix in seen:
        mask[iy, ix] = False
    return [(int(iy), int(ix)) for iy, ix in zip(*np.nonzero(mask), strict=True)]


def recover_from_archive(
    archive_path: str | Path,
    *,
    run_uid: str | None = None,
    exclude: Iterable[Pixel] | Mapping[Pixel, float | None] = (),
    pixels: Iterable[Pixel] | None = None,
    order: EventOrder = "row-major",
    descriptor_uid: str = "",
    array_name: str = "spectra",
    swmr: bool = True,
    wait_s: float = 0.0,
) -> Iterator[EventDoc]:
    """Rebuild the events of measured pixels from the run archive (:meth:`ArchiveReader.events`).

    Parameters
    ----------
    archive_path
        The run's archive. If it does not exist yet, it is polled for up to ``wait_s`` s.
    run_uid
        Expected run uid; a different archive raises :class:`StreamError`.
    exclude
        Pixels ``(iy, ix)`` already received (typically :meth:`RunSubscriber.seen_pixels`). A
        mapping ``pixel -> t_start`` (unix s, :attr:`RunTracker.pixels`) excludes a pixel only if
        the archive holds that same measurement (a pixel re-measured since is recovered again);
        ``None`` or a non-finite time excludes the pixel whatever the archive holds.
    pixels
        Only these pixels (those not measured are skipped); default: every measured pixel.
    order
        Order of the events (:data:`~stslive.acquisition.formats.archive.EventOrder`).
    descriptor_uid
        Descriptor to name in the rebuilt events (the archive does not store descriptors).
    array_name
        Name of the ``(n_channels, n_points)`` float32 array in the events.
    swmr
        Open in SWMR mode, to read while the scan is still writing.
    wait_s
        How long to wait for the file to appear (s).

    Yields
    ------
    EventDoc
        With ``seq = -1`` (not from the wire).

    Raises
    ------
    StreamError
        If the archive belongs to another run. ``ArchiveError`` if it is missing or unreadable.
    """
    path = Path(archive_path)
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open_archive(path, swmr=swmr) as reader:
        if run_uid is not None and reader.run_uid != run_uid:
            raise StreamError(f"{path} holds run {reader.run_uid!r}, not {run_uid!r}; pass the archive of this run")
        skip = (
            _same_measurements(exclude, reader.pixel_meta["t_start"]) if isinstance(exclude, Mapping) else set(exclude)
        )
        measured = reader.event_pixels("row-major", None if pixels is None else set(pixels))
        wanted = [p for p in measured if p not in skip]
        yield from reader.events(order, pixels=wanted, descriptor_uid=descriptor_uid, array_name=array_name)


def _same_measurements(seen: Mapping[Pixel, float | None], t_start: np.ndarray) -> set[Pixel]:
    """Pixels of ``seen`` whose received ``t_start`` is the archive's (or unknown: no way to tell)."""
    ny, nx = t_start.shape
    return {
        p
        for p, t in seen.items()
        if t is None or not math.isfinite(t) or (0 <= p[0] < ny and 0 <= p[1] < nx and t == float(t_start[p]))
    }
