"""Spatial maps of the simulated film: resistance field, alpha(r), Delta(r) and topography Z(r).

Pure functions of explicit inputs and a ``numpy.random.Generator``; :mod:`stslive.mocks.film`
wires them to :class:`~stslive.mocks.film.FilmParams` and the seed.

The physics of the maps is the forward model of docs/physics.md: a Gaussian random sheet-resistance
field delta_rho(r), alpha(r) from paper Eq. (2), Delta(r) from paper Eq. (3) smoothed over a few
coherence lengths, and an independent grainy topography. Eqs. (2) and (3) themselves live in
:mod:`stslive.live.theory` and are only called here.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.fft
import scipy.ndimage
from scipy.spatial import cKDTree

from stslive.drivers.errors import ConfigError

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
