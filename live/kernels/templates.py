"""Physical coherence-peak templates and the matched-filter fit that places a peak between samples.

A template is the positive coherence peak of a Dynes-BCS density of states at a given gap,
convolved with the thermal window at the sample temperature (and the lock-in's modulation kernel
for a lock-in channel). The map's window around each polarity's gap is fitted by linear least
squares with every template of a bank (widths x sub-sample shifts) plus a polynomial background
projected out once, so a batch costs one matrix product. A current I(V) is fitted with integrated templates, a
lock-in channel in the dI/dV domain. The peak reported is the maximum of the fitted curve at the
sample temperature: the thermal template's maximum moved by the fitted background's slope, never
the modulation-broadened one. Windows, shifts and the drawing grid are set in volts from the gap,
the widths, the temperature, the modulation and the bias step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, TypedDict

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import expit

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.scales import MIN_FIT_DOF, MIN_GAP_SAMPLES
from stslive.live.theory import K_B_EV_PER_K

__all__ = [
    "BACKGROUND_DEGREE",
    "BankArgs",
    "DYNES_WIDTHS_EV",
    "Drawing",
    "PeakFit",
    "TemplateBank",
    "bank_args",
    "draw",
    "dynes_dos",
    "locate_peaks",
    "refined_argmax",
    "rowwise_matmul",
    "template_bank",
]

#: Dynes widths the map's width is chosen from, eV. Log-spaced from "thermally limited" to "very
#: broad", so real tips and hotter samples are still covered.
DYNES_WIDTHS_EV: tuple[float, ...] = tuple(float(g) for g in np.geomspace(5e-6, 0.4e-3, 24))

#: Polynomial background degree of the fit, per domain: 3 absorbs the I(V) curvature over a
#: window of a few mV; 1 for a lock-in (measured on the simulated film: higher degrees of the
#: lock-in background trade against the template and add noise).
BACKGROUND_DEGREE = {"current": 3, "lockin": 1}

#: The templates' gap edge is searched within +- SHIFT_FRACTION of the map's gap (the spread of
#: a map's gap: the paper's 1.0-1.5 meV around 1.2 meV), and at least MIN_SHIFT_SAMPLES.
SHIFT_FRACTION, MIN_SHIFT_SAMPLES = 0.3, 2.0
#: The fit window is the same for every pixel of a map: from WINDOW_LOW_FRACTION of the gap
#: (in-gap samples; never zero bias, where the opposite peak's half begins) to the highest edge
#: searched plus the outer flank of the peak, OUTER_FRACTION of the gap and at most OUTER_MAX_V
#: (where the BCS tail has decayed).
WINDOW_LOW_FRACTION = 0.3
OUTER_FRACTION, OUTER_MIN_V, OUTER_MAX_V = 1.3, 0.4e-3, 2.0e-3
#: The shift grid resolves a peak's width this many times over (the scores between two shifts
#: are then a parabola).
SHIFTS_PER_PEAK_WIDTH = 6
#: The thermal window -f'(E) is drawn out to this many k_B T each side (its tails beyond < 1e-12).
THERMAL_REACH_KT = 30
#: Step in ln(width) of the numerical derivative of the templates along the width.
WIDTH_STEP = 0.05


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
    """Projected, normalised peak templates for one gap, one sampling and one kind of channel.

    Attributes
    ----------
    offsets : ndarray of int, (M,)
        Sample offsets of the fit window from the sample nearest the map's gap.
    vectors : ndarray, (M, n_widths * n_shifts), float32
        Templates with the polynomial background projected out, unit norm; column w * n_shifts + j
        is width w at shift j.
    shifts : ndarray, (n_shifts,)
        Template origin (the gap edge E = Delta of the drawn DOS) relative to offset 0, samples.
    peak_offset : ndarray, (n_widths,)
        Maximum of each thermal dI/dV template relative to its origin, samples.
    curvature : ndarray, (n_widths,)
        Second derivative per sample^2 of the fitted curve's dI/dV at that maximum, per unit
        template amplitude (a step h per derivative of the I(V) domain included).
    raw_norm, fisher : ndarray, (n_widths * n_shifts,)
        Norm of each template after projection (amplitude = coefficient / raw_norm), and the
        norm of the unit template's derivative along the shift, per sample, orthogonal to it
        (the Fisher information of the shift per unit amplitude^2 / noise^2).
    raw_background : ndarray, (n_widths * n_shifts, degree + 1)
        Each raw template's coefficients on the background basis.
    along_shift, along_width : ndarray, (n_widths * n_shifts, M)
        How each unit template turns with its shift (per sample) and with ln(width), the part
        orthogonal to the template and the background: the Dynes fit's Jacobian per unit amplitude.
    gram : ndarray, (n_widths * n_shifts, 3)
        Their dot products (shift.shift, shift.width, width.width).
    background, background_t : ndarray
        Orthonormal basis (M, degree + 1) of the polynomial background and its transpose.
    poly : ndarray, (degree + 1, degree + 1)
        Power coefficients in t = offset / ``scale`` from coefficients on the basis.
    scale : float
    fine, half : float, int
        The drawing grid of the templates (:func:`draw`).
    peak_height, tail_height : ndarray, (n_widths,)
        The fitted dI/dV's template at its maximum and at the window's end, per unit amplitude
        (visibility = peak over tail and background).
    resolvable : bool
        False when the step cannot resolve this gap (BIAS_STEP_TOO_COARSE).
    derivative_order : int
        1 for integrated (I(V)) templates, 0 for dI/dV ones.
    n_widths, n_shifts : int
    """

    offsets: np.ndarray
    vectors: np.ndarray
    shifts: np.ndarray
    peak_offset: np.ndarray
    curvature: np.ndarray
    raw_norm: np.ndarray
    fisher: np.ndarray
    raw_background: np.ndarray
    along_shift: np.ndarray
    along_width: np.ndarray
    gram: np.ndarray
    background: np.ndarray
    background_t: np.ndarray
    poly: np.ndarray
    scale: float
    fine: float
    half: int
    peak_height: np.ndarray
    tail_height: np.ndarray
    resolvable: bool
    derivative_order: int
    n_widths: int
    n_shifts: int


def dynes_dos(energy_eV: np.ndarray, *, gap_eV: float | np.ndarray, width_eV: float | np.ndarray) -> np.ndarray:
    """Dynes-BCS density of states |Re[(E + i Gamma) / sqrt((E + i Gamma)^2 - Delta^2)]| (docs/physics.md)."""
    z = energy_eV + 1j * width_eV
    return np.abs(np.real(z / np.sqrt(z * z - gap_eV * gap_eV)))


def _thermal_weights(fine: float, kT: float) -> np.ndarray:
    """-f' integrated over each cell of the fine grid (exact whatever k_B T / fine)."""
    reach = max(1, math.ceil(THERMAL_REACH_KT * kT / fine))
    u = fine * np.arange(-reach, reach + 1)
    return expit((u + fine / 2) / kT) - expit((u - fine / 2) / kT)


