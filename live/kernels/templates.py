"""Physical coherence-peak templates and the matched-filter fit that places a peak between samples.

A template is the positive coherence peak of a Dynes-BCS density of states, convolved with the
thermal window at the sample temperature (and the lock-in's modulation kernel for a lock-in
channel); its shape near the peak depends on the Dynes width only. A window around a coarse
peak is fitted by linear least squares with every template of a bank (widths x sub-sample
shifts) plus a polynomial background projected out once, so a batch costs one matrix product.
A current I(V) is fitted with integrated templates, a lock-in channel in the dI/dV domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TypedDict

import numpy as np
from scipy.signal import fftconvolve

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.samples import (
    TEMPLATE_MARGIN_SAMPLES,
    TEMPLATE_MAX_SHIFT,
    TEMPLATE_OVERSAMPLE,
    TEMPLATE_SHIFT_STEP,
)
from stslive.live.theory import K_B_EV_PER_K

__all__ = [
    "BACKGROUND_DEGREE",
    "BankArgs",
    "DYNES_WIDTHS_EV",
    "TemplateBank",
    "bank_args",
    "locate_peaks",
    "rowwise_matmul",
    "template_bank",
]

#: Dynes widths of the template bank, eV. Log-spaced from "thermally limited" to "very broad",
#: so real tips and hotter samples are still covered; the fit picks the best per spectrum.
DYNES_WIDTHS_EV: tuple[float, ...] = tuple(float(g) for g in np.geomspace(5e-6, 0.4e-3, 24))

#: Polynomial background degree of the fit, per domain (measured on the simulated film, Delta rms
#: with the lock-in: degree 1 0.011 meV, 2 0.018, 3 0.017; with the current degree 3 is the
#: lowest that absorbs the I(V) curvature over the 57-sample window).
BACKGROUND_DEGREE = {"current": 3, "lockin": 1}

#: The drawn template reaches this many k_B T beyond the window and the shifts (the thermal tail).
DRAW_REACH_KT = 40
#: Support of the thermal window -f'(E), in k_B T each side (its tails beyond are < 1e-12).
THERMAL_REACH_KT = 30
#: The drawn template reaches this many modulation amplitudes (V rms) beyond the window.
DRAW_REACH_MODULATIONS = 3


class BankArgs(TypedDict):
    """The channel-dependent settings of :func:`template_bank`."""

    temperature_K: float
    modulation_Vrms: float
    integrated: bool
    background_degree: int


def bank_args(temperature_K: float, modulation_Vrms: float, *, integrated: bool) -> BankArgs:
    """Template-bank settings for a current (integrated templates, no modulation) or a lock-in channel."""
    return {
        "temperature_K": float(temperature_K),
        "modulation_Vrms": 0.0 if integrated else float(modulation_Vrms),
        "integrated": integrated,
        "background_degree": BACKGROUND_DEGREE["current" if integrated else "lockin"],
    }


@dataclass(frozen=True)
class TemplateBank:
    """Projected, normalised peak templates for one sampling and one kind of channel.

    Attributes
    ----------
    offsets : ndarray of int, (M,)
        Sample offsets of the fit window relative to the coarse peak index.
    vectors : ndarray, (M, n_widths * n_shifts), float32
        Templates with the polynomial background projected out, unit norm.
    shifts : ndarray, (n_shifts,)
        Template shifts in samples (sub-sample grid).
    peak_offset : ndarray, (n_widths,)
        Position of the maximum of each dI/dV template relative to its shift, samples.
    background : ndarray, (M, background_degree + 1)
        Orthonormal basis of the polynomial background in the window.
    background_t : ndarray, (background_degree + 1, M)
        Its transpose, C-contiguous (for :func:`rowwise_matmul`).
    n_widths, n_shifts : int
    """

    offsets: np.ndarray
    vectors: np.ndarray
    shifts: np.ndarray
    peak_offset: np.ndarray
    background: np.ndarray
    background_t: np.ndarray
    n_widths: int
    n_shifts: int


def _peak_shape(x_eV: np.ndarray, *, gap_eV: float, width_eV: float) -> np.ndarray:
    """Dynes-BCS density of states at energy gap_eV + x (the positive coherence peak)."""
    z = gap_eV + x_eV + 1j * width_eV
    return np.abs(np.real(z / np.sqrt(z * z - gap_eV**2)))


@lru_cache(maxsize=16)
def template_bank(
    step_V: float,
    *,
    temperature_K: float,
    modulation_Vrms: float,
    integrated: bool,
    widths: tuple[float, ...] = DYNES_WIDTHS_EV,
    window_V: tuple[float, float] = (-1.2e-3, 1.6e-3),
    max_shift: float = TEMPLATE_MAX_SHIFT,
    shift_step: float = TEMPLATE_SHIFT_STEP,
    background_degree: int = 3,
    gap_eV: float = 1.2e-3,
) -> TemplateBank:
    """Build (and cache) the template bank for one bias step.

    Parameters
    ----------
    step_V : float
        Bias step of the (uniform, ascending) sweep, V.
    temperature_K : float
        Sample temperature; sets the thermal window -f'(E) = 1 / (4 kT cosh^2(E / 2kT)).
    modulation_Vrms : float
        Lock-in bias modulation, V rms (0 for a derivative of I(V)). The first harmonic of
        G(V + a cos wt), a = sqrt(2) Vrms, is G convolved with sqrt(1 - (u/a)^2) on |u| < a.
    integrated : bool
        True for templates of the current I(V) (the dI/dV template integrated over bias).
    widths : tuple of float
        Dynes widths of the bank, eV. Measured: a free width per spectrum trades against the
        shift (Delta rms 0.026 meV vs 0.013 meV with the width fixed), hence one width per batch
        (:func:`estimate_width`) and a one-width bank for the final fit.
    window_V : (float, float)
        First and last bias offset of the fit window around the coarse peak, V (rounded to
        samples). In volts, not samples: it must stay clear of the opposite coherence peak
        (-2 Delta away) at every sampling.
    max_shift, shift_step : float
        Range (+-) and step of the template shifts, in samples.
    background_degree : int
        Degree of the polynomial background (in the fitted domain) projected out.
    gap_eV : float
        Gap used to draw the shapes; near the peak the shape hardly depends on it.
    """
    if step_V <= 0 or temperature_K <= 0 or modulation_Vrms < 0:
        raise AnalysisError(
            f"template bank needs step_V > 0, temperature_K > 0, modulation_Vrms >= 0 "
            f"(got {step_V}, {temperature_K}, {modulation_Vrms}); check the sweep and KernelOptions"
        )
    oversample = TEMPLATE_OVERSAMPLE
    fine = step_V / oversample
    kT = K_B_EV_PER_K * temperature_K
    window = (round(window_V[0] / step_V), round(window_V[1] / step_V))
    half_span = (
        (max(abs(window[0]), abs(window[1])) + max_shift + TEMPLATE_MARGIN_SAMPLES) * step_V
        + DRAW_REACH_KT * kT
        + DRAW_REACH_MODULATIONS * modulation_Vrms
    )
    x = np.arange(-round(half_span / fine), round(half_span / fine) + 1) * fine
    u = np.arange(-round(THERMAL_REACH_KT * kT / fine), round(THERMAL_REACH_KT * kT / fine) + 1) * fine
    thermal = 1.0 / (4 * kT * np.cosh(u / (2 * kT)) ** 2) * fine
    kernels = [thermal]
    if modulation_Vrms > 0:
        a = np.sqrt(2.0) * modulation_Vrms
        um = np.arange(-int(a / fine), int(a / fine) + 1) * fine
        mod = np.sqrt(np.clip(1 - (um / a) ** 2, 0, None))
        kernels.append(mod / mod.sum())
    offsets = np.arange(window[0], window[1] + 1)
    shifts = np.arange(-max_shift, max_shift + shift_step / 2, shift_step)
    centre = len(x) // 2
    # Polynomial background basis in the window, orthonormal, to project out of the templates.
    t = offsets / max(abs(window[0]), abs(window[1]))
    basis, _ = np.linalg.qr(np.vander(t, background_degree + 1, increasing=True))
    vectors = np.empty((len(offsets), len(widths), len(shifts)))
    peak_offset = np.empty(len(widths))
    for iw, width in enumerate(widths):
        g = _peak_shape(x, gap_eV=gap_eV, width_eV=width)
        for k in kernels:
            g = fftconvolve(g, k, mode="same")
        # The convolution is only exact away from the ends; window and shifts stay well inside.
        # The drawn DOS also has the opposite coherence peak at x = -2 gap_eV, as high as this one:
        # the search stops at the midpoint x = -gap_eV so it can never pick that peak (it did for
        # coarse sweeps, where the reach passes -2 gap_eV: 801 points over +-40 mV, some widths).
        reach = len(x) // 4
        below = min(reach, int(gap_eV / fine) - 1)
        peak_offset[iw] = _refined_argmax(g, slice(centre - below, centre + reach)) - centre
        y = np.cumsum(g) * fine if integrated else g
        for js, s in enumerate(shifts):
            idx = centre + np.rint((offsets - s) * oversample).astype(int)
            vectors[:, iw, js] = y[idx]
    flat = vectors.reshape(len(offsets), -1)  # (M, widths x shifts), a view
    flat -= basis @ (basis.T @ flat)
    flat /= np.linalg.norm(flat, axis=0, keepdims=True)
    return TemplateBank(
        offsets=offsets,
        vectors=np.ascontiguousarray(flat, dtype=np.float32),
        shifts=shifts,
        peak_offset=peak_offset / oversample,
        background=basis,
        background_t=np.ascontiguousarray(basis.T),
        n_widths=len(widths),
        n_shifts=len(shifts),
    )


def _refined_argmax(y: np.ndarray, region: slice) -> float:
    """Index of the maximum of ``y`` within ``region``, refined by a parabola through 3 points."""
    i = int(np.argmax(y[region])) + (region.start or 0)
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    return i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)


def rowwise_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a (n, m) and b (m, k), each row of the result depending on its own row only.

    Row i is ``a[i] @ b``, one BLAS vector-matrix product of the same shape for every row (the
    stacked form ``a[:, None, :] @ b``). Why not one GEMM: OpenBLAS's float32 GEMM sums a row
    differently depending on the number of rows and the row's place in its block (measured:
    up to 1e-6 relative on (n, 57) @ (57, 49)), so results changed in the last bits with the
    chunk size and the split over threads; a template shift or width picked by argmax can then
    differ too. Per row, the same input gives bit-identical output wherever the row sits.
    Why not ``np.einsum``: numpy's own loop is deterministic too, but 3x slower here (measured
    1.27 vs 0.39 us per 57 x 49 row product, loaded machine). The products are far below
    OpenBLAS's threading threshold, so no BLAS threads start (the kernels run their own).
    """
    if a.shape[0] == 0:
        return np.empty((0, b.shape[1]), np.result_type(a, b))
    return np.matmul(np.ascontiguousarray(a)[:, None, :], b)[:, 0, :]


