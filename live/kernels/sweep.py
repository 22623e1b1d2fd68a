"""The bias sweep and the sign convention: ascending uniform bias, positive conductance.

Every kernel works on an ascending uniform bias grid (:func:`prepare_sweep` reorders a sweep
recorded from positive to negative) and on channels whose conductance is positive
(:func:`conductance_sign`); the batch engine calls these same functions on each chunk.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.scales import MIN_SWEEP_POINTS, SIGN_END_DIVISOR

__all__ = ["bias_step", "conductance_sign", "grid_step", "mirror", "prepare_sweep"]

_MINUS_ONE, _PLUS_ONE = np.int8(-1), np.int8(1)


def bias_step(bias_V: np.ndarray, *, key: bytes | None = None) -> float:
    """Step (V) of an ascending uniform 1-D bias grid.

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Bias, V.
    key : bytes, optional
        The grid's float64 bytes if the caller has them (a bytes object hashes once, so the
        caches it keys share that cost).

    Raises
    ------
    AnalysisError
        Fewer than ``MIN_SWEEP_POINTS`` points, not 1-D, not uniform or not ascending.
    """
    if bias_V.ndim != 1 or bias_V.size < MIN_SWEEP_POINTS:
        raise AnalysisError(
            f"bias must be a 1-D sweep of at least {MIN_SWEEP_POINTS} points (got shape {bias_V.shape})"
        )
    return grid_step(bias_V.astype(np.float64).tobytes() if key is None else key)


# Grid-only quantities are cached per bias grid, keyed by its bytes (never the array's id): the
# live analyser calls the kernels with 1-8 spectra at a time on the same grid.
@lru_cache(maxsize=32)
def grid_step(bias_key: bytes) -> float:
    """:func:`bias_step` of the float64 grid ``bias_key`` (an exception is not cached)."""
    steps = np.diff(np.frombuffer(bias_key, dtype=np.float64))
    step = float(steps.mean())
    if step <= 0 or np.max(np.abs(steps - step)) > 1e-3 * step:
        raise AnalysisError(
            "the bias sweep must be uniform and ascending; call prepare_sweep() first, and "
            "resample non-uniform sweeps onto a uniform grid"
        )
    return step


def prepare_sweep(bias_V: np.ndarray, *channels: np.ndarray, axis: int = -1) -> tuple[np.ndarray, ...]:
    """Return the bias ascending and the channels reordered the same way along ``axis``.

    Sweeps may run from positive to negative bias (or be recorded backwards); every kernel expects
    ascending bias. The returned arrays are views (no copy).
    """
    bias = np.asarray(bias_V)
    if bias.ndim != 1:
        raise AnalysisError(f"bias must be 1-D (one sweep for all spectra), got shape {bias.shape}")
    arrays = [np.asarray(c) for c in channels]
    for c in arrays:
        if c.shape[axis] != bias.size:
            raise AnalysisError(f"a channel has {c.shape[axis]} points on axis {axis}, the bias {bias.size}")
    if bias.size > 1 and bias[0] > bias[-1]:
        bias = bias[::-1]
        arrays = [np.flip(c, axis=axis) for c in arrays]
    return (bias, *arrays)


def conductance_sign(bias_V: np.ndarray, signal: np.ndarray, *, kind: str = "current", axis: int = -1) -> np.ndarray:
    """Sign (+1/-1, int8, shape (...)) that makes the conductance positive.

    For ``kind="current"`` the sign of I(V_max) - I(V_min), each the mean of the outer
    1/``SIGN_END_DIVISOR`` of the sweep (5 %, so noise cannot flip it); for ``kind="didv"`` the
    sign of the median of the channel. A tie (zero, or NaN) counts as +1.
    """
    x = np.asarray(signal)
    if axis not in (-1, x.ndim - 1):
        x = np.moveaxis(x, axis, -1)
    if kind == "current":
        k = max(1, x.shape[-1] // SIGN_END_DIVISOR)
        # = mean(dtype=float64) of each end: the sum, then one division
        rise = np.add.reduce(x[..., -k:], axis=-1, dtype=np.float64) / k
        rise -= np.add.reduce(x[..., :k], axis=-1, dtype=np.float64) / k
        bias = np.asarray(bias_V)
        # negative where the current falls with rising bias (a flat or descending-only grid: +1)
        falling = rise < 0 if bias[-1] > bias[0] else rise > 0 if bias[-1] < bias[0] else np.zeros_like(rise, bool)
    elif kind == "didv":
        falling = _median_sign(x) < 0
    else:
        raise AnalysisError(f"kind={kind!r}: use 'current' or 'didv'")
    return np.where(falling, _MINUS_ONE, _PLUS_ONE)


def _median_sign(x: np.ndarray) -> np.ndarray:
    """np.sign(np.median(x, axis=-1)) by counting signs (one pass instead of a partition).

    The median is negative exactly when more than half the samples are; only rows where that
    does not decide it (zeros, NaN, or an even count split evenly) take np.median itself.
    """
    n = x.shape[-1]
    neg = np.add.reduce(x < 0, axis=-1)  # not np.count_nonzero: its axis path costs ~10 us a call
    pos = np.add.reduce(x > 0, axis=-1)
    twice_neg = 2 * neg
    s = np.where(twice_neg > n, -1.0, 1.0)
    undecided = (neg + pos < n) | (twice_neg == n)
    if undecided.any():
        s[undecided] = np.sign(np.median(x[undecided], axis=-1))
    return s


def mirror(bias: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The negative-bias side seen as a positive one: V -> -V, bias re-sorted ascending."""
    return (-bias[::-1], *(a[..., ::-1] for a in arrays))
