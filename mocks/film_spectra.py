"""Tunnelling spectra of the simulated film: DOS, thermal and lock-in kernels, I(V) and X(V).

Pure functions over arrays, vectorised over pixels (leading axis) and energies (last axis); with
e = 1, energies in eV and biases in V are the same numbers. The chain (docs/physics.md, "The
simulated film"): the Dynes-BCS DOS times a saturating AA background and a slow asymmetry on a
fine energy grid; G(eV) = its convolution with the thermal window -f'; I(V) = the integral of G
from 0 to eV; the lock-in X(V) = V_m G_m(V), G_m the exact first harmonic of a sqrt(2) V_m
modulation. Both convolutions share one forward FFT of the DOS (``scipy.fft``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft
from scipy.special import expit

from stslive.drivers.errors import ConfigError
from stslive.live.theory import K_B_EV_PER_K

FloatArray = npt.NDArray[np.float64]
AnyFloatArray = npt.NDArray[np.floating]

# Fermi tails beyond this many k_B T are below 1e-17 of the step: dropped from the kernels.
_FERMI_REACH_KT = 40.0
# Relative tolerance for calling a sweep uniform (so bias points sit on the fine grid).
_UNIFORM_RTOL = 1e-9


@dataclass(frozen=True)
class EnergyGrid:
    """Fine uniform energy grid of the convolution.

    Energies of the *output* points are ``origin_eV + j * step_eV`` for ``j in range(n)``; the DOS
    is sampled on ``pad`` extra points at each side so the convolution is valid on all ``n``.

    Attributes
    ----------
    step_eV
        Grid step h in eV.
    origin_eV
        Energy of output point 0 in eV.
    n
        Number of output points.
    pad
        Kernel half-width in points.
    """

    step_eV: float
    origin_eV: float
    n: int
    pad: int

    def energies(self) -> FloatArray:
        """Output energies (n,) in eV."""
        return self.origin_eV + self.step_eV * np.arange(self.n, dtype=np.float64)

    def extended_energies(self) -> FloatArray:
        """DOS sampling energies (n + 2 pad,) in eV."""
        return self.origin_eV + self.step_eV * np.arange(-self.pad, self.n + self.pad, dtype=np.float64)

    def position(self, energy_eV: npt.ArrayLike) -> FloatArray:
        """Fractional output index of energies; integral where they sit on the grid."""
        pos = (np.asarray(energy_eV, dtype=np.float64) - self.origin_eV) / self.step_eV
        snapped = np.round(pos)
        # Points meant to be on the grid (uniform sweeps) land there exactly despite rounding.
        return np.where(np.abs(pos - snapped) < 1e-6, snapped, pos)


def kernel_half_width_eV(*, temperature_K: float, modulation_Vrms: float) -> float:
    """Reach of the combined thermal + lock-in kernel in eV: sqrt(2) V_m + 40 k_B T."""
    return math.sqrt(2.0) * modulation_Vrms + _FERMI_REACH_KT * K_B_EV_PER_K * temperature_K


def make_grid(
    bias_V: FloatArray, *, extra_V: tuple[float, ...], max_step_eV: float, half_width_eV: float
) -> EnergyGrid:
    """Fine grid covering the sweep, the extra biases (set-point, zero) and the kernel reach.

    For a uniform sweep the step is the sweep step divided by the smallest integer that brings it
    to ``max_step_eV`` or below, and the grid is aligned so every bias point is a grid point (no
    interpolation error in the recorded spectra). Otherwise the step is ``max_step_eV`` and
    values are interpolated (linear in G, the exact integral of that line for I).

    Parameters
    ----------
    bias_V
        Sweep biases in V (any order).
    extra_V
        Other biases that must be covered (V).
    max_step_eV
        Largest allowed grid step in eV.
    half_width_eV
        Kernel reach in eV (see :func:`kernel_half_width_eV`).
    """
    if bias_V.size < 2 or not np.all(np.isfinite(bias_V)):
        raise ConfigError(
            "bias_V needs at least 2 finite points (V); pass a sweep like np.linspace(-0.04, 0.04, 1601)."
        )
    lo = min(float(bias_V.min()), *extra_V)
    hi = max(float(bias_V.max()), *extra_V)
    steps = np.diff(bias_V)
    sweep_step = abs(float(steps[0]))
    uniform = sweep_step > 0 and np.allclose(np.abs(steps), sweep_step, rtol=_UNIFORM_RTOL, atol=0.0)
    if uniform:
        step = sweep_step / math.ceil(sweep_step / max_step_eV - 1e-9)
        anchor = float(bias_V.min())
        origin = anchor - math.ceil((anchor - lo) / step - 1e-9) * step - step
    else:
        step = max_step_eV
        origin = lo - step
    n = math.ceil((hi - origin) / step + 1e-9) + 2
    pad = math.ceil(half_width_eV / step) + 1
    return EnergyGrid(step_eV=step, origin_eV=origin, n=n, pad=pad)


def fermi(energy_eV: FloatArray, *, temperature_K: float) -> FloatArray:
    """Fermi function f(E) = 1 / (1 + exp(E / k_B T)) (E in eV, T in K > 0)."""
    return expit(-energy_eV / (K_B_EV_PER_K * temperature_K))


def kernels(grid: EnergyGrid, *, temperature_K: float, modulation_Vrms: float) -> tuple[FloatArray, FloatArray]:
    """Discrete thermal kernel and thermal+lock-in kernel, each of length 2 pad + 1.

    The DOS is treated as constant over each grid cell, so the thermal weight of the cell at
    offset u = j h is the exact integral of -df/dE over it, f(u - h/2) - f(u + h/2); this stays
    exact when k_B T is smaller than h. The lock-in kernel applies
    (2/pi) int_0^pi (.)(u - A cos t) sin^2 t dt to those weights by Gauss-Chebyshev quadrature of
    the second kind (nodes t_k = k pi/(n+1), weights pi/(n+1) sin^2 t_k), which integrates the
    smooth Fermi steps to machine precision with a few hundred nodes.

    Returns
    -------
    thermal, lockin
        Weights for offsets -pad..pad, each summing to 1 (to ~1e-16).
    """
    offsets = grid.step_eV * np.arange(-grid.pad, grid.pad + 1, dtype=np.float64)
    half = 0.5 * grid.step_eV
    thermal = fermi(offsets - half, temperature_K=temperature_K) - fermi(offsets + half, temperature_K=temperature_K)
    amplitude = math.sqrt(2.0) * modulation_Vrms
    if amplitude == 0.0:
        return thermal, thermal.copy()
    scale = min(K_B_EV_PER_K * temperature_K, grid.step_eV)
    n_nodes = int(min(4096, max(128, 16 * amplitude / scale)))
    t = np.pi * np.arange(1, n_nodes + 1) / (n_nodes + 1)
    weights = (2.0 / (n_nodes + 1)) * np.sin(t) ** 2
    shifted = offsets[:, None] - amplitude * np.cos(t)[None, :]
    cells = fermi(shifted - half, temperature_K=temperature_K) - fermi(shifted + half, temperature_K=temperature_K)
    return thermal, cells @ weights


def dos(
    energy_eV: AnyFloatArray,
    *,
    delta_eV: AnyFloatArray,
    alpha: AnyFloatArray,
    gamma_eV: float,
    log_background: AnyFloatArray,
    asymmetry: AnyFloatArray,
) -> AnyFloatArray:
    """Sample DOS N(E) (arbitrary units), one row per pixel.

    N(E) = Re[(E + i Gamma) / sqrt((E + i Gamma)^2 - Delta^2)] * exp(alpha/2 * L(E)) * a(E)

    with L(E) = ln((E^2 + E_sat^2) / E_sat^2) and a(E) = 1 + s E precomputed by the caller. The
    Dynes factor is evaluated in real arithmetic (two square roots instead of a complex square
    root and division, ~2x faster; equal to the complex form to ~1e-16), with the branch of the
    square root in the upper half plane so N > 0 at both polarities:
    with w = (E^2 - Gamma^2 - Delta^2) + 2 i E Gamma, sqrt(w) = p + i q, q = sqrt((|w| - Re w)/2),
    p = sign(E) sqrt((|w| + Re w)/2), and Re[(E + i Gamma)/(p + i q)] = (E p + Gamma q) / |w|.

    Parameters
    ----------
    energy_eV
        Energies (M,) in eV.
    delta_eV, alpha
        Per-pixel gap (eV) and AA exponent, shape (P, 1).
    gamma_eV
        Dynes broadening in eV.
    log_background
        L(E), shape (M,).
    asymmetry
        a(E) = 1 + s E, shape (M,).

    Returns
    -------
    numpy.ndarray
        (P, M), in the float dtype of the inputs (the film computes in float32).
    """
    e2 = energy_eV * energy_eV
    re_w = e2 - (gamma_eV * gamma_eV + delta_eV * delta_eV)
    im_w = 2.0 * gamma_eV * energy_eV
    modulus = re_w * re_w
    modulus += im_w * im_w
    np.sqrt(modulus, out=modulus)
    p = modulus + re_w
    p *= 0.5
    np.sqrt(p, out=p)
    np.copysign(p, energy_eV, out=p)
    p *= energy_eV
    q = modulus - re_w
    q *= 0.5
    np.sqrt(q, out=q)
    q *= gamma_eV
    p += q
    p /= modulus
    background = (0.5 * alpha) * log_background
    np.exp(background, out=background)
    p *= background
    p *= asymmetry
    return p


def kernel_spectra(
    kernel_list: tuple[FloatArray, ...], *, length: int, dtype: npt.DTypeLike
) -> tuple[int, list[npt.NDArray[np.complexfloating]]]:
    """FFT length and the kernels' real FFTs for :func:`convolve_valid` of rows of ``length``.

    A circular FFT convolution of length >= ``length`` is exact on the valid part (no
    wrap-around reaches it), so ``next_fast_len(length)`` suffices.
    """
    nfft = scipy.fft.next_fast_len(length, real=True)
    return nfft, [scipy.fft.rfft(np.asarray(k, dtype=dtype), n=nfft) for k in kernel_list]


def convolve_valid(
    dos_rows: npt.NDArray[np.floating],
    spectra: list[npt.NDArray[np.complexfloating]],
    *,
    nfft: int,
    width: int,
    n: int,
) -> list[npt.NDArray[np.floating]]:
    """Valid part of the convolution of each DOS row with each kernel (one forward FFT shared).

    scipy.fft (pocketfft) keeps the per-row work in C and runs float32 rows in single
    precision, about 3x faster than float64 here.

    Parameters
    ----------
    dos_rows
        (P, n + 2 pad) DOS samples.
    spectra, nfft
        From :func:`kernel_spectra`.
    width
        Kernel length 2 pad + 1.
    n
        Number of valid output points.
    """
    spectrum = scipy.fft.rfft(dos_rows, n=nfft, axis=-1)
    return [scipy.fft.irfft(spectrum * k, n=nfft, axis=-1)[:, width - 1 : width - 1 + n] for k in spectra]


def cumulative_integral(values: FloatArray, *, step: float) -> FloatArray:
    """Running trapezoid integral along the last axis, starting at 0 (same shape)."""
    out = np.empty_like(values)
    out[..., 0] = 0.0
    np.cumsum(0.5 * step * (values[..., 1:] + values[..., :-1]), axis=-1, out=out[..., 1:])
    return out


def value_at(values: FloatArray, position: FloatArray) -> FloatArray:
    """Linear interpolation of rows at fractional positions (exact at integral ones)."""
    j = np.clip(np.floor(position).astype(np.intp), 0, values.shape[-1] - 2)
    t = position - j
    return values[..., j] + t * (values[..., j + 1] - values[..., j])


def integral_at(values: FloatArray, running: FloatArray, position: FloatArray, *, step: float) -> FloatArray:
    """Integral from grid point 0 to fractional positions, consistent with the trapezoid rule.

    Between grid points the integrand is the straight line through its samples, integrated
    exactly: running[j] + h (t v_j + t^2 (v_{j+1} - v_j) / 2).
    """
    j = np.clip(np.floor(position).astype(np.intp), 0, values.shape[-1] - 2)
    t = position - j
    lower = values[..., j]
    return running[..., j] + step * (t * lower + 0.5 * t * t * (values[..., j + 1] - lower))
