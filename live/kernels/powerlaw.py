"""The Altshuler-Aronov exponent alpha: dI/dV = b |V|^alpha fitted per polarity, no offset.

ln G = ln b_s + alpha_s ln|V| by least squares on the fit window window_V[0] <= |V| <= window_V[1]
(paper: 5..30 mV) for s = + and -; alpha = (alpha_+ + alpha_-) / 2, b = sqrt(b_+ b_-). With one
bias axis for the batch the design (the centred ln|V| of each window) is computed once per grid
and each slope is one weighted sum per row.

G is the channel smoothed by a known linear operator K (the box derivative of I(V), or a
running mean of a lock-in), and its noise is measured on the spectrum (sigma per sample). The
grid-only consequences are tabulated once per grid against alpha (:class:`SideDesign`): the slope
K biases a pure power law by (removed), the slope the noise biases through the logarithm
(E ln(G + n) = ln G - var(n) / 2G^2, removed), the slope's variance (its standard error) and the
mean square residual the noise alone leaves (the chi^2 of the fit). :func:`power_law_rows` is the
step the batch engine runs on each chunk; :func:`fit_power_law` is the same step on any batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from stslive.live.kernels.buffers import scratch
from stslive.live.kernels.options import CODE, PowerLawResult
from stslive.live.kernels.scales import MIN_WINDOW_SAMPLES

__all__ = ["ALPHA_TABLE", "SideDesign", "Smoothing", "fit_power_law", "log_designs", "power_law_rows", "window_columns"]

#: alpha values the grid tables are computed at (linear interpolation between them).
ALPHA_TABLE = np.linspace(-0.5, 2.0, 26)


class Smoothing(NamedTuple):
    """The linear operator that made G from the recorded channel: "box" (derivative of I(V)), "mean", or "none"."""

    kind: str
    points: int

    @property
    def reach(self) -> int:
        """Samples each side a smoothed value depends on."""
        if self.kind == "box":
            return self.points
        return self.points // 2

    @property
    def stride(self) -> int:
        """Every how many columns the fit reads: neighbours within a quarter of the smoothing carry
        the same information (their noise is correlated over the smoothing's width)."""
        return max(1, self.points // 4) if self.kind != "none" else 1


NO_SMOOTHING = Smoothing("none", 1)


@lru_cache(maxsize=64)
def window_columns(
    bias_key: bytes, window_V: tuple[float, float], reach: int = 0, stride: int = 1
) -> tuple[slice | None, slice | None]:
    """Columns of the fit window per polarity (+, -) of the ascending float64 grid ``bias_key``, every ``stride``-th.

    A polarity is None where the sweep does not cover the window: fewer than
    ``MIN_WINDOW_SAMPLES`` samples with window_V[0] <= |V| <= window_V[1], or |V| not reaching
    window_V[1] to within a step. Columns closer than ``reach`` to a sweep end (where a
    smoothed value is not defined) are left out. Cached per grid.
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    step = abs(bias[1] - bias[0])
    out: list[slice | None] = []
    for sign in (1.0, -1.0):
        mag = sign * bias
        sel = np.flatnonzero((mag >= window_V[0]) & (mag <= window_V[1]))
        sel = sel[(sel >= reach) & (sel < n - reach)]
        if sel.size < MIN_WINDOW_SAMPLES or mag.max() < window_V[1] - step:
            out.append(None)
        else:
            out.append(slice(int(sel[0]), int(sel[-1]) + 1, stride))
    return out[0], out[1]


class SideDesign(NamedTuple):
    """One polarity's fit window: the centred ln|V| and the noise model of its smoothing.

    ``xc`` is (x - <x>) in the data dtype (x = ln|V|), ``sxx`` its sum of squares; the four
    tables are functions of alpha on :data:`ALPHA_TABLE`, per unit (sigma / b)^2 where they
    scale with the noise: ``smoothing_bias`` (slope of ln K[|V|^alpha] minus alpha),
    ``log_bias`` (slope shift from the logarithm's bias, with the minus sign removed),
    ``slope_variance`` and ``residual`` (expected mean square residual of ln G).
    """

    columns: slice
    xc: np.ndarray
    x_mean: float
    sxx: float
    points: int
    smoothing_bias: np.ndarray
    log_bias: np.ndarray
    slope_variance: np.ndarray
    residual: np.ndarray


def _kernel(step: float, smoothing: Smoothing) -> np.ndarray:
    """The smoothing's weights kk (2 reach + 1): smoothed_i = sum_k kk[k] recorded_(i - reach + k)."""
    r, p = smoothing.reach, smoothing.points
    kk = np.zeros(2 * r + 1)
    if smoothing.kind == "box":  # two abutting boxes of p samples, (U_{i+s} - U_{i-s}) / (2 s h)
        s = (p + 1) // 2
        kk[r + 1 :] = 1.0 / (2 * s * step * p)
        kk[:r] = -1.0 / (2 * s * step * p)
    elif smoothing.kind == "mean":
        kk[:] = 1.0 / p
    else:
        kk[r] = 1.0
    return kk


def _side_design(bias: np.ndarray, columns: slice, smoothing: Smoothing, dtype: str) -> SideDesign:
    step = abs(bias[1] - bias[0])
    stride = columns.step or 1
    v = np.abs(bias[columns])
    x = np.log(v)
    xc = x - x.mean()
    sxx = float(xc @ xc)
    n = v.size
    r = smoothing.reach
    contiguous = slice(columns.start, columns.start + (n - 1) * stride + 1)
    around = bias[contiguous.start - r : contiguous.stop + r]  # the recorded samples the window's values use
    kk = _kernel(step, smoothing)
    kappa = float(kk @ kk)
    c = xc / sxx

    def k_transpose(u: np.ndarray) -> np.ndarray:  # K^T u, u on the fitted columns, over the samples around them
        spread = np.zeros(contiguous.stop - contiguous.start)
        spread[::stride] = u
        return np.convolve(spread, kk, "full")

    tables = np.empty((4, ALPHA_TABLE.size))
    for ia, alpha in enumerate(ALPHA_TABLE):
        w = v**-alpha  # 1 / G per unit b
        # a pure power law through K: the recorded channel is its integral (box) or itself
        if smoothing.kind == "box":
            recorded = np.sign(around) * np.abs(around) ** (alpha + 1) / (alpha + 1)
        else:
            recorded = np.abs(around) ** alpha
        y = np.log(np.correlate(recorded, kk, "valid")[::stride])
        tables[0, ia] = (xc @ y) / sxx - alpha
        tables[1, ia] = 0.5 * kappa * float(c @ (w * w))
        tables[2, ia] = float(np.sum(k_transpose(c * w) ** 2))
        whole = kappa * float(w @ w)
        along_ones = float(np.sum(k_transpose(w) ** 2)) / n
        along_x = float(np.sum(k_transpose(xc * w) ** 2)) / sxx
        tables[3, ia] = (whole - along_ones - along_x) / n
    xc_data = xc.astype(dtype)
    for arr in (xc_data, tables):
        arr.setflags(write=False)
    return SideDesign(columns, xc_data, float(x.mean()), sxx, n, tables[0], tables[1], tables[2], tables[3])


@lru_cache(maxsize=64)
def log_designs(
    bias_key: bytes, window_V: tuple[float, float], dtype: str, smoothing: Smoothing = NO_SMOOTHING
) -> tuple[SideDesign | None, SideDesign | None]:
    """:class:`SideDesign` of both fit windows (+, -) of the float64 grid ``bias_key`` (None: not covered)."""
    windows = window_columns(bias_key, window_V, smoothing.reach, smoothing.stride)
    bias = np.frombuffer(bias_key, dtype=np.float64)
    pos, neg = (None if cols is None else _side_design(bias, cols, smoothing, dtype) for cols in windows)
    return pos, neg


def _table(alpha: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.interp(np.where(np.isfinite(alpha), alpha, 0.0), ALPHA_TABLE, table)


def power_law_rows(
    g2: np.ndarray,
    designs: tuple[SideDesign | None, SideDesign | None],
    noise: np.ndarray,
    *,
    max_log_residual: float,
    max_chi2: float,
    dtype: np.dtype,
) -> PowerLawResult:
    """:func:`fit_power_law` on rows (n_rows, n) with the windows' ``designs``; reads only their columns.

    ``noise`` (n_rows,) is the rms noise per sample of the recorded channel G was smoothed from
    (NaN: unknown, the residual stands in). The step the batch engine runs on each chunk;
    ``dtype`` is the float dtype of the returned values.
    """
    n_rows = g2.shape[0]
    slope, log_b, rms, sigma = (np.full((2, n_rows), np.nan) for _ in range(4))
    side_reason = np.full((2, n_rows), CODE.WINDOW_NOT_COVERED, np.int8)
    for side, design in enumerate(designs):
        if design is None:
            continue
        cols, xc, x_mean, sxx, m = design[:5]
        with np.errstate(divide="ignore", invalid="ignore"):
            # ln of a non-positive or non-finite G is NaN/inf, and so is then the row's sum: the
            # (rare) failed rows are told apart afterwards instead of checking every sample twice.
            y = np.log(g2[:, cols], out=scratch("log_g", (n_rows, m), g2.dtype))
            total = np.add.reduce(y, axis=1)  # numpy's pairwise sum: float32 stays accurate over ~500 terms
            # einsum, not BLAS: a (rows x 501) GEMV goes multi-threaded in OpenBLAS (see templates.rowwise_matmul)
            raw = np.divide(np.einsum("ij,j->i", y, xc), sxx, dtype=np.float64)
            ybar = np.divide(total, m, dtype=np.float64)
            resid = np.multiply(raw.astype(y.dtype)[:, None], xc, out=scratch("resid", (n_rows, m), y.dtype))
            resid += ybar.astype(y.dtype)[:, None]
            np.subtract(y, resid, out=resid)
            mean_sq = np.divide(np.einsum("ij,ij->i", resid, resid), m, dtype=np.float64)
            b = np.exp(ybar - raw * x_mean)
            rel = (noise / b) ** 2  # (sigma / b)^2
            residual_model = rel * _table(raw, design.residual)
            chi2 = mean_sq / residual_model
            rel = np.where(np.isfinite(rel), rel, mean_sq / _table(raw, design.residual))
            corrected = raw - _table(raw, design.smoothing_bias) + rel * _table(raw, design.log_bias)
            slope[side] = corrected
            log_b[side] = ybar - corrected * x_mean
            rms[side] = np.sqrt(mean_sq)
            sigma[side] = np.sqrt(rel * _table(raw, design.slope_variance))
        reason = np.zeros(n_rows, np.int8)
        failed = ~np.isfinite(total + raw)
        if failed.any():
            rows_failed = np.flatnonzero(failed)
            nonfinite = ~np.isfinite(g2[rows_failed, cols]).all(axis=1)
            reason[rows_failed[nonfinite]] = CODE.NAN_INPUT
            reason[rows_failed[~nonfinite]] = CODE.NONPOSITIVE_CONDUCTANCE
        with np.errstate(invalid="ignore"):
            poor = ~(rms[side] <= max_log_residual) & ~(chi2 <= max_chi2)
        reason[(reason == 0) & poor] = CODE.POOR_POWER_LAW_FIT
        side_reason[side] = reason
    # the most basic failure of the two polarities wins
    reason = np.zeros(n_rows, np.int8)
    for code in (CODE.POOR_POWER_LAW_FIT, CODE.NONPOSITIVE_CONDUCTANCE, CODE.WINDOW_NOT_COVERED, CODE.NAN_INPUT):
        reason[(side_reason == code).any(axis=0)] = code
    out = np.full((8, n_rows), np.nan)
    side_ok = side_reason == 0
    both = reason == 0
    out[1:3] = np.where(side_ok, slope, np.nan)
    out[4:6] = np.where(side_ok, np.exp(log_b), np.nan)
    out[0, both] = 0.5 * (slope[0, both] + slope[1, both])
    out[3, both] = np.exp(0.5 * (log_b[0, both] + log_b[1, both]))
    out[6] = np.fmax(rms[0], rms[1])
    out[6, (side_reason == CODE.NAN_INPUT).any(axis=0)] = np.nan
    out[7, both] = 0.5 * np.hypot(sigma[0, both], sigma[1, both])
    out = out.astype(dtype, copy=False)
    return PowerLawResult(out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], reason)


def fit_power_law(
    bias_V: np.ndarray,
    didv: np.ndarray,
    *,
    window_V: tuple[float, float] = (5e-3, 30e-3),
    smoothing: Smoothing = NO_SMOOTHING,
    noise: np.ndarray | None = None,
    max_log_residual: float = 0.1,
    max_chi2: float = 4.0,
) -> PowerLawResult:
    """AA power law dI/dV = b |V|^alpha, no offset, per polarity (the paper's alpha(r), see docs/physics.md).

    ln G = ln b + alpha_s ln|V| by least squares on window_V[0] <= |V| <= window_V[1] for
    s = + and -; alpha = (alpha_+ + alpha_-) / 2, b = sqrt(b_+ b_-) (geometric mean).

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Uniform ascending bias, V.
    didv : ndarray, (..., n)
        Positive conductance G (S, or a lock-in's unit).
    window_V : (float, float)
        |V| range of the fit, V.
    smoothing : Smoothing
        How ``didv`` was made from the recorded channel: ``Smoothing("box", p)`` for
        :func:`~stslive.live.kernels.derivative` of I(V) over p samples, ``Smoothing("mean", p)``
        for a running mean of a lock-in, none for a channel used as recorded. Its bias of the
        slope is removed and its noise model gives ``alpha_sigma``.
    noise : ndarray, (...), optional
        rms noise per sample of the recorded channel (A for I(V)); None: unknown (the residual
        then stands for it, and the noise-relative gate is off).
    max_log_residual, max_chi2 : float
        POOR_POWER_LAW_FIT when the rms residual of ln G exceeds ``max_log_residual`` and its mean
        square exceeds ``max_chi2`` times what the noise explains.

    Returns
    -------
    PowerLawResult
    """
    bias = np.asarray(bias_V, dtype=np.float64)
    g = np.asarray(didv)
    lead = g.shape[:-1]
    dtype = np.dtype(g.dtype if g.dtype == np.float32 else np.float64)
    g2 = g.reshape(-1, bias.size)
    if g2.dtype not in (np.float32, np.float64):
        g2 = g2.astype(np.float64)
    sigma = np.full(g2.shape[0], np.nan) if noise is None else np.asarray(noise, np.float64).reshape(-1)
    designs = log_designs(bias.tobytes(), tuple(window_V), g2.dtype.str, smoothing)
    law = power_law_rows(g2, designs, sigma, max_log_residual=max_log_residual, max_chi2=max_chi2, dtype=dtype)
    return PowerLawResult(*(v.reshape(lead) for v in law))
