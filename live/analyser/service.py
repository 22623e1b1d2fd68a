"""The live analyser service: run stream in, per-pixel results and flags out.

:class:`AnalyserService` runs one service thread that owns the stream subscription: it backfills
from the archive on a late join or restart, fills sequence gaps and missed start documents from
the archive, and moves what the socket holds into its inbox, from which it hands batches (never
waiting to fill one) to :class:`~stslive.live.analyser.runs.RunHandler`, which analyses and
publishes them. Receiving and analysing share the thread on purpose: ZeroMQ's I/O thread keeps
filling the subscription queue meanwhile, whereas a Python receiver thread would fight the
analysis for the GIL. Bad input never stops the service: what it refuses is counted and named in
its status line.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from stslive.acquisition.formats.documents import EventDoc, StartDoc
from stslive.acquisition.formats.security import Security
from stslive.acquisition.formats.subscriber import RunSubscriber, recover_from_archive
from stslive.drivers.errors import StreamError, StsliveError
from stslive.live.analyser.file import AnalysisFileWriter
from stslive.live.analyser.publisher import ResultsPublisher
from stslive.live.analyser.runs import RunHandler
from stslive.live.analyser.settings import AnalyserSettings, analysis_path_for
from stslive.live.analyser.status import status_line
from stslive.live.flag_config import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.run_context import RunContext

log = logging.getLogger(__name__)

#: The stages :meth:`AnalyserService.stage_seconds` reports, in pipeline order.
STAGES = ("receive+decode", "check", "analyse", "features", "flags", "model", "publish", "snapshot")


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
        self._stream_security = stream_security
        # before any socket: a place the analysis file cannot be written is refused at once
        file = None if self.out is None else AnalysisFileWriter(self.out, every_s=self.settings.write_every_s)
        self._publisher = None
        if bind is not None:
            self._publisher = ResultsPublisher(bind, context=self._ctx, hwm=self.settings.hwm, security=security)
        #: documents to handle, in order: backfill and recovery from the archive, then the stream
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.rejected: collections.Counter[str] = collections.Counter()
        #: fatal errors (the stream lost, the analysis file not writable): the service stops
        self.errors: list[str] = []
        self._runs = RunHandler(
            options=self.options,
            flag_config=self.flag_config,
            settings=self.settings,
            publisher=self._publisher,
            file=file,
            rejected=self.rejected,
            status=self.status_text,
            errors=self.errors,
        )
        self.subscriber_stats: dict[str, Any] = {}
        #: run uid -> why its start document is missing (shown in the status)
        self.missing_start: dict[str, str] = {}
        self.max_queue = 0
        self._last_stats = -math.inf
        self._stages: dict[str, float] = {"receive+decode": 0.0}

    @property
    def run(self) -> RunContext | None:
        """The run being analysed (the last one after it stopped); None before any start document."""
        return self._runs.run

    @property
    def analysed(self) -> int:
        """Pixels analysed so far."""
        return self._runs.analysed

    @property
    def duplicates(self) -> int:
        """Measurements offered again (same pixel and time: backfill/recovery/stream overlap), skipped."""
        return self._runs.duplicates

    @property
    def scan_failures(self) -> dict[tuple[int, int], str]:
        """Pixels the scan reported as failed (no spectrum to analyse): (iy, ix) -> reason."""
        return self._runs.scan_failures

    @property
    def stopped_runs(self) -> list[str]:
        """Uids of the runs whose stop document has been processed, in order."""
        return self._runs.stopped_runs

    @property
    def results_endpoint(self) -> str | None:
        """The results PUB endpoint actually bound (port resolved)."""
        return None if self._publisher is None else self._publisher.endpoint

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
        if self._publisher is not None:
            self._publisher.close()

    def wait_for_stop(self, run_uid: str | None = None, *, timeout_s: float = 60.0) -> bool:
        """Wait until a run's stop has been processed (any run when None); True if it was."""
        return self._runs.wait_for_stop(run_uid, timeout_s=timeout_s)

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
                if self.errors:  # nothing more can be saved: stop instead of analysing into the void
                    break
                if self._inbox:
                    self._runs.handle(self._drain())
                elif sub is None or self._stop.is_set():
                    break
                self._runs.periodic()
            self._runs.finish_run(state=None)
        finally:
            if sub is not None:
                self.subscriber_stats = sub.stats()
                sub.close()
            self._runs.stop_snapshots()

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
            start = reader.start_document()
            self._inbox.append(("start", (start.run_uid, start.to_dict())))
            queued: dict[tuple[int, int], float | None] = {}
            for event in reader.events("end-time"):
                self._inbox.append(("doc", event))
                queued[(event.iy, event.ix)] = event.timestamps.get("t_start")
            log.info("analyser: backfilled %d pixels from %s", len(queued), self.archive)
            return reader.run_uid, queued

    def _recover(self, sub: RunSubscriber, run_uid: str, backfilled: dict[tuple[int, int], float | None]) -> None:
        """Fill the run's seq gaps and resumes from the archive (measurements never received).

        A pixel counts as received only with the archive's measurement (same ``t_start``): one
        re-measured while nobody published is recovered too.
        """
        assert self.archive is not None
        try:
            tracker = sub.run(run_uid)
            seen = {**backfilled, **tracker.pixels}
            events = list(recover_from_archive(self.archive, run_uid=run_uid, exclude=seen, order="end-time"))
        except StsliveError as exc:
            self.rejected["recovery"] += 1
            log.warning("analyser: cannot recover run %s from %s: %s", run_uid, self.archive, exc)
            return
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

    # -- what the service tells ---------------------------------------------------------------
    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent so far per stage: receive+decode (and archive recovery), check (event ->
        PixelInput), analyse / features / flags / model (:meth:`RunContext.process`), publish
        (encode + send), snapshot (correlations, own thread)."""
        out = {**self._stages, **self._runs.stage_seconds()}
        return {k: out[k] for k in STAGES if k in out}

    def status_text(self) -> str:
        """The status line (:func:`stslive.live.analyser.status.status_line`)."""
        return status_line(self._runs, subscriber_stats=self.subscriber_stats, missing_start=self.missing_start)
