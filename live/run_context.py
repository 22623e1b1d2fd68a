"""What the live analyser knows of one run, and the batch step pixel -> results + flags.

:class:`RunContext` is built from the run's start document (from the stream, or from the
archive when the analyser joins late). :class:`PixelInput` is one pixel to analyse, from a
stream event or rebuilt from the archive. :meth:`RunContext.process` analyses a batch with the
one code path (:func:`stslive.live.pipeline.analyse_pixels`), computes the flags in acquisition
order (:class:`stslive.live.flags.FlagEngine`) and stores everything in the run's
:class:`ResultsModel`; it returns the batch's results as columns (arrays named by the
:class:`PixelResult` fields) to publish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stslive.acquisition.formats.documents import EventDoc
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.drivers.errors import ConfigError, StreamError
from stslive.live.flag_config import FlagConfig
from stslive.live.flags import (
    FlagEngine,
    PixelConditions,
    SpectralFeatures,
    channel_arrays,
    lockin_settings,
    spectral_features,
)
from stslive.live.kernels import KernelOptions, SpectrumAnalysis
from stslive.live.pipeline import analyse_pixels, apply_to_model, calibrate_options, calibration_sample
from stslive.live.results import PixelResult, ResultsModel


@dataclass(frozen=True, slots=True)
class PixelInput:
    """One pixel to analyse: position, set, spectra (n_channels, n_points), conditions, time (unix s)."""

    iy: int
    ix: int
    set_id: int
    spectra: np.ndarray
    time: float
    temperatures_K: tuple[float | None, float | None]
    lockin_status: int
    lockin_overload: bool

    @classmethod
    def from_event(cls, event: EventDoc) -> PixelInput:
        """From an event; its one array (or the one named ``spectra``) holds the channels."""
        arrays = event.arrays
        arr = arrays.get("spectra") if "spectra" in arrays else next(iter(arrays.values()), None)
        if arr is None or (len(arrays) > 1 and "spectra" not in arrays):
            raise StreamError(f"event seq {event.seq}: expected one array 'spectra', got {sorted(arrays)}")
        t = event.timestamps.get("t_end", event.time)
        return cls(
            iy=event.iy,
            ix=event.ix,
            set_id=event.setpoint_set_id,
            spectra=arr,
            time=float(t),
            temperatures_K=(event.temperature_before_K, event.temperature_after_K),
            lockin_status=event.lockin_status,
            lockin_overload=event.lockin_overload,
        )


class RunContext:
    """Grid, channels, set-point sets, results model and flag history of one run.

    Parameters
    ----------
    run_uid
        The run.
    start
        The start document's fields: ``grid`` (nx, ny, width_m, ...), ``channel_names``,
        ``n_points``, ``setpoint_sets`` (dicts of SetpointSet fields).
    options
        Kernel options (one code path with ``stslive analyse``). Without a fixed
        ``dynes_width_eV`` the run's width follows the offline rule
        (:func:`stslive.live.pipeline.calibrate_options` on the first ``options.chunk`` measured
        spectra sharing the first one's sweep, in acquisition order - for a raster scan the
        spectra ``stslive analyse`` calibrates on): pixels are held back until those arrived
        (or the run ends, :meth:`finish`), then all use that width, so no result depends on
        its batch and the finished maps equal the offline analysis without any option.
    flag_config
        Flag thresholds.
    """

    def __init__(
        self, run_uid: str, start: Mapping[str, Any], *, options: KernelOptions, flag_config: FlagConfig
    ) -> None:
        try:
            grid = dict(start["grid"])
            ny, nx = int(grid["ny"]), int(grid["nx"])
            self.channel_names = [str(c) for c in start["channel_names"]]
            self.n_points = int(start["n_points"])
            self.sets = {int(s["id"]): SetpointSet.from_dict(s) for s in start["setpoint_sets"]}
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise StreamError(
                f"run {run_uid}: start document unusable ({exc}); check the scan engine's version"
            ) from exc
        # needs a current channel (the one options.current names, if any)
        channel_arrays(np.zeros((len(self.channel_names), 2)), self.channel_names, current=options.current)
        self.run_uid = run_uid
        self.options = options
        #: pixels held back until the template width is calibrated (None: calibrated or given)
        self._held: list[PixelInput] | None = None if options.dynes_width_eV is not None else []
        width = float(grid.get("width_m", math.nan))
        self.model = ResultsModel(ny, nx, pixel_nm=width / nx * 1e9, set_threshold=flag_config.set_flag_fraction)
        self.model.set_setpoint_sets({k: s.to_dict() for k, s in self.sets.items()})
        self.flags = FlagEngine(flag_config)
        self.last_time: dict[tuple[int, int], float] = {}
        #: seconds spent per stage of :meth:`process` (benchmarks: ``stslive bench analyser``)
        self.stage_seconds: dict[str, float] = dict.fromkeys(("analyse", "features", "flags", "model"), 0.0)

    def check(self, pixel: PixelInput) -> None:
        """Raise StreamError if the pixel does not fit the run (grid, set, channels, points)."""
        if not (0 <= pixel.iy < self.model.ny and 0 <= pixel.ix < self.model.nx):
            raise StreamError(f"pixel ({pixel.iy}, {pixel.ix}) outside the {self.model.ny} x {self.model.nx} grid")
        if pixel.set_id not in self.sets:
            raise StreamError(f"pixel ({pixel.iy}, {pixel.ix}) names unknown set-point set {pixel.set_id}")
        want = (len(self.channel_names), self.sets[pixel.set_id].n_points)
        if pixel.spectra.shape != want:
            raise StreamError(f"pixel ({pixel.iy}, {pixel.ix}) spectra {pixel.spectra.shape}, expected {want}")

    def is_new(self, pixel: PixelInput) -> bool:
        """True the first time a measurement of the pixel is offered, and remembers it.

        A measurement is known by its time (``t_end``, unix s): the same one again (backfill,
        archive recovery and stream overlap) or an older one than the last taken is not new; a
        re-measure (later time) is, and is analysed again. Remembered here, not after the
        analysis, so a pixel twice in one batch or held for the width calibration counts once.
        """
        key = (pixel.iy, pixel.ix)
        if pixel.time <= self.last_time.get(key, -math.inf):
            return False
        self.last_time[key] = pixel.time
        return True

    @property
    def calibrating(self) -> bool:
        """True while pixels are held back for the template-width calibration."""
        return self._held is not None

    def _sweep(self, set_id: int) -> tuple[float, float, int]:
        s = self.sets[set_id]
        return (s.sweep_start_V, s.sweep_end_V, s.n_points)

    def _calibrate(self) -> list[PixelInput]:
        """Fix the width from the held pixels sharing the first one's sweep; return every held pixel."""
        held = self._held or []
        self._held = None
        if held:
            pick = calibration_sample([self._sweep(p.set_id) for p in held], chunk=self.options.chunk)
            sample = [held[i] for i in pick]
            self.options = calibrate_options(
                self.sets[held[0].set_id].bias_axis,
                np.stack([p.spectra for p in sample]),
                self.channel_names,
                options=self.options,
            )
        return held

    def finish(self) -> dict[str, np.ndarray]:
        """At the end of the run: calibrate on what was held (a run shorter than the sample) and analyse it."""
        if self._held is None:
            return {}
        return self.process(self._calibrate())

    def process(self, pixels: Sequence[PixelInput]) -> dict[str, np.ndarray]:
        """Analyse ``pixels`` (already checked, in acquisition order), store and return their results.

        While calibrating (no fixed width yet) pixels are held and ``{}`` is returned until
        ``options.chunk`` pixels with the first one's sweep have arrived; then the held pixels are
        analysed together with these.

        All pixels of a set-point set go through one :func:`analyse_pixels` call (the kernels are
        batch-first), the flags through one :meth:`FlagEngine.evaluate`. Returns the results as
        (n,) arrays named by :class:`PixelResult` fields, in the order given (the columns of
        :func:`stslive.live.results_io.pixels_message`; :func:`result_rows` gives PixelResults).
        """
        if self._held is not None:
            self._held.extend(pixels)
            sweep = self._sweep(self._held[0].set_id) if self._held else None
            if sum(self._sweep(p.set_id) == sweep for p in self._held) < self.options.chunk:
                return {}
            pixels = self._calibrate()
        n = len(pixels)
        if n == 0:
            return {}
        clock = time.thread_time  # CPU time of this thread: GIL waits and other processes excluded
        t0 = clock()
        t_features = 0.0
        ids = np.fromiter((p.set_id for p in pixels), dtype=np.int64, count=n)
        spectra_all = np.stack([p.spectra for p in pixels])
        parts: dict[str, np.ndarray] = {}
        feats: dict[str, np.ndarray] = {}
        modulation = np.zeros(n)
        sensitivity = np.zeros(n)
        set_ids = np.unique(ids)
        for set_id in set_ids:
            rows = np.flatnonzero(ids == set_id)
            sset = self.sets[int(set_id)]
            spectra = spectra_all if rows.size == n else spectra_all[rows]
            bias = sset.bias_axis
            analysis = analyse_pixels(bias, spectra, self.channel_names, options=self.options)
            t1 = clock()
            current, lockin = channel_arrays(
                spectra, self.channel_names, current=self.options.current, lockin=self.options.lockin
            )
            f = spectral_features(
                bias,
                current,
                v_set_V=sset.bias_setpoint_V,
                i_set_A=abs(sset.current_setpoint_A),
                lockin=lockin,
                config=self.flags.config,
            )
            t_features += clock() - t1
            _scatter(parts, analysis._asdict(), rows, n)
            if set_ids.size > 1:  # one set (the usual batch): its features (fresh arrays) are the batch's
                _scatter(feats, {k: getattr(f, k) for k in f.__slots__}, rows, n)
            modulation[rows], sensitivity[rows] = lockin_settings(sset.lockin_amplitude_Vrms, sset.lockin_sensitivity_V)
        analysis = SpectrumAnalysis(**parts)
        if set_ids.size > 1:
            f = SpectralFeatures(**feats)
        t2 = clock()
        with np.errstate(invalid="ignore"):  # both readings missing: NaN, no thermometer
            temps = np.fmax(*np.array([[_temp(t) for t in p.temperatures_K] for p in pixels], dtype=np.float64).T)
        conditions = PixelConditions(
            temperature_K=temps,
            lockin_overload=np.fromiter((p.lockin_overload for p in pixels), dtype=bool, count=n),
            lockin_status=np.fromiter((p.lockin_status for p in pixels), dtype=np.int64, count=n),
            modulation_Vrms=modulation,
            sensitivity_V=sensitivity,
        )
        iy = np.fromiter((p.iy for p in pixels), dtype=np.int64, count=n)
        ix = np.fromiter((p.ix for p in pixels), dtype=np.int64, count=n)
        bits = self.flags.evaluate(analysis, f, conditions, iy=iy, ix=ix)
        t3 = clock()
        times = np.fromiter((p.time for p in pixels), dtype=np.float64, count=n)
        temps32 = temps.astype(np.float32)
        # one pixel may appear twice in a batch (re-measured): numpy fancy assignment keeps the last
        apply_to_model(self.model, iy, ix, analysis, setpoint_set=ids)
        self.model.update_block(iy, ix, flags=bits, temperature_K=temps32, time=times)
        self.model.update_status(current_set=int(ids[-1]))
        for p in pixels:
            self.last_time[(p.iy, p.ix)] = p.time
        stages = self.stage_seconds
        stages["analyse"] += t2 - t0 - t_features
        stages["features"] += t_features
        stages["flags"] += t3 - t2
        stages["model"] += clock() - t3
        return {
            "iy": iy,
            "ix": ix,
            "setpoint_set": ids,
            "delta_eV": analysis.delta_eV,
            "alpha": analysis.alpha,
            "alpha_pos": analysis.alpha_pos,
            "alpha_neg": analysis.alpha_neg,
            "b": analysis.b,
            "b_pos": analysis.b_pos,
            "b_neg": analysis.b_neg,
            "visibility": analysis.visibility,
            "fit_quality": analysis.rms_log_residual,
            "peak_neg_V": analysis.peak_neg_V,
            "peak_pos_V": analysis.peak_pos_V,
            "valid": analysis.valid,
            "reason": analysis.reason,
            "flags": bits,
            "temperature_K": temps32,
            "time": times,
        }


