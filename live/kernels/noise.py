"""The noise of each spectrum, measured on the spectrum itself, and the smoothing it calls for.

A sample's noise is read from second differences x[i-1] - 2 x[i] + x[i+1] of disjoint triples
(variance 6 sigma^2 for white noise; the signal adds G' h^2, far below the noise where the
conductance is smooth). The triples are taken beyond the gap search range, where no coherence
peak lives, or over the whole sweep when nothing lies beyond it. The smoothing widths of a map
follow from that noise and the conductance (:func:`choose_smoothing`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from stslive.live.kernels.scales import COARSE_MAX_WIDTH_V, odd_points

__all__ = [
    "ALPHA_RELATIVE_NOISE",
    "MAX_SMOOTHING_WIDTH_V",
    "MIN_SMOOTHING_WIDTH_V",
    "box_noise_gain",
    "choose_smoothing",
    "coarse_points",
    "measure_noise",
    "noise_triples",
]

#: Most triples read per spectrum (a 9 % standard error of sigma).
MAX_TRIPLES = 128
#: Fewest triples beyond the search range before the whole sweep is used instead.
MIN_TRIPLES = 32

#: The alpha fit's dI/dV is smoothed until its relative noise at the fit window's start is at
#: most this: ln(dI/dV) is then biased by < sigma^2 / 2 = 2e-4 (and that is corrected).
ALPHA_RELATIVE_NOISE = 0.02
#: The box derivative of I(V) for alpha spans at least this (the reference 11 samples at 50 uV)...
MIN_SMOOTHING_WIDTH_V = 0.5e-3
#: ... and at most this: wider, its bias near the window start (the BCS tail, the AA saturation)
#: grows beyond what its noise gain is worth.
MAX_SMOOTHING_WIDTH_V = 2.5e-3


@lru_cache(maxsize=32)
def noise_triples(bias_key: bytes, search_end_V: float) -> tuple[tuple[int, int, int], ...]:
    """(start, stop, stride) column ranges of the triples' first samples on the ascending grid ``bias_key``."""
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    beyond = np.abs(bias) > search_end_V
    runs: list[tuple[int, int]] = []
    for side in (np.flatnonzero(beyond & (bias < 0)), np.flatnonzero(beyond & (bias > 0))):
        if side.size >= 3:
            runs.append((int(side[0]), int(side[-1]) + 1))
    if sum((b - a) // 3 for a, b in runs) < MIN_TRIPLES:
        runs = [(0, n)]
    total = sum((b - a) // 3 for a, b in runs)
    stride = 3 * max(1, -(-total // MAX_TRIPLES))
    return tuple((a, b - 2, stride) for a, b in runs if b - a >= 3)


def measure_noise(rows: np.ndarray, triples: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """rms noise per sample of each row (..., N), in the rows' unit, float64 shaped (...) (NaN: a row not finite).

    ``triples`` from :func:`noise_triples` of the rows' (ascending) grid.
    """
    lead = rows.shape[:-1]
    rows = rows.reshape(-1, rows.shape[-1])
    total = np.zeros(rows.shape[0])
    count = 0
    for start, stop, stride in triples:
        a = rows[:, start:stop:stride]
        b = rows[:, start + 1 : stop + 1 : stride]
        c = rows[:, start + 2 : stop + 2 : stride]
        m = min(a.shape[1], b.shape[1], c.shape[1])
        d2 = a[:, :m] - 2 * b[:, :m] + c[:, :m]
        total += np.einsum("ij,ij->i", d2, d2, dtype=np.float64)
        count += m
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt(total / (6 * count)) if count else np.full(rows.shape[0], np.nan)
    return sigma.reshape(lead)


def box_noise_gain(points: int, step_V: float) -> float:
    """rms of the box derivative per unit rms of white current noise, 1/V.

    D = (U_{i+s} - U_{i-s}) / (2 s h) with U a mean of ``points`` samples, s = (points + 1) / 2:
    two independent means, so sqrt(2 / points) / (2 s h).
    """
    s = (points + 1) // 2
    return float(np.sqrt(2.0 / points) / (2 * s * step_V))


def choose_smoothing(
    *, step_V: float, current_noise: float, conductance: float, lockin_noise: float, lockin_level: float
) -> tuple[int, int]:
    """(box-derivative points for I(V), running-mean points for a lock-in) of a map.

    The narrowest odd widths whose relative noise at the alpha window's start is at most
    :data:`ALPHA_RELATIVE_NOISE`: ``current_noise`` (A) over the box gain against
    ``conductance`` (S), ``lockin_noise`` / sqrt(points) against ``lockin_level`` (both in the
    lock-in's unit). The derivative spans :data:`MIN_SMOOTHING_WIDTH_V` to
    :data:`MAX_SMOOTHING_WIDTH_V`; the lock-in at most the latter. A non-finite input (no
    current, no lock-in, or no noise measured) gives the narrowest width.
    """
    low = odd_points(MIN_SMOOTHING_WIDTH_V / step_V, minimum=3)
    high = max(low, odd_points(MAX_SMOOTHING_WIDTH_V / step_V, minimum=3))
    p_current = low
    if np.isfinite(current_noise) and np.isfinite(conductance) and conductance > 0:
        while (
            p_current < high and current_noise * box_noise_gain(p_current, step_V) > ALPHA_RELATIVE_NOISE * conductance
        ):
            p_current += 2
    high_l = odd_points(MAX_SMOOTHING_WIDTH_V / step_V, minimum=1)
    p_lockin = 1
    if np.isfinite(lockin_noise) and np.isfinite(lockin_level) and lockin_level > 0:
        need = (lockin_noise / (ALPHA_RELATIVE_NOISE * lockin_level)) ** 2
        p_lockin = min(high_l, odd_points(np.ceil(need), minimum=1))
    return p_current, p_lockin


def coarse_points(points: int, step_V: float, *, minimum: int) -> int:
    """The coarse peak search's smoothing: ``points`` capped at :data:`COARSE_MAX_WIDTH_V`."""
    return max(minimum, min(points, odd_points(COARSE_MAX_WIDTH_V / step_V, minimum=minimum)))
