"""Spatial auto- and cross-correlations of maps (paper Appendix A), correlation lengths and the report.

rho_XY(r) = sum_r' (X(r') - <X>)(Y(r' - r) - <Y>) / (N sigma_X sigma_Y), Eqs. (A1), (A2), with
unmeasured pixels (NaN) left out: each lag sums over its measured pairs and is normalised by
their own second moments (N sigma_X sigma_Y on a full torus), and lags with fewer than
``min_pair_fraction`` of the pixels are NaN (:mod:`stslive.live.correlation_estimator`). Lags do
not wrap around the frame unless ``periodic=True`` (the paper's torus). Profiles are ring
averages one pixel wide up to half the shorter side. Two length rules: 1/e (``l_*_nm``) and the
paper's "above the noise level close to zero" (``l_*_noise_nm``: the first radius inside k
noise levels read from the profile's tail). A length not reached inside the half box is NaN.
:func:`correlation_report` adds the bias-corrected figures of the film's process with 90 %
intervals (:mod:`stslive.live.correlation_intervals`) and warnings. The rules in full:
docs/physics.md section 4.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import AnalysisError
from stslive.live.correlation_estimator import (
    MaskedCorrelator,
    ProfileSet,
    RadialProfile,
    first_crossing,
    lag_radius_m,
    length_1e,
    pixel_sides,
    ring_index,
)
from stslive.live.correlation_intervals import FIGURES, FigureIntervals, figure_intervals, fit_figures

__all__ = [
    "CorrelationAnalysis",
    "RadialProfile",
    "correlation_analysis",
    "correlation_length_1e",
    "correlation_length_noise",
    "correlation_map",
    "correlation_report",
    "correlation_warnings",
    "lag_radius_m",
    "radial_profile",
]

FloatArray = npt.NDArray[np.floating]

#: Report key prefix of each map pair, with the profile of :class:`ProfileSet` it reads.
_LENGTHS = ("delta", "alpha", "cross")
#: A correlation length above this fraction of the map's shorter side is finite-size biased
#: (the paper's lengths are 1/10 - 1/20 of its image).
FINITE_SIZE_FRACTION = 0.1
#: Below this fraction of the grid's pixels the figures describe only the measured part.
MIN_PIXEL_FRACTION = 0.5
#: Fewest pixels (in both maps) for intervals: a handful of pixels puts rho_cross(0) near +-1 in
#: the map and in every simulation alike, and the bootstrap would call that precise.
MIN_INTERVAL_PIXELS = 10


def _as_map(name: str, values: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise AnalysisError(f"{name} must be a 2D map (ny, nx); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.count_nonzero(np.isfinite(arr)) < 2:
        raise AnalysisError(f"{name} has fewer than 2 finite pixels; nothing to correlate.")
    return arr


def _pair(x: npt.ArrayLike, y: npt.ArrayLike | None, names: tuple[str, str]) -> tuple[FloatArray, FloatArray]:
    xa = _as_map(names[0], x)
    ya = xa if y is None else _as_map(names[1], y)
    if ya.shape != xa.shape:
        raise AnalysisError(f"maps differ in shape: {xa.shape} vs {ya.shape}; correlate maps of one grid.")
    return xa, ya


def correlation_map(
    x: npt.ArrayLike, y: npt.ArrayLike | None = None, *, min_pair_fraction: float = 0.05, periodic: bool = False
) -> FloatArray:
    """2D auto- or cross-correlation map, paper Eqs. (A1), (A2) (module docstring).

    Parameters
    ----------
    x
        First map, shape (ny, nx); NaN marks unmeasured pixels.
    y
        Second map of the same shape; ``None`` for the autocorrelation of ``x``.
    min_pair_fraction
        Lags with fewer measured pairs than this fraction of the measured pixels are NaN.
    periodic
        Pair pixels across the frame's edges (the paper's torus) instead of zero-padding.

    Returns
    -------
    numpy.ndarray
        rho(r) at the minimum-image lags, shape (ny, nx), lag (0, 0) at index [0, 0] (FFT order;
        ``numpy.fft.fftshift`` centres it). float32 if both maps are float32, else float64.
    """
    xa, ya = _pair(x, y, ("x", "y"))
    correlator = MaskedCorrelator(
        np.isfinite(xa), np.isfinite(ya), pixel_size_m=1.0, periodic=periodic, min_pair_fraction=min_pair_fraction
    )
    rho = correlator.maps(xa, ya, keys=("cross",))["cross"]
    return rho.astype(np.result_type(xa.dtype, ya.dtype), copy=False)


def radial_profile(
    corr: npt.ArrayLike, *, pixel_size_m: float | tuple[float, float], max_radius_m: float | None = None
) -> RadialProfile:
    """Circular average of an FFT-ordered correlation map (see the module docstring).

    Parameters
    ----------
    corr
        Correlation map from :func:`correlation_map`, lag 0 at [0, 0]; NaN lags are skipped.
    pixel_size_m
        Pixel size in metres, a float or (dy, dx).
    max_radius_m
        Largest radius kept; default half the shorter side of the map.

    Returns
    -------
    RadialProfile
        Rings of one pixel width; rings without any finite lag are dropped.
    """
    rho = np.asarray(corr, dtype=np.float64)
    if rho.ndim != 2:
        raise AnalysisError(f"corr must be a 2D correlation map; got shape {rho.shape}.")
    py, px = pixel_sides(pixel_size_m)
    radius = lag_radius_m(rho.shape, pixel_size_m=(py, px))
    limit = min(rho.shape[0] * py, rho.shape[1] * px) / 2.0 if max_radius_m is None else float(max_radius_m)
    keep = np.isfinite(rho) & (radius <= limit)
    ring = ring_index(radius[keep], min(py, px))
    count = np.bincount(ring)
    filled = count > 0
    mean_radius = np.bincount(ring, weights=radius[keep])[filled] / count[filled]
    mean_value = np.bincount(ring, weights=rho[keep])[filled] / count[filled]
    return RadialProfile(mean_radius, mean_value, count[filled])


def correlation_length_1e(profile: RadialProfile, *, absolute: bool = False) -> float:
    """1/e correlation length in metres: first radius with profile < profile(0) / e.

    Parameters
    ----------
    profile
        Radial profile whose first ring is the origin.
    absolute
        Use |profile| (for cross-correlations, which may be negative).

    Returns
    -------
    float
        Radius in metres, linearly interpolated between rings; NaN if never reached.
    """
    level = np.abs(profile.value) if absolute else profile.value
    if profile.radius_m[0] != 0.0 or not level[0] > 0.0:
        raise AnalysisError("the profile must start at radius 0 with a non-zero value; pass a radial_profile().")
    return length_1e(profile, absolute=absolute)


def correlation_length_noise(profile: RadialProfile, *, band: float) -> float:
    """Noise-rule correlation length in metres: first radius where |profile| <= band.

    Parameters
    ----------
    profile
        Radial profile whose first ring is the origin.
    band
        Half-width of the noise band around zero (k times the profile's tail noise level).

    Returns
    -------
    float
        Interpolated radius; 0 if |profile(0)| is already inside the band; NaN if never reached.
    """
    if not band > 0.0:
        raise AnalysisError(f"the noise band must be > 0; got {band}.")
    return first_crossing(profile.radius_m, np.abs(profile.value), band)


class CorrelationAnalysis(NamedTuple):
    """What :func:`correlation_analysis` finds: the report, the profiles and the 2D cross map."""

    report: dict[str, Any]
    profiles: ProfileSet
    cross_map: FloatArray


def _nm(length_m: float) -> float | None:
    return None if math.isnan(length_m) else length_m * 1e9


def _noise_rule(level: float, profile: RadialProfile, noise_k: float) -> tuple[float | None, float | None]:
    """(length nm, band) of the paper's rule at the tail's noise ``level``; None where there is none."""
    if not level > 0.0:
        return None, None
    band = noise_k * level
    return _nm(correlation_length_noise(profile, band=band)), band


def _interval_keys(found: FigureIntervals | None) -> dict[str, Any]:
    """``<key>_corrected`` and ``<key>_ci90`` of every figure (lengths in nm); None where not found."""
    out: dict[str, Any] = {}
    for i, name in enumerate(FIGURES):
        key, scale = (f"{name}_nm", 1e9) if name.startswith("l_") else (name, 1.0)
        if found is None or math.isnan(found.corrected[i]):
            out[f"{key}_corrected"], out[f"{key}_ci90"] = None, None
        else:
            out[f"{key}_corrected"] = float(found.corrected[i] * scale)
            out[f"{key}_ci90"] = [float(found.low[i] * scale), float(found.high[i] * scale)]
    return out


def correlation_analysis(
    delta: npt.ArrayLike,
    alpha: npt.ArrayLike,
    *,
    pixel_size_m: float | tuple[float, float],
    topography: npt.ArrayLike | None = None,
    noise_k: float = 2.0,
    min_pair_fraction: float = 0.05,
    periodic: bool = False,
    intervals: bool = True,
    replicates: int = 60,
    seed: int = 0,
) -> CorrelationAnalysis:
    """Correlation figures of a gap map and an AA-exponent map, paper Appendix A.

    Parameters
    ----------
    delta, alpha
        Gap and AA-exponent maps of one grid, shape (ny, nx); NaN = not measured/extracted.
    pixel_size_m
        Pixel size in metres, a float or (dy, dx) (paper: 1 nm).
    topography
        Optional height map Z(r) of the same grid.
    noise_k
        Width of the noise band in units of the profile's tail noise level.
    min_pair_fraction
        See :func:`correlation_map`.
    periodic
        The paper's torus instead of non-wrapping lags.
    intervals
        Compute the corrected figures and 90 % intervals (a parametric bootstrap: seconds on a
        300 x 250 map); without, those keys are None.
    replicates, seed
        Simulated maps per length scale, and their seed (:func:`~stslive.live.correlation_intervals.figure_intervals`).

    Returns
    -------
    CorrelationAnalysis
        ``report`` keys (lengths in nm; None where not determined):
        ``l_delta_nm``, ``l_alpha_nm``, ``l_cross_nm`` (1/e rule on this map, cross on |profile|);
        ``l_*_noise_nm`` and ``noise_band_*`` (the paper's rule and the band it used);
        ``l_*_fit_nm`` (Gaussian fit with offset, the statistic the intervals are built on);
        ``l_*_nm_corrected``, ``l_*_nm_ci90`` ([low, high]; high may be inf: unbounded) for the
        1/e lengths of the film's process; ``rho_cross_0`` (paper: -0.55) with
        ``rho_cross_0_corrected`` and ``rho_cross_0_ci90``; ``rho_delta_topo_0`` (None without
        topography); ``correlation_pixels`` and ``correlation_pixel_fraction`` (pixels measured
        in both maps, and their fraction of the grid); ``warnings`` (:func:`correlation_warnings`).
    """
    if not noise_k > 0.0:
        raise AnalysisError(f"noise_k must be > 0; got {noise_k}.")
    d, a = _pair(delta, alpha, ("delta", "alpha"))
    correlator = MaskedCorrelator(
        np.isfinite(d),
        np.isfinite(a),
        pixel_size_m=pixel_size_m,
        periodic=periodic,
        min_pair_fraction=min_pair_fraction,
    )
    profiles = correlator.profiles(d, a)
    maps = correlator.maps(d, a)
    report: dict[str, Any] = {}
    fitted = fit_figures(profiles)
    for i, key in enumerate(_LENGTHS):
        profile = getattr(profiles, key)
        report[f"l_{key}_nm"] = _nm(length_1e(profile, absolute=key == "cross"))
        level = correlator.tail_noise(key, maps[key], profile)
        report[f"l_{key}_noise_nm"], report[f"noise_band_{key}"] = _noise_rule(level, profile, noise_k)
        # 0 / inf: shorter than the rings resolve / longer than the profile shows, i.e. not determined
        report[f"l_{key}_fit_nm"] = fitted[i] * 1e9 if 0.0 < fitted[i] < math.inf else None
    report["rho_cross_0"] = profiles.rho_cross_0
    report["rho_delta_topo_0"] = None
    if topography is not None:
        topo = correlation_map(d, _as_map("topography", topography), min_pair_fraction=min_pair_fraction)
        report["rho_delta_topo_0"] = float(topo[0, 0])
    enough = correlator.n_pixels >= MIN_INTERVAL_PIXELS
    found = figure_intervals(correlator, profiles, replicates=replicates, seed=seed) if intervals and enough else None
    report.update(_interval_keys(found))
    report["correlation_pixels"] = correlator.n_pixels
    report["correlation_pixel_fraction"] = correlator.n_pixels / d.size
    report["warnings"] = correlation_warnings(report, shape=d.shape, pixel_size_m=correlator.pixel_m)
    return CorrelationAnalysis(report, profiles, maps["cross"])


def correlation_report(delta: npt.ArrayLike, alpha: npt.ArrayLike, **options: Any) -> dict[str, Any]:
    """The report of :func:`correlation_analysis` alone (same arguments)."""
    return correlation_analysis(delta, alpha, **options).report


def correlation_warnings(
    report: dict[str, Any], *, shape: tuple[int, int], pixel_size_m: tuple[float, float]
) -> list[str]:
    """Why a report's correlation figures (and the Eq. (2)/(3) inversions built on them) may mislead.

    One sentence each, starting with a tag: ``no-interval:`` (too few pixels for intervals),
    ``few-pixels:`` (fewer than half the grid measured in both maps), ``finite-size:`` (a length
    above 1/10 of the shorter side, with the bias the model finds), ``biased-inversion:``
    (sigma_rho and the predicted gap spread use a finite-size biased l_alpha, or none),
    ``no-length:`` (a 1/e length never reached inside the half box).
    """
    warnings: list[str] = []
    if report["correlation_pixels"] < MIN_INTERVAL_PIXELS:
        warnings.append(
            f"no-interval: only {report['correlation_pixels']} pixels in both maps; intervals need "
            f"{MIN_INTERVAL_PIXELS}."
        )
    fraction = report["correlation_pixel_fraction"]
    if fraction < MIN_PIXEL_FRACTION:
        warnings.append(
            f"few-pixels: correlations from {report['correlation_pixels']} of {shape[0] * shape[1]} pixels "
            f"({100 * fraction:.0f} %, fewer than half the grid): the lengths, rho_cross(0) and the Eq. (2)/(3) "
            "inversions (sigma_rho, predicted gap spread) describe the measured part only."
        )
    side_nm = min(shape[0] * pixel_size_m[0], shape[1] * pixel_size_m[1]) * 1e9
    biased_alpha = report["l_alpha_nm"] is None
    for key in _LENGTHS:
        value, corrected, interval = (report[f"l_{key}_nm{suffix}"] for suffix in ("", "_corrected", "_ci90"))
        if value is None:
            warnings.append(
                f"no-length: l_{key} never falls to 1/e inside the half box ({side_nm / 2:.0f} nm); "
                "the map is too small or too sparse for it."
            )
            continue
        longest = max(value, corrected or 0.0)
        if longest > FINITE_SIZE_FRACTION * side_nm:
            biased_alpha |= key == "alpha"
            model = ""
            if corrected is not None:
                high = "unbounded" if not math.isfinite(interval[1]) else f"{interval[1]:.1f} nm"
                model = (
                    f" (the process's length: {corrected:.1f} nm, 90 % interval {interval[0]:.1f} nm to {high}; "
                    f"this map's value is off by {100 * (value / corrected - 1):+.0f} %)"
                )
            warnings.append(
                f"finite-size: l_{key} = {value:.1f} nm is more than 1/10 of the map's shorter side "
                f"({side_nm:.0f} nm): a finite-size biased estimate{model}."
            )
    if biased_alpha:
        warnings.append(
            "biased-inversion: sigma_rho (Eq. (2) inverted) and the predicted gap spread (Eq. (3)) use this "
            "map's l_alpha and sigma_alpha, which its finite size biases; compare them with care."
        )
    return warnings
