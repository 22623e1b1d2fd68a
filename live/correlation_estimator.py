"""The correlation estimator of paper Appendix A on partially measured maps, built once per mask.

:class:`MaskedCorrelator` holds everything that depends only on where the pixels were measured:
the FFT grid, the pairs of measured pixels at every lag (an FFT of the masks), which lags enter
the profiles and the ring of each. :meth:`~MaskedCorrelator.maps` and
:meth:`~MaskedCorrelator.profiles` then cost a few FFTs per map pair, so the parametric bootstrap
(:mod:`stslive.live.correlation_intervals`) applies the very estimator the report uses to hundreds
of simulated maps on the same mask.

Contract: maps are (ny, nx) with NaN at unmeasured pixels; each map's mean is over its own
measured pixels; a lag r sums (X(r') - <X>)(Y(r' - r) - <Y>) over its pairs of measured pixels
and divides by the square root of the two sums of squares over the same pairs (the lag's own
second moments). On a fully measured torus this is exactly Eqs. (A1), (A2); on a partly measured
map a lag paired only inside part of the frame is scaled by that part's spread, not the map's.
Lags are the minimum-image lags of the frame, in FFT order with lag (0, 0) at [0, 0]. With
``periodic=False`` (the default) the maps are zero-padded so that no pair wraps around the frame;
``periodic=True`` is the paper's torus. docs/physics.md says why the defaults differ from the paper.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft

from stslive.drivers.errors import AnalysisError

__all__ = [
    "MaskedCorrelator",
    "ProfileSet",
    "RadialProfile",
    "first_crossing",
    "gaussian_fit_length",
    "lag_radius_m",
    "length_1e",
    "pixel_sides",
    "ring_index",
]

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]

#: Fewest rings a profile's tail needs for :meth:`MaskedCorrelator.tail_noise`.
MIN_TAIL_RINGS = 3
#: A lag enters the profiles when its pairs, divided by the fraction of the frame its overlap
#: covers, are at least this fraction of the best-paired lag's: on a partly refined lattice the
#: lags only the refined strip pairs describe that strip (measured on the simulated film, 20
#: seeds: with them the fitted l_Delta scatters by 25 % after 2 % of a progressive scan, 5 % without).
MIN_RELATIVE_PAIRS = 0.6
#: :func:`gaussian_fit_length` fits the rings out to this many reference lengths (measured on
#: the simulated film, 30 seeds of 300 x 250: of 1, 1.25, 1.5 and 2, 1.5 scatters least; shorter
#: leaves too few rings on a sparse lattice, longer weighs the noisy tail).
FIT_SPAN = 1.5


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


class ProfileSet(NamedTuple):
    """The three radial profiles of a (Delta, alpha) pair and the cross-correlation at zero shift."""

    delta: RadialProfile
    alpha: RadialProfile
    cross: RadialProfile
    rho_cross_0: float


def pixel_sides(pixel_size_m: float | tuple[float, float]) -> tuple[float, float]:
    """``(dy, dx)`` in metres from a float or a pair; AnalysisError unless both are finite and > 0."""
    sides = np.broadcast_to(np.asarray(pixel_size_m, dtype=np.float64), (2,))
    if not np.all(np.isfinite(sides) & (sides > 0)):
        raise AnalysisError(f"pixel_size_m must be > 0 (a float or (dy, dx) in metres); got {pixel_size_m!r}.")
    return float(sides[0]), float(sides[1])


def lag_radius_m(shape: tuple[int, int], *, pixel_size_m: float | tuple[float, float]) -> FloatArray:
    """Length in metres of the minimum-image lag vector of every index of an FFT-ordered map."""
    py, px = pixel_sides(pixel_size_m)
    ly = np.fft.fftfreq(shape[0], d=1.0 / shape[0]) * py  # signed integer lags
    lx = np.fft.fftfreq(shape[1], d=1.0 / shape[1]) * px
    return np.hypot(ly[:, None], lx[None, :])


def ring_index(radius_m: FloatArray, width_m: float) -> npt.NDArray[np.int64]:
    """Ring of each lag: rings one ``width_m`` wide centred on multiples of it (ring 0 = origin)."""
    return np.floor(radius_m / width_m + 0.5).astype(np.int64)


def first_crossing(radius: FloatArray, level: FloatArray, threshold: float) -> float:
    """First radius where ``level`` drops to ``threshold`` or below, linearly interpolated; NaN if never."""
    below = np.flatnonzero(level <= threshold)
    if below.size == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(radius[0])
    r0, r1, v0, v1 = radius[i - 1], radius[i], level[i - 1], level[i]
    return float(r0 + (v0 - threshold) * (r1 - r0) / (v0 - v1))


def length_1e(profile: RadialProfile, *, absolute: bool) -> float:
    """First radius (m) where the profile (|profile| if ``absolute``) is below |profile(0)| / e; NaN if never."""
    level = np.abs(profile.value) if absolute else profile.value
    if profile.value.size == 0 or profile.radius_m[0] != 0.0 or not abs(profile.value[0]) > 0.0:
        return math.nan
    return first_crossing(profile.radius_m, level, abs(float(profile.value[0])) / math.e)


def _fft_grid(shape: tuple[int, int], periodic: bool) -> tuple[int, int]:
    """FFT grid of a frame: itself on the torus, else padded by the largest minimum-image lag."""
    if periodic:
        return shape
    return (
        scipy.fft.next_fast_len(shape[0] + shape[0] // 2),
        scipy.fft.next_fast_len(shape[1] + shape[1] // 2, real=True),
    )


class _Lags(NamedTuple):
    """The lags of one correlation (internal): at every frame lag whether it has enough pairs, and
    per profile lag its index and its reflection's index in the padded grid, its pairs and ring."""

    enough: BoolArray
    pairs: FloatArray
    grid_index: npt.NDArray[np.intp]
    grid_index_neg: npt.NDArray[np.intp]
    kept_pairs: FloatArray
    ring: npt.NDArray[np.int64]
    ring_count: npt.NDArray[np.int64]
    ring_radius: FloatArray


