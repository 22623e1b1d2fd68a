"""Every figure of one analysed input: what is read for them, and the files written.

:func:`collect_figure_inputs` takes what the figures need while the input is open: the maps,
the run's caption, the correlation snapshot, the spectra of a few example pixels (valid ones
at evenly spaced quantiles of Delta; without a valid pixel, measured ones, so a failed analysis
still shows its data) with the model conductance fitted to their gap region, and for a line cut
the spectra along the line. :func:`write_analysis_figures` writes them all, an empty input
included (its figures say what is missing, so no figure of an earlier run is left looking current):

==============================  =====================================================
maps.png (linecut.png)          Delta and alpha maps, topography (a line: profiles, waterfall)
histograms.png                  valid Delta and alpha values
delta_alpha.png                 Delta against alpha per pixel, Pearson r
flags.png                       quality flag and kernel reason per pixel
cross_correlation.png           2D Delta-alpha cross-correlation (not for a line)
correlation_profiles.png        radial profiles, noise bands, lengths and intervals
spectra.png                     example spectra with power laws and the gap model
==============================  =====================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from stslive.acquisition.formats.recording import SpectraSource
from stslive.live.kernels import KernelOptions, conductance_sign, derivative, prepare_sweep
from stslive.live.offline.captions import run_caption
from stslive.live.offline.figure_correlations import cross_correlation_figure, profiles_figure
from stslive.live.offline.figure_linecut import linecut_figure
from stslive.live.offline.figure_maps import flags_figure, histograms_figure, maps_figure, reason_name, scatter_figure
from stslive.live.offline.figure_spectra import NO_SPECTRUM, ExampleSpectrum, gap_zoom_V, spectra_figure
from stslive.live.offline.figures import RunMaps, pixel_centres_nm, save_figure
from stslive.live.offline.spectrum_model import dynes_conductance, fit_background, gap_for_peaks
from stslive.live.results import CorrelationSnapshot, ResultsModel

__all__ = ["FigureInputs", "collect_figure_inputs", "write_analysis_figures", "MAX_LINE_SPECTRA"]

#: Spectra drawn in a line cut's waterfall at the most (evenly spaced along the line).
MAX_LINE_SPECTRA = 24


@dataclass(frozen=True)
class FigureInputs:
    """What the figures of one analysed input draw (see :func:`collect_figure_inputs`)."""

    maps: RunMaps
    snapshot: CorrelationSnapshot | None
    examples: list[ExampleSpectrum]
    line: list[ExampleSpectrum]
    fit_window_V: tuple[float, float]
    gap_search_V: tuple[float, float]
    examples_requested: int = 3


def _evenly(n: int, count: int) -> np.ndarray:
    """At most ``count`` indices of ``range(n)``, evenly spaced, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(int)) if n and count > 0 else np.zeros(0, int)


def _example_pixels(maps: RunMaps, count: int) -> list[tuple[int, int]]:
    """Valid pixels at evenly spaced quantiles of Delta; without any, measured pixels evenly spaced."""
    valid = maps.valid("both")
    iy, ix = np.nonzero(valid if valid.any() else maps.measured)
    order = np.argsort(maps.maps["delta_eV"][iy, ix], kind="stable") if valid.any() else np.arange(iy.size)
    return [(int(iy[k]), int(ix[k])) for k in order[_evenly(order.size, count)]]


def _line_pixels(maps: RunMaps) -> list[tuple[int, int]]:
    """Measured pixels of a line cut in grid order, at most :data:`MAX_LINE_SPECTRA`, evenly spaced."""
    iy, ix = np.nonzero(maps.measured)
    return [(int(iy[k]), int(ix[k])) for k in _evenly(iy.size, MAX_LINE_SPECTRA)]


