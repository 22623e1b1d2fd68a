"""What a run's flags judged: every pixel's rule inputs and labels, kept in acquisition-time order.

Contract: :class:`FlagLog` is a column store (one row per measurement judged, growing by
doubling) of the inputs the flag rules read and the labels they gave. Rows are kept in the order
the rules judged them, which is measurement-time order: a measurement that arrives late (filled
from the archive after a stream gap) breaks that order, and the owner then sorts the log
(:meth:`FlagLog.sort_by_time`) and judges it again, so the labels never depend on when a pixel
arrived. :meth:`FlagLog.latest` tells the rows that are the latest measurement of their pixel (the
ones the results maps hold).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FlagLog"]

#: Column -> (dtype, trailing shape) of the log.
COLUMNS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "iy": (np.dtype(np.int64), ()),
    "ix": (np.dtype(np.int64), ()),
    "set_id": (np.dtype(np.int64), ()),
    "time": (np.dtype(np.float64), ()),  # end of the measurement, unix s (NaN: unknown, judged last)
    "arrival": (np.dtype(np.int64), ()),  # rank in the order the log received it (ties of time keep it)
    "delta_eV": (np.dtype(np.float64), ()),
    "reason": (np.dtype(np.int64), ()),
    "setpoint_rel_dev": (np.dtype(np.float64), ()),
    "tip_features": (np.dtype(np.float64), (2,)),
    "lockin_peak": (np.dtype(np.float64), ()),
    "lockin_rel_residual": (np.dtype(np.float64), ()),
    "temperature_K": (np.dtype(np.float64), ()),
    "lockin_status": (np.dtype(np.int64), ()),
    "lockin_overload": (np.dtype(np.bool_), ()),
    "bits": (np.dtype(np.uint32), ()),
    "tip_epoch": (np.dtype(np.int16), ()),
}


def _time_key(t: np.ndarray) -> np.ndarray:
    """Sort key of measurement times: unknown (NaN) after every known one."""
    return np.where(np.isnan(t), np.inf, t)


class FlagLog:
    """Rows of (pixel, measurement time, rule inputs, labels), in judging order."""

    def __init__(self) -> None:
        self.n = 0
        self._data = {k: np.zeros((16, *shape), dtype=dtype) for k, (dtype, shape) in COLUMNS.items()}
        self._arrivals = 0

    def __len__(self) -> int:
        return self.n

    def col(self, name: str) -> np.ndarray:
        """Column ``name`` of every row (a view: writing to it changes the log)."""
        return self._data[name][: self.n]

    def append(self, **columns: np.ndarray) -> slice:
        """Add rows (every input column, (m,) or (m, 2)); labels start at 0; returns their positions."""
        m = len(columns["iy"])
        need = self.n + m
        if need > len(self._data["iy"]):
            size = max(need, 2 * len(self._data["iy"]))
            for k, old in self._data.items():
                grown = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
                grown[: self.n] = old[: self.n]
                self._data[k] = grown
        rows = slice(self.n, need)
        for k, value in columns.items():
            self._data[k][rows] = value
        self._data["arrival"][rows] = np.arange(self._arrivals, self._arrivals + m)
        self._data["bits"][rows] = 0
        self._data["tip_epoch"][rows] = 0
        self._arrivals += m
        self.n = need
        return rows

    def in_time_order(self, start: int) -> bool:
        """Whether the rows from ``start`` on follow the earlier ones (and each other) in time."""
        key = _time_key(self.col("time")[max(0, start - 1) :])
        return bool(np.all(key[1:] >= key[:-1]))  # not np.diff: inf - inf is NaN

    def sort_by_time(self) -> None:
        """Reorder the rows by measurement time, equal times keeping their arrival order."""
        order = np.lexsort((self.col("arrival"), _time_key(self.col("time"))))
        for k in self._data:
            self._data[k][: self.n] = self._data[k][: self.n][order]

    def latest(self) -> np.ndarray:
        """(n,) bool: rows that are the latest measurement of their pixel (time, then arrival)."""
        iy, ix = self.col("iy"), self.col("ix")
        flat = iy * (int(ix.max(initial=0)) + 1) + ix
        order = np.lexsort((self.col("arrival"), _time_key(self.col("time")), flat))
        last = np.ones(self.n, dtype=bool)
        last[:-1] = flat[order][1:] != flat[order][:-1]
        out = np.zeros(self.n, dtype=bool)
        out[order[last]] = True
        return out
