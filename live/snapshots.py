"""The correlation snapshot of a results model: paper Appendix A correlations and what Eqs. (2), (3) imply.

:func:`correlation_snapshot` reads the valid part of a :class:`~stslive.live.results.ResultsModel`
(mid-run too: unmeasured pixels are gaps the estimator skips) and returns a
:class:`~stslive.live.results.CorrelationSnapshot`: radial profiles, the 2D Delta-alpha
cross-correlation, 1/e lengths, rho_cross(0), the film's corrected figures with their 90 %
intervals and the warnings of :func:`~stslive.live.correlations.correlation_report`, sigma_rho
(Eq. (2) inverted) and the gap spread Eq. (3) predicts from it. The live analyser and
``stslive analyse`` both use it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.correlation_estimator import RadialProfile
from stslive.live.correlations import correlation_analysis
from stslive.live.results import CorrelationSnapshot, ResultsModel
from stslive.live.theory import TheoryConstants, predicted_gap_spread, sheet_resistance_sigma

__all__ = ["correlation_snapshot"]


def correlation_snapshot(
    model: ResultsModel,
    *,
    pixel_size_m: float | tuple[float, float] | None = None,
    constants: TheoryConstants | None = None,
    min_pair_fraction: float = 0.05,
    intervals: bool = True,
) -> CorrelationSnapshot:
    """Appendix A correlations of the valid part of ``model``'s maps and what Eqs. (2), (3) imply.

    Parameters
    ----------
    model : ResultsModel
        Maps so far; pixels not valid are left out (NaN), so it works mid-run.
    pixel_size_m : float or (dy, dx), optional
        Pixel size, m (default: ``model.pixel_nm``).
    constants : TheoryConstants, optional
        Eq. (2)/(3) constants (default: the paper's).
    min_pair_fraction : float
        See :func:`~stslive.live.correlations.correlation_map`.
    intervals : bool
        Compute the corrected figures and their 90 % intervals (seconds on a 300 x 250 map).

    Returns
    -------
    CorrelationSnapshot
        Radial profiles, the fftshifted 2D Delta-alpha cross-correlation, 1/e lengths,
        rho_cross(0), corrected figures and intervals, warnings, sigma_rho (Eq. 2 from alpha's
        std and l_alpha) and the predicted relative gap spread (Eq. 3 at the measured mean gap).

    Raises
    ------
    AnalysisError
        Fewer than 3 valid pixels, or no pixel size.
    """
    consts = constants or TheoryConstants()
    size = (model.pixel_nm * 1e-9) if pixel_size_m is None else pixel_size_m
    if not np.all(np.isfinite(np.asarray(size, dtype=np.float64))):
        raise AnalysisError("correlations need the pixel size; pass pixel_size_m (metres)")
    with model.lock:
        valid = model.maps["valid"].copy()
        delta = np.where(valid, model.maps["delta_eV"], np.nan)
        alpha = np.where(valid, model.maps["alpha"], np.nan)
    n_valid = int(valid.sum())
    if n_valid < 3:
        raise AnalysisError(f"only {n_valid} valid pixel(s): correlations need at least 3")
    found = correlation_analysis(
        delta, alpha, pixel_size_m=size, min_pair_fraction=min_pair_fraction, intervals=intervals
    )
    report = found.report
    lengths = {key: _finite(report[f"l_{key}_nm"]) for key in ("delta", "alpha", "cross")}
    alpha_std = float(np.nanstd(alpha))
    sigma_rho = sheet_resistance_sigma(alpha_std, lengths["alpha"] * 1e-9, constants=consts)
    predicted = predicted_gap_spread(sigma_rho, float(np.nanmean(delta)), constants=consts)
    profiles = found.profiles
    r = profiles.delta.radius_m
    return CorrelationSnapshot(
        r_nm=r * 1e9,
        rho_delta=profiles.delta.value,
        rho_alpha=_on_radii(profiles.alpha, r),
        rho_cross=_on_radii(profiles.cross, r),
        cross_map=np.fft.fftshift(found.cross_map),
        pixel_nm=float(np.mean(np.asarray(size, dtype=np.float64)) * 1e9),
        l_delta_nm=lengths["delta"],
        l_alpha_nm=lengths["alpha"],
        l_cross_nm=lengths["cross"],
        rho_cross_0=profiles.rho_cross_0,
        sigma_rho_ohm=sigma_rho,
        predicted_delta_rel_sigma=predicted,
        n_pixels=n_valid,
        time=time.time(),
        warnings=tuple(report["warnings"]),
        l_delta_nm_corrected=_finite(report["l_delta_nm_corrected"]),
        l_alpha_nm_corrected=_finite(report["l_alpha_nm_corrected"]),
        l_cross_nm_corrected=_finite(report["l_cross_nm_corrected"]),
        rho_cross_0_corrected=_finite(report["rho_cross_0_corrected"]),
        l_delta_nm_ci90=_interval(report["l_delta_nm_ci90"]),
        l_alpha_nm_ci90=_interval(report["l_alpha_nm_ci90"]),
        l_cross_nm_ci90=_interval(report["l_cross_nm_ci90"]),
        rho_cross_0_ci90=_interval(report["rho_cross_0_ci90"]),
    )


def _finite(value: Any) -> float:
    """A report value as a float, NaN for None."""
    return math.nan if value is None else float(value)


def _interval(value: Any) -> tuple[float, float]:
    """A report interval [low, high] (or None) as a (low, high) float pair."""
    return (math.nan, math.nan) if value is None else (float(value[0]), float(value[1]))


def _on_radii(profile: RadialProfile, radius_m: np.ndarray) -> np.ndarray:
    """A profile resampled on the radii of another (rings with no pair are dropped per profile)."""
    r, v = profile.radius_m, profile.value
    if r.shape == radius_m.shape and np.allclose(r, radius_m):
        return v
    return np.interp(radius_m, r, v, left=np.nan, right=np.nan)