class _Sums(NamedTuple):
    """Lag sums of one correlation on the padded grid (internal): cross products and the two
    sums of squares over the same pairs (``second`` None: the first's reflection, an autocorrelation)."""

    product: FloatArray
    first: FloatArray
    second: FloatArray | None


class MaskedCorrelator:
    """Auto- and cross-correlations of maps measured on two fixed masks (module docstring).

    Parameters
    ----------
    mask_x, mask_y
        Measured pixels of the first (Delta) and second (alpha) map, bool (ny, nx).
    pixel_size_m
        Pixel size in metres, a float or (dy, dx).
    periodic
        The paper's torus (True) or zero-padded, non-wrapping lags (False).
    min_pair_fraction
        Lags with fewer measured pairs than this fraction of the smaller mask's pixels are NaN.
    max_radius_m
        Largest radius of the profiles; default half the shorter side of the frame.
    """

    #: The three correlations: key -> (first map, second map), 0 = x (Delta), 1 = y (alpha).
    PAIRS: ClassVar[dict[str, tuple[int, int]]] = {"delta": (0, 0), "alpha": (1, 1), "cross": (0, 1)}

    def __init__(
        self,
        mask_x: npt.ArrayLike,
        mask_y: npt.ArrayLike,
        *,
        pixel_size_m: float | tuple[float, float],
        periodic: bool = False,
        min_pair_fraction: float = 0.05,
        max_radius_m: float | None = None,
    ) -> None:
        mx, my = np.asarray(mask_x, dtype=bool), np.asarray(mask_y, dtype=bool)
        if mx.ndim != 2 or mx.shape != my.shape:
            raise AnalysisError(f"masks must be 2D of one shape; got {mx.shape} and {my.shape}.")
        if not 0.0 <= min_pair_fraction <= 1.0:
            raise AnalysisError(f"min_pair_fraction must lie in [0, 1]; got {min_pair_fraction}.")
        if min(int(mx.sum()), int(my.sum())) < 2:
            raise AnalysisError("fewer than 2 measured pixels; nothing to correlate.")
        self.shape: tuple[int, int] = (int(mx.shape[0]), int(mx.shape[1]))
        self.pixel_m = pixel_sides(pixel_size_m)
        self.periodic = periodic
        self.masks = (mx, my)
        self._grid = _fft_grid(self.shape, periodic)
        # index of each minimum-image lag of the frame, and of its reflection, in the padded FFT grid
        lags = [np.fft.fftfreq(n, d=1.0 / n).astype(np.intp) for n in self.shape]
        self._crop = tuple(lag % m for lag, m in zip(lags, self._grid, strict=True))
        self._crop_neg = tuple(-lag % m for lag, m in zip(lags, self._grid, strict=True))
        py, px = self.pixel_m
        self.radius_m = lag_radius_m(self.shape, pixel_size_m=(py, px))
        self.max_radius_m = min(self.shape[0] * py, self.shape[1] * px) / 2.0 if max_radius_m is None else max_radius_m
        # the fraction of the frame the overlap of a lag covers: pairs / it is the pair density
        coverage = [
            1.0 - np.abs(lag) / n if not periodic else np.ones(n) for lag, n in zip(lags, self.shape, strict=True)
        ]
        self._overlap = coverage[0][:, None] * coverage[1][None, :]
        self._floor = max(1.0, min_pair_fraction * min(mx.sum(), my.sum()))
        self._mask_ffts = [self._rfft(m.astype(np.float64)) for m in self.masks]
        self._lags: dict[str, _Lags] = {}

    @property
    def n_pixels(self) -> int:
        """Pixels measured in both maps."""
        return int(np.count_nonzero(self.masks[0] & self.masks[1]))

    def _rfft(self, a: FloatArray) -> npt.NDArray[np.complexfloating]:
        return scipy.fft.rfft2(a, s=self._grid)

    def _correlate(self, fa: npt.NDArray[np.complexfloating], fb: npt.NDArray[np.complexfloating]) -> FloatArray:
        """c(r) = sum_r' a(r') b(r' - r) on the padded grid, from the FFTs of a and b."""
        return scipy.fft.irfft2(fa * np.conj(fb), s=self._grid)

    def _lags_of(self, key: str) -> _Lags:
        """The lags of one correlation, computed on first use."""
        if key not in self._lags:
            i, j = self.PAIRS[key]
            # integers: rounding removes the FFT's ~1e-12 error before the thresholds
            pairs = np.rint(self._correlate(self._mask_ffts[i], self._mask_ffts[j])[np.ix_(*self._crop)])
            enough = pairs >= self._floor
            density = pairs / self._overlap
            inside = enough & (self.radius_m <= self.max_radius_m)
            others = inside & (self.radius_m > 0)
            best = float(density[others].max()) if others.any() else 0.0
            iy, ix = np.nonzero(inside & (density >= MIN_RELATIVE_PAIRS * best))
            ring = ring_index(self.radius_m[iy, ix], min(self.pixel_m))
            count = np.bincount(ring)
            filled = count > 0
            ring = (np.cumsum(filled) - 1)[ring]  # rings without a kept lag are dropped: renumber densely
            radius = np.bincount(ring, weights=self.radius_m[iy, ix]) / count[filled]
            columns = self._grid[1]
            self._lags[key] = _Lags(
                enough,
                pairs,
                self._crop[0][iy] * columns + self._crop[1][ix],
                self._crop_neg[0][iy] * columns + self._crop_neg[1][ix],
                pairs[iy, ix],
                ring,
                count[filled],
                radius,
            )
        return self._lags[key]

    def _sums(
        self, x: npt.ArrayLike, y: npt.ArrayLike, keys: tuple[str, ...], dtype: npt.DTypeLike
    ) -> dict[str, _Sums]:
        """Lag sums of the asked correlations on the padded grid (module docstring)."""
        deviations, squares = [], []
        for name, values, mask in (("Delta", x, self.masks[0]), ("alpha", y, self.masks[1])):
            v = np.asarray(values, dtype=np.float64)[mask]
            if not float(v.std()) > 0.0:
                raise AnalysisError(f"{name} is constant over its measured pixels (sigma = 0); correlation undefined.")
            deviation = np.zeros(self.shape, dtype=dtype)  # 0 where unmeasured: those pixels pair with nothing
            deviation[mask] = v - v.mean()
            deviations.append(self._rfft(deviation))
            squares.append(self._rfft(deviation * deviation))
        out = {}
        for key in keys:
            i, j = self.PAIRS[key]
            product = self._correlate(deviations[i], deviations[j])
            first = self._correlate(squares[i], self._mask_ffts[j])
            second = None if i == j else self._correlate(self._mask_ffts[i], squares[j])
            out[key] = _Sums(product, first, second)
        return out

    def maps(
        self, x: npt.ArrayLike, y: npt.ArrayLike, *, keys: tuple[str, ...] = ("delta", "alpha", "cross")
    ) -> dict[str, FloatArray]:
        """2D correlation maps (``delta``, ``alpha`` autos, ``cross``), (ny, nx) FFT order, NaN at thin lags."""
        out = {}
        for key, sums in self._sums(x, y, keys, np.float64).items():
            first = sums.first[np.ix_(*self._crop)]
            second = (sums.first if sums.second is None else sums.second)[
                np.ix_(*(self._crop_neg if sums.second is None else self._crop))
            ]
            with np.errstate(invalid="ignore", divide="ignore"):
                rho = sums.product[np.ix_(*self._crop)] / np.sqrt(first * second)
            out[key] = np.where(self._lags_of(key).enough, rho, np.nan)
        return out

    def profiles(self, x: npt.ArrayLike, y: npt.ArrayLike, *, dtype: npt.DTypeLike = np.float64) -> ProfileSet:
        """Radial profiles of the three correlations (rings one pixel wide) and rho_cross(0).

        ``dtype`` is the precision of the FFTs: float32 is ~2x faster and its ~1e-6 error is
        far below any correlation's sampling error (the bootstrap's replicates use it).
        """
        found = {}
        zero = math.nan
        for key, sums in self._sums(x, y, tuple(self.PAIRS), dtype).items():
            lags = self._lags_of(key)
            first = sums.first.ravel()[lags.grid_index]
            if sums.second is None:
                second = sums.first.ravel()[lags.grid_index_neg]
            else:
                second = sums.second.ravel()[lags.grid_index]
            with np.errstate(invalid="ignore", divide="ignore"):
                value = sums.product.ravel()[lags.grid_index] / np.sqrt(first * second)
            mean = np.bincount(lags.ring, weights=value) / lags.ring_count
            found[key] = RadialProfile(lags.ring_radius, mean, lags.ring_count)
            if key == "cross" and lags.enough[0, 0] and sums.second is not None:
                zero = float(sums.product[0, 0] / math.sqrt(sums.first[0, 0] * sums.second[0, 0]))
        return ProfileSet(found["delta"], found["alpha"], found["cross"], zero)

    def tail_noise(self, key: str, corr_map: FloatArray, profile: RadialProfile) -> float:
        """Noise of one lag of a correlation with every pixel paired, read from the profile's tail.

        Beyond the first radius where the profile changes sign relative to profile(0) the
        correlation only fluctuates about zero. Each lag there fluctuates with a variance
        inversely proportional to its pairs, so rho(lag) sqrt(pairs(lag) / pairs(0)) is scaled
        to the noise of a fully paired lag, the one near zero shift; the noise level is its rms
        over the tail lags (up to the half box). NaN when the profile never changes sign, fewer
        than :data:`MIN_TAIL_RINGS` rings follow the change, or it does not change sign again (it
        sinks into a dip, as on a map a few lengths wide, instead of fluctuating about zero).

        Parameters
        ----------
        key
            ``delta``, ``alpha`` or ``cross``.
        corr_map
            That correlation's map from :meth:`maps`.
        profile
            Its radial profile from :meth:`profiles`.
        """
        value = profile.value
        if value.size == 0 or not abs(value[0]) > 0.0:
            return math.nan
        changed = np.flatnonzero(value * np.sign(value[0]) <= 0.0)
        if changed.size == 0 or value.size - changed[0] < MIN_TAIL_RINGS:
            return math.nan
        if not np.any(value[changed[0] :] * np.sign(value[0]) > 0.0):
            return math.nan  # no second sign change: a finite-size dip below zero, not noise about it
        lags = self._lags_of(key)
        tail = (self.radius_m >= profile.radius_m[changed[0]]) & (self.radius_m <= self.max_radius_m)
        tail &= lags.enough & np.isfinite(corr_map)
        scaled = corr_map[tail] * np.sqrt(lags.pairs[tail] / lags.pairs[0, 0])
        return float(np.sqrt(np.mean(scaled**2)))


