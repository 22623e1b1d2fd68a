"""What the live analyser knows of one run, and the batch step pixel -> results + flags.

:class:`RunContext` is built from the run's start document (from the stream, or from the
archive when the analyser joins late). :class:`PixelInput` is one pixel to analyse, from a
stream event or rebuilt from the archive. :meth:`RunContext.process` analyses a batch at once
with the one code path (:func:`stslive.live.pipeline.analyse_pixels`), flags it in acquisition
order (:class:`stslive.live.flags_run.RunFlags`, the path ``stslive analyse`` flags with) and
stores everything in the run's :class:`ResultsModel`; it returns the results as columns (arrays
named by the :class:`PixelResult` fields) to publish. Without a fixed template width the first
pixels are analysed with a provisional one and analysed again once the run's width is fixed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stslive.acquisition.formats.documents import EventDoc
from stslive.drivers.errors import StreamError
from stslive.live.flag_config import FlagConfig
from stslive.live.flags import SpectralFeatures
from stslive.live.flags_run import RunFlags, parse_sets, store_flags
from stslive.live.kernels import KernelOptions, SpectrumAnalysis
from stslive.live.pipeline import (
    analyse_pixels,
    apply_to_model,
    calibrate_options,
    calibration_sample,
    instrument_of,
    result_maps,
)
from stslive.live.provisional import ProvisionalWidth
from stslive.live.results import MAP_SPECS, PixelResult, ResultsModel


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
        ``n_points``, ``setpoint_sets`` (dicts of SetpointSet fields), ``metadata``.
    options
        Kernel options (one code path with ``stslive analyse``). Unless they are calibrated
        (``options.calibrated``) the run's calibration follows the offline rule
        (:func:`stslive.live.pipeline.calibrate_options` on the first ``options.chunk`` measured
        spectra sharing the first one's sweep, in acquisition order): until those arrived (or
        the run ends, :meth:`finish`) each batch is analysed at once with a provisional width
        estimated on the spectra so far; then every pixel so far is analysed and flagged again
        with the run's width, so the finished maps equal the offline analysis. Offline samples
        the archive, which keeps one measurement per pixel, so a pixel measured again while the
        width is provisional takes the place of its earlier measurement (see :meth:`process`).
        A pixel of the sample measured again after the width is fixed does not change it: its
        spectra are no longer held (offline then samples the next pixel instead).
    flag_config
        Flag thresholds.
    """

    def __init__(
        self, run_uid: str, start: Mapping[str, Any], *, options: KernelOptions, flag_config: FlagConfig
    ) -> None:
        self.channel_names, self.sets = parse_sets(run_uid, start)
        try:
            grid = dict(start["grid"])
            ny, nx = int(grid["ny"]), int(grid["nx"])
            self.n_points = int(start["n_points"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StreamError(
                f"run {run_uid}: start document unusable ({exc}); check the scan engine's version"
            ) from exc
        metadata = start.get("metadata")
        #: the start document's metadata (None: it has none)
        self.metadata: Mapping[str, Any] | None = metadata if isinstance(metadata, Mapping) else None
        self.flags = RunFlags(
            self.channel_names,
            self.sets,
            metadata=self.metadata,
            config=flag_config,
            current=options.current,
            lockin=options.lockin,
        )
        self.run_uid = run_uid
        self.options = options
        #: while the template width is provisional, each pixel's latest measurement in the order
        #: the measurements arrived (None: the width is fixed)
        self._retained: dict[tuple[int, int], PixelInput] | None = None if options.calibrated else {}
        self._provisional = options
        self._provisional_from = 0  # spectra the provisional width was estimated on
        width = float(grid.get("width_m", math.nan))
        self.model = ResultsModel(ny, nx, pixel_nm=width / nx * 1e9, set_threshold=flag_config.set_flag_fraction)
        self.model.set_setpoint_sets({k: s.to_dict() for k, s in self.sets.items()})
        self.last_time: dict[tuple[int, int], float] = {}
        self._revised: list[dict[str, np.ndarray]] = []
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
        re-measure (later time) is, and is analysed again.
        """
        key = (pixel.iy, pixel.ix)
        if pixel.time <= self.last_time.get(key, -math.inf):
            return False
        self.last_time[key] = pixel.time
        return True

    @property
    def calibrating(self) -> bool:
        """True while the template width is provisional (the run's width not yet fixed)."""
        return self._retained is not None

    @property
    def calibration_count(self) -> int:
        """Spectra the run's width will be fixed on that have arrived (``options.chunk`` fixes it)."""
        return 0 if not self._retained else self._sample_size()

    @property
    def provisional_width_eV(self) -> float | None:
        """The width the latest provisional results used (None: estimated per batch, or fixed)."""
        return self._provisional.dynes_width_eV if self.calibrating else None

    @property
    def provisional(self) -> ProvisionalWidth | None:
        """The run-status field of the provisional width (None once the run's width is fixed)."""
        if not self.calibrating:
            return None
        width = self.provisional_width_eV
        return ProvisionalWidth(self.calibration_count, self.options.chunk, math.nan if width is None else width)

    def _sweep(self, set_id: int) -> tuple[float, float, int]:
        s = self.sets[set_id]
        return (s.sweep_start_V, s.sweep_end_V, s.n_points)

    def _sample(self, held: list[PixelInput]) -> list[PixelInput]:
        """The pixels :func:`calibration_sample` picks of ``held`` (first sweep, first ``chunk``)."""
        return [held[i] for i in calibration_sample([self._sweep(p.set_id) for p in held], chunk=self.options.chunk)]

    def _sample_size(self) -> int:
        held = list((self._retained or {}).values())
        first = self._sweep(held[0].set_id)
        return min(self.options.chunk, sum(self._sweep(p.set_id) == first for p in held))

    def _width_from(self, sample: list[PixelInput]) -> KernelOptions:
        return calibrate_options(
            self.sets[sample[0].set_id].bias_axis,
            np.stack([p.spectra for p in sample]),
            self.channel_names,
            options=self.options.with_instrument(**instrument_of(self.sets[sample[0].set_id], sample, self.metadata)),
        )

    def finish(self) -> dict[str, np.ndarray]:
        """At the end of the run: fix the width on what arrived (a run shorter than the sample).

        Returns the columns of every pixel analysed again ({} when the width was fixed already).
        """
        if self._retained is None:
            return {}
        return self._calibrate()

    def _calibrate(self) -> dict[str, np.ndarray]:
        """Fix the run's width, analyse and flag every retained pixel again, in order."""
        held = list((self._retained or {}).values())
        self._retained = None
        if not held:
            return {}
        self.options = self._width_from(self._sample(held))
        self.flags.reset()
        return self._analyse(held, self.options)

    def take_revisions(self) -> dict[str, np.ndarray] | None:
        """Flags and tip epochs of earlier pixels that a tip-change event changed, since the last call.

        Columns ``iy``, ``ix``, ``flags``, ``tip_epoch`` (a ``pixels`` message), or None.
        """
        if not self._revised:
            return None
        out = {k: np.concatenate([r[k] for r in self._revised]) for k in self._revised[0]}
        self._revised.clear()
        return out

    def process(self, pixels: Sequence[PixelInput]) -> dict[str, np.ndarray]:
        """Analyse ``pixels`` (already checked, in acquisition order), store and return their results.

        With a provisional width the batch is analysed at once (width re-estimated each time the
        spectra it rests on have doubled); when ``options.chunk`` spectra with the first one's
        sweep have arrived the run's width is fixed and every pixel so far is analysed and
        flagged again: the columns then hold all of them. Until then a pixel measured again
        replaces its earlier measurement and moves to the end, where offline's acquisition
        order (the archive's start times) puts the one measurement the archive keeps: with both
        held, the sample had a spectrum offline's has not, and the run's calibration differed.

        All pixels of a set-point set go through one :func:`analyse_pixels` call (the kernels are
        batch-first), the flags through one :meth:`RunFlags.evaluate`. Returns the results as
        (n,) arrays named by :class:`PixelResult` fields (the columns of
        :func:`stslive.live.results_io.pixels_message`; :func:`result_rows` gives PixelResults).
        """
        if not pixels:
            return {}
        if self._retained is None:
            return self._analyse(pixels, self.options)
        for p in pixels:
            self._retained.pop((p.iy, p.ix), None)
            self._retained[(p.iy, p.ix)] = p
        n = self._sample_size()
        if n >= self.options.chunk:
            return self._calibrate()
        if n >= 2 * self._provisional_from or self._provisional_from == 0:
            self._provisional = self._width_from(self._sample(list(self._retained.values())))
            self._provisional_from = n
        return self._analyse(pixels, self._provisional)

    def _analyse(self, pixels: Sequence[PixelInput], options: KernelOptions) -> dict[str, np.ndarray]:
        n = len(pixels)
        clock = time.thread_time  # CPU time of this thread: GIL waits and other processes excluded
        t0 = clock()
        t_features = 0.0
        ids = np.fromiter((p.set_id for p in pixels), dtype=np.int64, count=n)
        spectra_all = np.stack([p.spectra for p in pixels])
        parts: dict[str, np.ndarray] = {}
        feats: dict[str, np.ndarray] = {}
        set_ids = np.unique(ids)
        f: SpectralFeatures | None = None
        for set_id in set_ids:
            rows = np.flatnonzero(ids == set_id)
            spectra = spectra_all if rows.size == n else spectra_all[rows]
            analysis = analyse_pixels(self.sets[int(set_id)].bias_axis, spectra, self.channel_names, options=options)
            t1 = clock()
            f = self.flags.features(int(set_id), spectra)
            t_features += clock() - t1
            _scatter(parts, analysis._asdict(), rows, n)
            if set_ids.size > 1:  # one set (the usual batch): its features (fresh arrays) are the batch's
                _scatter(feats, {k: getattr(f, k) for k in f.__slots__}, rows, n)
        analysis = SpectrumAnalysis(**parts)
        if set_ids.size > 1 or f is None:
            f = SpectralFeatures(**feats)
        t2 = clock()
        with np.errstate(invalid="ignore"):  # both readings missing: NaN, no thermometer
            temps = np.fmax(*np.array([[_temp(t) for t in p.temperatures_K] for p in pixels], dtype=np.float64).T)
        iy = np.fromiter((p.iy for p in pixels), dtype=np.int64, count=n)
        ix = np.fromiter((p.ix for p in pixels), dtype=np.int64, count=n)
        times = np.fromiter((p.time for p in pixels), dtype=np.float64, count=n)
        result = self.flags.evaluate(
            iy=iy,
            ix=ix,
            set_ids=ids,
            time=times,
            delta_eV=analysis.delta_eV,
            reason=analysis.reason,
            features=f,
            temperature_K=temps,
            lockin_status=np.fromiter((p.lockin_status for p in pixels), dtype=np.int64, count=n),
            lockin_overload=np.fromiter((p.lockin_overload for p in pixels), dtype=bool, count=n),
        )
        t3 = clock()
        temps32 = temps.astype(np.float32)
        # one pixel may appear twice in a batch (re-measured): numpy fancy assignment keeps the last
        apply_to_model(self.model, iy, ix, analysis, setpoint_set=ids)
        self.model.update_block(iy, ix, temperature_K=temps32, time=times)
        store_flags(self.model, iy, ix, result)
        if result.revised is not None:
            self._revised.append(result.revised)
        self.model.update_status(current_set=int(ids[-1]), provisional_width=self.provisional)
        for p in pixels:
            self.last_time[(p.iy, p.ix)] = max(p.time, self.last_time.get((p.iy, p.ix), -math.inf))
        stages = self.stage_seconds
        stages["analyse"] += t2 - t0 - t_features
        stages["features"] += t_features
        stages["flags"] += t3 - t2
        stages["model"] += clock() - t3
        return {
            "iy": iy,
            "ix": ix,
            "setpoint_set": ids,
            **result_maps(analysis),  # every map the model stored, so a viewer's model equals this one
            "flags": result.bits,
            "tip_epoch": result.tip_epoch,
            "temperature_K": temps32,
            "time": times,
        }


def _temp(value: float | None) -> float:
    """A thermometer reading, NaN when missing or not finite."""
    return float(value) if value is not None and math.isfinite(value) else math.nan


def result_rows(columns: Mapping[str, np.ndarray]) -> list[PixelResult]:
    """The :class:`PixelResult` s of :meth:`RunContext.process` output (one per row)."""
    names = list(columns)
    kinds = {k: "i" if k in ("iy", "ix") else MAP_SPECS[k][0].kind for k in names}
    cast = {"b": bool, "i": int, "u": int}
    rows = zip(*(np.asarray(columns[k]).tolist() for k in names), strict=True)
    return [PixelResult(**{k: cast.get(kinds[k], float)(v) for k, v in zip(names, row, strict=True)}) for row in rows]


def _scatter(out: dict[str, np.ndarray], values: Mapping[str, np.ndarray], rows: np.ndarray, n: int) -> None:
    """Place a group's per-pixel arrays (leading axis = group rows) into batch-wide arrays."""
    for name, value in values.items():
        v = np.asarray(value)
        if name not in out:
            fill = np.nan if v.dtype.kind == "f" else 0
            out[name] = np.full((n, *v.shape[1:]), fill, dtype=v.dtype)
        out[name][rows] = v