def _status(maps: Mapping[str, np.ndarray], iy: int, ix: int) -> str:
    """Empty for a valid pixel, else the kernel's reason (per quantity when the maps carry both)."""
    if maps["valid"][iy, ix]:
        return ""
    per_quantity = [
        f"{what} {reason_name(code)}"
        for key, what in (("reason_delta", "Delta"), ("reason_alpha", "alpha"))
        if key in maps and (code := int(maps[key][iy, ix])) != 0
    ]
    return ", ".join(per_quantity) or reason_name(int(maps["reason"][iy, ix]))


def _model(
    ex: ExampleSpectrum, maps: Mapping[str, np.ndarray], options: KernelOptions, *, lockin: bool, fallback_V: float
) -> tuple[np.ndarray | None, str]:
    """Model conductance over the gap region of ``ex``: the pixel's Dynes fit, else the run's template."""
    modulation = options.modulation_Vrms if lockin else 0.0
    delta_fit = float(maps["delta_dynes_eV"][ex.iy, ex.ix]) if "delta_dynes_eV" in maps else np.nan
    gamma_fit = float(maps["gamma_dynes_eV"][ex.iy, ex.ix]) if "gamma_dynes_eV" in maps else np.nan
    half = gap_zoom_V(ex.delta_eV, ex.bias_V, fallback_V)
    zoom = np.abs(ex.bias_V) <= half
    broadening = {"temperature_K": options.temperature_K, "modulation_Vrms": modulation}
    if np.isfinite(delta_fit) and np.isfinite(gamma_fit) and delta_fit > 0 and gamma_fit > 0:
        shape = dynes_conductance(ex.bias_V[zoom], delta_eV=delta_fit, gamma_eV=gamma_fit, **broadening)
        label = f"Dynes fit $\\Delta$ = {delta_fit * 1e3:.3f} meV, $\\Gamma$ = {gamma_fit * 1e3:.3f} meV"
    elif options.dynes_width_eV is not None and np.isfinite(ex.delta_eV) and ex.delta_eV > 0:
        gamma = options.dynes_width_eV
        centre = 0.5 * (ex.peak_pos_V + ex.peak_neg_V)
        delta = gap_for_peaks(ex.delta_eV, gamma_eV=gamma, **broadening)
        shape = dynes_conductance(ex.bias_V[zoom] - centre, delta_eV=delta, gamma_eV=gamma, **broadening)
        label = f"template $\\Gamma$ = {gamma * 1e3:.3f} meV, T = {options.temperature_K:g} K at the fitted peaks"
    else:
        return None, ""
    model = np.full(ex.bias_V.shape, np.nan)
    model[zoom] = fit_background(ex.bias_V[zoom], ex.gap_trace[zoom], shape)
    return model, label


