"""The analysis side of the live analyser: run documents in, analysed batches and their outputs out.

:class:`RunHandler` takes the items the service drained from its inbox, in order: a start
document opens a :class:`RunContext`, events between two other documents are checked and
analysed as one batch, a stop finishes the run. Each analysed batch is published at once; the
full model, the analysis file and the correlation snapshots follow on their own schedules. Input
that does not fit the run is counted in the shared ``rejected`` counter, never raised.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stslive.acquisition.formats.documents import (
    DescriptorDoc,
    EventDoc,
    FailedPixelDoc,
    HeartbeatDoc,
    StartDoc,
    StopDoc,
)
from stslive.drivers.errors import AnalysisError, StreamError, StsliveError
from stslive.live.analyser.file import AnalysisFileWriter
from stslive.live.analyser.publisher import ResultsPublisher
from stslive.live.analyser.settings import AnalyserSettings
from stslive.live.analyser.snapshots import SnapshotScheduler
from stslive.live.flag_config import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.results import ResultsModel
from stslive.live.run_context import PixelInput, RunContext

log = logging.getLogger(__name__)


class RunHandler:
    """Runs, batches and outputs of the live analyser (used by its service thread only).

    Parameters
    ----------
    options, flag_config, settings
        Kernel options, flag thresholds and service tunables, as given to the service.
    publisher
        The results stream; None: results are not published.
    file
        The analysis-file writer; None: no file.
    rejected
        Counter of refused input per reason, shared with the service's receiving side.
    status
        Returns the service's status line (written into the model's status).
    errors
        The service's fatal errors: a failed analysis-file write is added here (the service and
        ``stslive analyser`` stop on one).
    """

    def __init__(
        self,
        *,
        options: KernelOptions,
        flag_config: FlagConfig,
        settings: AnalyserSettings,
        publisher: ResultsPublisher | None,
        file: AnalysisFileWriter | None,
        rejected: collections.Counter[str],
        status: Callable[[], str],
        errors: list[str] | None = None,
    ) -> None:
        self.options = options
        self.flag_config = flag_config
        self.settings = settings
        self._publisher = publisher
        self._file = file
        self.rejected = rejected
        self._status = status
        self.errors = errors if errors is not None else []
        self._snapshots = SnapshotScheduler(self._current_model)
        self.run: RunContext | None = None
        self.analysed = 0
        #: measurements offered again (same pixel and time: backfill/recovery/stream overlap), skipped
        self.duplicates = 0
        #: pixels the scan reported as failed (no spectrum to analyse): (iy, ix) -> reason
        self.scan_failures: dict[tuple[int, int], str] = {}
        self.stopped_runs: list[str] = []
        self._stop_seen = threading.Condition()
        self._since_snapshot = 0
        self._finished: str | None = None  # the run finish_run last ended
        self._since_finish = 0  # pixels analysed since
        self._last_snapshot = time.monotonic()
        self._last_publish = 0.0
        #: thread CPU seconds spent turning events into checked pixels
        self.check_seconds = 0.0

    # -- documents ----------------------------------------------------------------------------
    def handle(self, items: list[tuple[str, Any]]) -> None:
        """Process drained items in order (events batched between other documents).

        An item is ``("doc", document)`` from the stream or the archive, or ``("start", (run_uid,
        start fields))`` for a start document rebuilt from the archive.
        """
        clock = time.thread_time  # read per batch, not per event: the clock is a system call
        pending: list[PixelInput] = []
        t0 = clock()
        for kind, item in items:
            if kind == "doc" and isinstance(item, EventDoc):
                pixel = self._accept_event(item)
                if pixel is not None:
                    pending.append(pixel)
                continue
            self.check_seconds += clock() - t0
            self._flush(pending)
            if kind == "start":
                self._open_run(*item)
            else:
                self._handle_other(item)
            t0 = clock()
        self.check_seconds += clock() - t0
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
            self.reject("no_start", f"event seq {doc.seq} of run {doc.run_uid} before its start document")
            return None
        try:
            pixel = PixelInput.from_event(doc)
            run.check(pixel)
        except StreamError as exc:
            self.reject("pixel", str(exc))
            return None
        if not run.is_new(pixel):  # counted and shown: nothing is skipped silently
            self.duplicates += 1
            return None
        return pixel

    def reject(self, reason: str, message: str) -> None:
        """Count refused input under ``reason``; the first ten of each reason are logged."""
        self.rejected[reason] += 1
        if self.rejected[reason] <= 10:
            log.warning("analyser rejected input (%s): %s", reason, message)

    def _handle_other(self, doc: Any) -> None:
        run = self.run
        if isinstance(doc, StartDoc):
            if doc.run_uid is not None and (run is None or run.run_uid != doc.run_uid):  # a start always has one
                self._open_run(doc.run_uid, doc.to_dict())
        elif isinstance(doc, StopDoc):
            if run is not None and run.run_uid == doc.run_uid:
                self.finish_run(state="done" if doc.exit_status == "success" else "failed")
            with self._stop_seen:
                self.stopped_runs.append(str(doc.run_uid))
                self._stop_seen.notify_all()
        elif isinstance(doc, HeartbeatDoc) and run is not None and doc.run_uid == run.run_uid:
            run.model.update_status(state=doc.state, last_seq=doc.seq)
        elif isinstance(doc, FailedPixelDoc) and run is not None and doc.run_uid == run.run_uid:
            # Not bad input: the scan recorded this pixel as failed (archive: failed + reason).
            self.scan_failures[(doc.iy, doc.ix)] = str(doc.reason)
        elif not isinstance(doc, DescriptorDoc | HeartbeatDoc | FailedPixelDoc | StopDoc):
            self.reject("kind", f"unexpected document {type(doc).__name__}")

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

    # -- runs and batches ---------------------------------------------------------------------
    def _open_run(self, run_uid: str, start: dict[str, Any]) -> None:
        if self.run is not None and self.run.run_uid == run_uid:
            return
        if self.run is not None:
            self.finish_run(state=None)
        try:
            self.run = RunContext(run_uid, start, options=self.options, flag_config=self.flag_config)
        except (StreamError, AnalysisError) as exc:
            self.reject("start", str(exc))
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
            self.reject("analysis", f"{len(batch)} pixels not analysed: {exc}")
            return
        self._publish_pixels(columns, new=len(batch))

    def _publish_pixels(self, columns: dict[str, Any], *, new: int) -> None:
        """Publish analysed columns (``new`` of their pixels seen for the first time) and any revisions.

        The revisions (tip epochs an event changed) go first: they name earlier measurements,
        which a pixel measured again in this batch replaces.
        """
        assert self.run is not None  # called while a run is open
        revised = self.run.take_revisions()
        if self._publisher is not None:
            if revised is not None:
                self._publisher.send_pixels(revised)
            if columns:
                self._publisher.send_pixels(columns)
        self.analysed += new
        self._since_finish += new
        self._since_snapshot += new
        self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        """Ask for a snapshot after ``snapshot_every`` new pixels, or ``snapshot_every_s`` after the last one."""
        now = time.monotonic()
        due = now - self._last_snapshot >= self.settings.snapshot_every_s
        if self._since_snapshot >= self.settings.snapshot_every or (self._since_snapshot and due):
            self._since_snapshot = 0
            self._last_snapshot = now
            self._snapshots.request()

    def finish_run(self, *, state: str | None) -> None:
        """End the current run: analyse what was held, final snapshot, file, full model and status out.

        ``state``: the run's final state (``done``/``failed`` from its stop document; None when
        the service stops or another run starts).
        """
        if self.run is None:
            return
        if self._finished == self.run.run_uid and not self._since_finish:  # nothing new since it ended
            if state is not None:
                self.run.model.update_status(state=state)
            return
        self._finished, self._since_finish = self.run.run_uid, 0
        try:
            self._publish_pixels(self.run.finish(), new=0)
        except StsliveError as exc:
            self.reject("analysis", f"pixels not analysed again with the run's template width: {exc}")
        self._snapshots.stop()  # the final snapshot below sees every pixel and is the one kept
        self._snapshots.take(self.run.model)
        self.run.model.update_status(state=state, message=self._status())
        self._write()
        self._publish_all()
        if self._publisher is not None:
            self._publisher.send_status(self.run.model)

    # -- outputs on their own schedule ----------------------------------------------------------
    def periodic(self) -> None:
        """Publish the full model and write the analysis file when their intervals have passed."""
        now = time.monotonic()
        if self.run is None:
            return
        self._maybe_snapshot()
        if now - self._last_publish >= self.settings.publish_every_s:
            self.run.model.update_status(message=self._status())
            self._publish_all()
        if self._file is not None and self._file.due(now):
            self._write()

    def _publish_all(self) -> None:
        self._last_publish = time.monotonic()
        if self._publisher is not None and self.run is not None:
            self._publisher.send_model(self.run.model)

    def _write(self) -> None:
        """Write the analysis file (crash-safe: :class:`AnalysisFileWriter`); a failure is fatal."""
        if self._file is None or self.run is None:
            return
        try:
            self._file.write(self.run.model)
        except (OSError, StsliveError) as exc:  # results that cannot be saved: the service stops
            self.reject("write", f"cannot write {self._file.path}: {exc}")
            self.errors.append(f"cannot write the analysis file {self._file.path}: {exc}")

    def _current_model(self) -> ResultsModel | None:
        run = self.run
        return None if run is None else run.model

    def stop_snapshots(self) -> None:
        """Stop the snapshot thread (the service is ending)."""
        self._snapshots.stop()

    def stage_seconds(self) -> dict[str, float]:
        """CPU seconds per stage of this side: check, the run's analysis stages, publish, snapshot."""
        out = {"check": self.check_seconds}
        if self.run is not None:
            out.update(self.run.stage_seconds)
        out["publish"] = 0.0 if self._publisher is None else self._publisher.pixel_seconds
        out["snapshot"] = self._snapshots.seconds
        return out
