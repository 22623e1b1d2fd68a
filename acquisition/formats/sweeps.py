"""Sweeps that are not uniform (multi-segment MLS sweeps) put on the uniform grid the analysis needs.

The analysis works on uniform sweeps. A multi-segment sweep (dense across the gap, sparse outside,
say) is resampled onto a uniform grid with the finest step of its segments, by linear
interpolation between its points: the dense segment keeps its values, the sparse ones gain
interpolated points and no information. :class:`Resampler` does it for spectra that share a sweep.
"""

from __future__ import annotations

import numpy as np

from stslive.drivers.errors import AnalysisError

__all__ = ["UNIFORM_TOLERANCE", "Resampler", "is_uniform"]

#: Steps that differ from their mean by less than this fraction make a uniform sweep (the
#: analysis' own tolerance).
UNIFORM_TOLERANCE = 1e-3
#: The resampled grid holds at most this many times the original points.
MAX_GROWTH = 8


def is_uniform(sweep: np.ndarray) -> bool:
    """Whether ``sweep`` (1-D, monotonic) has one step within :data:`UNIFORM_TOLERANCE`."""
    steps = np.diff(np.asarray(sweep, dtype=np.float64))
    if steps.size == 0 or not np.isfinite(steps).all():
        return True  # nothing to resample (a point not measured has a NaN sweep)
    mean = steps.mean()
    return bool(np.abs(steps - mean).max() <= UNIFORM_TOLERANCE * abs(mean))


class Resampler:
    """Linear interpolation of spectra on a strictly monotonic ``sweep`` onto a uniform grid
    (AnalysisError for any other sweep).

    Attributes
    ----------
    sweep : ndarray
        The recorded sweep ``(n,)``.
    target : ndarray
        The uniform grid ``(m,)``: same limits and direction, the finest recorded step (at most
        :data:`MAX_GROWTH` times the points).
    """

    def __init__(self, sweep: np.ndarray) -> None:
        self.sweep = np.asarray(sweep, dtype=np.float64)
        signed = np.diff(self.sweep)
        if not (np.isfinite(signed).all() and ((signed > 0).all() or (signed < 0).all())):
            raise AnalysisError("the sweep runs back and forth or repeats a value: it cannot be put on a uniform grid")
        steps = np.abs(signed)
        finest = float(steps.min())
        span = abs(float(self.sweep[-1] - self.sweep[0]))
        m = min(round(span / finest) + 1, MAX_GROWTH * self.sweep.size)
        self.target = np.linspace(self.sweep[0], self.sweep[-1], m)
        ascending = self.sweep[-1] > self.sweep[0]
        x = self.sweep if ascending else -self.sweep
        t = self.target if ascending else -self.target
        right = np.clip(np.searchsorted(x, t, side="right"), 1, x.size - 1)
        self._left = right - 1
        self._right = right
        width = x[right] - x[right - 1]
        self._weight = np.where(width > 0, (t - x[right - 1]) / np.where(width > 0, width, 1.0), 0.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``values`` ``(..., n)`` on :attr:`target`: ``(..., m)``, in the input's float dtype."""
        v = np.asarray(values)
        out = v[..., self._left] * (1.0 - self._weight) + v[..., self._right] * self._weight
        return out.astype(v.dtype if v.dtype.kind == "f" else np.float64, copy=False)
