"""Spatial maps of the simulated film: resistance field, alpha(r), Delta(r) and topography Z(r).

Pure functions of explicit inputs and a ``numpy.random.Generator``; :mod:`stslive.mocks.film`
wires them to :class:`~stslive.mocks.film.FilmParams` and the seed.

The physics of the maps is the forward model of docs/physics.md: a Gaussian random sheet-resistance
field delta_rho(r), alpha(r) from paper Eq. (2), Delta(r) from paper Eq. (3) smoothed over a few
coherence lengths, and an independent grainy topography. Eqs. (2) and (3) themselves live in
:mod:`stslive.live.theory` and are only called here.

:func:`ensemble_correlations` and :func:`true_correlation_figures` give the correlation functions
of the random process itself (not of one finite map): the "true values" a map's correlation
lengths and rho_cross(0) estimate.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.ndimage
from scipy.spatial import cKDTree

from stslive.drivers.errors import ConfigError
from stslive.live import theory
from stslive.mocks.film_params import FilmParams

FloatMap = npt.NDArray[np.float64]


def padded_shape(ny: int, nx: int, *, margin_px: int) -> tuple[int, int]:
    """Shape of the periodic generation grid that holds an ``(ny, nx)`` window plus a margin.

    The field is generated periodic on a larger grid and the film is a window of it, so the film
    itself is *not* periodic (a real film is not) and a grid smaller than the correlation length
    still sees a piece of a statistically correct field instead of a few wrapped modes.

    Parameters
    ----------
    ny, nx
        Film size in pixels.
    margin_px
        Extra pixels per axis (a few correlation lengths plus the smoothing reach).

    Returns
    -------
    tuple of int
        FFT-friendly ``(Ny, Nx)`` with ``Ny >= ny + margin_px``, ``Nx >= nx + margin_px``.
    """
    return (
        scipy.fft.next_fast_len(ny + margin_px, real=True),
        scipy.fft.next_fast_len(nx + margin_px, real=True),
    )


def gaussian_random_field(
    shape: tuple[int, int], *, sigma: float, correlation_px: float, rng: np.random.Generator
) -> FloatMap:
    """Periodic Gaussian random field with covariance sigma^2 exp(-r^2 / l^2).

    White noise is filtered in Fourier space by H(k) = exp(-k^2 l^2 / 8), whose power spectrum
    |H|^2 = exp(-k^2 l^2 / 4) is the transform of exp(-r^2 / l^2). The filter is scaled so the
    *expected* variance over the periodic grid is exactly sigma^2 (sum of |H|^2 / N); a finite
    window of it keeps its natural sample-to-sample spread instead of being forced to sigma.
    With this covariance the correlation profile falls to 1/e at r = l, the "1/e" length rule
    the analysis uses.

    Parameters
    ----------
    shape
        ``(Ny, Nx)`` of the periodic grid, pixels.
    sigma
        Standard deviation of the field (its unit is the caller's: ohm here).
    correlation_px
        l, the 1/e correlation length, in pixels (> 0).
    rng
        Source of the white noise.

    Returns
    -------
    numpy.ndarray
        float64 field of ``shape``, zero expected mean.
    """
    if not correlation_px > 0:
        raise ConfigError(f"correlation length must be > 0 pixels, got {correlation_px!r}; raise l_rho_m.")
    white = rng.standard_normal(shape)
    ky = 2.0 * np.pi * scipy.fft.fftfreq(shape[0])[:, None]
    kx = 2.0 * np.pi * scipy.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-(ky**2 + kx**2) * correlation_px**2 / 8.0)
    # Expected variance of the filtered unit white noise = mean of |H|^2 over the *full* k grid;
    # the rfft half-plane counts its interior columns twice.
    weights = np.full(transfer.shape[1], 2.0)
    weights[0] = 1.0
    if shape[1] % 2 == 0:
        weights[-1] = 1.0
    variance = float(np.sum(transfer**2 * weights) / (shape[0] * shape[1]))
    field = scipy.fft.irfft2(scipy.fft.rfft2(white) * transfer, s=shape)
    return field * (sigma / math.sqrt(variance))


def smooth_periodic(field: npt.NDArray[np.floating], *, sigma_px: float) -> npt.NDArray[np.floating]:
    """Gaussian smoothing of a periodic field (kernel standard deviation ``sigma_px`` pixels).

    ``scipy.ndimage.gaussian_filter`` with ``mode='wrap'``, which matches the periodic grid the
    field was generated on; ``sigma_px = 0`` returns a copy.
    """
    if sigma_px < 0:
        raise ConfigError(f"smoothing width must be >= 0 pixels, got {sigma_px!r}.")
    if sigma_px == 0:
        return field.copy()
    return scipy.ndimage.gaussian_filter(field, sigma=sigma_px, mode="wrap", truncate=5.0)


def grain_topography(
    ny: int,
    nx: int,
    *,
    pixel_m: float,
    diameter_m: tuple[float, float],
    height_m: tuple[float, float],
    rng: np.random.Generator,
) -> FloatMap:
    """Grainy topography Z(r): one dome per nanocrystal, Voronoi-packed.

    Grain centres are a Poisson process of density 1 / d_mean^2 (d_mean the mean of
    ``diameter_m``), so neighbouring centres sit a grain diameter apart on average; every pixel
    belongs to its nearest centre (a Voronoi cell, found with ``scipy.spatial.cKDTree``) and is
    raised by that grain's dome

        Z = h_g * max(0, 1 - (r / R_g)^2),    R_g = d_g / 2 + pixel,

    with d_g and h_g drawn uniformly from ``diameter_m`` and ``height_m``; the cell boundaries
    become the grooves between crystallites. The mean height is removed.

    Parameters
    ----------
    ny, nx
        Map size in pixels.
    pixel_m
        Pixel pitch in metres.
    diameter_m, height_m
        (min, max) grain diameter and height in metres (paper: 2-5 nm crystallites; height chosen
        0.1-0.3 nm, a "very flat" surface).
    rng
        Its own generator: the topography is independent of everything else.

    Returns
    -------
    numpy.ndarray
        Z in metres, shape ``(ny, nx)``, zero mean.
    """
    d_lo, d_hi = diameter_m
    h_lo, h_hi = height_m
    if not (0 < d_lo <= d_hi and 0 <= h_lo <= h_hi):
        raise ConfigError(
            f"grain diameter {diameter_m!r} and height {height_m!r} must be ordered (min, max) ranges > 0."
        )
    d_mean = 0.5 * (d_lo + d_hi)
    margin = 2.0 * d_hi
    width, height = nx * pixel_m + 2 * margin, ny * pixel_m + 2 * margin
    n_grains = max(1, int(rng.poisson(width * height / d_mean**2)))
    centres = rng.uniform((-margin, -margin), (height - margin, width - margin), size=(n_grains, 2))
    radius = 0.5 * rng.uniform(d_lo, d_hi, size=n_grains) + pixel_m
    peak = rng.uniform(h_lo, h_hi, size=n_grains)
    yy, xx = np.meshgrid(np.arange(ny) * pixel_m, np.arange(nx) * pixel_m, indexing="ij")
    dist, owner = cKDTree(centres).query(np.column_stack([yy.ravel(), xx.ravel()]))
    z = peak[owner] * np.clip(1.0 - (dist / radius[owner]) ** 2, 0.0, None)
    z = z.reshape(ny, nx)
    return z - z.mean()


def gap_smoothing_m(params: FilmParams) -> float:
    """Standard deviation of the Gaussian smoothing of the Eq. (3) gap map, m: gap_smoothing_xi * xi(0)."""
    xi = theory.coherence_length_m(diffusion_m2_s=params.diffusion_m2_s, gap_eV=params.delta_mean_eV)
    return float(params.gap_smoothing_xi * xi)


def _ensemble_lengths(params: FilmParams) -> tuple[float, float, float, float]:
    """(l_Delta, l_alpha, l_cross) in m and rho_cross(0) of the film's process (see ensemble_correlations)."""
    if not params.sigma_rho_ohm > 0:
        raise ConfigError("sigma_rho_ohm = 0: the film has no fluctuations and no correlation lengths.")
    length, s = params.l_rho_m, gap_smoothing_m(params)
    # alpha and Delta are linear in delta_rho (Eqs. (2), (3)): the sign of their product is the cross's
    d_alpha = float(
        theory.aa_exponent_shift(1.0, bias_V=params.aa_bias_V, diffusion_m2_s=params.diffusion_m2_s, l_alpha_m=length)
    )
    d_gap = float(theory.gap_relative_shift(1.0, hbar_omega_D_K=params.hbar_omega_D_K, gap_K=params.gap_eq3_K))
    l_delta, l_cross = math.sqrt(length**2 + 4 * s**2), math.sqrt(length**2 + 2 * s**2)
    return l_delta, length, l_cross, math.copysign(length * l_delta / l_cross**2, d_alpha * d_gap)


def ensemble_correlations(radius_m: npt.ArrayLike, params: FilmParams) -> tuple[FloatMap, FloatMap, FloatMap]:
    """The film process's correlation functions rho_Delta(r), rho_alpha(r), rho_cross(r).

    delta_rho has the covariance sigma^2 exp(-r^2 / l^2), i.e. the power spectrum
    exp(-k^2 l^2 / 4) (:func:`gaussian_random_field`); alpha is linear in it, so
    rho_alpha = exp(-r^2 / l^2). Delta is linear in delta_rho smoothed by a Gaussian of standard
    deviation s (:func:`gap_smoothing_m`), transfer exp(-k^2 s^2 / 2): its spectrum
    exp(-k^2 (l^2 / 4 + s^2)) gives rho_Delta = exp(-r^2 / (l^2 + 4 s^2)), and the cross spectrum
    exp(-k^2 (l^2 / 4 + s^2 / 2)) gives rho_cross = rho_0 exp(-r^2 / (l^2 + 2 s^2)) with
    rho_0 = +-l sqrt(l^2 + 4 s^2) / (l^2 + 2 s^2), signed as Eq. (2) times Eq. (3) (negative).

    Parameters
    ----------
    radius_m
        Distances r in metres.
    params
        The film.

    Returns
    -------
    tuple of numpy.ndarray
        rho_Delta, rho_alpha, rho_cross at ``radius_m``.
    """
    r = np.asarray(radius_m, dtype=np.float64)
    l_delta, l_alpha, l_cross, rho_0 = _ensemble_lengths(params)
    return np.exp(-((r / l_delta) ** 2)), np.exp(-((r / l_alpha) ** 2)), rho_0 * np.exp(-((r / l_cross) ** 2))


def true_correlation_figures(params: FilmParams) -> dict[str, float]:
    """The 1/e lengths (nm) and rho_cross(0) of the film's process: the truth a map's figures estimate.

    Returns
    -------
    dict
        ``l_delta_nm``, ``l_alpha_nm``, ``l_cross_nm`` (where each function of
        :func:`ensemble_correlations` falls to 1/e of its value at 0) and ``rho_cross_0``.
    """
    l_delta, l_alpha, l_cross, rho_0 = _ensemble_lengths(params)
    return {"l_delta_nm": l_delta * 1e9, "l_alpha_nm": l_alpha * 1e9, "l_cross_nm": l_cross * 1e9, "rho_cross_0": rho_0}