def locate_peaks(windows: np.ndarray, bank: TemplateBank) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sample peak positions from fit windows (already mirrored for the negative peak).

    Parameters
    ----------
    windows : ndarray, (n, M)
        Signal samples at ``bank.offsets`` around each coarse peak index.
    bank : TemplateBank

    Returns
    -------
    offset : ndarray, (n,), float64
        Peak position relative to the coarse index, samples; NaN where the best fit lies on the
        edge of the shift range (peak not bracketed) or has a negative amplitude.
    score : ndarray, (n,)
        Fraction of the window's variance about the polynomial background explained by the
        best template (1 = perfect peak, ~0 = no peak).
    """
    # (n, W*S): least-squares amplitude of each unit template.
    proj = rowwise_matmul(windows, bank.vectors)
    best = proj.argmax(axis=1)
    rows = np.arange(len(best))
    js = best % bank.n_shifts
    above, below = js > 0, js < bank.n_shifts - 1
    # The best template and its neighbours in shift (clipped at the ends of the shift range),
    # gathered in one fancy index: columns best, best - 1, best + 1.
    picks = np.empty((len(best), 3), np.intp)
    picks[:, 0] = best
    np.subtract(best, above, out=picks[:, 1])
    np.add(best, below, out=picks[:, 2])
    q = proj[rows[:, None], picks].astype(np.float64)
    amp = q[:, 0]
    inside = above & below & (amp > 0)
    # Fit quality is the explained sum of squares amp^2; a parabola through its neighbours
    # locates the optimum between the grid shifts.
    q *= q
    q1, q0, q2 = q[:, 0], q[:, 1], q[:, 2]
    denom = q0 - 2 * q1 + q2
    w64 = windows.astype(np.float64)
    residual = w64 - rowwise_matmul(rowwise_matmul(w64, bank.background), bank.background_t)
    total = np.einsum("ij,ij->i", residual, residual)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(denom < 0, 0.5 * (q0 - q2) / denom, 0.0)
        score = np.where(total > 0, q1 / total, np.nan)
    step = bank.shifts[1] - bank.shifts[0]
    offset = bank.shifts[js] + np.minimum(np.maximum(frac, -0.5), 0.5) * step + bank.peak_offset[best // bank.n_shifts]
    offset[~inside] = np.nan
    return offset, score
