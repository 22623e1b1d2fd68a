"""The correlation snapshot of a results model: paper Appendix A correlations and what Eqs. (2), (3) imply.

:func:`correlation_snapshot` reads the valid part of a :class:`~stslive.live.results.ResultsModel`
(mid-run too) and returns a :class:`~stslive.live.results.CorrelationSnapshot`: radial profiles,
the 2D Delta-alpha cross-correlation, 1/e lengths, rho_cross(0), sigma_rho (Eq. (2) inverted)
and the gap spread Eq. (3) predicts from it. The live analyser and ``stslive analyse`` both use it.
"""

from __future__ import annotations

import math
import time

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.correlations import RadialProfile, correlation_length_1e, correlation_map, radial_profile
from stslive.live.results import CorrelationSnapshot, ResultsModel
from stslive.live.theory import TheoryConstants, predicted_gap_spread, sheet_resistance_sigma

__all__ = ["correlation_snapshot"]


def correlation_snapshot(
    model: ResultsModel,
    *,
    pixel_size_m: float | tuple[float, float] | None = None,
    constants: TheoryConstants | None = None,
    min_pair_fraction: float = 0.05,
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

    Returns
    -------
    CorrelationSnapshot
        Radial profiles, the fftshifted 2D Delta-alpha cross-correlation, 1/e lengths,
        rho_cross(0), sigma_rho (Eq. 2 from alpha's std and l_alpha) and the predicted relative
        gap spread (Eq. 3 at the measured mean gap).

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
    corr = {
        "delta": correlation_map(delta, min_pair_fraction=min_pair_fraction),
        "alpha": correlation_map(alpha, min_pair_fraction=min_pair_fraction),
        "cross": correlation_map(delta, alpha, min_pair_fraction=min_pair_fraction),
    }
    profiles = {k: radial_profile(v, pixel_size_m=size) for k, v in corr.items()}
    lengths = {k: _length_nm(p, absolute=k == "cross") for k, p in profiles.items()}
    alpha_std = float(np.nanstd(alpha))
    sigma_rho = sheet_resistance_sigma(alpha_std, lengths["alpha"] * 1e-9, constants=consts)
    predicted = predicted_gap_spread(sigma_rho, float(np.nanmean(delta)), constants=consts)
    r = profiles["delta"].radius_m
    return CorrelationSnapshot(
        r_nm=r * 1e9,
        rho_delta=profiles["delta"].value,
        rho_alpha=_on_radii(profiles["alpha"], r),
        rho_cross=_on_radii(profiles["cross"], r),
        cross_map=np.fft.fftshift(corr["cross"]),
        pixel_nm=float(np.mean(np.asarray(size, dtype=np.float64)) * 1e9),
        l_delta_nm=lengths["delta"],
        l_alpha_nm=lengths["alpha"],
        l_cross_nm=lengths["cross"],
        rho_cross_0=float(corr["cross"][0, 0]),
        sigma_rho_ohm=sigma_rho,
        predicted_delta_rel_sigma=predicted,
        n_pixels=n_valid,
        time=time.time(),
    )


def _length_nm(profile: RadialProfile, *, absolute: bool) -> float:
    """1/e length in nm, NaN when the profile is unusable (e.g. a constant map)."""
    if profile.value.size == 0 or not abs(profile.value[0]) > 0:
        return math.nan
    return correlation_length_1e(profile, absolute=absolute) * 1e9


def _on_radii(profile: RadialProfile, radius_m: np.ndarray) -> np.ndarray:
    """A profile resampled on the radii of another (rings with no pair are dropped per profile)."""
    r, v = profile.radius_m, profile.value
    if r.shape == radius_m.shape and np.allclose(r, radius_m):
        return v
    return np.interp(radius_m, r, v, left=np.nan, right=np.nan)