def _modulation_weights(fine: float, modulation_Vrms: float) -> np.ndarray | None:
    """The first-harmonic kernel sqrt(1 - (u/a)^2) on |u| < a = sqrt(2) V_rms, normalised (None: no modulation)."""
    a = math.sqrt(2.0) * modulation_Vrms
    if a < fine:
        return None
    u = fine * np.arange(-int(a / fine), int(a / fine) + 1)
    w = np.sqrt(np.clip(1 - (u / a) ** 2, 0, None))
    return w / w.sum()


def refined_argmax(y: np.ndarray, region: slice) -> float:
    """Index of the maximum of ``y`` within ``region``, refined by a parabola through 3 points."""
    i = int(np.argmax(y[region])) + (region.start or 0)
    y0, y1, y2 = y[i - 1], y[i], y[i + 1]
    return i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)


@dataclass(frozen=True)
class Drawing:
    """A coherence peak drawn on a fine grid: x = E - Delta = fine * (index - centre), V.

    ``fitted`` is dI/dV in the fitted domain's shape (thermal, and modulation for a lock-in),
    ``thermal`` at the sample temperature only (where Delta is defined).
    """

    fine: float
    centre: int
    fitted: np.ndarray
    thermal: np.ndarray


@lru_cache(maxsize=64)
def draw(
    fine: float, half: int, *, gap_eV: float, width_eV: float, temperature_K: float, modulation_Vrms: float
) -> Drawing:
    """The positive coherence peak of a Dynes DOS of ``gap_eV`` and ``width_eV`` on ``2 half + 1`` fine points."""
    kT = K_B_EV_PER_K * temperature_K
    x = fine * np.arange(-half, half + 1)
    g_th = fftconvolve(dynes_dos(gap_eV + x, gap_eV=gap_eV, width_eV=width_eV), _thermal_weights(fine, kT), mode="same")
    modulation = _modulation_weights(fine, modulation_Vrms)
    g_fit = g_th if modulation is None else fftconvolve(g_th, modulation, mode="same")
    for a in (g_th, g_fit):
        a.setflags(write=False)
    return Drawing(fine, half, g_fit, g_th)