def _read_spectra(
    source: SpectraSource,
    maps: RunMaps,
    pixels: Sequence[tuple[int, int]],
    options: KernelOptions,
    *,
    with_model: bool,
) -> list[ExampleSpectrum]:
    """dI/dV (derivative of I(V), nS) and the gap channel of ``pixels``, with their results."""
    lockin_used = source.lockin_channel is not None and options.gap_from_lockin(lockin_given=True)
    in_amperes = str(source.lockin_channel).endswith("(A)")
    x_nm, y_nm = pixel_centres_nm(maps.geometry)
    m = maps.maps
    out: list[ExampleSpectrum] = []
    rows: dict[int, Any] = {}
    for iy, ix in pixels:
        if iy not in rows:
            rows = {iy: source.read_block(slice(iy, iy + 1))}  # a line's pixels come row by row: keep one
        block = rows[iy]
        bias_raw = block.bias if block.bias.ndim == 1 else block.bias[0, ix]
        channels = [block.current[0, ix]] + ([] if block.lockin is None else [block.lockin[0, ix]])
        bias, current, *lockin = prepare_sweep(bias_raw, *channels)
        current = current * conductance_sign(bias, current)
        didv = derivative(bias, current, points=options.smoothing_points) * 1e9
        if lockin_used and lockin:
            gap_trace = lockin[0] * conductance_sign(bias, lockin[0], kind="didv") * (1e12 if in_amperes else 1.0)
            gap_label = "lock-in X (pA)" if in_amperes else str(source.lockin_channel)
        else:
            gap_trace, gap_label = derivative(bias, current, points=3) * 1e9, "dI/dV, 3-point (nS)"
        ex = ExampleSpectrum(
            iy=iy,
            ix=ix,
            x_nm=float(x_nm[iy, ix]),
            y_nm=float(y_nm[iy, ix]),
            bias_V=np.asarray(bias, dtype=np.float64),
            didv=np.asarray(didv, dtype=np.float64),
            gap_trace=np.asarray(gap_trace, dtype=np.float64),
            gap_label=gap_label,
            delta_eV=float(m["delta_eV"][iy, ix]),
            peak_neg_V=float(m["peak_neg_V"][iy, ix]),
            peak_pos_V=float(m["peak_pos_V"][iy, ix]),
            alpha_pos=float(m["alpha_pos"][iy, ix]),
            alpha_neg=float(m["alpha_neg"][iy, ix]),
            b_pos=float(m["b_pos"][iy, ix]) * 1e9,
            b_neg=float(m["b_neg"][iy, ix]) * 1e9,
            status=_status(m, iy, ix),
        )
        if with_model:
            model, label = _model(
                ex, m, options, lockin=lockin_used and bool(lockin), fallback_V=options.gap_search_V[1]
            )
            ex = dataclasses.replace(ex, model=model, model_label=label)
        out.append(ex)
    return out


def collect_figure_inputs(
    source: SpectraSource, model: ResultsModel, *, options: KernelOptions, examples: int
) -> FigureInputs:
    """Read what the figures of ``source``'s analysis ``model`` need (module docstring)."""
    maps = RunMaps(
        geometry=source.geometry,
        maps=model.copy_maps(tuple(model.maps)),  # every map, those the kernels add beyond MAP_SPECS too
        caption=run_caption(source.path),
        topography=model.topography,
    )
    picks = _example_pixels(maps, examples)
    line = _read_spectra(source, maps, _line_pixels(maps), options, with_model=False) if maps.is_line else []
    return FigureInputs(
        maps=maps,
        snapshot=model.snapshot,
        examples=_read_spectra(source, maps, picks, options, with_model=True),
        line=line,
        fit_window_V=options.fit_window_V,
        gap_search_V=options.gap_search_V,
        examples_requested=examples,
    )


def write_analysis_figures(out: str | os.PathLike[str], inputs: FigureInputs, report: Mapping[str, Any]) -> list[Path]:
    """Write every figure of the module docstring's table into ``out``; returns the paths."""
    out = Path(out)
    maps, caption = inputs.maps, inputs.maps.caption
    # drawn one at a time: a figure is built, written and dropped before the next
    figures: list[tuple[str, Callable[[], Figure]]] = []
    if maps.is_line:
        figures.append(("linecut.png", lambda: linecut_figure(maps, inputs.line, gap_search_V=inputs.gap_search_V)))
    else:
        figures.append(("maps.png", lambda: maps_figure(maps)))
        figures.append(("cross_correlation.png", lambda: cross_correlation_figure(inputs.snapshot, caption=caption)))
    figures += [
        ("histograms.png", lambda: histograms_figure(maps)),
        ("delta_alpha.png", lambda: scatter_figure(maps)),
        ("flags.png", lambda: flags_figure(maps)),
        ("correlation_profiles.png", lambda: profiles_figure(inputs.snapshot, report, caption=caption)),
        (
            "spectra.png",
            lambda: spectra_figure(
                inputs.examples,
                fit_window_V=inputs.fit_window_V,
                gap_search_V=inputs.gap_search_V,
                caption=caption,
                empty="no example spectrum requested" if inputs.examples_requested < 1 else NO_SPECTRUM,
            ),
        ),
    ]
    return [save_figure(draw(), out / name) for name, draw in figures]
