"""The scan engine: walks a plan through the state machine, archives and streams every pixel.

One thread (the caller's) does all instrument and file I/O; the control socket's thread only
changes the state machine (``state.py``), whose change log this thread writes to the archive's
run log between pixels. Per pixel: temperature -> suspender -> measure (bounded retries,
``pixel.py``) -> archive -> stream event, the archive write and the event of a pixel overlapping
the next pixel's sweep; whatever else is written first records the waiting pixel, so archive and
stream keep the pixel order. A pixel is archived complete and flagged or not at all; one that
still fails is recorded with its reason, never as data, and ``max_consecutive_failures`` in a row
pause the run. A re-measured pixel's old record is logged before its spectrum is replaced. The
wait after a move grows with its length; between pixels the stop rule (``stop_rule.py``) may end
or pause the run; :meth:`ScanEngine.progress` gives the figures the status reply, the progress
line and the archive's stop document show. See docs/architecture.md ("The scan engine").
"""

from __future__ import annotations

import logging
import math
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stslive.acquisition.config import RunConfig
from stslive.acquisition.control import ControlServer
from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.documents import ArraySpec
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.acquisition.formats.security import Security
from stslive.acquisition.pixel import Instruments, MeasuredPixel, PixelProcedure, failure_code
from stslive.acquisition.plans import Plan, PlanPoint
from stslive.acquisition.progress import RateMeter, RunProgress
from stslive.acquisition.state import CommandRefused, RunStateMachine
from stslive.acquisition.stop_rule import StopRuleWatch
from stslive.acquisition.suspenders import TemperatureSuspender
from stslive.drivers.errors import InstrumentError, StsliveError, SweepStopped

log = logging.getLogger(__name__)


#: Phases of a measured pixel's software work in :attr:`RunStats.phase_s`.
OVERHEAD_PHASES = ("before_sweep", "after_sweep", "archive", "publish")


@dataclass
class RunStats:
    """Counters and per-pixel software overhead of one engine run (s).

    ``overhead_s`` has one entry per measured pixel: the wall time of its engine step minus the
    controller's sweep call, i.e. what the pixel costs beyond the sweep (its round trips, and
    whatever part of the previous pixel's archive write and event did not fit beside the sweep).
    ``work_s`` is the software work of each recorded pixel, hidden or not: round trips before
    the sweep (set-point set, move, z) and after it (lock-in status, temperature), the archive
    write with its flushes, the stream event; ``phase_s`` holds these four parts
    (:data:`OVERHEAD_PHASES`).
    """

    measured: int = 0
    failed: int = 0
    retries: int = 0
    settle_s: list[float] = field(default_factory=list)
    overhead_s: list[float] = field(default_factory=list)
    work_s: list[float] = field(default_factory=list)
    phase_s: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in OVERHEAD_PHASES})