def _temp(value: float | None) -> float:
    """A thermometer reading, NaN when missing or not finite (as :func:`conditions_for`)."""
    return float(value) if value is not None and math.isfinite(value) else math.nan


def result_rows(columns: Mapping[str, np.ndarray]) -> list[PixelResult]:
    """The :class:`PixelResult` s of :meth:`RunContext.process` output (one per row)."""
    ints = {"iy", "ix", "setpoint_set", "reason", "flags"}
    names = list(columns)
    rows = zip(*(np.asarray(columns[k]).tolist() for k in names), strict=True)
    out = []
    for row in rows:
        values: dict[str, Any] = {
            k: (int(v) if k in ints else bool(v) if k == "valid" else float(v)) for k, v in zip(names, row, strict=True)
        }
        out.append(PixelResult(**values))
    return out


def _scatter(out: dict[str, np.ndarray], values: Mapping[str, np.ndarray], rows: np.ndarray, n: int) -> None:
    """Place a group's per-pixel arrays (leading axis = group rows) into batch-wide arrays."""
    for name, value in values.items():
        v = np.asarray(value)
        if name not in out:
            fill = np.nan if v.dtype.kind == "f" else 0
            out[name] = np.full((n, *v.shape[1:]), fill, dtype=v.dtype)
        out[name][rows] = v
