"""Replay: publish a recorded file (stslive archive or Nanonis ``.3ds``) as a live run stream.

The stream has the form of a live scan (``engine.ScanEngine``): a start document (grid,
channels + units, set-point sets, instruments, software version, metadata), one descriptor
(``spectra``: float32 ``(n_channels, n_points)``), one event per measured pixel, one failed-pixel
document per recorded failure, and a stop. So the analyser and the viewer run unchanged on old
data. Unmeasured pixels are not sent.

Order and timing
    Archive: documents go out in the order they were made: an event at its pixel's ``t_end``
    (``t_start`` if the end was not recorded), a failure at its recorded ``time``; ties keep
    the grid's visiting order. ``as_recorded`` reproduces the recorded gaps between them.
    ``.3ds``: the record order (x fastest, row after row); the file has no per-point times, so
    ``as_recorded`` is refused there.

Set-point sets of a ``.3ds``
    A ``.3ds`` stores no stslive set-point set. One is built from its header (bias set-point,
    current set-point, sweep limits, settling/integration, lock-in, feedback hold) and the start
    document's ``metadata["setpoint_source"]`` says so and which header keys were used. For a
    sweep that is not the bias (``metadata["sweep_signal"]``, e.g. ``"Z (m)"``) the set is sent
    unvalidated, its sweep limits in the sweep signal's unit: it is not a bias set-point set,
    and the analyser refuses such a run.

Pacing uses absolute deadlines on a monotonic clock (``t0 + offset``), so sleep overshoot does
not accumulate over a run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader, open_archive
from stslive.acquisition.formats.documents import ArraySpec, StopDoc, event_fields
from stslive.acquisition.formats.nanonis3ds import NanonisGrid, open_3ds
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.drivers.errors import ArchiveError, ConfigError, FileFormatError, NanonisFileError, StsliveError

__all__ = ["ReplayItem", "ReplaySource", "open_replay", "replay", "schedule", "setpoint_set_from_3ds"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_EXIT_STATUSES = ("success", "abort", "fail")


@dataclass(frozen=True)
class ReplayItem:
    """One document to publish: an ``event`` (measured pixel) or a ``failed`` pixel.

    ``t`` is when it was recorded (unix s; NaN when the file does not say); ``fields`` are the
    keyword fields of :meth:`RunPublisher.event` (without ``arrays``) or
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

    def __init__(self, path: Path, backend: ArchiveReader | NanonisGrid) -> None:
        self.path = path
        self._b = backend
        self._row: tuple[int, np.ndarray] | None = None  # one cached grid row of spectra
        names = list(backend.channel_names)
        units = [_unit_of(n) for n in names]
        self.n_points = int(backend.n_points)
        self.descriptor = {
            "spectra": ArraySpec(
                dtype="<f4", shape=(len(names), self.n_points), labels=tuple(names), units=tuple(units)
            )
        }
        common = {
            "grid": backend.geometry.to_dict(),
            "channel_names": names,
            "channel_units": units,
            "n_points": self.n_points,
        }
        if isinstance(backend, ArchiveReader):
            self.kind = "stslive"
            self.start_fields, self.items, self.exit_status = _archive_plan(path, backend, common)
        else:
            self.kind = "nanonis3ds"
            self.start_fields, self.items = _grid_plan(path, backend, common)
            self.exit_status = "success"

    @property
    def has_times(self) -> bool:
        """True when every item has a recorded time (``as_recorded`` pacing is possible)."""
        return bool(self.items) and all(math.isfinite(i.t) for i in self.items)

    def spectra(self, iy: int, ix: int) -> np.ndarray:
        """Spectra of pixel ``(iy, ix)``: float32 ``(n_channels, n_points)``, NaN where not measured."""
        if self._row is None or self._row[0] != iy:
            rows = slice(iy, iy + 1)
            block = self._b.read_pixels(rows) if isinstance(self._b, ArchiveReader) else self._b.read_block(rows)
            self._row = (iy, np.asarray(block[0], dtype=np.float32))
        return self._row[1][ix]

    def close(self) -> None:
        self._row = None
        self._b.close()

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_replay(path: str | os.PathLike[str]) -> ReplaySource:
    """Open an stslive archive (recognised by its HDF5 signature) or a Nanonis ``.3ds`` for replay.

    Raises
    ------
    FileFormatError
        (ArchiveError or NanonisFileError) when the file cannot be read as either.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such file; give an stslive archive (.h5) or a Nanonis grid (.3ds)")
    with open(path, "rb") as fh:
        is_hdf5 = fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    backend: ArchiveReader | NanonisGrid = open_archive(path, swmr="auto") if is_hdf5 else open_3ds(path)
    try:
        return ReplaySource(path, backend)
    except BaseException:
        backend.close()
        raise


def _unit_of(name: str) -> str:
    name = name.strip()
    return name[name.rindex("(") + 1 : -1] if name.endswith(")") and "(" in name else ""


# -- archives ------------------------------------------------------------------------------------
def _archive_plan(
    path: Path, ar: ArchiveReader, common: dict[str, Any]
) -> tuple[dict[str, Any], list[ReplayItem], str]:
    docs = ar.documents
    start, stop = docs.get("start", {}), docs.get("stop", {})
    instruments = start.get("instruments", {})
    if not (isinstance(instruments, dict) and all(isinstance(v, str) for v in instruments.values())):
        instruments = {}
    start_fields = {
        **common,
        "setpoint_sets": [s.to_dict() for _, s in sorted(ar.setpoint_sets.items())],
        "instruments": instruments,
        "software_version": ar.software_version or "unknown",
        "metadata": {
            "replay_of": str(path),
            "source_kind": "stslive",
            "original_run_uid": ar.run_uid,
            "sweep_signal": "Bias (V)",
        },
    }
    meta = ar.pixel_meta
    order = ar.geometry.visit_order()
    measured = ar.measured
    items: list[ReplayItem] = []
    for iy, ix in order:
        if not measured[iy, ix]:
            continue
        pixel = {k: v[iy, ix].item() for k, v in meta.items()}
        t = pixel["t_end"] if math.isfinite(pixel["t_end"]) else pixel["t_start"]
        items.append(
            ReplayItem("event", int(iy), int(ix), float(t), {"ix": int(ix), "iy": int(iy), **event_fields(pixel)})
        )
    items.extend(_failure_item(path, ar, rec) for rec in ar.failures)
    # stable sort: equal or unknown times keep the visiting order (failures after events)
    items.sort(key=lambda i: i.t if math.isfinite(i.t) else math.inf)
    status = stop.get("exit_status") if isinstance(stop, dict) else None
    if status not in _EXIT_STATUSES:
        logged = [e.get("exit_status") for e in ar.log if e.get("event") == "stop"]
        status = logged[-1] if logged and logged[-1] in _EXIT_STATUSES else "success"
    return start_fields, items, str(status)


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


# -- Nanonis grids -------------------------------------------------------------------------------
def _header_float(header: Mapping[str, str], key: str, path: Path) -> float:
    try:
        return float(header[key])
    except ValueError:
        raise NanonisFileError(path, f"header entry {key!r}={header[key]!r} is not a number") from None


def setpoint_set_from_3ds(grid: NanonisGrid) -> tuple[dict[str, Any], dict[str, str]]:
    """The set-point set of a ``.3ds`` grid, built from its header; and where each value came from.

    Nanonis keys used: ``Bias>Bias (V)`` (bias set-point); ``Z-Controller>Setpoint`` when its
    unit is A, else ``Current>Current (A)`` (the current when the grid started) for the current
    set-point; ``Bias Spectroscopy>Sweep Start/End (V)`` for a bias sweep, else the first
    measured point's Sweep Start/End parameters (the sweep signal's unit); ``Points``;
    ``Bias Spectroscopy>Settling time (s)``, ``>Integration time (s)``, ``>Z-controller hold``;
    ``Lock-in>Frequency (Hz)`` and ``Lock-in>Amplitude`` when the lock-in ran during the sweep.
    Nanonis gives the modulation amplitude as zero-to-peak; it is stored as
    ``lockin_amplitude_Vrms = amplitude / sqrt(2)``. Absent optional keys leave the
    :class:`SetpointSet` default, and the returned sources say so.

    Raises
    ------
    NanonisFileError
        A header number that does not parse, or (bias sweeps) values no set-point set allows.
    """
    h, path = grid.header, grid.path
    values: dict[str, Any] = {"id": 0, "name": "from .3ds header", "n_points": int(grid.n_points)}
    sources: dict[str, str] = {"n_points": "Points"}

    def take(field_name: str, *keys: str, scale: float = 1.0) -> None:
        for key in keys:
            if key in h:
                values[field_name] = _header_float(h, key, path) * scale
                sources[field_name] = key
                return
        sources[field_name] = "absent from the header: default"

    take("bias_setpoint_V", "Bias>Bias (V)")
    current_keys = (("Z-Controller>Setpoint",) if h.get("Z-Controller>Setpoint unit") == "A" else ()) + (
        "Current>Current (A)",
    )
    take("current_setpoint_A", *current_keys)
    take("settle_s", "Bias Spectroscopy>Settling time (s)")
    take("integration_s", "Bias Spectroscopy>Integration time (s)")
    if grid.is_bias_sweep and "Bias Spectroscopy>Sweep Start (V)" in h and "Bias Spectroscopy>Sweep End (V)" in h:
        take("sweep_start_V", "Bias Spectroscopy>Sweep Start (V)")
        take("sweep_end_V", "Bias Spectroscopy>Sweep End (V)")
    else:
        sweep = grid.nominal_sweep()
        values["sweep_start_V"], values["sweep_end_V"] = float(sweep[0]), float(sweep[-1])
        sources["sweep_start_V"] = sources["sweep_end_V"] = (
            f"first measured point's Sweep Start/End ({grid.sweep_signal})"
        )
    if "Bias Spectroscopy>Z-controller hold" in h:
        values["feedback_hold"] = h["Bias Spectroscopy>Z-controller hold"].strip().upper() == "TRUE"
        sources["feedback_hold"] = "Bias Spectroscopy>Z-controller hold"
    if h.get("Bias Spectroscopy>Lock-In run", "").strip().upper() == "TRUE":
        take("lockin_frequency_Hz", "Lock-in>Frequency (Hz)")
        take("lockin_amplitude_Vrms", "Lock-in>Amplitude", scale=1 / math.sqrt(2))
    else:
        sources["lockin"] = "lock-in not run during the sweep: amplitude 0"
    missing = [k for k in ("bias_setpoint_V", "current_setpoint_A") if k not in values]
    if grid.is_bias_sweep:
        if missing:
            raise NanonisFileError(
                path,
                f"header lacks the set-point value(s) {missing} needed to replay a bias "
                "grid (Bias>Bias (V), Current>Current (A))",
            )
        try:
            values = SetpointSet.from_dict(values).to_dict()
        except ConfigError as exc:
            raise NanonisFileError(path, f"the header's set-point values do not make a set-point set: {exc}") from exc
    return values, sources


def _grid_plan(path: Path, grid: NanonisGrid, common: dict[str, Any]) -> tuple[dict[str, Any], list[ReplayItem]]:
    sp, sources = setpoint_set_from_3ds(grid)
    starts, ends = grid.parameter("Sweep Start"), grid.parameter("Sweep End")
    done = grid.measured
    varies = bool(done.any()) and bool(np.ptp(starts[done]) > 0 or np.ptp(ends[done]) > 0)
    start_fields = {
        **common,
        "setpoint_sets": [sp],
        "instruments": {"stm": "Nanonis (from .3ds file)"},
        "software_version": grid.header.get("NanonisMain>SW Version", "unknown"),
        "metadata": {
            "replay_of": str(path),
            "source_kind": "nanonis3ds",
            "sweep_signal": grid.sweep_signal,
            "setpoint_source": {"note": "built from the .3ds header; the file stores no set-point set", **sources},
            "sweep_limits_vary_per_point": varies,
            "header_start_time": grid.header.get("Start time", ""),
            "header_end_time": grid.header.get("End time", ""),
        },
    }
    z = grid.parameter("Z (m)") if "Z (m)" in grid.parameter_names else None
    ys, xs = grid.geometry.pixel_xy(*np.indices(grid.shape))
    items = []
    for iy, ix in np.argwhere(done):  # row-major = the record order of a .3ds
        iy, ix = int(iy), int(ix)
        z_m = float(z[iy, ix]) if z is not None and math.isfinite(z[iy, ix]) else None
        items.append(
            ReplayItem(
                "event",
                iy,
                ix,
                math.nan,
                {
                    "ix": ix,
                    "iy": iy,
                    "x_m": float(xs[iy, ix]),
                    "y_m": float(ys[iy, ix]),
                    "setpoint_set_id": 0,
                    "timestamps": {},
                    "temperature_before_K": None,
                    "temperature_after_K": None,
                    "z_m": z_m,
                },
            )
        )
    return start_fields, items


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
        t0 = clock()
        for item, offset in zip(source.items, offsets, strict=True):
            wait = t0 + offset - clock()
            if wait > 0:
                sleep(wait)
            if item.kind == "event":
                publisher.event(arrays={"spectra": source.spectra(item.iy, item.ix)}, **item.fields)
            else:
                publisher.failed_pixel(**item.fields)
    except (StsliveError, OSError, KeyboardInterrupt) as exc:
        publisher.stop("abort", reason=f"replay of {source.path} interrupted: {type(exc).__name__}: {exc}")
        raise
    return publisher.stop(source.exit_status, reason=f"replay of {source.path}")  # type: ignore[arg-type]