@lru_cache(maxsize=64)
def template_bank(
    step_V: float,
    *,
    gap_eV: float,
    widths: tuple[float, ...],
    temperature_K: float,
    modulation_Vrms: float,
    integrated: bool,
    background_degree: int,
) -> TemplateBank:
    """Build (and cache) the template bank of a map's gap for one bias step and channel.

    Parameters
    ----------
    step_V : float
        Bias step of the (uniform, ascending) sweep, V.
    gap_eV : float
        The map's gap, eV: the drawn DOS's, the window's and the shifts' scale.
    widths : tuple of float
        Dynes widths of the bank, eV (one for the fit; the ladder to choose a map's width).
    temperature_K : float
        Sample temperature; sets the thermal window -f'(E) = 1 / (4 kT cosh^2(E / 2kT)).
    modulation_Vrms : float
        Lock-in bias modulation, V rms (0 for a derivative of I(V)). The first harmonic of
        G(V + a cos wt), a = sqrt(2) Vrms, is G convolved with sqrt(1 - (u/a)^2) on |u| < a.
    integrated : bool
        True for templates of the current I(V) (the dI/dV template integrated over bias).
    background_degree : int
        Degree of the polynomial background (in the fitted domain) projected out.
    """
    if step_V <= 0 or temperature_K <= 0 or modulation_Vrms < 0 or gap_eV <= 0 or not widths:
        raise AnalysisError(
            f"template bank needs step_V > 0, temperature_K > 0, modulation_Vrms >= 0, gap_eV > 0 and a width "
            f"(got {step_V}, {temperature_K}, {modulation_Vrms}, {gap_eV}, {widths}); check the sweep and KernelOptions"
        )
    h, kT = step_V, K_B_EV_PER_K * temperature_K
    a_mod = math.sqrt(2.0) * modulation_Vrms
    peak_width = math.sqrt(min(widths) ** 2 + (2 * kT) ** 2 + a_mod**2)
    shift_reach = max(MIN_SHIFT_SAMPLES, SHIFT_FRACTION * gap_eV / h)
    low_V = WINDOW_LOW_FRACTION * gap_eV
    outer_V = min(max(OUTER_FRACTION * gap_eV, OUTER_MIN_V), OUTER_MAX_V)
    first, last = -math.floor((gap_eV - low_V) / h), math.ceil((shift_reach * h + outer_V) / h)
    parameters = background_degree + 1 + 2
    # a coarse step: the window reaches further out until the fit keeps MIN_FIT_DOF
    last += max(0, MIN_FIT_DOF + parameters - (last - first + 1))
    offsets = np.arange(first, last + 1)
    resolvable = gap_eV / h >= MIN_GAP_SAMPLES
    # shift grid: 1/q samples, q >= 4, fine enough for the peak's width; the drawing grid halves
    # it again (and resolves Gamma and k_B T)
    q = min(64, max(4, math.ceil(h * SHIFTS_PER_PEAK_WIDTH / peak_width)))
    finest = min(*widths, kT + a_mod) / 3
    oversample = q * max(2, math.ceil(h / q / finest))
    fine = h / oversample
    n_shift = math.ceil(shift_reach * q)
    shifts = np.arange(-n_shift, n_shift + 1) / q
    reach = (max(-offsets[0], offsets[-1]) + n_shift / q + 4) * h + 40 * kT + 3 * a_mod
    half = math.ceil(reach / fine)
    centre = half
    degree = background_degree
    t = offsets / max(-offsets[0], offsets[-1])
    basis, r = np.linalg.qr(np.vander(t, degree + 1, increasing=True))
    n_w, n_s, m = len(widths), shifts.size, offsets.size
    peak_offset = np.empty(n_w)
    curvature = np.empty(n_w)
    peak_height = np.empty(n_w)
    tail_height = np.empty(n_w)
    below = min(half - 2, int(0.5 * gap_eV / fine))
    # the drawn DOS has the opposite coherence peak at x = -2 Delta: maxima are searched above
    # x = -Delta / 2 only
    region = slice(centre - below, centre + half // 2)
    columns = centre + np.rint((offsets[:, None] - shifts[None, :]) * oversample).astype(int)

    def templates(width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(templates (M, n_shifts) in the fitted domain, thermal dI/dV, fitted dI/dV) of one width."""
        drawn = draw(
            fine, half, gap_eV=gap_eV, width_eV=width, temperature_K=temperature_K,
            modulation_Vrms=0.0 if integrated else modulation_Vrms,
        )  # fmt: skip
        g_th, g_fit = drawn.thermal, drawn.fitted
        y = np.cumsum(g_fit) * fine if integrated else g_fit
        return y[columns], g_th, g_fit

    def unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Background-projected unit templates, their raw norms and background coefficients."""
        on_background = basis.T @ v
        v = v - basis @ on_background
        norm = np.linalg.norm(v, axis=0)
        return v / np.where(norm > 0, norm, 1.0), norm, on_background

    units, norms, backgrounds, width_derivative = [], [], [], []
    for iw, width in enumerate(widths):
        v, g_th, _ = templates(width)
        peak = refined_argmax(g_th, region)
        i = round(peak)
        peak_offset[iw] = (peak - centre) / oversample
        second = (g_th[i - 1] - 2 * g_th[i] + g_th[i + 1]) / fine**2  # per V^2
        curvature[iw] = second * h**2 * (h if integrated else 1.0)
        derivative = h if integrated else 1.0  # the fitted domain's dI/dV per sample, per unit amplitude
        peak_height[iw] = g_th[i] * derivative
        tail_height[iw] = g_th[min(centre + offsets[-1] * oversample, g_th.size - 1)] * derivative
        u, norm, on_background = unit(v)
        units.append(u)
        norms.append(norm)
        backgrounds.append(on_background)
        # how the unit template turns with ln(width): the Dynes fit's second direction
        minus, plus = (unit(templates(width * math.exp(e))[0])[0] for e in (-WIDTH_STEP, WIDTH_STEP))
        width_derivative.append((plus - minus) / (2 * WIDTH_STEP))
    flat = np.concatenate(units, axis=1)  # (M, widths x shifts), width-major
    along = np.gradient(flat.reshape(m, n_w, n_s), axis=2).reshape(m, -1) * q  # d/dshift, per sample
    along -= flat * np.einsum("ij,ij->j", along, flat)
    turn = np.concatenate(width_derivative, axis=1)
    turn -= flat * np.einsum("ij,ij->j", turn, flat)
    raw_norm = np.concatenate(norms)
    gram = np.stack(
        [np.einsum("ij,ij->j", along, along), np.einsum("ij,ij->j", along, turn), np.einsum("ij,ij->j", turn, turn)],
        axis=1,
    )
    return TemplateBank(
        offsets=offsets,
        vectors=np.ascontiguousarray(flat, dtype=np.float32),
        shifts=shifts,
        peak_offset=peak_offset,
        curvature=curvature,
        raw_norm=raw_norm,
        fisher=np.sqrt(gram[:, 0]),
        fine=fine,
        half=half,
        raw_background=np.ascontiguousarray(np.concatenate(backgrounds, axis=1).T),
        along_shift=np.ascontiguousarray(along.T),
        along_width=np.ascontiguousarray(turn.T),
        gram=gram,
        background=basis,
        background_t=np.ascontiguousarray(basis.T),
        poly=np.linalg.inv(r),
        scale=float(max(-offsets[0], offsets[-1])),
        peak_height=peak_height,
        tail_height=tail_height,
        resolvable=bool(resolvable) and bool(np.all(raw_norm > 0)),
        derivative_order=1 if integrated else 0,
        n_widths=n_w,
        n_shifts=n_s,
    )


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


class PeakFit(NamedTuple):
    """One template fit per window, arrays (n,).

    offset: peak (maximum of the fitted dI/dV at the sample temperature) from the window centre,
    samples, NaN where the best shift lies on the edge of the shift range or the amplitude is not
    positive; sigma: its standard error, samples; score: fraction of the window's variance about
    the background the template explains; snr: template amplitude over its standard error;
    chi2: residual variance per degree of freedom over the measured noise variance (NaN when no
    noise is given); best, amplitude: the best template (a column of the bank) and its coefficient;
    at_edge: the best shift is the first or last of the bank (the gap edge lies outside the range);
    visibility: the fitted peak over the fitted curve's level without the peak (the template's
    normal-state tail plus the background) minus 1; shift: the template origin (gap edge) from
    the window's offset 0, samples.
    """

    offset: np.ndarray
    sigma: np.ndarray
    score: np.ndarray
    snr: np.ndarray
    chi2: np.ndarray
    best: np.ndarray
    amplitude: np.ndarray
    at_edge: np.ndarray
    visibility: np.ndarray
    shift: np.ndarray


def locate_peaks(windows: np.ndarray, bank: TemplateBank, noise: np.ndarray) -> PeakFit:
    """Fit every window (n, M) (already mirrored for the negative peak) with the bank's templates.

    ``noise`` (n,) is the measured rms noise per sample of the windows' signal (NaN: unknown,
    the residual stands in). The peak's standard error is the Fisher bound of the shift with the
    amplitude and background profiled out, at the larger of the measured noise and the residual.
    """
    proj = rowwise_matmul(windows, bank.vectors)
    best = proj.argmax(axis=1)
    rows = np.arange(len(best))
    js = best % bank.n_shifts
    above, below = js > 0, js < bank.n_shifts - 1
    picks = np.empty((len(best), 3), np.intp)
    picks[:, 0] = best
    np.subtract(best, above, out=picks[:, 1])
    np.add(best, below, out=picks[:, 2])
    q = proj[rows[:, None], picks].astype(np.float64)
    amp = q[:, 0].copy()
    inside = above & below & (amp > 0)
    # fit quality is the explained sum of squares amp^2; a parabola through its neighbours
    # locates the optimum between the grid shifts
    q *= q
    q1, q0, q2 = q[:, 0], q[:, 1], q[:, 2]
    denom = q0 - 2 * q1 + q2
    w64 = windows.astype(np.float64)
    on_background = rowwise_matmul(w64, bank.background)
    total = np.einsum("ij,ij->i", w64, w64) - np.einsum("ij,ij->i", on_background, on_background)
    dof = bank.offsets.size - bank.background.shape[1] - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip(np.where(denom < 0, 0.5 * (q0 - q2) / denom, 0.0), -0.5, 0.5)
        score = np.where(total > 0, q1 / total, np.nan)
        residual = np.maximum(total - q1, 0.0) / dof
        chi2 = residual / noise**2
        sigma_n = np.sqrt(np.fmax(residual, noise**2))
        snr = amp / sigma_n
        step = bank.shifts[1] - bank.shifts[0]
        width = best // bank.n_shifts
        shift = bank.shifts[js] + frac * step
        sigma = sigma_n / (amp * bank.fisher[best])
        # the maximum of the fitted curve: the template's, moved by the background's slope there
        # (one Newton step on the fitted dI/dV, derivatives per sample)
        a = amp / bank.raw_norm[best]
        coef = (on_background - a[:, None] * bank.raw_background[best]) @ bank.poly.T
        x0 = (shift + bank.peak_offset[width]) / bank.scale
        o = bank.derivative_order
        slope = _poly_derivative(coef, x0, o + 1) / bank.scale ** (o + 1)
        bend = _poly_derivative(coef, x0, o + 2) / bank.scale ** (o + 2)
        move = np.clip(-slope / (a * bank.curvature[width] + bend), -1.0, 1.0)
        level = _poly_derivative(coef, x0, o) / bank.scale**o + a * bank.tail_height[width]
        visibility = a * (bank.peak_height[width] - bank.tail_height[width]) / level
    offset = shift + bank.peak_offset[width] + np.where(np.isfinite(move), move, 0.0)
    offset[~inside] = np.nan
    return PeakFit(offset, sigma, score, snr, chi2, best, amp, ~(above & below), visibility, shift)


def _poly_derivative(coef: np.ndarray, t: np.ndarray, order: int) -> np.ndarray:
    """The ``order``-th derivative in t of the polynomials sum_k coef[:, k] t^k at ``t`` (n,)."""
    out = np.zeros(coef.shape[0])
    for k in range(order, coef.shape[1]):
        out += coef[:, k] * (math.factorial(k) // math.factorial(k - order)) * t ** (k - order)
    return out