def gaussian_fit_length(profile: RadialProfile, *, reference_m: float) -> float:
    """l of the least-squares fit A exp(-r^2 / l^2) + b to the rings 0 < r <= FIT_SPAN * reference_m (3 at least).

    The free offset b absorbs what removing the map's own mean does to a profile, and the free
    amplitude A what normalising by its own sigma and white noise do; both shift the 1/e
    crossing from one map to the next, so l scatters less than the crossing. For each l on a
    log grid (2 % steps over 0.3-3 reference lengths) A and b are linear least squares; the
    grid minimum is refined by a parabola in log l.

    Parameters
    ----------
    profile
        Radial profile (ring 0, the origin, is not fitted: it holds the white noise too).
    reference_m
        The profile's 1/e length, or the half box where it has none.

    Returns
    -------
    float
        l in metres; 0 when the best fit lies on the grid's short edge (shorter than the rings
        resolve), ``inf`` on its long edge (longer than the profile shows), NaN with fewer than
        3 rings.
    """
    r, v = profile.radius_m[1:], profile.value[1:]
    if r.size < 3 or not reference_m > 0.0:
        return math.nan
    n_rings = max(3, int(np.count_nonzero(r <= FIT_SPAN * reference_m)))
    r, v = r[:n_rings], v[:n_rings]
    u = math.log(reference_m) + np.arange(math.log(0.3), math.log(3.0), 0.02)
    g = np.exp(-((r[None, :] / np.exp(u)[:, None]) ** 2))
    n, s_v, s_vv = float(r.size), float(v.sum()), float(v @ v)
    s_g, s_gg, s_gv = g.sum(axis=1), np.einsum("ij,ij->i", g, g), g @ v
    det = n * s_gg - s_g**2
    with np.errstate(divide="ignore", invalid="ignore"):
        # residual of the 2-parameter linear fit [g, 1] at every l, from the normal equations
        rss = s_vv - (n * s_gv**2 - 2.0 * s_g * s_gv * s_v + s_gg * s_v**2) / det
    rss = np.where(det > 1e-12 * n * n, rss, np.inf)
    i = int(np.argmin(rss))
    if not np.isfinite(rss[i]):
        return math.nan
    if i in (0, u.size - 1):
        return 0.0 if i == 0 else math.inf
    curvature = rss[i - 1] - 2.0 * rss[i] + rss[i + 1]
    shift = 0.5 * (rss[i - 1] - rss[i + 1]) / curvature if np.isfinite(curvature) and curvature > 0 else 0.0
    return float(math.exp(u[i] + shift * 0.02))
