"""What the screen knows of the acquisition itself, apart from any analysis.

:class:`ScanState` is written by a source's worker thread (from the run archive) and read by the
window's timer through immutable :class:`ScanView` snapshots: the measured pixels (the true
progress, whatever the analyser has published yet), rate and ETA from the pixel times, the
temperature trace, the newest pixel (whose raw spectrum is shown while nothing is analysed), the
display spectra of a line cut, the run's :class:`RunPhase` as the scan recorded it
(:func:`phase_from_archive`) and its stop rule (:func:`stop_rule_from_archive`). :class:`ScanFrame`
places pixels in scan coordinates (nm).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stslive.acquisition.formats.runmodel import GridGeometry

__all__ = ["RunPhase", "ScanFrame", "ScanState", "ScanView", "phase_from_archive", "stop_rule_from_archive"]

#: How a stop document's ``exit_status`` reads on the screen.
EXIT_PHASES = {"success": "done", "abort": "aborted", "fail": "failed"}
#: Pixel times used for the rate (the most recent ones: a paused hour does not drag it down for ever).
RATE_WINDOW = 200


@dataclass(frozen=True)
class ScanFrame:
    """Where the grid lies: the lower-left corner of pixel (0, 0)'s cell and the cell size (nm).

    For a rotated grid the axes are the grid's own, placed at its centre (``angle_deg`` says by
    how much they turn against the scan frame). ``known`` is False when only the pixel size is
    known (an analysis file alone): the axes then start at the grid corner.
    """

    x0_nm: float
    y0_nm: float
    dx_nm: float
    dy_nm: float
    angle_deg: float = 0.0
    known: bool = True
    unit: str = "nm"

    @classmethod
    def from_geometry(cls, geometry: GridGeometry) -> ScanFrame:
        dx, dy = geometry.pixel_size_m
        return cls(
            x0_nm=(geometry.centre_x_m - geometry.width_m / 2) * 1e9,
            y0_nm=(geometry.centre_y_m - geometry.height_m / 2) * 1e9,
            dx_nm=dx * 1e9,
            dy_nm=dy * 1e9,
            angle_deg=geometry.angle_deg,
        )

    @classmethod
    def from_pixel_size(cls, pixel_nm: float) -> ScanFrame:
        """Origin unknown; ``pixel_nm`` NaN or <= 0 (unknown too) gives axes in pixels."""
        if math.isfinite(pixel_nm) and pixel_nm > 0:
            return cls(0.0, 0.0, pixel_nm, pixel_nm, known=False)
        return cls(0.0, 0.0, 1.0, 1.0, known=False, unit="pixel")

    def axis_labels(self) -> tuple[str, str]:
        """Labels of the x and y axes."""
        if not self.known:
            return f"x ({self.unit}, from the grid corner)", f"y ({self.unit}, from the grid corner)"
        if self.angle_deg:
            return f"x′ (nm, grid turned {self.angle_deg:g}°)", f"y′ (nm, grid turned {self.angle_deg:g}°)"
        return "x (nm)", "y (nm)"

    def rect(self, ny: int, nx: int) -> tuple[float, float, float, float]:
        """(left, bottom, width, height) of the whole grid."""
        return self.x0_nm, self.y0_nm, nx * self.dx_nm, ny * self.dy_nm

    def x_centres(self, nx: int) -> np.ndarray:
        """x of the column centres."""
        return self.x0_nm + (np.arange(nx) + 0.5) * self.dx_nm

    def centre(self, iy: int, ix: int) -> tuple[float, float]:
        """(x, y) of a pixel's centre."""
        return self.x0_nm + (ix + 0.5) * self.dx_nm, self.y0_nm + (iy + 0.5) * self.dy_nm

    def pixel_at(self, x: float, y: float) -> tuple[int, int]:
        """(iy, ix) of the cell containing (x, y); may lie outside the grid."""
        return math.floor((y - self.y0_nm) / self.dy_nm), math.floor((x - self.x0_nm) / self.dx_nm)


@dataclass(frozen=True)
class RunPhase:
    """The run's state as the scan recorded it, and why.

    ``state`` is one of idle, running, paused, stopping, done, aborted, failed, interrupted (the
    writer is gone without a stop record) or unknown; ``reason`` the pause reasons, the failure,
    or the stop document's reason.
    """

    state: str = "unknown"
    reason: str = ""

    @property
    def ended(self) -> bool:
        """Whether the run is over: no pixel will be measured any more."""
        return self.state in ("done", "aborted", "failed", "interrupted")


def phase_from_archive(documents: Mapping[str, Any], log: Iterable[Mapping[str, Any]], *, writing: bool) -> RunPhase:
    """The run's phase from an archive's documents and log (``writing``: a writer still holds it).

    The stop document decides when there is one; else the log's state events are replayed
    (``paused``/``released`` carry the pause reasons, ``failed`` the failure, ``stop`` the exit).
    """
    stop = documents.get("stop")
    if isinstance(stop, Mapping) and stop.get("exit_status") in EXIT_PHASES:
        return RunPhase(EXIT_PHASES[str(stop["exit_status"])], str(stop.get("reason") or ""))
    state, failure, exit_status = "unknown", "", None
    reasons: list[str] = []
    for line in log:
        event, reason = line.get("event"), str(line.get("reason") or "")
        if event in ("run_started", "resumed"):
            state, reasons = "running", []
        elif event == "paused":
            state, reasons = "paused", [*[r for r in reasons if r != reason], reason]
        elif event == "released":
            reasons = [r for r in reasons if r != reason]
        elif event == "stopping":
            state, exit_status = "stopping", line.get("exit_status", exit_status)
        elif event in ("done", "failed", "stop"):
            state = event
            exit_status = line.get("exit_status", "fail" if event == "failed" else exit_status)
            failure = reason if event == "failed" else failure
    if state in ("done", "failed", "stop"):
        phase = EXIT_PHASES.get(str(exit_status), "done")
        return RunPhase(phase, failure if phase == "failed" else "")
    if not writing and state in ("running", "paused", "stopping"):
        return RunPhase("interrupted", "the scan ended without a stop record (killed?): `stslive scan --resume` it")
    return RunPhase(state, ", ".join(reasons) if state == "paused" else "")


