"""The one code path from raw spectra to results, shared by ``stslive analyse`` and the live analyser.

* :func:`analyse_pixels` - spectra as stored in an archive or carried by a stream event,
  ``(..., n_channels, n_points)`` with their channel names, to a :class:`SpectrumAnalysis`. The
  live analyser calls it with one pixel, the offline analysis with blocks of rows.
* :func:`apply_to_model` - a batch of results into a :class:`ResultsModel` (vectorised), named
  by :func:`result_maps` (which the live analyser also publishes).
* :func:`analyse_input` - a whole file (archive or ``.3ds``) to a :class:`ResultsModel`, in
  memory-bounded row blocks; unmeasured pixels stay NaN / ``measured=False``.
* :func:`calibrate_options` / :func:`calibrate_source` - the one rule that fixes a map's
  calibration (its gap, the peak templates' Dynes width, the smoothing its noise calls for;
  :func:`calibration_sample`), live and offline.
* :func:`instrument_settings` - the sample temperature and lock-in modulation a recording states;
  :func:`analyse_source` fills the options' unknown ones from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.recording import SpectraSource, open_spectra
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.acquisition.formats.start_document import STATED_TEMPERATURE_KEY, start_fields
from stslive.drivers.errors import AnalysisError, FileFormatError, NanonisFileError
from stslive.live.kernels import KernelOptions, SpectrumAnalysis, analyse_spectra, calibrate, pick_channels
from stslive.live.results import ResultsModel

__all__ = [
    "ProgressCallback",
    "InstrumentSettings",
    "instrument_settings",
    "instrument_of",
    "uses_lockin",
    "analyse_pixels",
    "analyse_arrays",
    "calibrate_options",
    "calibration_sample",
    "apply_to_model",
    "result_maps",
    "open_input",
    "calibrate_source",
    "analyse_source",
    "analyse_input",
]

#: ``progress(pixels_done, pixels_total)``, called after every block.
ProgressCallback = Callable[[int, int], None]


def uses_lockin(options: KernelOptions) -> bool:
    """True when the options take Delta or alpha from a lock-in channel (when one is present)."""
    return options.gap_source != "current" or options.alpha_source == "lockin"


def analyse_arrays(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None,
    lockin: np.ndarray | None,
    options: KernelOptions,
) -> SpectrumAnalysis:
    """:func:`~stslive.live.kernels.analyse_spectra` for any batch, including per-pixel sweeps.

    Parameters
    ----------
    bias_V : ndarray
        ``(n_points,)`` shared sweep, or ``(..., n_points)`` one sweep per spectrum (Nanonis grids
        may store a sweep per pixel), V, either direction.
    current, lockin : ndarray or None
        ``(..., n_points)`` channels (A; lock-in in any unit).
    options : KernelOptions

    Returns
    -------
    SpectrumAnalysis
        Arrays shaped ``(...)``; an empty batch gives empty arrays.
    """
    if not uses_lockin(options):
        lockin = None  # a lock-in nobody uses would only cost its sign normalisation
    ref = current if current is not None else lockin
    if ref is None:
        raise AnalysisError("no current or lock-in channel to analyse; name one with --current/--lockin")
    lead = ref.shape[:-1]
    bias = np.asarray(bias_V, dtype=np.float64)
    if bias.ndim == 1 and math.prod(lead) > 0:
        return analyse_spectra(bias, current=current, lockin=lockin, options=options)
    flat_cur = None if current is None else current.reshape(-1, ref.shape[-1])
    flat_li = None if lockin is None else lockin.reshape(-1, ref.shape[-1])
    out = _empty_analysis(math.prod(lead), like=ref.dtype)
    if out.valid.size:
        # one kernel call per distinct sweep: sweeps differ only between set-point sets, so there are few
        sweeps = np.broadcast_to(bias, (*lead, ref.shape[-1])).reshape(-1, ref.shape[-1])
        unique, inverse = np.unique(sweeps[:, [0, -1]], axis=0, return_inverse=True)
        for k in range(unique.shape[0]):
            rows = np.flatnonzero(inverse.ravel() == k)
            part = analyse_spectra(
                sweeps[rows[0]],
                current=None if flat_cur is None else flat_cur[rows],
                lockin=None if flat_li is None else flat_li[rows],
                options=options,
            )
            for name, values in zip(SpectrumAnalysis._fields, part, strict=False):
                getattr(out, name)[rows] = values
    return SpectrumAnalysis(*(np.reshape(a, lead) for a in out))


def _calibrated(
    bias_V: np.ndarray, *, current: np.ndarray | None, lockin: np.ndarray | None, options: KernelOptions
) -> KernelOptions:
    """``options`` with the map's calibration (:func:`~stslive.live.kernels.calibrate`) measured on these spectra.

    Unchanged when already calibrated or when the batch is empty.
    """
    if options.calibrated:
        return options
    if not uses_lockin(options):
        lockin = None
    ref = current if current is not None else lockin
    if ref is None or ref.size == 0:
        return options
    bias = np.asarray(bias_V, dtype=np.float64)
    if bias.ndim > 1:  # per-pixel sweeps: calibrate on the spectra sharing the first one
        first = bias.reshape(-1, bias.shape[-1])[0]
        same = np.all(bias.reshape(-1, bias.shape[-1])[:, [0, -1]] == first[[0, -1]], axis=1)

        def flat(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a.reshape(-1, a.shape[-1])[same]

        bias, current, lockin = first, flat(current), flat(lockin)
    return calibrate(bias, current=current, lockin=lockin, options=options)


def calibrate_options(
    bias_V: np.ndarray, spectra: np.ndarray, channel_names: list[str], *, options: KernelOptions
) -> KernelOptions:
    """Fix a map's calibration (gap, Dynes width, smoothing) from stored spectra ``(..., n_channels, n_points)``.

    The kernels measure the calibration per call when it is not set; a caller that analyses a
    map in pieces (the live analyser one pixel at a time, the offline block loop) calibrates
    once on the first spectra and passes the returned options to every :func:`analyse_pixels`
    call, so all pixels are analysed alike (one pixel alone gives a noisy calibration).
    """
    data = np.asarray(spectra)
    pick = pick_channels(list(channel_names), current=options.current, lockin=options.lockin)
    return _calibrated(
        bias_V,
        current=None if pick.current is None else data[..., pick.current, :],
        lockin=None if pick.lockin is None else data[..., pick.lockin, :],
        options=options,
    )


def _empty_analysis(n: int, *, like: np.dtype) -> SpectrumAnalysis:
    """A SpectrumAnalysis of ``n`` not-yet-analysed spectra (NaN values, invalid)."""
    dtype = like if like in (np.float32, np.float64) else np.dtype(np.float64)
    values: dict[str, np.ndarray] = {}
    for name in SpectrumAnalysis._fields:
        if name in ("gap_reason", "alpha_reason", "reason"):
            values[name] = np.zeros(n, np.int8)
        elif name in ("valid", "valid_delta", "valid_alpha"):
            values[name] = np.zeros(n, bool)
        else:
            values[name] = np.full(n, np.nan, dtype)
    return SpectrumAnalysis(**values)


def analyse_pixels(
    bias_V: np.ndarray,
    spectra: np.ndarray,
    channel_names: list[str],
    *,
    options: KernelOptions,
) -> SpectrumAnalysis:
    """Delta, alpha and quality of spectra as stored: ``(..., n_channels, n_points)``.

    Channels are picked by name (:func:`~stslive.live.kernels.pick_channels`, honouring
    ``options.current`` / ``options.lockin``); sweep direction and current sign are normalised by
    the kernels. Both the offline analysis and the live analyser (one pixel: ``spectra`` shaped
    ``(n_channels, n_points)``) go through here.

    Parameters
    ----------
    bias_V : ndarray
        ``(n_points,)`` or ``(..., n_points)`` sweep, V.
    spectra : ndarray
        ``(..., n_channels, n_points)``, channels in the order of ``channel_names``.
    channel_names : list of str
        Nanonis-style names, e.g. ``["Current (A)", "LI Demod 1 X (A)"]``.
    options : KernelOptions

    Returns
    -------
    SpectrumAnalysis
        Arrays shaped ``(...)``.
    """
    data = np.asarray(spectra)
    if data.ndim < 2 or data.shape[-2] != len(channel_names):
        raise AnalysisError(
            f"spectra of shape {data.shape} do not match {len(channel_names)} channel names {channel_names}; "
            "give (..., n_channels, n_points)"
        )
    pick = pick_channels(list(channel_names), current=options.current, lockin=options.lockin)
    current = None if pick.current is None else data[..., pick.current, :]
    lockin = None if pick.lockin is None else data[..., pick.lockin, :]
    return analyse_arrays(bias_V, current=current, lockin=lockin, options=options)


def apply_to_model(
    model: ResultsModel,
    iy: int | slice | np.ndarray,
    ix: int | slice | np.ndarray,
    analysis: SpectrumAnalysis,
    *,
    setpoint_set: int | np.ndarray | None = None,
    time_s: float | np.ndarray | None = None,
) -> None:
    """Store results into ``model`` at ``[iy, ix]`` (one pixel or many; vectorised) and mark them measured.

    ``analysis`` arrays must broadcast to ``model.maps[...][iy, ix]``; the maps stored are
    :func:`result_maps`.
    """
    maps = result_maps(analysis)
    if setpoint_set is not None:
        maps["setpoint_set"] = np.asarray(setpoint_set)
    if time_s is not None:
        maps["time"] = np.asarray(time_s)
    model.update_block(iy, ix, **maps)  # type: ignore[arg-type]  # an int index works like a slice there


def result_maps(analysis: SpectrumAnalysis) -> dict[str, np.ndarray]:
    """The per-pixel results of ``analysis`` named as the model's maps (:data:`~stslive.live.results.MAP_SPECS`).

    The one naming of the kernels' results: what :func:`apply_to_model` stores and what the live
    analyser publishes per pixel, so a viewer's model equals the analyser's. ``fit_quality`` is
    the rms log-residual of the power law, ``reason`` the kernel's :class:`ReasonCode` (the gap's
    where the gap failed), ``reason_delta`` / ``reason_alpha`` each quantity's.
    """
    return {
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
        "reason": analysis.reason,
        "valid": analysis.valid,
        "valid_delta": analysis.valid_delta,
        "valid_alpha": analysis.valid_alpha,
        "reason_delta": analysis.gap_reason,
        "reason_alpha": analysis.alpha_reason,
        "delta_sigma_eV": analysis.delta_sigma_eV,
        "alpha_sigma": analysis.alpha_sigma,
        "delta_dynes_eV": analysis.delta_dynes_eV,
        "gamma_dynes_eV": analysis.gamma_dynes_eV,
    }


def open_input(path: str | os.PathLike[str], *, options: KernelOptions) -> SpectraSource:
    """Open an archive or ``.3ds`` with the channels :func:`pick_channels` chooses for ``options``.

    The same naming rule as :func:`analyse_pixels`, so offline and live pick the same channels;
    the lock-in is not read at all when the options do not use it.

    Raises
    ------
    AnalysisError
        The sweep is not the bias (e.g. a Z spectroscopy), or no current channel.
    FileFormatError
        Not a readable archive or ``.3ds``.
    """
    with open_spectra(path, current=options.current, lockin=options.lockin) as probe:
        names = probe.channel_names
        probe.require_bias_sweep()
    pick = pick_channels(names, current=options.current, lockin=options.lockin)
    if pick.current is None:
        raise AnalysisError(f"{path}: no current channel among {names}; name one with --current")
    lockin = names[pick.lockin] if pick.lockin is not None and uses_lockin(options) else None
    return open_spectra(path, current=names[pick.current], lockin=lockin)


class InstrumentSettings(NamedTuple):
    """What a recording states about the measurement's broadening (None: it does not say)."""

    temperature_K: float | None
    modulation_Vrms: float | None


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _median_temperature(values: np.ndarray) -> float | None:
    """Median of the finite, positive thermometer readings (K), None when there are none."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else None


def instrument_of(
    setpoint_set: SetpointSet, pixels: Sequence[Any], metadata: Mapping[str, Any] | None = None
) -> dict[str, float | None]:
    """The live analyser's :func:`instrument_settings`: the set's modulation, the pixels' median temperature.

    ``pixels`` are the calibration sample (objects with ``temperatures_K``, the readings before
    and after each spectrum), so the live rule equals the offline one on an archive of the run.
    Without any reading, the temperature the start document's ``metadata`` states
    (:data:`STATED_TEMPERATURE_KEY`: a replayed ``.3ds``), as offline.
    """
    temps = np.array([t if t is not None else np.nan for p in pixels for t in p.temperatures_K], dtype=np.float64)
    temperature = _median_temperature(temps)
    if temperature is None and metadata is not None:
        temperature = _positive(metadata.get(STATED_TEMPERATURE_KEY))
    return {"temperature_K": temperature, "modulation_Vrms": _positive(setpoint_set.lockin_amplitude_Vrms)}


def instrument_settings(source: SpectraSource, pixels: np.ndarray | None = None) -> InstrumentSettings:
    """The sample temperature (K) and bias modulation (V rms) a recording states.

    An stslive archive: the median temperature of ``pixels`` (flat indices; default: every
    measured pixel; the thermometer is read before and after each spectrum) and the lock-in
    amplitude of the set-point set of the first measured pixel (0 there means no lock-in: None).
    A Nanonis ``.3ds``: what a replay of it publishes
    (:func:`~stslive.acquisition.formats.start_document.start_fields`), so the live analyser reads the
    same: the header's temperature (:data:`STATED_TEMPERATURE_KEY`) and the lock-in amplitude of
    the set-point set built from the header (``Lock-in>Amplitude`` read as zero-to-peak when the
    lock-in modulated the bias; Nanonis does not document the convention, ``--modulation-Vrms``
    overrides it).
    """
    backend = source._b
    measured = source.measured
    if isinstance(backend, ArchiveReader):
        meta = backend.pixel_meta
        chosen = np.flatnonzero(measured.ravel()) if pixels is None else np.asarray(pixels)
        temperature = _median_temperature(
            np.concatenate([meta[k].ravel()[chosen] for k in ("temperature_before_K", "temperature_after_K")])
        )
        modulation = None
        order = source.acquisition_order()
        if order.size:
            first_set = int(meta["setpoint_set_id"].ravel()[order[0]])
            sets = backend.setpoint_sets
            if first_set in sets:
                modulation = _positive(sets[first_set].lockin_amplitude_Vrms)
        return InstrumentSettings(temperature, modulation)
    try:
        start = start_fields(backend)
    except NanonisFileError:  # no set-point set in the header: nothing a replay could publish
        return InstrumentSettings(None, None)
    stated: list[dict[str, Any]] = start.get("setpoint_sets") or [{}]
    return InstrumentSettings(
        _positive(start["metadata"].get(STATED_TEMPERATURE_KEY)), _positive(stated[0].get("lockin_amplitude_Vrms"))
    )


def calibration_sample(sweeps: Sequence[Hashable], *, chunk: int) -> np.ndarray:
    """Which spectra fix the peak-template width: THE rule of the live and the offline analysis.

    Parameters
    ----------
    sweeps : sequence
        Each measured spectrum's sweep (any comparable key, e.g. (start_V, end_V, n_points)), in
        acquisition order: the order the live analyser receives the pixels, and
        :meth:`~stslive.acquisition.formats.recording.SpectraSource.acquisition_order` offline.
    chunk : int
        Sample size, ``KernelOptions.chunk``.

    Returns
    -------
    ndarray of int
        Positions in ``sweeps`` of the first ``chunk`` spectra that share the first one's sweep
        (a template bank is built for one sampling). The width is then
        :func:`calibrate_options` on those spectra. Why acquisition order and not row-major:
        the live analyser cannot wait for row-major's first spectra (in a serpentine scan
        the second row arrives reversed), and live must equal offline.
    """
    if not len(sweeps):
        return np.zeros(0, np.int64)
    first = sweeps[0]
    return np.flatnonzero(np.fromiter((s == first for s in sweeps), bool, count=len(sweeps)))[:chunk]


def calibrate_source(source: SpectraSource, *, options: KernelOptions) -> KernelOptions:
    """``options`` calibrated as the live analyser calibrates them (:func:`calibration_sample`).

    The recording's temperature and modulation fill the options' unknown ones first
    (:func:`instrument_settings`); then the map's calibration is measured on the first
    ``options.chunk`` measured spectra in acquisition order (an archive's per-pixel start times;
    row-major for a ``.3ds``) sharing the first one's sweep; their grid rows are read one at a
    time. Unchanged when already calibrated or nothing is measured.
    """
    order = source.acquisition_order()
    if order.size == 0:
        return options.with_instrument(**instrument_settings(source)._asdict())
    nx = source.shape[1]
    start, end = (a.ravel()[order] for a in source.sweep_limits)
    pick = order[calibration_sample(list(zip(start.tolist(), end.tolist(), strict=True)), chunk=options.chunk)]
    options = options.with_instrument(**instrument_settings(source, pick)._asdict())
    if options.calibrated:
        return options
    iy, ix = np.divmod(pick, nx)
    current = lockin = None
    for row in np.unique(iy):
        block = source.read_block(slice(int(row), int(row) + 1))
        if current is None:
            current = np.empty((pick.size, source.n_points), block.current.dtype)
            lockin = None if block.lockin is None else np.empty_like(current, dtype=block.lockin.dtype)
        here = iy == row
        current[here] = block.current[0, ix[here]]
        if lockin is not None and block.lockin is not None:
            lockin[here] = block.lockin[0, ix[here]]
    bias = source.bias_for(slice(int(iy[0]), int(iy[0]) + 1))[0, ix[0]] if source.bias_per_pixel else source.bias
    return _calibrated(bias, current=current, lockin=lockin, options=options)


def analyse_source(
    source: SpectraSource,
    *,
    options: KernelOptions,
    progress: ProgressCallback | None = None,
    max_block_bytes: int = 64 * 2**20,
) -> ResultsModel:
    """Analyse every measured pixel of an open source in row blocks (see :func:`analyse_input`).

    One template width for the whole map, fixed first by :func:`calibrate_source` (the live rule).
    """
    source.require_bias_sweep()
    options = calibrate_source(source, options=options)  # with the recording's temperature and modulation
    ny, nx = source.shape
    dx, dy = source.pixel_size_m
    model = ResultsModel(ny, nx, pixel_nm=float(math.sqrt(dx * dy) * 1e9), topography=source.topography)
    total = int(source.measured.sum())
    done = 0
    if progress is not None:
        progress(0, total)
    blocks = source.iter_blocks(max_bytes=max_block_bytes)
    while True:
        try:
            block = next(blocks, None)
        except OSError as exc:  # h5py/numpy read errors of a damaged file: name the file, not a traceback
            raise FileFormatError(
                source.path,
                f"cannot read the spectra ({exc}); the file is truncated or corrupt, re-copy it or export it again",
            ) from exc
        if block is None:
            break
        rows, cols = np.nonzero(block.measured)
        if rows.size:
            bias = block.bias if block.bias.ndim == 1 else block.bias[rows, cols]
            current = block.current[rows, cols]
            lockin = None if block.lockin is None else block.lockin[rows, cols]
            analysis = analyse_arrays(bias, current=current, lockin=lockin, options=options)
            apply_to_model(model, rows + block.rows.start, cols, analysis)
            done += rows.size
        if progress is not None:
            progress(done, total)
    model.update_status(state="done", message=f"analysed {done} of {ny * nx} pixels from {source.path}")
    return model


def analyse_input(
    path: str | os.PathLike[str],
    *,
    options: KernelOptions,
    progress: ProgressCallback | None = None,
    max_block_bytes: int = 64 * 2**20,
) -> ResultsModel:
    """Analyse every measured pixel of an stslive archive or a Nanonis ``.3ds`` file.

    Reads whole grid rows in blocks of at most ``max_block_bytes`` of spectra, analyses the
    measured pixels of each block with :func:`analyse_arrays` and stores them with
    :func:`apply_to_model`; pixels never measured stay NaN with ``measured=False``.
    ``progress(done, total)`` is called after every block.

    Raises
    ------
    AnalysisError
        The file's sweep is not the bias (e.g. a Z spectroscopy), or the channels are missing.
    FileFormatError
        The file is not a readable archive or ``.3ds`` (ArchiveError / NanonisFileError), or is
        truncated.
    """
    with open_input(path, options=options) as source:
        return analyse_source(source, options=options, progress=progress, max_block_bytes=max_block_bytes)
