"""The Altshuler-Aronov exponent alpha: dI/dV = b |V|^alpha fitted per polarity, no offset.

ln G = ln b_s + alpha_s ln|V| by least squares on the fit window window_V[0] <= |V| <= window_V[1]
(paper: 5..30 mV) for s = + and -; alpha = (alpha_+ + alpha_-) / 2, b = sqrt(b_+ b_-). With one
bias axis for the batch the design (the centred ln|V| of each window) is computed once per grid
and each slope is one weighted sum per row. :func:`power_law_rows` is the step the batch engine
runs on each chunk; :func:`fit_power_law` is the same step on any batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from stslive.live.kernels.buffers import scratch
from stslive.live.kernels.options import CODE, PowerLawResult
from stslive.live.kernels.samples import MIN_WINDOW_SAMPLES

__all__ = ["LogDesign", "fit_power_law", "log_designs", "power_law_rows", "window_columns"]


@lru_cache(maxsize=32)
def window_columns(bias_key: bytes, window_V: tuple[float, float]) -> tuple[slice, ...] | None:
    """Columns of the fit window per polarity (+, -) of the ascending float64 grid ``bias_key``.

    None if the sweep does not cover the window: fewer than ``MIN_WINDOW_SAMPLES`` samples with
    window_V[0] <= |V| <= window_V[1] on a polarity, or |V| not reaching window_V[1] to within a
    step. Cached per grid; a tuple, so callers cannot alter it.
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    step = abs(bias[1] - bias[0])
    out = []
    for sign in (1.0, -1.0):
        mag = sign * bias
        sel = np.flatnonzero((mag >= window_V[0]) & (mag <= window_V[1]))
        if sel.size < MIN_WINDOW_SAMPLES or mag.max() < window_V[1] - step:
            return None
        out.append(slice(int(sel[0]), int(sel[-1]) + 1))
    return tuple(out)


class LogDesign(NamedTuple):
    """Centred ln|V| of one fit window: columns, (x - <x>) in the data dtype, <x>, Sxx, points."""

    columns: slice
    xc: np.ndarray
    x_mean: float
    sxx: float
    points: int


@lru_cache(maxsize=32)
def log_designs(bias_key: bytes, window_V: tuple[float, float], dtype: str) -> tuple[LogDesign, ...] | None:
    """:class:`LogDesign` of both fit windows (+, -) of the float64 grid ``bias_key`` (None: not covered)."""
    windows = window_columns(bias_key, window_V)
    if windows is None:
        return None
    bias = np.frombuffer(bias_key, dtype=np.float64)
    designs = []
    for cols in windows:
        x = np.log(np.abs(bias[cols]))
        xc = x - x.mean()
        xc_data = xc.astype(dtype)
        xc_data.setflags(write=False)
        designs.append(LogDesign(cols, xc_data, float(x.mean()), float(xc @ xc), x.size))
    return tuple(designs)


