"""The thermally broadened Dynes conductance drawn over measured gap spectra.

G(V) = integral of N(E) (-df/dE)(E - eV) dE, N(E) = |Re[(E + i Gamma) / sqrt((E + i Gamma)^2 - Delta^2)]|
(Dynes-BCS, docs/physics.md), optionally convolved with the lock-in's first-harmonic kernel
sqrt(1 - (u/a)^2) on |u| < a, a = sqrt(2) V_rms. The kernels fit projected, normalised templates
and return peak positions, not a curve; this module draws the curve a figure shows:
:func:`dynes_conductance` from (Delta, Gamma) - a per-pixel Dynes fit - and
:func:`gap_for_peaks` for the Delta whose broadened peak sits at a measured peak position (the
run's template width). :func:`fit_background` scales the curve to the data.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve

from stslive.drivers.errors import AnalysisError
from stslive.live.theory import K_B_EV_PER_K

__all__ = ["dynes_conductance", "gap_for_peaks", "fit_background"]

#: Thermal window support, k_B T each side (-f' below 1e-12 of its peak beyond).
_THERMAL_REACH_KT = 30.0
#: Samples of the fine energy grid per smallest width (Gamma, k_B T, modulation amplitude).
_SAMPLES_PER_WIDTH = 6
#: Finest and coarsest energy step of the fine grid, eV (bounds the cost of a narrow Gamma).
_STEP_LIMITS_EV = (0.2e-6, 20e-6)
#: Newton-like steps of :func:`gap_for_peaks` (the peak offset barely depends on Delta: 3 suffice).
_PEAK_ITERATIONS = 4


def _thermal_kernel(step: float, kT: float) -> np.ndarray:
    u = np.arange(-round(_THERMAL_REACH_KT * kT / step), round(_THERMAL_REACH_KT * kT / step) + 1) * step
    w = 1.0 / (4.0 * kT * np.cosh(u / (2.0 * kT)) ** 2)
    return w / w.sum()


def _modulation_kernel(step: float, modulation_Vrms: float) -> np.ndarray:
    a = np.sqrt(2.0) * modulation_Vrms
    u = np.arange(-int(a / step), int(a / step) + 1) * step
    w = np.sqrt(np.clip(1.0 - (u / a) ** 2, 0.0, None))
    return w / w.sum()


def dynes_conductance(
    bias_V: np.ndarray,
    *,
    delta_eV: float,
    gamma_eV: float,
    temperature_K: float,
    modulation_Vrms: float = 0.0,
) -> np.ndarray:
    """Normalised conductance G(V)/G_N of a Dynes-BCS density of states (module docstring), at ``bias_V``.

    Parameters
    ----------
    bias_V : ndarray
        Biases, V (any order).
    delta_eV, gamma_eV : float
        Gap and Dynes broadening, eV (> 0).
    temperature_K : float
        Sample temperature, K (> 0): the thermal window.
    modulation_Vrms : float
        Lock-in modulation, V rms (0: the conductance itself, e.g. the derivative of I(V)).

    Returns
    -------
    ndarray
        G / G_N at each bias (1 far from the gap).
    """
    if not (delta_eV > 0 and gamma_eV > 0 and temperature_K > 0 and modulation_Vrms >= 0):
        raise AnalysisError(
            f"Dynes curve needs delta_eV > 0, gamma_eV > 0, temperature_K > 0, modulation_Vrms >= 0 "
            f"(got {delta_eV}, {gamma_eV}, {temperature_K}, {modulation_Vrms})"
        )
    bias = np.asarray(bias_V, dtype=np.float64)
    kT = K_B_EV_PER_K * temperature_K
    widths = [gamma_eV, kT] + ([np.sqrt(2.0) * modulation_Vrms] if modulation_Vrms > 0 else [])
    step = float(np.clip(min(widths) / _SAMPLES_PER_WIDTH, *_STEP_LIMITS_EV))
    kernels = [_thermal_kernel(step, kT)] + ([_modulation_kernel(step, modulation_Vrms)] if modulation_Vrms else [])
    reach = sum(k.size // 2 for k in kernels) + 2
    lo = np.floor(bias.min() / step) - reach
    hi = np.ceil(bias.max() / step) + reach
    energy = np.arange(lo, hi + 1) * step
    z = energy + 1j * gamma_eV
    g = np.abs(np.real(z / np.sqrt(z * z - delta_eV**2)))
    for kernel in kernels:
        g = fftconvolve(g, kernel, mode="same")  # exact away from the ends, which the reach keeps out
    return np.interp(bias, energy, g)


def _peak_position(delta_eV: float, **broadening: float) -> float:
    """Bias of the positive maximum of :func:`dynes_conductance` (parabola through the top 3 samples)."""
    span = delta_eV + 10 * (broadening["gamma_eV"] + K_B_EV_PER_K * broadening["temperature_K"])
    v = np.linspace(0.5 * delta_eV, span + 3 * broadening.get("modulation_Vrms", 0.0), 2001)
    g = dynes_conductance(v, delta_eV=delta_eV, **broadening)
    i = int(np.clip(np.argmax(g), 1, v.size - 2))
    denom = g[i - 1] - 2 * g[i] + g[i + 1]
    shift = 0.5 * (g[i - 1] - g[i + 1]) / denom if denom < 0 else 0.0
    return float(v[i] + shift * (v[1] - v[0]))


def gap_for_peaks(peak_eV: float, *, gamma_eV: float, temperature_K: float, modulation_Vrms: float = 0.0) -> float:
    """The Dynes Delta (eV) whose broadened conductance peaks at ``peak_eV`` (half the peak-to-peak bias)."""
    if not peak_eV > 0:
        raise AnalysisError(f"peak position must be > 0 eV, got {peak_eV}")
    broadening = {"gamma_eV": gamma_eV, "temperature_K": temperature_K, "modulation_Vrms": modulation_Vrms}
    delta = peak_eV
    for _ in range(_PEAK_ITERATIONS):
        delta = max(delta + peak_eV - _peak_position(delta, **broadening), 0.05 * peak_eV)
    return delta


def fit_background(bias_V: np.ndarray, data: np.ndarray, model: np.ndarray) -> np.ndarray:
    """``model`` times the slowly varying background that best matches ``data`` (linear least squares).

    The background is c0 + c1 V + c2 |V| + c3 V^2: near the gap the normal-state conductance of
    a disordered film still varies (the Altshuler-Aronov dip, a slight asymmetry), so a constant
    scale would misdraw the shoulders. NaN samples are left out; the fit is over all of ``bias_V``.
    """
    v = np.asarray(bias_V, dtype=np.float64)
    scale = float(np.max(np.abs(v))) or 1.0
    t = v / scale
    basis = np.stack([np.ones_like(t), t, np.abs(t), t * t], axis=-1) * np.asarray(model)[:, None]
    ok = np.isfinite(data) & np.isfinite(basis).all(axis=1)
    if ok.sum() < basis.shape[1]:
        return np.full(v.shape, np.nan)
    coef, *_ = np.linalg.lstsq(basis[ok], np.asarray(data, dtype=np.float64)[ok], rcond=None)
    return basis @ coef