def stop_rule_from_archive(documents: Mapping[str, Any], log: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The run's stop rule (its ``[stop]`` table) as the archive recorded it; None without one.

    The last ``stop_rule_set`` line of the log (the control socket changed the rule) wins over
    the run config in the start document's metadata.
    """
    table: Any = None
    start = documents.get("start")
    if isinstance(start, Mapping):
        metadata = start.get("metadata")
        config = metadata.get("config") if isinstance(metadata, Mapping) else None
        table = config.get("stop") if isinstance(config, Mapping) else None
    for line in log:
        if line.get("event") == "stop_rule_set":
            table = {k: v for k, v in line.items() if k not in ("event", "time", "seq")}
    return dict(table) if isinstance(table, Mapping) else None


@dataclass(frozen=True)
class ScanView:
    """An immutable snapshot of :class:`ScanState` for one redraw (arrays are not to be written)."""

    version: int
    measured: np.ndarray
    n_measured: int
    n_total: int
    pixels_per_hour: float
    eta_s: float
    latest: tuple[int, int] | None
    phase: RunPhase
    note: str
    temperature_t: np.ndarray
    temperature_K: np.ndarray
    #: the archive is truncated: ``measured`` holds the readable pixels only
    truncated: bool = False
    line_bias_V: np.ndarray | None = None
    line_didv_S: np.ndarray | None = field(default=None)
    #: the run's stop rule as recorded in the archive (:func:`stop_rule_from_archive`), None without
    stop_rule: Mapping[str, Any] | None = None

    @property
    def progress(self) -> float:
        """Measured fraction of the grid, 0..1."""
        return self.n_measured / self.n_total if self.n_total else 0.0


class ScanState:
    """The acquisition as far as the screen knows it; thread safe, versioned.

    Parameters
    ----------
    ny, nx
        Grid shape.
    frame
        Where the grid lies (axes of every map).
    """

    def __init__(self, ny: int, nx: int, *, frame: ScanFrame) -> None:
        self.ny, self.nx, self.frame = int(ny), int(nx), frame
        self._lock = threading.Lock()
        empty = np.zeros(0)
        self._view = ScanView(
            version=0,
            measured=np.zeros((self.ny, self.nx), dtype=bool),
            n_measured=0,
            n_total=self.ny * self.nx,
            pixels_per_hour=math.nan,
            eta_s=math.nan,
            latest=None,
            phase=RunPhase(),
            note="",
            temperature_t=empty,
            temperature_K=empty,
        )

    def view(self) -> ScanView:
        """The current snapshot (cheap: no copy)."""
        with self._lock:
            return self._view

    def _replace(self, **changes: Any) -> None:
        with self._lock:
            v = self._view
            self._view = ScanView(**{**v.__dict__, **changes, "version": v.version + 1})

    def update_pixels(self, measured: np.ndarray, t_end_s: np.ndarray, temperature_K: np.ndarray) -> None:
        """New measured mask with each pixel's end time (unix s) and temperature (K); NaN where unknown."""
        measured = np.array(measured, dtype=bool)
        old = self.view()
        if np.array_equal(measured, old.measured):
            return
        times = np.where(measured, np.asarray(t_end_s, dtype=np.float64), np.nan)
        timed = np.isfinite(times)
        order = np.argsort(times[timed], kind="stable")
        t_sorted = times[timed][order]
        temps = np.asarray(temperature_K, dtype=np.float64)[timed][order]
        n = int(measured.sum())
        recent = t_sorted[-RATE_WINDOW:]
        span = float(recent[-1] - recent[0]) if recent.size > 1 else 0.0
        rate = (recent.size - 1) / span * 3600.0 if span > 0 else math.nan
        remaining = measured.size - n
        eta = 0.0 if remaining == 0 else remaining / rate * 3600.0 if rate > 0 else math.nan
        latest = old.latest
        if t_sorted.size:
            flat = np.flatnonzero(timed)[order[-1]]
            latest = (int(flat // self.nx), int(flat % self.nx))
        known_T = np.isfinite(temps)
        self._replace(
            measured=measured,
            n_measured=n,
            pixels_per_hour=rate,
            eta_s=eta,
            latest=latest,
            temperature_t=t_sorted[known_T],
            temperature_K=temps[known_T],
        )

    def set_phase(self, phase: RunPhase) -> None:
        if phase != self.view().phase:
            self._replace(phase=phase)

    def set_stop_rule(self, table: Mapping[str, Any] | None) -> None:
        """The run's stop rule (its ``[stop]`` table) as the archive recorded it."""
        if table != self.view().stop_rule:
            self._replace(stop_rule=None if table is None else dict(table))

    def set_note(self, note: str, *, truncated: bool = False) -> None:
        """A sentence about the archive itself (truncation), shown beside the progress."""
        if (note, truncated) != (self.view().note, self.view().truncated):
            self._replace(note=note, truncated=truncated)

    def set_line_spectra(self, bias_V: np.ndarray, didv_S: np.ndarray) -> None:
        """Display spectra of a line cut: bias (n_points,) V and dI/dV (nx, n_points) S, NaN rows unmeasured."""
        self._replace(line_bias_V=np.asarray(bias_V), line_didv_S=np.asarray(didv_S))
