"""Replay: publish a recorded file (stslive archive, Nanonis ``.3ds`` or ``.dat``) as a live run stream.

Contract: the stream has the form of a live scan's: a start document, one descriptor
(``spectra``: float32 ``(n_channels, n_points)``), one event per measured pixel, one failed-pixel
document per recorded failure, and a stop; so the analyser and the viewer run unchanged on old
data. An archive's documents come from the archive itself (:meth:`ArchiveReader.start_document`,
:meth:`ArchiveReader.events`), in the order they were made (by end time; a failure at its
recorded time; ties in visiting order); ``as_recorded`` reproduces the recorded gaps. A Nanonis
file goes in record order (row-major; a point set in file-name order) and has no per-point
times, so ``as_recorded`` is refused. It stores no stslive set-point set: one is built from its
header (:func:`~stslive.acquisition.formats.start_document.start_fields`, the sources in
``metadata["setpoint_source"]``), with the lock-in settings the header does not give as None
(unknown), never a default. For a sweep that is not the bias (``metadata["sweep_signal"]``) it
is sent unvalidated and the analyser refuses the run; a sweep that is not linear (MLS) is
refused, since the stream describes a sweep by its limits and points. Pacing uses absolute
deadlines on a monotonic clock, so sleep overshoot does not accumulate.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.conditions import AmplitudeConvention, check_convention
from stslive.acquisition.formats.documents import EXIT_STATUSES, ArraySpec, EventDoc, StopDoc
from stslive.acquisition.formats.nanonis3ds import NanonisGrid
from stslive.acquisition.formats.nanonis_dat import NanonisPointSet
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.recording import Recording, kind_of, open_recording
from stslive.acquisition.formats.runmodel import channel_unit
from stslive.acquisition.formats.start_document import start_fields
from stslive.drivers.errors import ArchiveError, ConfigError, NanonisFileError, StsliveError

__all__ = [
    "NanonisRecording",
    "ReplayItem",
    "ReplaySource",
    "grid_events",
    "nanonis_start_fields",
    "open_replay",
    "replay",
    "schedule",
]

#: A Nanonis recording replay reads: a ``.3ds`` grid or ``.dat`` point spectra.
NanonisRecording = NanonisGrid | NanonisPointSet


@dataclass(frozen=True)
class ReplayItem:
    """One document to publish: an ``event`` (measured pixel) or a ``failed`` pixel.

    ``t`` is when it was recorded (unix s; NaN when the file does not say). An event's document
    comes from :meth:`ReplaySource.events`; a failure's ``fields`` are the keyword fields of
    :meth:`RunPublisher.failed_pixel`.
    """

    kind: Literal["event", "failed"]
    iy: int
    ix: int
    t: float
    fields: dict[str, Any] = field(default_factory=dict)


class ReplaySource:
    """A file opened for replay; build with :func:`open_replay`.

    Attributes
    ----------
    start_fields : dict
        Keyword fields of :meth:`RunPublisher.start` (grid, channel_names, ...).
    descriptor : dict
        ``{"spectra": ArraySpec}`` of the events.
    items : list of ReplayItem
        Documents in publishing order.
    exit_status : str
        The recorded run's exit status (``success`` when the file does not say).
    """

    def __init__(
        self,
        path: Path,
        backend: Recording,
        *,
        setpoint: tuple[float, float] | None = None,
        amplitude_convention: AmplitudeConvention | None = None,
    ) -> None:
        self.path = path
        self._b = backend
        names = list(backend.channel_names)
        units = [channel_unit(n) for n in names]
        self.n_points = int(backend.n_points)
        self.descriptor = {
            "spectra": ArraySpec(
                dtype="<f4", shape=(len(names), self.n_points), labels=tuple(names), units=tuple(units)
            )
        }
        self.kind = kind_of(backend)
        if isinstance(backend, ArchiveReader):
            self.start_fields, self.items, self.exit_status = _archive_plan(path, backend)
        else:
            self.start_fields = nanonis_start_fields(
                path, backend, setpoint=setpoint, amplitude_convention=check_convention(amplitude_convention)
            )
            done = backend.measured
            self.items = [ReplayItem("event", int(iy), int(ix), math.nan) for iy, ix in np.argwhere(done)]
            self.exit_status = "success"

    @property
    def has_times(self) -> bool:
        """True when every item has a recorded time (``as_recorded`` pacing is possible)."""
        return bool(self.items) and all(math.isfinite(i.t) for i in self.items)

    def events(self) -> Iterator[EventDoc]:
        """The events of the ``event`` items, in their order (spectra read one grid row at a time)."""
        if isinstance(self._b, ArchiveReader):
            return self._b.events("end-time")
        return grid_events(self._b, [(i.iy, i.ix) for i in self.items])

    def close(self) -> None:
        self._b.close()

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_replay(
    path: str | os.PathLike[str],
    *,
    setpoint: tuple[float, float] | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
) -> ReplaySource:
    """Open a recording (:func:`open_recording`: archive, ``.3ds``, ``.dat`` or a folder of them) for replay.

    Parameters
    ----------
    setpoint
        ``(bias_V, current_A)`` of a Nanonis file whose header does not record its set-point.
    amplitude_convention
        How a Nanonis header's ``Lock-in>Amplitude`` is meant ("peak" or "rms"); None: unknown,
        and the replayed set's modulation is then unknown (None).

    Raises
    ------
    FileFormatError
        (ArchiveError or NanonisFileError) when the file cannot be read, or a Nanonis file lacks
        what a run stream needs (a set-point, a linear sweep).
    """
    backend = open_recording(path)
    try:
        return ReplaySource(Path(path), backend, setpoint=setpoint, amplitude_convention=amplitude_convention)
    except BaseException:
        backend.close()
        raise


# -- archives ------------------------------------------------------------------------------------
def _archive_plan(path: Path, ar: ArchiveReader) -> tuple[dict[str, Any], list[ReplayItem], str]:
    start = ar.start_document()
    metadata = {
        "replay_of": str(path),
        "source_kind": "stslive",
        "original_run_uid": ar.run_uid,
        "sweep_signal": "Bias (V)",
    }
    ended = ar.end_times()
    events = [ReplayItem("event", iy, ix, float(ended[iy, ix])) for iy, ix in ar.event_pixels("end-time")]
    failures = sorted((_failure_item(path, ar, rec) for rec in ar.failures), key=_when)
    # both are in time order; on equal times the events come first (heapq.merge is stable)
    items = list(heapq.merge(events, failures, key=_when))
    stop = ar.documents.get("stop", {})
    status = stop.get("exit_status") if isinstance(stop, dict) else None
    if status not in EXIT_STATUSES:
        logged = [e.get("exit_status") for e in ar.log if e.get("event") == "stop"]
        status = logged[-1] if logged and logged[-1] in EXIT_STATUSES else "success"
    return {**start.body(), "metadata": metadata}, items, str(status)


def _when(item: ReplayItem) -> float:
    """Sort key: the recorded time, unknown times last."""
    return item.t if math.isfinite(item.t) else math.inf


def _failure_item(path: Path, ar: ArchiveReader, rec: Any) -> ReplayItem:
    """A failed-pixel item from one record of the archive's failure log (validated: outside bytes)."""
    ny, nx = ar.geometry.shape
    try:
        iy, ix = rec["iy"], rec["ix"]
        if not (isinstance(iy, int) and isinstance(ix, int) and 0 <= iy < ny and 0 <= ix < nx):
            raise ValueError(f"pixel ({iy!r}, {ix!r}) not in the {ny} x {nx} grid")
        x_m, y_m = ar.geometry.pixel_xy(iy, ix)
        fields = {
            "ix": ix,
            "iy": iy,
            "x_m": float(x_m),
            "y_m": float(y_m),
            "setpoint_set_id": int(rec.get("setpoint_set_id", min(ar.setpoint_sets, default=0))),
            "reason": str(rec.get("reason", "")),
            "attempts": int(rec.get("attempts", 1)),
        }
        return ReplayItem("failed", iy, ix, float(rec.get("time", math.nan)), fields)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArchiveError(
            path, f"failure log record {str(rec)[:80]} is damaged ({type(exc).__name__}: {exc})"
        ) from exc


