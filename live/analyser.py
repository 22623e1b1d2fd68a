"""The live analyser service: run stream in, per-pixel results, flags and snapshots out.

One *service* thread owns the :class:`~stslive.acquisition.formats.subscriber.RunSubscriber` and
does everything on the pixel path, in a loop:

* at start it backfills from the archive (late join / restart, SWMR read, acquisition order);
  it fills sequence gaps and resumed segments from the archive (``recover_from_archive``:
  pixels whose measurement was never received). Events of a run whose start document it
  missed (started before the scan, while its socket connected) take the start and the pixels
  so far from the archive; without ``archive`` they are rejected (``no_start``) and the status
  says what is missing;
* it takes what the socket holds (decoded; never waiting to fill a batch: one pixel at a low
  rate, up to ``settings.batch`` when busy), analyses it with the one code path
  (:meth:`RunContext.process`: one kernel call per set-point set, flags vectorised), publishes
  the batch as one ``pixels`` message (arrays, see :mod:`stslive.live.results_io`), publishes
  ``maps``/``snapshot``/``status`` periodically and writes the analysis file (temp file +
  rename: crash-safe);
* a *snapshot* thread recomputes the correlations every ``snapshot_every`` pixels, off the
  pixel path (at most one at a time; the final one at stop runs in the service thread).

Why receiving and analysing share one thread: the socket never overflows while a batch is
analysed, because ZeroMQ's own I/O thread (C, no GIL) keeps reading it into the SUB queue
(``settings.hwm`` messages). A second Python thread that only moved messages into a queue
(the first design) lost the GIL on every ``recv`` and waited up to the interpreter's switch
interval (5 ms) to get it back from the analysis: a GIL convoy that kept the batches small
and the latency high (``stslive bench-analyser``, figures in the README).

Throughput and latency: ``stslive bench-analyser`` (stage CPU times: :meth:`AnalyserService.stage_seconds`).

Bad input never stops it: malformed frames are counted by the subscriber, pixels that do not
fit the run (grid, set, channel count, length) by the service; both show in the status message.
"""

from __future__ import annotations

import collections
import gc
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from stslive.acquisition.formats.security import bind_server
from stslive.acquisition.formats.stream import (
    DescriptorDoc,
    EventDoc,
    FailedPixelDoc,
    HeartbeatDoc,
    Security,
    StartDoc,
    StopDoc,
    check_bind,
    event_fields,
)
from stslive.acquisition.formats.subscriber import RunSubscriber, recover_from_archive
from stslive.drivers.errors import AnalysisError, StreamError, StsliveError
from stslive.live.flags import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.results_io import encode_message, model_messages, pixels_message, status_message
from stslive.live.run_context import PixelInput, RunContext
from stslive.live.snapshots import correlation_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalyserSettings:
    """Tunables of the service (counts are pixels, times seconds)."""

    #: Largest batch analysed at once. Only a service behind the stream reaches it; two kernel
    #: chunks (KernelOptions.chunk = 512) let the kernels use both cores then (bench-analyser:
    #: 4,179 spectra/s at 256, 4,920 at 1,024). At 1,000 spectra/s batches are 1-5 pixels.
    batch: int = 1024
    snapshot_every: int = 500
    publish_every_s: float = 2.0
    write_every_s: float = 10.0
    hwm: int = 100_000


def settle_gc() -> None:
    """Keep the objects the process holds once set up out of the garbage collector's full passes.

    The service allocates a few dicts per message, which now and then brings a full collection
    (one in a 10,000-spectrum ``stslive bench-analyser`` run, timed with ``gc.callbacks``): it
    walked the ~78,000 objects numpy, scipy, h5py and zmq leave behind at import, a 62 ms pause
    that every pixel queued behind it waits out. ``gc.freeze()`` moves them to the permanent generation.
    Process-wide: call it where the analyser owns the process (``stslive analyser``, the benchmark).
    """
    gc.collect()
    gc.freeze()


def analysis_path_for(archive: str | os.PathLike[str]) -> Path:
    """Default analysis file beside the archive: ``RUN.analysis.h5`` (the viewer looks there)."""
    return Path(archive).with_suffix(".analysis.h5")


