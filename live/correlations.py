"""Spatial auto- and cross-correlations of maps (paper Appendix A) and correlation lengths.

rho_XY(r) = sum_r' (X(r') - <X>)(Y(r' - r) - <Y>) / (N sigma_X sigma_Y), Eqs. (A1), (A2), on the
periodic grid (FFT). Unmeasured pixels (NaN) are left out: each lag is divided by its number of
measured pairs instead of N, and lags with fewer than ``min_pair_fraction`` of the pixels are NaN.
Profiles are ring averages one pixel wide up to half the shorter side. Two length rules: 1/e
(``l_*_nm``) and the paper's "into the noise" (``l_*_noise_nm``, a band of k Bartlett sigmas);
a length not reached inside the half box is NaN. The rules in full: docs/physics.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft

from stslive.drivers.errors import AnalysisError

FloatArray = npt.NDArray[np.floating]

#: Report key prefix of each map pair: (key, first map, second map).
_PAIRS = (("delta", "delta", "delta"), ("alpha", "alpha", "alpha"), ("cross", "delta", "alpha"))


class RadialProfile(NamedTuple):
    """A circularly averaged correlation map.

    Attributes
    ----------
    radius_m
        Mean radius of each ring in metres (ring 0 is the origin alone, radius 0).
    value
        Mean correlation over the ring (dimensionless).
    n_lags
        Number of 2D lags averaged in each ring (not ``count``: that would hide tuple.count).
    """

    radius_m: FloatArray
    value: FloatArray
    n_lags: npt.NDArray[np.int64]


def _as_map(name: str, values: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise AnalysisError(f"{name} must be a 2D map (ny, nx); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.count_nonzero(np.isfinite(arr)) < 2:
        raise AnalysisError(f"{name} has fewer than 2 finite pixels; nothing to correlate.")
    return arr


def _deviation(name: str, arr: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_], float]:
    """Mean-removed map (0 at NaN pixels), its mask and its population sigma, in float64."""
    mask = np.isfinite(arr)
    values = arr[mask].astype(np.float64)
    sigma = float(values.std())
    if not sigma > 0.0:
        raise AnalysisError(f"{name} is constant over its measured pixels (sigma = 0); correlation undefined.")
    deviation = np.zeros(arr.shape, dtype=np.float64)
    deviation[mask] = values - values.mean()
    return deviation, mask, sigma


def _circular_correlation(a: FloatArray, b: FloatArray) -> FloatArray:
    """c(r) = sum_r' a(r') b(r' - r) on the periodic grid (real FFT; a, b real)."""
    shape = a.shape
    return scipy.fft.irfft2(scipy.fft.rfft2(a) * np.conj(scipy.fft.rfft2(b)), s=shape)


def correlation_map(x: npt.ArrayLike, y: npt.ArrayLike | None = None, *, min_pair_fraction: float = 0.05) -> FloatArray:
    """Periodic 2D auto- or cross-correlation map, paper Eqs. (A1), (A2).

    rho_XY(r) = sum_r' (X(r') - <X>)(Y(r' - r) - <Y>) / (N sigma_X sigma_Y)

    Parameters
    ----------
    x
        First map, shape (ny, nx); NaN marks unmeasured pixels (see the module docstring).
    y
        Second map of the same shape; ``None`` for the autocorrelation of ``x``.
    min_pair_fraction
        Lags with fewer measured pairs than this fraction of the measured pixels are NaN.

    Returns
    -------
    numpy.ndarray
        rho(r), shape (ny, nx), lag (0, 0) at index [0, 0] (FFT order; ``numpy.fft.fftshift``
        centres it). float32 if both maps are float32, else float64.
    """
    xa = _as_map("x", x)
    ya = xa if y is None else _as_map("y", y)
    if ya.shape != xa.shape:
        raise AnalysisError(f"maps differ in shape: {xa.shape} vs {ya.shape}; correlate maps of one grid.")
    if not 0.0 <= min_pair_fraction <= 1.0:
        raise AnalysisError(f"min_pair_fraction must lie in [0, 1]; got {min_pair_fraction}.")
    dx, mx, sx = _deviation("x", xa)
    dy, my, sy = (dx, mx, sx) if y is None else _deviation("y", ya)
    numerator = _circular_correlation(dx, dy)
    if mx.all() and my.all():
        rho = numerator / (xa.size * sx * sy)
    else:
        # pair counts are integers; rounding removes the FFT's ~1e-12 error before the threshold
        pairs = np.rint(_circular_correlation(mx.astype(np.float64), my.astype(np.float64)))
        enough = pairs >= max(1.0, min_pair_fraction * min(mx.sum(), my.sum()))
        rho = np.full(xa.shape, np.nan)
        rho[enough] = numerator[enough] / (pairs[enough] * sx * sy)
    return rho.astype(np.result_type(xa.dtype, ya.dtype), copy=False)


def _pixel_sides(pixel_size_m: float | tuple[float, float]) -> tuple[float, float]:
    sides = np.broadcast_to(np.asarray(pixel_size_m, dtype=np.float64), (2,))
    if not np.all(np.isfinite(sides) & (sides > 0)):
        raise AnalysisError(f"pixel_size_m must be > 0 (a float or (dy, dx) in metres); got {pixel_size_m!r}.")
    return float(sides[0]), float(sides[1])


def lag_radius_m(shape: tuple[int, int], *, pixel_size_m: float | tuple[float, float]) -> FloatArray:
    """Length in metres of the minimum-image lag vector of every index of an FFT-ordered map."""
    py, px = _pixel_sides(pixel_size_m)
    ly = np.fft.fftfreq(shape[0], d=1.0 / shape[0]) * py  # signed integer lags, periodic
    lx = np.fft.fftfreq(shape[1], d=1.0 / shape[1]) * px
    return np.hypot(ly[:, None], lx[None, :])


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
    py, px = _pixel_sides(pixel_size_m)
    radius = lag_radius_m(rho.shape, pixel_size_m=(py, px))
    limit = min(rho.shape[0] * py, rho.shape[1] * px) / 2.0 if max_radius_m is None else float(max_radius_m)
    width = min(py, px)
    keep = np.isfinite(rho) & (radius <= limit)
    ring = np.floor(radius[keep] / width + 0.5).astype(np.int64)
    count = np.bincount(ring)
    filled = count > 0
    mean_radius = np.bincount(ring, weights=radius[keep])[filled] / count[filled]
    mean_value = np.bincount(ring, weights=rho[keep])[filled] / count[filled]
    return RadialProfile(mean_radius, mean_value, count[filled])


def _first_crossing(radius: FloatArray, level: FloatArray, threshold: float) -> float:
    """First radius where ``level`` drops to ``threshold`` or below, linearly interpolated."""
    below = np.flatnonzero(level <= threshold)
    if below.size == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(radius[0])
    r0, r1, v0, v1 = radius[i - 1], radius[i], level[i - 1], level[i]
    return float(r0 + (v0 - threshold) * (r1 - r0) / (v0 - v1))


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
    return _first_crossing(profile.radius_m, level, float(level[0]) / math.e)


def bartlett_noise_sigma(
    auto_x: npt.ArrayLike,
    auto_y: npt.ArrayLike,
    *,
    n_pixels: int,
    pixel_size_m: float | tuple[float, float],
) -> float:
    """Expected std of a correlation estimate where the true correlation is 0 (Bartlett).

    s = sqrt(sum_s rho_X(s) rho_Y(s) / N), summed over the correlated core: lags closer than the
    first radius where either radial auto-profile reaches 0 (module docstring).

    Parameters
    ----------
    auto_x, auto_y
        Autocorrelation maps of the two fields (the same map for an autocorrelation).
    n_pixels
        Number of measured pixels N.
    pixel_size_m
        Pixel size in metres, a float or (dy, dx).
    """
    rx, ry = np.asarray(auto_x, dtype=np.float64), np.asarray(auto_y, dtype=np.float64)
    core = math.inf
    for auto in (rx, ry):
        prof = radial_profile(auto, pixel_size_m=pixel_size_m)
        core = min(core, _first_crossing(prof.radius_m, prof.value, 0.0))
    radius = lag_radius_m(rx.shape, pixel_size_m=pixel_size_m)
    inside = radius < core if math.isfinite(core) else np.ones(rx.shape, dtype=bool)
    total = float(np.nansum((rx * ry)[inside]))
    return math.sqrt(max(total, 1.0) / n_pixels)  # never below the white-noise floor 1/sqrt(N)


def correlation_length_noise(profile: RadialProfile, *, band: float) -> float:
    """Noise-rule correlation length in metres: first radius where |profile| <= band.

    Parameters
    ----------
    profile
        Radial profile whose first ring is the origin.
    band
        Half-width of the noise band around zero (k times :func:`bartlett_noise_sigma`).

    Returns
    -------
    float
        Interpolated radius; 0 if |profile(0)| is already inside the band; NaN if never reached.
    """
    if not band > 0.0:
        raise AnalysisError(f"the noise band must be > 0; got {band}.")
    return _first_crossing(profile.radius_m, np.abs(profile.value), band)


def _nm_or_none(length_m: float) -> float | None:
    return None if math.isnan(length_m) else length_m * 1e9


def correlation_report(
    delta: npt.ArrayLike,
    alpha: npt.ArrayLike,
    *,
    pixel_size_m: float | tuple[float, float],
    topography: npt.ArrayLike | None = None,
    noise_k: float = 2.0,
    min_pair_fraction: float = 0.05,
) -> dict[str, float | None]:
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
        Width of the noise band in units of the Bartlett sigma (2 = ~95 %).
    min_pair_fraction
        See :func:`correlation_map`.

    Returns
    -------
    dict
        ``l_delta_nm``, ``l_alpha_nm``, ``l_cross_nm`` (1/e rule, cross on |profile|),
        ``l_delta_noise_nm``, ``l_alpha_noise_nm``, ``l_cross_noise_nm`` (noise rule),
        ``noise_band_delta``, ``noise_band_alpha``, ``noise_band_cross`` (the bands used),
        ``rho_cross_0`` (paper: -0.55), ``rho_delta_topo_0`` (None without topography).
        Lengths never reached inside the half box are None.
    """
    if not noise_k > 0.0:
        raise AnalysisError(f"noise_k must be > 0; got {noise_k}.")
    maps = {"delta": _as_map("delta", delta), "alpha": _as_map("alpha", alpha)}
    auto = {name: correlation_map(m, min_pair_fraction=min_pair_fraction) for name, m in maps.items()}
    corr = dict(auto)
    corr["cross"] = correlation_map(maps["delta"], maps["alpha"], min_pair_fraction=min_pair_fraction)
    report: dict[str, float | None] = {}
    for key, first, second in _PAIRS:
        profile = radial_profile(corr[key], pixel_size_m=pixel_size_m)
        n_pixels = int(min(np.isfinite(maps[first]).sum(), np.isfinite(maps[second]).sum()))
        band = noise_k * bartlett_noise_sigma(auto[first], auto[second], n_pixels=n_pixels, pixel_size_m=pixel_size_m)
        report[f"l_{key}_nm"] = _nm_or_none(correlation_length_1e(profile, absolute=key == "cross"))
        report[f"l_{key}_noise_nm"] = _nm_or_none(correlation_length_noise(profile, band=band))
        report[f"noise_band_{key}"] = band
    report["rho_cross_0"] = float(corr["cross"][0, 0])
    report["rho_delta_topo_0"] = None
    if topography is not None:
        topo = correlation_map(maps["delta"], _as_map("topography", topography), min_pair_fraction=min_pair_fraction)
        report["rho_delta_topo_0"] = float(topo[0, 0])
    return report