# -- Nanonis files ------------------------------------------------------------------------------
def _check_linear(path: Path, recording: NanonisRecording) -> None:
    """Refuse a sweep the stream cannot describe (it carries start, end and points only)."""
    sweep = recording.nominal_sweep()
    if not np.isfinite(sweep).all():
        return  # nothing measured: nothing to describe
    linear = np.linspace(sweep[0], sweep[-1], sweep.size)
    step = abs(float(sweep[-1] - sweep[0])) / (sweep.size - 1) or 1.0
    if np.abs(sweep - linear).max() > 1e-3 * step:
        raise NanonisFileError(
            path,
            "its sweep is not linear (a multi-segment MLS sweep): a run stream describes a sweep by its "
            "limits and points; analyse it offline (stslive analyse) instead",
        )


def nanonis_start_fields(
    path: Path,
    recording: NanonisRecording,
    *,
    setpoint: tuple[float, float] | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
) -> dict[str, Any]:
    """Keyword fields of :meth:`RunPublisher.start` for a Nanonis recording (replay and watch): its
    :func:`~stslive.acquisition.formats.start_document.start_fields`, for a linear sweep only."""
    if recording.is_bias_sweep:
        _check_linear(path, recording)
    fields = start_fields(recording, setpoint=setpoint, amplitude_convention=amplitude_convention)
    fields["metadata"] = {"replay_of": str(path), **fields["metadata"]}
    return fields