def power_law_rows(
    g2: np.ndarray,
    designs: tuple[LogDesign, ...] | None,
    *,
    max_log_residual: float,
    dtype: np.dtype,
) -> PowerLawResult:
    """:func:`fit_power_law` on rows (n_rows, n) with the windows' ``designs``; reads only their columns.

    The step the batch engine runs on each chunk. ``dtype`` is the float dtype of the returned values.
    """
    n_rows = g2.shape[0]
    if designs is None:
        nan = np.full(n_rows, np.nan, dtype)
        return PowerLawResult(nan, nan, nan, nan, nan, nan, nan, np.full(n_rows, CODE.WINDOW_NOT_COVERED, np.int8))
    reason = np.zeros(n_rows, np.int8)
    slope, log_b, rms, check = np.empty((4, 2, n_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        for side, (cols, xc, x_mean, sxx, m) in enumerate(designs):
            # ln of a non-positive or non-finite G is NaN/inf, and so is then the row's sum: the
            # (rare) failed rows are told apart afterwards instead of checking every sample twice.
            y = np.log(g2[:, cols], out=scratch("log_g", (n_rows, m), g2.dtype))
            total = np.add.reduce(y, axis=1)  # numpy's pairwise sum: float32 stays accurate over ~500 terms
            # einsum, not BLAS: a (rows x 501) GEMV goes multi-threaded in OpenBLAS (see templates.rowwise_matmul)
            np.divide(np.einsum("ij,j->i", y, xc), sxx, out=slope[side], dtype=np.float64)
            ybar = np.divide(total, m, dtype=np.float64)
            np.add(total, slope[side], out=check[side])  # finite exactly when both are (|values| << 1e38)
            # residual = y - ybar - slope xc, formed in place in one buffer
            resid = np.multiply(slope[side].astype(y.dtype)[:, None], xc, out=scratch("resid", (n_rows, m), y.dtype))
            resid += ybar.astype(y.dtype)[:, None]
            np.subtract(y, resid, out=resid)
            np.sqrt(np.divide(np.einsum("ij,ij->i", resid, resid), m, dtype=np.float64), out=rms[side])
            np.subtract(ybar, slope[side] * x_mean, out=log_b[side])
    failed = ~np.isfinite(check)
    nan_in = np.zeros(n_rows, bool)
    if failed.any():
        for side, (cols, *_) in enumerate(designs):
            rows_failed = np.flatnonzero(failed[side])
            nonfinite = ~np.isfinite(g2[rows_failed, cols]).all(axis=1)
            nan_in[rows_failed[nonfinite]] = True
            reason[rows_failed[~nonfinite]] = CODE.NONPOSITIVE_CONDUCTANCE
    worst = np.maximum(rms[0], rms[1])
    reason[(reason == 0) & ~(worst <= max_log_residual)] = CODE.POOR_POWER_LAW_FIT
    reason[nan_in] = CODE.NAN_INPUT
    # one (7, rows) block, masked and cast once: the fields are its rows
    out = np.empty((7, n_rows))
    np.multiply(0.5, slope[0] + slope[1], out=out[0])
    out[1:3] = slope
    np.exp(0.5 * (log_b[0] + log_b[1]), out=out[3])
    np.exp(log_b[0], out=out[4])  # one exp per array as before: libm and SIMD exp may differ in the last bit
    np.exp(log_b[1], out=out[5])
    out[:6, reason != 0] = np.nan
    out[6] = worst
    out[6, nan_in] = np.nan
    out = out.astype(dtype, copy=False)
    return PowerLawResult(out[0], out[1], out[2], out[3], out[4], out[5], out[6], reason)


def fit_power_law(
    bias_V: np.ndarray,
    didv: np.ndarray,
    *,
    window_V: tuple[float, float] = (5e-3, 30e-3),
    max_log_residual: float = 0.1,
) -> PowerLawResult:
    """AA power law dI/dV = b |V|^alpha, no offset, per polarity (the paper's alpha(r), see docs/physics.md).

    ln G = ln b_s + alpha_s ln|V| by least squares on window_V[0] <= |V| <= window_V[1] for
    s = + and -; alpha = (alpha_+ + alpha_-) / 2, b = sqrt(b_+ b_-) (geometric mean). With a
    shared bias axis the slope is one weighted sum per row, alpha_s = sum (x - <x>) y / Sxx.

    Returns
    -------
    PowerLawResult
        rms_log_residual is the larger of the two polarities' rms residual of ln G (NaN where
        a window holds non-finite or non-positive dI/dV).
    """
    bias = np.asarray(bias_V, dtype=np.float64)
    g = np.asarray(didv)
    lead = g.shape[:-1]
    dtype = np.dtype(g.dtype if g.dtype == np.float32 else np.float64)
    g2 = g.reshape(-1, bias.size)
    if g2.dtype not in (np.float32, np.float64):
        g2 = g2.astype(np.float64)
    designs = log_designs(bias.tobytes(), tuple(window_V), g2.dtype.str)
    law = power_law_rows(g2, designs, max_log_residual=max_log_residual, dtype=dtype)
    return PowerLawResult(*(v.reshape(lead) for v in law))