class ScanEngine:
    """Runs one plan to the end (or abort) against the given instruments, archive and stream.

    Parameters
    ----------
    config
        The run config (run options, set-point sets, suspender).
    plan
        Where to measure; cells already measured (or failed) in the archive are skipped.
    writer
        The open archive (created or resumed).
    publisher
        The run stream; ``start`` and the descriptor are published by :meth:`run`.
    instruments
        The connected instruments.
    run_uid
        The archive's run uid (the stream's run uid too).
    control_endpoint
        Bind the control socket here (``None``: no socket; commands via :attr:`machine`).
    skip
        ``(ny, nx)`` mask of further cells not to visit (on resume: the failed ones, unless retried).
    start_fields
        Extra start-document fields (``instruments``, ``software_version``, ``metadata``).
    sleep, clock, context
        Injectable for tests.
    security
        CURVE keys of the control socket (only ``controllers/`` keys may send commands, see
        :mod:`stslive.acquisition.formats.security`); ``None``: no keys, loopback only.
    """

    def __init__(
        self,
        config: RunConfig,
        plan: Plan,
        writer: ArchiveWriter,
        publisher: RunPublisher,
        instruments: Instruments,
        *,
        run_uid: str,
        control_endpoint: str | None = None,
        skip: np.ndarray | None = None,
        start_fields: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        context: Any = None,
        security: Security | None = None,
    ) -> None:
        self.config, self.plan, self.writer, self.publisher = config, plan, writer, publisher
        self.instruments = instruments
        self.run_uid = run_uid
        self._sleep, self._clock = sleep, clock
        self._opts = config.run
        self._sets = {s.id: s for s in config.setpoint_sets}
        self._set_order = [s.id for s in config.setpoint_sets]
        self.procedure = PixelProcedure(
            instruments,
            channels=self._opts["channels"],
            move_settle_s=self._opts["move_settle_s"],
            sleep=sleep,
            clock=clock,
        )
        self._measured = writer.measured
        done = self._measured if skip is None else self._measured | skip
        self._todo = plan.remaining(done)
        self._left = plan.remaining_count(done)  # plan points not yet taken from _todo
        self._pending: PlanPoint | None = None
        self._replace_reason: dict[tuple[int, int], str] = {}  # cells being re-measured -> why
        self._last_after: float | None = None
        # measured, waiting to be archived and published beside the next sweep: (point, result, remeasure reason)
        self._deferred: tuple[PlanPoint, MeasuredPixel, str | None] | None = None
        self._log_queue: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self.rate = RateMeter()
        self._t_started: float | None = None
        self._last_xy: tuple[float, float] | None = None  # where the last move went (m)
        self.stop_rule = StopRuleWatch(config.stop, context=context)
        self.machine = RunStateMachine(
            self._set_order,
            validate_pixel=self._validate_remeasure,
            on_change=self._on_change,
            report=lambda: {"progress": self.progress().to_dict(), "stop_rule": self.stop_rule.status()},
            stop_rule=config.stop,
        )
        sus = config.suspender
        self.suspender = TemperatureSuspender(sus["min_K"], sus["max_K"], sus["hold_s"]) if sus["enabled"] else None
        self.stats = RunStats()
        self._consecutive_failures = 0
        self._start_fields = start_fields or {}
        self.control = (
            ControlServer(self.machine, control_endpoint, context=context, security=security).start()
            if control_endpoint
            else None
        )

    def _on_change(self, event: str, fields: dict[str, Any]) -> None:
        self._log_queue.put((event, fields))
        if event == "stopping" and fields.get("exit_status") == "abort":
            self.procedure.stop_sweep()  # the sweep in progress ends now, not at its last point

    @property
    def control_endpoint(self) -> str | None:
        """The bound control endpoint (port resolved), or None."""
        return None if self.control is None else self.control.endpoint

    def progress(self) -> RunProgress:
        """The run's figures now (any thread: the control socket's ``status`` asks from its own)."""
        elapsed = 0.0 if self._t_started is None else time.monotonic() - self._t_started
        return RunProgress(
            state=self.machine.state,
            total=len(self.plan),
            measured=int(np.count_nonzero(self._measured)),
            failed=int(np.count_nonzero(self.writer.failed)),
            remaining=self._left + (self._pending is not None),
            this_run=self.stats.measured + self.stats.failed,
            rate_px_s=self.rate.rate(),
            elapsed_s=elapsed,
            pause_reasons=tuple(sorted(self.machine.pause_reasons)),
            flagged=self.stop_rule.flagged,
        )

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> str:
        """Run to the end; returns the exit status (``success``, ``abort`` or ``fail``)."""
        names = self.procedure.channel_names
        units = tuple(n[n.rindex("(") + 1 : -1] if n.endswith(")") else "" for n in names)
        self.publisher.start(
            run_uid=self.run_uid,
            grid=self.plan.geometry.to_dict(),
            channel_names=names,
            channel_units=units,
            n_points=self.config.n_points,
            setpoint_sets=[s.to_dict() for s in self.config.setpoint_sets],
            **self._start_fields,
        )
        self.publisher.descriptor(
            {"spectra": ArraySpec(dtype="<f4", shape=(len(names), self.config.n_points), labels=names, units=units)}
        )
        self._t_started = time.monotonic()
        self.machine.begin()
        try:
            while self.machine.state in ("running", "paused"):
                self._drain_log()
                self._check_stop_rule()
                if self.machine.state == "paused":
                    self._while_paused()
                else:
                    self._step()
            self._record_deferred()
            if self.machine.state == "stopping":
                self.machine.finish()
        except (StsliveError, OSError) as exc:
            self.machine.fail(f"{type(exc).__name__}: {exc}")
            log.error("run failed: %s", exc)
            self._record_deferred_after_failure(exc)
            raise
        finally:
            status = self.machine.exit_status or "fail"
            try:
                self._drain_log()
                self.writer.append_log(
                    "stop", exit_status=status, measured=self.stats.measured, failed=self.stats.failed
                )
            except (StsliveError, OSError) as exc:  # the archive that failed the run: the stream still ends it
                log.error("the run log's stop line could not be written: %s", exc)
            stop = self.publisher.stop(status, reason=self.machine.reason)  # type: ignore[arg-type]
            self._write_stop_document(stop.to_dict())
            self.stop_rule.close()
            if self.control is not None:
                self.control.close()
        return status

    def _write_stop_document(self, stop: dict[str, Any]) -> None:
        """``/entry/documents/stop``: the stream's stop document and the run's figures at its end."""
        segment = self._start_fields.get("metadata", {}).get("segment", 0)
        doc = {**stop, "time": time.time(), "segment": segment, "progress": self.progress().to_dict()}
        doc["stop_rule"] = self.stop_rule.status()
        try:
            self.writer.write_document("stop", doc)
        except (StsliveError, OSError) as exc:
            log.error("the archive's stop document could not be written: %s", exc)

    def _step(self) -> None:
        t_step = time.perf_counter()
        point = self._next_point()
        if point is None:
            self._record_deferred()
            self.machine.finish_plan()
            return
        # The previous pixel's after-sweep reading, taken a moment ago, serves as this pixel's
        # before-reading (one thermometer round trip less per pixel); after a pause, a failure or
        # a remeasure jump the thermometer is read afresh.
        temperature, self._last_after = self._last_after, None
        if temperature is None:
            temperature = self.instruments.temperature()
        if self.suspender is not None and self.suspender.check(temperature) == "suspend":
            self._record_deferred()
            self._pending = point  # measured when the temperature is back
            self.machine.suspend("temperature", kelvin=temperature)
            return
        sp = self._set_for(point)
        self.procedure.move_settle_s = self._settle_for(point)
        result, error, attempts = self._measure(point, sp, temperature)
        self._record_deferred()  # if no sweep ran (failures before it), the waiting pixel goes now
        if result is not None:
            self._last_after = result.meta.temperature_after_K
            reason = self._replace_reason.pop((point.iy, point.ix), None)
            self._deferred = (point, result, reason)
            self.stats.overhead_s.append(time.perf_counter() - t_step - result.sweep_call_s)
        elif not isinstance(error, SweepStopped):
            assert error is not None
            self._record_failure(point, sp, error, attempts)

    def _record_deferred(self) -> None:
        """Archive and publish the pixel waiting for it (if any); also counts its work."""
        if self._deferred is None:
            return
        point, result, reason = self._deferred
        self._deferred = None
        archive_s, publish_s = self._record(point, result, reason)
        meta, stats = result.meta, self.stats
        before, after = meta.t_sweep_start - meta.t_start, meta.t_end - meta.t_sweep_end
        stats.work_s.append(before + after + archive_s + publish_s)
        for name, value in zip(OVERHEAD_PHASES, (before, after, archive_s, publish_s), strict=True):
            stats.phase_s[name].append(value)

    def _record_deferred_after_failure(self, exc: BaseException) -> None:
        # The waiting pixel was measured correctly; if the archive or stream that failed the run
        # still takes it, keep it, otherwise say so (it stays unmeasured: --resume measures it).
        if self._deferred is None:
            return
        point = self._deferred[0]
        try:
            self._record_deferred()
        except (StsliveError, OSError) as second:
            log.error(
                "pixel (%d, %d) was measured but could not be recorded after the failure: %s",
                point.iy,
                point.ix,
                second,
            )
            exc.add_note(f"pixel ({point.iy}, {point.ix}) measured but not recorded ({second}); --resume measures it")

    def _measure(
        self, point: PlanPoint, sp: SetpointSet, temperature: float
    ) -> tuple[MeasuredPixel | None, InstrumentError | None, int]:
        error: InstrumentError | None = None
        for attempt in range(1, self._opts["retries"] + 2):
            during_sweep = self._record_deferred if self._deferred is not None else None
            try:
                result = self.procedure.measure(point, sp, temperature_before_K=temperature, during_sweep=during_sweep)
                return result, None, attempt
            except SweepStopped as exc:  # aborted mid-sweep: not a failure, the pixel stays unmeasured
                return None, exc, attempt
            except InstrumentError as exc:
                error = exc
                log.warning("pixel (%d, %d) attempt %d failed: %s", point.iy, point.ix, attempt, exc)
                if attempt <= self._opts["retries"]:
                    self.stats.retries += 1
                    self.procedure.invalidate()  # the next attempt re-sends the set (new session)
        return None, error, self._opts["retries"] + 1

    def _record(self, point: PlanPoint, result: MeasuredPixel, reason: str | None) -> tuple[float, float]:
        """Archive and publish a measured pixel; returns the time (s) each took."""
        t0 = time.perf_counter()
        if self._measured[point.iy, point.ix]:  # a re-measure: the archive logs what it replaces
            self.writer.rewrite_pixel(point.iy, point.ix, result.spectra, result.meta, reason=reason or "remeasure")
        else:
            self.writer.write_pixel(point.iy, point.ix, result.spectra, result.meta)
        self._measured[point.iy, point.ix] = True
        self.rate.tick()
        t1 = time.perf_counter()
        meta = result.meta
        self.publisher.event(
            arrays={"spectra": result.spectra},
            ix=point.ix,
            iy=point.iy,
            x_m=point.x_m,
            y_m=point.y_m,
            setpoint_set_id=meta.setpoint_set_id,
            timestamps={
                "t_start": meta.t_start,
                "t_sweep_start": meta.t_sweep_start,
                "t_sweep_end": meta.t_sweep_end,
                "t_end": meta.t_end,
            },
            temperature_before_K=_known(meta.temperature_before_K),
            temperature_after_K=_known(meta.temperature_after_K),
            z_m=_known(meta.z_m),
            lockin_status=meta.lockin_status,
            lockin_overload=meta.lockin_overload,
        )
        self.stats.measured += 1
        self._consecutive_failures = 0
        return t1 - t0, time.perf_counter() - t1

    def _record_failure(self, point: PlanPoint, sp: SetpointSet, error: InstrumentError, attempts: int) -> None:
        self._record_deferred()
        reason = f"{type(error).__name__}: {error}"
        replacing = self._replace_reason.pop((point.iy, point.ix), None)
        if self._measured[point.iy, point.ix]:
            # A failed re-measure keeps the pixel's spectrum: logged, not marked failed (a pixel is
            # never failed and measured at once), and not counted towards the failure pause.
            self.writer.append_log(
                "remeasure_failed",
                iy=point.iy,
                ix=point.ix,
                reason=reason,
                attempts=attempts,
                remeasure_reason=replacing,
            )
            self.stats.failed += 1
            return
        self.writer.record_failure(
            point.iy, point.ix, reason, code=failure_code(error), attempts=attempts, setpoint_set_id=sp.id
        )
        self.publisher.failed_pixel(
            ix=point.ix,
            iy=point.iy,
            x_m=point.x_m,
            y_m=point.y_m,
            setpoint_set_id=sp.id,
            reason=reason,
            attempts=attempts,
        )
        self.stats.failed += 1
        self.rate.tick()
        self._consecutive_failures += 1
        if self._consecutive_failures >= self._opts["max_consecutive_failures"]:
            self.machine.suspend("failures", consecutive=self._consecutive_failures, last_reason=reason)
            self._consecutive_failures = 0

    def _while_paused(self) -> None:
        self._record_deferred()
        self.rate.pause()
        self._last_after = None
        self.publisher.heartbeat("paused", message=",".join(sorted(self.machine.pause_reasons)))
        if self.suspender is not None and "temperature" in self.machine.pause_reasons:
            kelvin = self.instruments.temperature()
            if self.suspender.check(kelvin) == "resume":
                self.machine.release("temperature", kelvin=kelvin)
                return
            self.machine.wait_change(min(self.config.suspender["poll_s"], self._opts["heartbeat_s"]))
        else:
            self.machine.wait_change(self._opts["heartbeat_s"])

    # -- helpers ---------------------------------------------------------------------------------
    def _next_point(self) -> PlanPoint | None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        request = self.machine.pop_remeasure_request()
        if request is not None:
            self._record_deferred()  # a re-measure of the waiting pixel must find it archived
            cell, reason = request
            self._last_after = None
            self._replace_reason[cell] = reason
            return self.plan.at(*cell)
        while True:
            point = next(self._todo, None)
            self._left -= point is not None
            # a cell measured through 'remeasure' before the plan reached it is not measured twice
            # (it may still be waiting to be recorded)
            if point is None or not (self._measured[point.iy, point.ix] or self._is_deferred(point)):
                return point

    def _is_deferred(self, point: PlanPoint) -> bool:
        waiting = self._deferred[0] if self._deferred is not None else None
        return waiting is not None and (waiting.iy, waiting.ix) == (point.iy, point.ix)

    def _settle_for(self, point: PlanPoint) -> float:
        """Wait after the move to ``point`` (s): ``move_settle_s`` plus ``move_settle_per_nm_s`` per nm of
        the move, as piezo creep grows with the jump; the first move of a run, from wherever the tip
        was, counts as half the frame's diagonal."""
        g = self.plan.geometry
        x0, y0 = (
            self._last_xy
            if self._last_xy is not None
            else (point.x_m, point.y_m + math.hypot(g.width_m, g.height_m) / 2)
        )
        self._last_xy = (point.x_m, point.y_m)
        settle = (
            self._opts["move_settle_s"]
            + self._opts["move_settle_per_nm_s"] * math.hypot(point.x_m - x0, point.y_m - y0) * 1e9
        )
        self.stats.settle_s.append(settle)
        return settle

    def _check_stop_rule(self) -> None:
        """A new rule from the control socket, then the latest snapshot against the rule in force."""
        table = self.machine.pop_stop_rule()
        if table is not None:
            self.stop_rule.replace(table)
        met = self.stop_rule.poll()
        if met is None:
            return
        if self.stop_rule.rule.action == "stop":
            self.machine.conclude(met.reason, stop_rule=met.to_dict())
        else:
            self.machine.suspend("stop_rule", stop_rule=met.to_dict())

    def _set_for(self, point: PlanPoint) -> SetpointSet:
        if self._opts["setpoint_mode"] == "alternate":
            return self._sets[self._set_order[point.index % len(self._set_order)]]
        return self._sets[self.machine.active_set]

    def _validate_remeasure(self, iy: int, ix: int) -> None:
        try:
            self.plan.at(iy, ix)
        except StsliveError as exc:
            raise CommandRefused(str(exc)) from None

    def _drain_log(self) -> None:
        if self._log_queue.empty():
            return
        self._record_deferred()  # log lines after the pixels measured before them
        while True:
            try:
                event, fields = self._log_queue.get_nowait()
            except queue.Empty:
                return
            self.writer.append_log(event, **fields)


def _known(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)