def grid_events(recording: NanonisRecording, pixels: list[tuple[int, int]]) -> Iterator[EventDoc]:
    """Events of a Nanonis recording's pixels ``(iy, ix)``, in the given order (no times: the file
    has none). Positions are the recorded ones of a point set, the grid's otherwise."""
    z = recording.parameter("Z (m)") if "Z (m)" in recording.parameter_names else None
    xs, ys = recording.geometry.pixel_xy(*np.indices(recording.shape))
    if isinstance(recording, NanonisPointSet):  # the recorded positions, where the headers give them
        recorded = recording.positions_m[:, None]
        xs, ys = np.where(np.isfinite(recorded), recorded, np.stack([xs, ys]))
    row_index, row = -1, np.empty(0, dtype=np.float32)
    for iy, ix in pixels:
        if iy != row_index:
            row_index, row = iy, np.asarray(recording.read_block(slice(iy, iy + 1))[0], dtype=np.float32)
        z_m = float(z[iy, ix]) if z is not None and math.isfinite(z[iy, ix]) else None
        yield EventDoc(
            run_uid=None,
            seq=-1,
            descriptor_uid="",
            ix=ix,
            iy=iy,
            x_m=float(xs[iy, ix]),
            y_m=float(ys[iy, ix]),
            setpoint_set_id=0,
            timestamps={},
            temperature_before_K=None,
            temperature_after_K=None,
            z_m=z_m,
            arrays={"spectra": row[ix]},
        )


# -- publishing ----------------------------------------------------------------------------------
def schedule(times: np.ndarray, *, rate: float | None = None, as_recorded: bool = False) -> np.ndarray:
    """Send offsets (s, from the first document) of ``n`` documents.

    ``rate`` (documents/s): ``offset_i = i / rate``; ``as_recorded``: ``offset_i = t_i - t_0``
    with ``t`` the recorded times (unix s, non-decreasing); neither: all zero (as fast as
    possible).

    Raises
    ------
    ConfigError
        Both options, a rate that is not a positive finite number, or ``as_recorded`` with
        unknown (NaN) times.
    """
    times = np.asarray(times, dtype=np.float64)
    if rate is not None and as_recorded:
        raise ConfigError("give --rate or --as-recorded, not both")
    if rate is not None:
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"--rate must be a positive number of pixels per second, got {rate}")
        return np.arange(times.size, dtype=np.float64) / rate
    if as_recorded:
        if times.size and not np.isfinite(times).all():
            raise ConfigError(
                "--as-recorded needs per-pixel times; this file has none (a .3ds records only "
                "the grid's start and end): use --rate N instead"
            )
        return times - times[0] if times.size else times
    return np.zeros(times.size)


def replay(
    source: ReplaySource,
    publisher: RunPublisher,
    *,
    rate: float | None = None,
    as_recorded: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StopDoc:
    """Publish ``source`` as one run on ``publisher``: start, descriptor, events/failures, stop.

    Each document goes out at ``t0 + offset`` (:func:`schedule`) on the monotonic ``clock``.
    If publishing is interrupted (Ctrl-C, an error), the run is closed with an ``abort`` stop
    before the exception propagates, so consumers do not wait for it.

    Returns
    -------
    StopDoc
        The stop document sent (exit status of the recorded run, counts).
    """
    offsets = schedule(np.array([i.t for i in source.items]), rate=rate, as_recorded=as_recorded)
    publisher.start(**source.start_fields)
    try:
        publisher.descriptor(source.descriptor)
        events = source.events()
        t0 = clock()
        for item, offset in zip(source.items, offsets, strict=True):
            wait = t0 + offset - clock()
            if wait > 0:
                sleep(wait)
            if item.kind == "event":
                event = next(events, None)
                if event is None or (event.iy, event.ix) != (item.iy, item.ix):
                    raise ArchiveError(source.path, "the file changed during the replay; replay a finished file")
                publisher.event(**event.body())
            else:
                publisher.failed_pixel(**item.fields)
    except (StsliveError, OSError, KeyboardInterrupt) as exc:
        publisher.stop("abort", reason=f"replay of {source.path} interrupted: {type(exc).__name__}: {exc}")
        raise
    return publisher.stop(source.exit_status, reason=f"replay of {source.path}")  # type: ignore[arg-type]
