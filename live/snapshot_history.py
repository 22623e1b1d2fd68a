"""The history of a run's correlation snapshots: each figure's estimate and 90 % band against progress.

Contract: :class:`SnapshotHistory` keeps, per snapshot, the pixels measured and valid, its time and
for each figure of :data:`FIGURES` the estimate, the film's corrected figure (``<figure>_corrected``)
and the 90 % interval of the corrected figure (a snapshot attribute ``<figure>_ci90`` = (low, high)
when the correlation estimator gives one; NaN where a snapshot has none). It is what the
screen draws to show whether l_Delta, l_alpha, l_cross and rho_cross(0) have settled; the results
model appends to it on every new snapshot, and it travels as plain arrays (:meth:`arrays`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FIGURES", "SnapshotHistory"]

#: The correlation figures followed, as named on :class:`~stslive.live.results.CorrelationSnapshot`.
FIGURES = ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")
#: Columns besides the figures: pixels measured when the snapshot was taken, valid pixels it used, unix time.
_PROGRESS = ("n_measured", "n_pixels", "time")
#: Column suffixes per figure: the 1/e estimate, the corrected figure, its 90 % interval.
_PER_FIGURE = ("", "_corrected", "_low", "_high")


def _band(snapshot: Any, figure: str) -> tuple[float, float]:
    """``<figure>_ci90`` of a snapshot as (low, high); NaN when it has none."""
    ci = getattr(snapshot, f"{figure}_ci90", None)
    try:
        low, high = (math.nan, math.nan) if ci is None else (float(ci[0]), float(ci[1]))
    except (TypeError, ValueError, IndexError):
        return math.nan, math.nan
    return low, high


class SnapshotHistory:
    """Rows of (progress, estimate and 90 % band of each figure), one per snapshot, oldest first."""

    def __init__(self) -> None:
        self._rows: list[dict[str, float]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, snapshot: Any, *, n_measured: int) -> bool:
        """Add a snapshot taken when ``n_measured`` pixels were measured; False if it is the last one again.

        A snapshot is known by its time: a viewer receives the same snapshot again with every
        full-state message, and it is kept once.
        """
        t = float(getattr(snapshot, "time", math.nan))
        if self._rows and (self._rows[-1]["time"] == t or (math.isnan(t) and math.isnan(self._rows[-1]["time"]))):
            return False
        row = {"n_measured": float(n_measured), "n_pixels": float(getattr(snapshot, "n_pixels", 0)), "time": t}
        for figure in FIGURES:
            row[figure] = float(getattr(snapshot, figure, math.nan))
            row[f"{figure}_corrected"] = float(getattr(snapshot, f"{figure}_corrected", math.nan))
            row[f"{figure}_low"], row[f"{figure}_high"] = _band(snapshot, figure)
        self._rows.append(row)
        return True

    @staticmethod
    def columns() -> tuple[str, ...]:
        """Column names of :meth:`arrays`."""
        return (*_PROGRESS, *(f"{f}{s}" for f in FIGURES for s in _PER_FIGURE))

    def arrays(self) -> dict[str, np.ndarray]:
        """The history as (k,) float64 arrays named by :meth:`columns` (NaN = unknown)."""
        return {c: np.array([r[c] for r in self._rows], dtype=np.float64) for c in self.columns()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SnapshotHistory:
        """Inverse of :meth:`arrays`; a missing column reads as NaN (an older writer)."""
        k = max((np.asarray(a).size for a in arrays.values()), default=0)
        history = cls()
        cols = {c: np.asarray(arrays.get(c, np.full(k, np.nan)), dtype=np.float64).reshape(-1) for c in cls.columns()}
        for i in range(k):
            history._rows.append({c: float(v[i]) if i < v.size else math.nan for c, v in cols.items()})
        return history
