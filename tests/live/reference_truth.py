"""The paper's two definitions on a film's noise-free conductance, computed independently of stslive.

The accuracy tests judge the kernels against these numbers, so nothing here calls the kernels or
the film's own spectra and truth code (``stslive.mocks.film_spectra``, ``film_truth``): only the
film's model maps and parameters (Delta(r), alpha(r), Gamma, T, E_sat, the asymmetry slope) are
read, and the forward model is written again from its formula (docs/physics.md, section 6):

    N(E) = Re[(E + i Gamma) / sqrt((E + i Gamma)^2 - Delta^2)] ((E^2 + E_sat^2) / E_sat^2)^(alpha/2) (1 + s E)
    G(V) = integral N(E) (-f'(E - V)) dE        (the sample temperature only: no lock-in modulation)

* Delta: half the distance between the maxima of G on either side of zero bias, G sampled on a
  2 uV grid (complex arithmetic, ``scipy.signal.fftconvolve`` with the sampled thermal window) and
  each maximum refined by a cubic spline through the 2 uV samples (``scipy.interpolate``).
* alpha: the least-squares slope of ln G against ln|V| at the sweep's own points with
  5 mV <= |V| <= 30 mV, per polarity (``scipy.linalg.lstsq``), averaged; NaN when the sweep
  does not reach the window on a polarity.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import constants
from scipy.interpolate import CubicSpline
from scipy.linalg import lstsq
from scipy.signal import fftconvolve

K_B_EV = constants.k / constants.e
FINE_STEP_EV = 2e-6
#: The thermal window -f' is kept out to this many k_B T (its weight beyond is < 1e-13).
THERMAL_REACH_KT = 30.0
ALPHA_WINDOW_V = (5e-3, 30e-3)


class ReferenceTruth(NamedTuple):
    """Per-pixel truth: peak-to-peak gap (eV) and the 5-30 mV alpha (NaN where not defined)."""

    delta_eV: np.ndarray
    alpha: np.ndarray


def dynes_dos(energy: np.ndarray, gap: np.ndarray, gamma: float) -> np.ndarray:
    """Re[(E + i Gamma) / sqrt((E + i Gamma)^2 - Delta^2)] on the branch with N -> 1 at large |E|.

    sqrt(z - Delta) sqrt(z + Delta) with principal roots is analytic for Im z > 0 and tends to z,
    so the ratio is the retarded BCS function at both polarities.
    """
    z = energy + 1j * gamma
    return np.real(z / (np.sqrt(z - gap) * np.sqrt(z + gap)))


def film_dos(energy: np.ndarray, gap: np.ndarray, alpha: np.ndarray, params) -> np.ndarray:
    """The film's N(E) (rows: pixels) from its formula; ``gap`` and ``alpha`` shaped (P, 1)."""
    sat2 = params.aa_saturation_eV**2
    background = ((energy**2 + sat2) / sat2) ** (alpha / 2)
    return dynes_dos(energy, gap, params.dynes_gamma_eV) * background * (1 + params.dos_slope_per_eV * energy)


def thermal_conductance(
    lo_eV: np.ndarray, points: int, gap: np.ndarray, alpha: np.ndarray, params, *, step: float = FINE_STEP_EV
) -> np.ndarray:
    """G (P, points) on the grids ``lo_eV[p] + step * k``, k < ``points``, one grid per pixel p."""
    kt = K_B_EV * params.temperature_K
    reach = int(np.ceil(THERMAL_REACH_KT * kt / step))
    u = step * np.arange(-reach, reach + 1)
    window = step / (4 * kt * np.cosh(u / (2 * kt)) ** 2)
    window /= window.sum()
    dos_energy = lo_eV[:, None] + step * np.arange(-reach, points + reach)
    dos = film_dos(dos_energy, gap[:, None], alpha[:, None], params)
    return fftconvolve(dos, window[None, :], mode="valid", axes=-1)