class AnalyserService:
    """Subscribe to a run stream, analyse every pixel, publish and save the results.

    Parameters
    ----------
    connect
        Run stream endpoint (the scan engine's or replay's PUB).
    archive
        The run archive (backfill on late join / restart, gap recovery); optional.
    bind
        Endpoint of the results PUB socket (loopback only unless ``security``); None: do not publish.
    out
        Analysis file; default beside the archive, none without an archive.
    options, flag_config, settings
        Kernel options (default: those of ``stslive analyse``; without a fixed Dynes width the
        run's width is calibrated on its first spectra as offline, see :class:`RunContext`),
        flag thresholds, service tunables.
    context
        ZeroMQ context (tests inject one).
    security
        CURVE server keys of the results PUB (role ``data``: viewer and controller keys read it,
        :mod:`stslive.acquisition.formats.security`); ``None``: no keys, loopback only.
    stream_security
        CURVE client keys for a run stream bound with keys; ``None``: plain connection.
    """

    def __init__(
        self,
        connect: str,
        *,
        archive: str | os.PathLike[str] | None = None,
        bind: str | None = None,
        out: str | os.PathLike[str] | None = None,
        options: KernelOptions | None = None,
        flag_config: FlagConfig | None = None,
        settings: AnalyserSettings | None = None,
        context: zmq.Context | None = None,
        security: Security | None = None,
        stream_security: Security | None = None,
    ) -> None:
        self.connect = connect
        self.archive = None if archive is None else Path(archive)
        self.out = Path(out) if out is not None else (analysis_path_for(self.archive) if self.archive else None)
        self.options = options or KernelOptions()
        self.flag_config = flag_config or FlagConfig()
        self.settings = settings or AnalyserSettings()
        self._ctx = context or zmq.Context.instance()
        self._pub: zmq.Socket | None = None
        self._stream_security = stream_security
        self._guard = None  # CURVE: released in close(), after the PUB socket
        if bind is not None:
            check_bind(bind, security)
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.SNDHWM, self.settings.hwm)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._guard = bind_server(self._pub, bind, security, role="data", what="the results stream")
        #: documents to handle, in order: backfill and recovery from the archive, then the stream
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.run: RunContext | None = None
        self.rejected: collections.Counter[str] = collections.Counter()
        #: pixels the scan reported as failed (no spectrum to analyse): (iy, ix) -> reason
        self.scan_failures: dict[tuple[int, int], str] = {}
        self.subscriber_stats: dict[str, Any] = {}
        self.analysed = 0
        #: measurements offered again (same pixel and time: backfill/recovery/stream overlap), skipped
        self.duplicates = 0
        #: run uid -> why its start document is missing (shown in the status)
        self.missing_start: dict[str, str] = {}
        self.max_queue = 0
        self.stopped_runs: list[str] = []
        self._stop_seen = threading.Condition()
        self._since_snapshot = 0
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_wanted = threading.Event()
        self._snapshot_quit = False
        self._last_publish = 0.0
        self._last_write = 0.0
        self._last_stats = -math.inf
        self.errors: list[str] = []
        self._stages: dict[str, float] = dict.fromkeys(("receive+decode", "check", "publish", "snapshot"), 0.0)

    @property
    def results_endpoint(self) -> str | None:
        """The results PUB endpoint actually bound (port resolved)."""
        return None if self._pub is None else self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- lifetime ---------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 10.0) -> AnalyserService:
        """Start the service thread; returns once subscribed and the backfill is queued."""
        self._thread = threading.Thread(target=self._serve, name="analyser", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise StreamError(f"analyser did not subscribe to {self.connect} within {timeout_s} s")
        return self

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop the service (it finishes what it has received first), write the file, close sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        if self._guard is not None:
            self._guard.release()

    def wait_for_stop(self, run_uid: str | None = None, *, timeout_s: float = 60.0) -> bool:
        """Wait until a run's stop has been processed (any run when None); True if it was."""
        deadline = time.monotonic() + timeout_s
        with self._stop_seen:
            while not (self.stopped_runs and (run_uid is None or run_uid in self.stopped_runs)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._stop_seen.wait(left)
        return True

    def __enter__(self) -> AnalyserService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- service thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        sub: RunSubscriber | None = None
        backfilled: dict[tuple[int, int], float | None] = {}  # pixel -> t_start of the measurement queued
        opened: set[str] = set()  # runs whose start (stream or archive) is queued, or was looked for
        try:
            try:
                # inside the try: a missing client key file (ConfigError) is reported like a refused endpoint
                sub = RunSubscriber(
                    self.connect, hwm=self.settings.hwm, context=self._ctx, security=self._stream_security
                )
                time.sleep(0.2)  # let the subscription reach the publisher before reading the archive
                if self.archive is not None and self.archive.is_file():
                    run_uid, backfilled = self._backfill()
                    opened.add(run_uid)
            except StsliveError as exc:  # e.g. the endpoint is refused: say so in the status
                self._lost(sub, exc)
                sub = None
            finally:
                self._ready.set()
            while True:
                if sub is not None and not self._stop.is_set() and len(self._inbox) < self.settings.batch:
                    try:
                        self._receive(sub, backfilled, opened, wait_s=0.0 if self._inbox else 0.05)
                    except StsliveError as exc:
                        self._lost(sub, exc)
                        sub = None
                if self._inbox:
                    self._handle_items(self._drain())
                elif sub is None or self._stop.is_set():
                    break
                self._periodic()
            self._finish_run(state=None)
        finally:
            if sub is not None:
                self.subscriber_stats = sub.stats()
                sub.close()
            self._stop_snapshots()

    def _lost(self, sub: RunSubscriber | None, exc: StsliveError) -> None:
        """The stream cannot be read any more: record why and close it; what was received is still analysed."""
        self.errors.append(str(exc))
        log.error("analyser: %s", exc)
        if sub is not None:
            self.subscriber_stats = sub.stats()
            sub.close()

    def _receive(
        self, sub: RunSubscriber, backfilled: dict[tuple[int, int], float | None], opened: set[str], *, wait_s: float
    ) -> None:
        """Move what the socket holds into the inbox, decoded, up to a batch; wait up to ``wait_s`` for the first."""
        clock = time.thread_time  # CPU time: an idle wait in poll costs none; read per call, not per document
        t0 = clock()
        try:
            self._receive_docs(sub, backfilled, opened, wait_s=wait_s)
        finally:
            self._stages["receive+decode"] += clock() - t0

    def _receive_docs(
        self, sub: RunSubscriber, backfilled: dict[tuple[int, int], float | None], opened: set[str], *, wait_s: float
    ) -> None:
        while len(self._inbox) < self.settings.batch:
            doc = sub.poll(0)
            if doc is None and wait_s > 0:
                doc = sub.poll(wait_s)
            wait_s = 0.0
            now = time.monotonic()
            # stats() builds dicts: not once per event, but before any other document (a stop)
            if doc is None or not isinstance(doc, EventDoc) or now - self._last_stats >= 0.1:
                self.subscriber_stats, self._last_stats = sub.stats(), now
            if doc is None:
                return
            if doc.run_uid is not None and doc.run_uid not in opened:
                opened.add(doc.run_uid)
                if not isinstance(doc, StartDoc):
                    backfilled.update(self._missed_start(doc.run_uid))
            gaps = sub.take_new_gaps()
            if gaps and self.archive is not None and doc.run_uid is not None:
                self._recover(sub, doc.run_uid, backfilled)
            self._inbox.append(("doc", doc))
            self.max_queue = max(self.max_queue, len(self._inbox))

    def _missed_start(self, run_uid: str) -> dict[tuple[int, int], float | None]:
        """A document of ``run_uid`` came before (without) its start: take the start from the archive.

        Returns the pixels backfilled (pixel -> t_start); none without a usable archive, and
        then the run's events are rejected as ``no_start`` and :attr:`missing_start` says why.
        """
        if self.archive is None:
            self.missing_start[run_uid] = (
                "missed its start document (the analyser connected after the scan "
                "published it); give --archive RUN.h5 to take it from the archive"
            )
            log.error("analyser: run %s %s", run_uid, self.missing_start[run_uid])
            return {}
        try:
            found, pixels = self._backfill(run_uid=run_uid)
        except StsliveError as exc:
            self.missing_start[run_uid] = f"missed its start document and cannot take it from {self.archive}: {exc}"
            log.error("analyser: run %s %s", run_uid, self.missing_start[run_uid])
            return {}
        log.info("analyser: run %s: start document taken from %s (missed on the stream)", found, self.archive)
        return pixels

    def _backfill(self, *, run_uid: str | None = None) -> tuple[str, dict[tuple[int, int], float | None]]:
        """Queue the archive's start document and measured pixels in acquisition order.

        Returns the archive's run uid and the pixels queued (pixel -> t_start, unix s).

        Raises
        ------
        StreamError
            If ``run_uid`` is given and the archive holds another run. ``ArchiveError`` if the
            archive cannot be read.
        """
        from stslive.acquisition.formats.archive import open_archive

        assert self.archive is not None
        with open_archive(self.archive, swmr=True) as reader:
            if run_uid is not None and reader.run_uid != run_uid:
                raise StreamError(
                    f"{self.archive} holds run {reader.run_uid}, the stream is run {run_uid}; "
                    "pass this run's archive with --archive"
                )
            start = reader.documents.get("start", {})
            start = {
                **start,
                "setpoint_sets": [s.to_dict() for s in reader.setpoint_sets.values()],
                "channel_names": reader.channel_names,
                "n_points": reader.n_points,
                "grid": reader.geometry.to_dict(),
            }
            self._inbox.append(("start", (reader.run_uid, start)))
            measured = reader.measured
            meta = reader.pixel_meta
            iy, ix = measured.nonzero()
            t = meta["t_end"][iy, ix]
            order = sorted(range(iy.size), key=lambda k: (t[k] if math.isfinite(t[k]) else math.inf, k))
            for k in order:
                y, x = int(iy[k]), int(ix[k])
                fields = event_fields({name: values[y, x].item() for name, values in meta.items()})
                spectra = reader.read_pixels(slice(y, y + 1), slice(x, x + 1))[0, 0]
                event = EventDoc(
                    run_uid=reader.run_uid, seq=-1, descriptor_uid="", ix=x, iy=y, arrays={"spectra": spectra}, **fields
                )
                self._inbox.append(("doc", event))
            log.info("analyser: backfilled %d pixels from %s", iy.size, self.archive)
            t_start = meta["t_start"]
            return reader.run_uid, {(int(a), int(b)): float(t_start[a, b]) for a, b in zip(iy, ix, strict=True)}

    def _recover(self, sub: RunSubscriber, run_uid: str, backfilled: dict[tuple[int, int], float | None]) -> None:
        """Fill the run's seq gaps and resumes from the archive (measurements never received).

        A pixel counts as received only with the archive's measurement (same ``t_start``): one
        re-measured while nobody published is recovered too.
        """
        assert self.archive is not None
        try:
            tracker = sub.run(run_uid)
            seen = {**backfilled, **tracker.pixels}
            events = list(recover_from_archive(self.archive, run_uid=run_uid, exclude=seen))
        except StsliveError as exc:
            self.rejected["recovery"] += 1
            log.warning("analyser: cannot recover run %s from %s: %s", run_uid, self.archive, exc)
            return
        events.sort(key=lambda e: e.timestamps.get("t_end", math.inf))
        for event in events:
            tracker.pixels[(event.iy, event.ix)] = event.timestamps.get("t_start")
            self._inbox.append(("doc", event))
        tracker.missing.clear()

    # -- analysis -----------------------------------------------------------------------------
    def _drain(self) -> list[tuple[str, Any]]:
        """The oldest inbox items, up to ``settings.batch``.

        Never waits to fill a batch: at a low rate a batch is one pixel (lowest latency), at a
        high rate it grows to what arrived while the previous batch was analysed.
        """
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(len(inbox), self.settings.batch))]

    def _handle_items(self, items: list[tuple[str, Any]]) -> None:
        """Process drained items in order (events batched between other documents)."""
        clock = time.thread_time  # read per batch, not per event: the clock is a system call
        pending: list[PixelInput] = []
        t0 = clock()
        for kind, item in items:
            if kind == "doc" and isinstance(item, EventDoc):
                pixel = self._accept_event(item)
                if pixel is not None:
                    pending.append(pixel)
                continue
            self._stages["check"] += clock() - t0
            self._flush(pending)
            if kind == "start":
                self._open_run(*item)
            else:
                self._handle_other(item)
            t0 = clock()
        self._stages["check"] += clock() - t0
        self._flush(pending)
        run = self.run
        if run is not None:  # the run's progress on the screen: its newest document (archive backfills carry -1)
            last_seq = max(
                (item.seq for kind, item in items if kind == "doc" and item.run_uid == run.run_uid), default=-1
            )
            if last_seq > run.model.status_fields()["last_seq"]:
                run.model.update_status(last_seq=last_seq)

    def _accept_event(self, doc: EventDoc) -> PixelInput | None:
        run = self.run
        if run is None or doc.run_uid != run.run_uid:
            self._reject("no_start", f"event seq {doc.seq} of run {doc.run_uid} before its start document")
            return None
        try:
            pixel = PixelInput.from_event(doc)
            run.check(pixel)
        except StreamError as exc:
            self._reject("pixel", str(exc))
            return None
        if not run.is_new(pixel):  # counted and shown: nothing is skipped silently
            self.duplicates += 1
            return None
        return pixel

    def _reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] <= 10:
            log.warning("analyser rejected input (%s): %s", reason, message)

    def _handle_other(self, doc: Any) -> None:
        run = self.run
        if isinstance(doc, StartDoc):
            if run is None or run.run_uid != doc.run_uid:
                self._open_run(doc.run_uid, doc.to_dict())
        elif isinstance(doc, StopDoc):
            if run is not None and run.run_uid == doc.run_uid:
                self._finish_run(state="done" if doc.exit_status == "success" else "failed")
            with self._stop_seen:
                self.stopped_runs.append(str(doc.run_uid))
                self._stop_seen.notify_all()
        elif isinstance(doc, HeartbeatDoc) and run is not None and doc.run_uid == run.run_uid:
            run.model.update_status(state=doc.state, last_seq=doc.seq)
        elif isinstance(doc, FailedPixelDoc) and run is not None and doc.run_uid == run.run_uid:
            # Not bad input: the scan recorded this pixel as failed (archive: failed + reason).
            self.scan_failures[(doc.iy, doc.ix)] = str(doc.reason)
        elif not isinstance(doc, DescriptorDoc | HeartbeatDoc | FailedPixelDoc | StopDoc):
            self._reject("kind", f"unexpected document {type(doc).__name__}")

    def _open_run(self, run_uid: str, start: dict[str, Any]) -> None:
        if self.run is not None and self.run.run_uid == run_uid:
            return
        if self.run is not None:
            self._finish_run(state=None)
        try:
            self.run = RunContext(run_uid, start, options=self.options, flag_config=self.flag_config)
        except (StreamError, AnalysisError) as exc:
            self._reject("start", str(exc))
            self.run = None
            return
        self.run.model.update_status(state="running", message="analysing")
        self._since_snapshot = 0
        self._publish_all()

    def _flush(self, pending: list[PixelInput]) -> None:
        if not pending or self.run is None:
            pending.clear()
            return
        batch = list(pending)
        pending.clear()
        try:
            columns = self.run.process(batch)
        except StsliveError as exc:  # never die: count the batch and go on
            self._reject("analysis", f"{len(batch)} pixels not analysed: {exc}")
            return
        self._publish_pixels(columns)

    def _publish_pixels(self, columns: dict[str, Any]) -> None:
        if not columns:  # held back for the width calibration
            return
        count = len(columns["iy"])
        self.analysed += count
        self._since_snapshot += count
        if self._pub is not None:
            t0 = time.thread_time()
            # one message with arrays for the whole batch: per-pixel JSON would cost more than the analysis
            self._pub.send_multipart(encode_message(*pixels_message(columns)), copy=False)
            self._stages["publish"] += time.thread_time() - t0
        if self._since_snapshot >= self.settings.snapshot_every:
            self._since_snapshot = 0
            self._request_snapshot()

    # -- correlation snapshots (off the hot path) ----------------------------------------------
    def _request_snapshot(self) -> None:
        """Ask the snapshot thread for a new snapshot; at most one is computed at a time.

        The correlations of a 300 x 250 map take tens of ms: in the service thread they would delay every
        pixel queued behind them by as much, so they run on their own thread on a copy of the
        maps (:func:`correlation_snapshot` copies under the model's lock). A request while one
        is running is merged into the next.
        """
        if self._snapshot_thread is None:
            self._snapshot_thread = threading.Thread(target=self._snapshots, name="analyser-snapshots", daemon=True)
            self._snapshot_thread.start()
        self._snapshot_wanted.set()

    def _snapshots(self) -> None:
        while True:
            self._snapshot_wanted.wait()
            self._snapshot_wanted.clear()
            if self._snapshot_quit:
                return
            run = self.run
            if run is not None:
                self._snapshot(run)

    def _stop_snapshots(self) -> None:
        if self._snapshot_thread is not None:
            self._snapshot_quit = True
            self._snapshot_wanted.set()
            self._snapshot_thread.join()
            self._snapshot_thread = None
            self._snapshot_quit = False

    def _snapshot(self, run: RunContext) -> None:
        t0 = time.thread_time()
        try:
            snap = correlation_snapshot(run.model)
        except AnalysisError as exc:  # too few valid pixels yet: the next snapshot will try again
            log.info("analyser: no correlation snapshot yet (%s)", exc)
            return
        finally:
            self._stages["snapshot"] += time.thread_time() - t0
        run.model.set_snapshot(snap)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent so far per stage: receive+decode (and archive recovery), check (event ->
        PixelInput), analyse / features / flags / model (:meth:`RunContext.process`), publish
        (encode + send), snapshot (correlations, own thread)."""
        out = dict(self._stages)
        if self.run is not None:
            out.update(self.run.stage_seconds)
        return {
            k: out[k]
            for k in ("receive+decode", "check", "analyse", "features", "flags", "model", "publish", "snapshot")
            if k in out
        }

    def status_text(self) -> str:
        rejected = collections.Counter(self.rejected)
        rejected.update(self.subscriber_stats.get("rejected", {}))
        gaps = sum(len(g) for g in self.subscriber_stats.get("gaps", {}).values())
        text = f"{self.analysed} pixels analysed"
        if self.run is not None:
            width = self.run.options.dynes_width_eV
            text += (
                f" (calibrating the template width on the first {self.run.options.chunk} spectra)"
                if self.run.calibrating
                else ""
                if width is None
                else f"; Dynes width {width * 1e3:.4f} meV"
            )
        if self.duplicates:
            text += f"; {self.duplicates} repeated measurement(s) skipped"
        segments = self.subscriber_stats.get("segments", {})
        if self.run is not None and segments.get(self.run.run_uid):
            text += f"; run resumed {segments[self.run.run_uid]} time(s)"
        if self.scan_failures:
            text += f"; {len(self.scan_failures)} pixel(s) failed in the scan"
        if rejected:
            text += "; rejected " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        for run_uid, why in self.missing_start.items():
            text += f"; run {run_uid} {why}"
        if gaps:
            text += f"; {gaps} open seq gap(s)"
        return text

    def _periodic(self) -> None:
        now = time.monotonic()
        if self.run is None:
            return
        if now - self._last_publish >= self.settings.publish_every_s:
            self.run.model.update_status(message=self.status_text())
            self._publish_all()
        if self.out is not None and now - self._last_write >= self.settings.write_every_s:
            self._write()

    def _publish_all(self) -> None:
        self._last_publish = time.monotonic()
        if self._pub is None or self.run is None:
            return
        for message in model_messages(self.run.model):
            self._pub.send_multipart(encode_message(*message), copy=False)

    def _write(self) -> None:
        """Write the analysis file crash-safely: a temp file beside it, then an atomic rename."""
        self._last_write = time.monotonic()
        if self.out is None or self.run is None:
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        try:
            self.run.model.save_maps_h5(tmp)
            os.replace(tmp, self.out)
        except (OSError, StsliveError) as exc:
            self._reject("write", f"cannot write {self.out}: {exc}")

    def _finish_run(self, *, state: str | None) -> None:
        if self.run is None:
            return
        try:
            self._publish_pixels(self.run.finish())
        except StsliveError as exc:
            self._reject("analysis", f"pixels held for the width calibration not analysed: {exc}")
        self._stop_snapshots()  # the final snapshot below sees every pixel and is the one kept
        self._snapshot(self.run)
        self.run.model.update_status(state=state, message=self.status_text())
        self._write()
        self._publish_all()
        if self._pub is not None:
            self._pub.send_multipart(encode_message(*status_message(self.run.model)), copy=False)
