"""Bias-corrected correlation figures and 90 % intervals for the film's true values (parametric bootstrap).

:func:`figure_intervals` compares a map's statistics (:func:`fit_figures`) with those of a
Gaussian random-field model (:class:`~stslive.live.correlation_model.FieldModel`) simulated on the
map's own frame and mask and analysed by the same estimator. A length's interval is the set of
model length scales whose simulated 5-95 % band holds the map's statistic (test inversion over a
ladder of scales e^u, common random numbers), its corrected value the scale whose simulated
median equals it; rho_cross(0) takes the basic bootstrap at the map's own scale. A bound beyond
the ladder is 0 or ``inf``; a length the map does not show gets NaN. Why and how: docs/physics.md
section 4.1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import AnalysisError
from stslive.live.correlation_estimator import (
    FIT_SPAN,
    MaskedCorrelator,
    ProfileSet,
    RadialProfile,
    gaussian_fit_length,
    length_1e,
)
from stslive.live.correlation_model import MAX_NUGGET, FieldModel, FieldSimulator

__all__ = ["FIGURES", "FigureIntervals", "figure_intervals", "fit_figures"]

FloatArray = npt.NDArray[np.float64]

#: The figures with intervals, in the order of every figure array here (lengths in metres).
FIGURES = ("l_delta", "l_alpha", "l_cross", "rho_cross_0")


class FigureIntervals(NamedTuple):
    """Corrected figures and their intervals, arrays in :data:`FIGURES` order (lengths in metres).

    Attributes
    ----------
    corrected
        Median-unbiased estimates of the process's figures (NaN where the map has none).
    low, high
        Interval bounds; ``high`` is ``inf`` where the map cannot exclude longer lengths.
    model
        The model at scale 0 (started at the map's figures) the ladder scales.
    replicates
        Number of simulated maps behind the quantiles.
    """

    corrected: FloatArray
    low: FloatArray
    high: FloatArray
    model: FieldModel
    replicates: int


def fit_figures(profiles: ProfileSet) -> FloatArray:
    """The statistics the intervals are built on: Gaussian-fit lengths (m) and rho_cross(0).

    Each length is :func:`~stslive.live.correlation_estimator.gaussian_fit_length` over rings out to
    FIT_SPAN times the profile's 1/e length (the whole profile where it has none); NaN where
    the fit finds no minimum.
    """
    out = []
    for profile, absolute in ((profiles.delta, False), (profiles.alpha, False), (profiles.cross, True)):
        reference = length_1e(profile, absolute=absolute)
        if not math.isfinite(reference) and profile.radius_m.size:
            reference = float(profile.radius_m[-1]) / FIT_SPAN
        out.append(gaussian_fit_length(profile, reference_m=reference))
    out.append(profiles.rho_cross_0)
    return np.array(out)


def _nugget(profile: RadialProfile, length_m: float) -> float:
    """Noise fraction of a map: 1 - the Gaussian fit of ln rho(r) on 0 < r <= l, extrapolated to r = 0.

    Needs two rings inside the length with positive values; else 0 (nothing to extrapolate from).
    """
    r, v = profile.radius_m[1:], profile.value[1:]
    use = (r <= length_m) & (v > 0)
    if not math.isfinite(length_m) or np.count_nonzero(use) < 2:
        return 0.0
    intercept = np.polyfit(r[use] ** 2, np.log(v[use]), 1)[1]
    return float(np.clip(1.0 - math.exp(intercept), 0.0, MAX_NUGGET))


def _simulate(correlator: MaskedCorrelator, model: FieldModel, seeds: range, seed: int) -> FloatArray:
    """Figures of maps simulated from ``model`` on the correlator's frame and masks, (n, 4)."""
    simulator = FieldSimulator(model, correlator.shape, pixel_size_m=correlator.pixel_m)
    out = np.empty((len(seeds), len(FIGURES)))
    for row, i in enumerate(seeds):
        x, y = simulator.sample(np.random.default_rng([seed, i]))
        out[row] = fit_figures(correlator.profiles(x, y, dtype=np.float32))
    out[:, :3] = np.where(np.isnan(out[:, :3]), np.inf, out[:, :3])  # no fit: counted as unmeasurably long
    return out


def _scaled(model: FieldModel, u: float) -> FieldModel:
    """The model with every length multiplied by e^u (rho_0's ceiling is scale-free, so it stays valid)."""
    f = math.exp(u)
    return FieldModel(model.l_x_m * f, model.l_y_m * f, model.l_xy_m * f, model.rho_0, model.nugget_x, model.nugget_y)


def _hull(u: FloatArray, q_low: FloatArray, q_high: FloatArray, seen: float) -> tuple[float, float]:
    """Hull of the scales u whose [q_low, q_high] holds ``seen`` (curves piecewise linear between grid points)."""
    dense = np.linspace(u[0], u[-1], 64 * len(u))
    lo, hi = np.interp(dense, u, q_low), np.interp(dense, u, q_high)
    ok = np.flatnonzero((lo <= seen) & (seen <= hi))
    if ok.size == 0:
        return math.nan, math.nan
    return float(dense[ok[0]]), float(dense[ok[-1]])


def figure_intervals(
    correlator: MaskedCorrelator,
    profiles: ProfileSet,
    *,
    level: float = 0.90,
    replicates: int = 60,
    max_runs: int = 8,
    seed: int = 0,
) -> FigureIntervals:
    """Intervals for the process's figures of a map pair (module docstring).

    Parameters
    ----------
    correlator
        The estimator built on the map pair's masks.
    profiles
        The map pair's profiles from that estimator.
    level
        Coverage of the intervals (0.9: a 90 % interval).
    replicates
        Simulated maps per length scale.
    max_runs
        Most length scales simulated.
    seed
        Seed of the simulations (the same seed gives the same intervals).

    Returns
    -------
    FigureIntervals
        NaN where the map itself has no figure (a length never reached in the half box).
    """
    if not 0.0 < level < 1.0:
        raise AnalysisError(f"level must lie in (0, 1); got {level}.")
    if replicates < 20 or max_runs < 1:
        raise AnalysisError(f"need replicates >= 20 and max_runs >= 1; got {replicates} and {max_runs}.")
    observed = fit_figures(profiles)
    pixel = min(correlator.pixel_m)
    box = min(correlator.shape[0] * correlator.pixel_m[0], correlator.shape[1] * correlator.pixel_m[1]) / 2.0
    start = np.where((observed[:3] > 0) & np.isfinite(observed[:3]), observed[:3], box)
    model = FieldModel(
        float(start[0]),
        float(start[1]),
        float(start[2]),
        float(np.clip(observed[3], -1.0, 1.0)),
        _nugget(profiles.delta, length_1e(profiles.delta, absolute=False)),
        _nugget(profiles.alpha, length_1e(profiles.alpha, absolute=False)),
    ).valid()
    seeds = range(replicates)  # the same seeds at every scale: common random numbers
    runs = {0.0: _simulate(correlator, model, seeds, seed)}
    tail = (1.0 - level) / 2.0
    # finite stand-ins for lengths too short (0) or too long (inf) to measure, so quantiles order them
    bounds = (math.log(1e-6 * box), math.log(1e6 * box))
    with np.errstate(divide="ignore"):
        seen = np.clip(np.log(observed[:3]), *bounds)  # NaN stays NaN: no figure, no interval
    lengths = model.figures()[:3]
    u_min, u_max = math.log(0.5 * pixel / lengths.min()), math.log(4.0 * box / lengths.max())

    def bands() -> tuple[FloatArray, FloatArray]:
        """Scales simulated, and the (tail, median, 1 - tail) quantiles of log length, (3, scales, 3)."""
        scales = np.array(sorted(runs))
        with np.errstate(divide="ignore"):
            logs = np.clip(np.log(np.stack([runs[k][:, :3] for k in scales])), *bounds)
        return scales, np.quantile(logs, [tail, 0.5, 1.0 - tail], axis=1)

    scales, q = bands()
    spread = (q[2, 0] - q[0, 0])[np.isfinite(seen)] / 2.0
    step = 1.5 * float(np.clip(np.median(spread) if spread.size else 0.2, 0.05, 0.7))
    for _ in range(max_runs - 1):
        added = False
        if np.any(q[2, 0] >= seen) and scales[0] - step >= u_min:  # the smallest scale still holds a map
            runs[scales[0] - step] = _simulate(correlator, _scaled(model, scales[0] - step), seeds, seed)
            added = True
        if np.any(q[0, -1] <= seen) and scales[-1] + step <= u_max:  # the largest too
            runs[scales[-1] + step] = _simulate(correlator, _scaled(model, scales[-1] + step), seeds, seed)
            added = True
        if not added:
            break
        scales, q = bands()
    corrected, low, high = np.full(4, np.nan), np.full(4, np.nan), np.full(4, np.nan)
    for j in np.flatnonzero(np.isfinite(seen)):
        u_lo, u_hi = _hull(scales, q[0, :, j], q[2, :, j], float(seen[j]))
        if math.isnan(u_lo):
            continue  # no simulated scale mimics the map: no interval rather than a wrong one
        open_low, open_high = q[2, 0, j] >= seen[j], q[0, -1, j] <= seen[j]
        low[j] = 0.0 if open_low and u_lo == scales[0] else lengths[j] * math.exp(u_lo)
        high[j] = math.inf if open_high and u_hi == scales[-1] else lengths[j] * math.exp(u_hi)
        median = np.maximum.accumulate(q[1, :, j])
        corrected[j] = lengths[j] * math.exp(float(np.interp(seen[j], median, scales)))
    q_rho = np.quantile(runs[0.0][:, 3] - model.rho_0, [tail, 0.5, 1.0 - tail])
    corrected[3], low[3], high[3] = np.clip(observed[3] - q_rho[[1, 2, 0]], -1.0, 1.0)
    return FigureIntervals(corrected, low, high, model, replicates * len(runs))