def _peak(lo_eV: np.ndarray, step: float, g: np.ndarray) -> np.ndarray:
    """Position of each row's maximum (row grids ``lo_eV + step k``), refined on a cubic spline.

    The spline through the 7 samples around the largest is evaluated every step / 200 within a
    step of it, and its largest value taken.
    """
    j = np.argmax(g, axis=-1)
    if np.any((j < 3) | (j > g.shape[-1] - 4)):
        raise ValueError("a coherence peak sits at the edge of the reference grid; widen the search")
    around = g[np.arange(g.shape[0])[:, None], j[:, None] + np.arange(-3, 4)]
    fine = np.linspace(-1.0, 1.0, 401)
    values = CubicSpline(np.arange(-3.0, 4.0), around, axis=1)(fine)
    return lo_eV + step * (j + fine[np.argmax(values, axis=1)])


def reference_truth(film, bias_V: np.ndarray | None = None, *, chunk: int = 256) -> ReferenceTruth:
    """The truth of every pixel of ``film`` (an ``stslive.mocks.film.Film``) for the sweep ``bias_V``.

    ``bias_V`` defaults to the film's own sweep; only alpha depends on it (its points in the window).
    Each coherence peak is searched from 0.85 Delta(r) to 1.1 Delta(r) + 5 Gamma + 5 k_B T of the
    pixel's model gap (the thermal and Dynes broadening push the maximum outward).
    """
    p = film.params
    bias = np.sort(np.asarray(film.bias_V if bias_V is None else bias_V, dtype=np.float64))
    gaps = film.delta_eV.ravel()
    alphas = film.alpha.ravel()
    delta = np.empty(gaps.size)
    alpha = np.full(gaps.size, np.nan)
    kt = K_B_EV * p.temperature_K
    span = 0.25 * gaps.max() + 5 * p.dynes_gamma_eV + 5 * kt
    points = int(np.ceil(span / FINE_STEP_EV)) + 1
    sides = []
    for sign in (1.0, -1.0):
        v = sign * bias
        sel = (v >= ALPHA_WINDOW_V[0]) & (v <= ALPHA_WINDOW_V[1])
        covered = sel.sum() >= 3 and v.max() >= ALPHA_WINDOW_V[1] - 1e-9
        sides.append(bias[sel] if covered else None)
    # alpha's window holds no feature narrower than a mV, and the thermal window's poles lie pi k_B T
    # off the real axis: the trapezoid rule on a k_B T grid errs by ~exp(-2 pi^2) ~ 3e-9
    coarse = min(kt, 25e-6)
    for start in range(0, gaps.size, chunk):
        part = slice(start, start + chunk)
        g_rows, a_rows = gaps[part], alphas[part]
        lo_pos = 0.85 * g_rows
        hi_neg = -(lo_pos + span)
        positive = _peak(lo_pos, FINE_STEP_EV, thermal_conductance(lo_pos, points, g_rows, a_rows, p))
        negative = _peak(hi_neg, FINE_STEP_EV, thermal_conductance(hi_neg, points, g_rows, a_rows, p))
        delta[part] = 0.5 * (positive - negative)
        if any(s is None for s in sides):
            continue
        slopes = []
        for v in sides:
            lo = np.full(g_rows.size, v.min() - coarse)
            n = int(np.ceil((v.max() - v.min()) / coarse)) + 3
            g = thermal_conductance(lo, n, g_rows, a_rows, p, step=coarse)
            grid = lo[0] + coarse * np.arange(n)
            y = np.log(np.array([np.interp(v, grid, row) for row in g]))
            design = np.stack([np.ones(v.size), np.log(np.abs(v))], axis=1)
            slopes.append(lstsq(design, y.T)[0][1])
        alpha[part] = 0.5 * (np.asarray(slopes[0]) + np.asarray(slopes[1]))
    return ReferenceTruth(delta.reshape(film.shape), alpha.reshape(film.shape))
