"""Running means and the box derivative dI/dV, over whole rows or over chosen column ranges.

:func:`derivative` (the public dI/dV) and the batch engine compute through the same two
functions, :func:`box_derivative_into` and :func:`running_mean_into`; the engine passes only the
column ranges its fits read, :func:`derivative` the whole row. A range is computed from the
samples it depends on (:func:`running_mean_span`), or from the whole row where those reach a
sweep end (there the running mean pads with the end value, as over the whole row).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import savgol_filter

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.buffers import scratch
from stslive.live.kernels.sweep import bias_step

__all__ = ["DEFAULT_DERIVATIVE_POINTS", "box_derivative_into", "derivative", "running_mean_into", "running_mean_span"]

#: Default width of :func:`derivative`, samples (0.55 mV at the reference 50 uV step). The
#: analysis chooses its own width from the noise (``KernelOptions.smoothing_points``).
DEFAULT_DERIVATIVE_POINTS = 11

#: Half-open column ranges (lo, hi) of a row.
Columns = tuple[tuple[int, int], ...]


def running_mean_span(lo: int, hi: int, *, reach: int, n: int) -> tuple[int, int]:
    """The columns (start, stop) a running-mean result on columns ``lo..hi`` is computed from.

    ``lo - reach .. hi + reach`` when that lies inside the row of ``n`` samples, else the whole
    row. Why not always the whole row: the engine's ranges are a few hundred of 1601 columns and
    the filter's cost grows with its input. scipy's running sum accumulates from the first
    column it is given, so a sub-span's values equal the whole row's to rounding, not bit for
    bit; they equal, bit for bit, the same function applied to the sub-sweep ``start..stop``.
    """
    if lo < reach or hi > n - reach:
        return 0, n
    return lo - reach, hi + reach


def running_mean_into(
    out: np.ndarray,
    x: np.ndarray,
    columns: Columns,
    *,
    points: int,
    scale: np.ndarray | float = 1.0,
    name: str = "running_mean",
) -> None:
    """``out[..., lo:hi] = scale * U[..., lo:hi]`` per column range, U the ``points``-wide running mean of ``x``.

    Parameters
    ----------
    out : ndarray, (..., n)
        Receives the ranges; other columns are not touched.
    x : ndarray, (..., n)
        Rows to smooth along the last axis (``scipy.ndimage.uniform_filter1d``, ends padded with
        the end value).
    columns : tuple of (lo, hi)
        Half-open column ranges.
    points : int
        Width of the running mean, samples (odd).
    scale : float or ndarray broadcasting to (..., 1)
        Factor per row (e.g. the conductance sign), in the dtype of ``out``.
    name : str
        Name of the per-thread work array (see :mod:`~stslive.live.kernels.buffers`).
    """
    n = x.shape[-1]
    for lo, hi in columns:
        a, b = running_mean_span(lo, hi, reach=points // 2, n=n)
        mean = uniform_filter1d(
            x[..., a:b], points, axis=-1, mode="nearest", output=scratch(name, (*x.shape[:-1], b - a), x.dtype)
        )
        np.multiply(mean[..., lo - a : hi - a], scale, out=out[..., lo:hi])


def box_derivative_into(
    out: np.ndarray,
    current: np.ndarray,
    columns: Columns,
    *,
    points: int,
    step: float,
    sign: np.ndarray | None = None,
    stride: int = 1,
) -> None:
    """``out[..., lo:hi:stride]`` = the box derivative of ``current`` on each column range, times ``sign``.

    D_i = (U_{i+s} - U_{i-s}) / (2 s h), U the ``points``-wide running mean, s = (points + 1) / 2,
    h = ``step``: the two boxes abut, every sample is used once, and the cost does not grow with
    the width. Columns within s of a sweep end are NaN (no one-sided guesses).

    Parameters
    ----------
    out : ndarray, (..., n)
        Receives the ranges, in its own float dtype; other columns are not touched.
    current : ndarray, (..., n)
        I(V), A, on a uniform ascending grid of step ``step`` (V).
    columns : tuple of (lo, hi)
        Half-open column ranges.
    points : int
        Running-mean width, samples (odd).
    step : float
        Bias step, V.
    sign : ndarray of +-1, (...), optional
        Per-row factor (the conductance sign); applied in the same multiplication as 1 / (2 s h).
    stride : int
        Only every ``stride``-th column of each range (from its first) is written; each equals
        the whole range's value there, bit for bit (the running mean is computed over the same
        span).
    """
    n = current.shape[-1]
    s = (points + 1) // 2
    factor = 1.0 / (2 * s * step)
    scale = out.dtype.type(factor) if sign is None else (sign * factor).astype(out.dtype)[..., None]
    for lo, hi in columns:
        first, last = max(lo, s), min(hi, n - s)
        out[..., lo:first] = np.nan
        out[..., max(last, first) : hi] = np.nan
        if last <= first:
            continue
        a, b = running_mean_span(first, last, reach=points, n=n)
        mean = uniform_filter1d(
            current[..., a:b],
            points,
            axis=-1,
            mode="nearest",
            output=scratch("box_mean", (*current.shape[:-1], b - a), current.dtype),
        )
        # the first written column of the range stays on the range's stride
        first_on = first + (-(first - lo)) % stride
        if first_on >= last:
            continue
        i, j = first_on - a, last - a
        target = out[..., first_on:last:stride]
        np.subtract(mean[..., i + s : j + s : stride], mean[..., i - s : j - s : stride], out=target)
        target *= scale


def derivative(
    bias_V: np.ndarray,
    current_A: np.ndarray,
    *,
    points: int = DEFAULT_DERIVATIVE_POINTS,
    method: str = "box",
    polyorder: int = 3,
    columns: Columns | None = None,
) -> np.ndarray:
    """Numerical dI/dV (S) of I(V) (A) over a uniform ascending sweep, last axis.

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Uniform ascending bias, V.
    current_A : ndarray, (..., n)
        I(V), A.
    points : int
        Smoothing width in samples (odd).
    method : {"box", "savgol"}
        "box": :func:`box_derivative_into` over the whole row (central difference of abutting
        running means; the first and last (points + 1) / 2 samples are NaN).
        "savgol": ``scipy.signal.savgol_filter(deriv=1)`` over 2*points-1 samples, order
        ``polyorder`` (same noise, ~10x slower on 1601-point rows).
    columns : tuple of (lo, hi), optional
        Derive only these half-open column ranges (box method), NaN elsewhere: what the batch
        engine does with the columns its fits read. Default: the whole row.

    Returns
    -------
    ndarray, same shape and float dtype as ``current_A`` (float64 for other dtypes).
    """
    step = bias_step(np.asarray(bias_V))
    current = np.asarray(current_A)
    dtype = np.dtype(current.dtype if current.dtype in (np.float32, np.float64) else np.float64)
    current = current.astype(dtype, copy=False)
    if points < 3 or points % 2 == 0:
        raise AnalysisError(f"points={points}: give an odd number >= 3")
    if method == "savgol":
        if columns is not None:
            raise AnalysisError("columns= applies to the box derivative; use method='box' or derive whole rows")
        return savgol_filter(current, 2 * points - 1, polyorder, deriv=1, delta=step, axis=-1).astype(dtype, copy=False)
    if method != "box":
        raise AnalysisError(f"method={method!r}: use 'box' or 'savgol'")
    n = current.shape[-1]
    out = np.empty_like(current) if columns is None else np.full_like(current, np.nan)
    box_derivative_into(out, current, ((0, n),) if columns is None else columns, points=points, step=step)
    return out
