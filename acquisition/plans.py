"""Where the tip goes: grid plans and explicit point lists, each with the archive grid it fills.

A plan is a fixed, ordered list of :class:`PlanPoint` ``(index, iy, ix, x_m, y_m)``: ``index``
is the position in visiting order, ``(iy, ix)`` the archive cell, ``(x_m, y_m)`` the scan-frame
position (m). Every plan also has a :class:`~stslive.acquisition.formats.runmodel.GridGeometry` for the
archive: a rectangular grid is its own geometry; a line cut is a 1 x n grid rotated along the
line (so the archive's axes are exact); an arbitrary point list is stored as a 1 x n row whose
positions live in the per-pixel ``x_m``/``y_m`` metadata (the geometry is only their bounding
box). Plans are rebuilt from the stored config on resume, so they must be deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from stslive.acquisition.config import RunConfig
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.formats.runmodel import progressive_order as progressive_order  # the order's one home
from stslive.acquisition.sizes import PLAN_BYTES_PER_PIXEL, require
from stslive.drivers.errors import ConfigError

# Extent given to a degenerate bounding box (a single point, or points on one axis): the
# archive geometry needs sizes > 0 and nothing reads positions from it for point lists.
_MIN_EXTENT_M = 1e-10


@dataclass(frozen=True, slots=True)
class PlanPoint:
    """One stop of the tip: visiting ``index``, archive cell ``(iy, ix)``, position (m)."""

    index: int
    iy: int
    ix: int
    x_m: float
    y_m: float


class Plan:
    """An ordered, fixed list of points and the archive geometry they fill.

    Parameters
    ----------
    geometry
        The archive grid (``ny x nx`` cells).
    cells
        ``(n, 2)`` int array of ``(iy, ix)`` in visiting order, each cell at most once.
    x_m, y_m
        ``(n,)`` positions (m) in the same order.
    """

    def __init__(self, geometry: GridGeometry, cells: np.ndarray, x_m: np.ndarray, y_m: np.ndarray) -> None:
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        x = np.asarray(x_m, dtype=np.float64).ravel()
        y = np.asarray(y_m, dtype=np.float64).ravel()
        if not (cells.shape[0] == x.size == y.size) or x.size == 0:
            raise ConfigError(f"plan: {cells.shape[0]} cells but {x.size} x and {y.size} y positions")
        flat = cells[:, 0] * geometry.nx + cells[:, 1]
        if np.unique(flat).size != flat.size:
            raise ConfigError("plan: a cell is visited twice; every archive cell holds one spectrum")
        if not np.all(np.isfinite(x) & np.isfinite(y)):
            raise ConfigError("plan: positions must be finite (m)")
        self.geometry = geometry
        self._cells = cells
        self._x, self._y = x, y
        self._index = {(int(iy), int(ix)): i for i, (iy, ix) in enumerate(cells)}

    def __len__(self) -> int:
        return int(self._x.size)

    def __getitem__(self, index: int) -> PlanPoint:
        iy, ix = self._cells[index]
        return PlanPoint(int(index), int(iy), int(ix), float(self._x[index]), float(self._y[index]))

    def __iter__(self) -> Iterator[PlanPoint]:
        return (self[i] for i in range(len(self)))

    def at(self, iy: int, ix: int) -> PlanPoint:
        """The point filling cell ``(iy, ix)``; ConfigError if the plan has none there."""
        try:
            return self[self._index[(int(iy), int(ix))]]
        except KeyError:
            raise ConfigError(f"pixel ({iy}, {ix}) is not part of this plan (grid {self.geometry.shape})") from None

    def remaining(self, done: np.ndarray) -> Iterator[PlanPoint]:
        """Points whose cell is not marked in the ``(ny, nx)`` mask ``done``, in visiting order."""
        return (self[int(i)] for i in np.flatnonzero(self._todo(done)))

    def remaining_count(self, done: np.ndarray) -> int:
        """How many points :meth:`remaining` yields for the same mask."""
        return int(np.count_nonzero(self._todo(done)))

    def _todo(self, done: np.ndarray) -> np.ndarray:
        return ~np.asarray(done, dtype=bool)[self._cells[:, 0], self._cells[:, 1]]


def grid_plan(geometry: GridGeometry) -> Plan:
    """Every cell of a rectangular grid in ``geometry.order`` (raster, serpentine or progressive).

    Raises
    ------
    ConfigError
        The plan of so many pixels would not fit in the memory available (checked first).
    """
    require(f"grid {geometry.nx}x{geometry.ny}", memory_bytes=geometry.nx * geometry.ny * PLAN_BYTES_PER_PIXEL)
    cells = geometry.visit_order()
    x, y = geometry.pixel_xy(cells[:, 0], cells[:, 1])
    return Plan(geometry, cells, x, y)


def line_plan(start_m: tuple[float, float], end_m: tuple[float, float], n: int) -> Plan:
    """``n`` points evenly spaced from ``start_m`` to ``end_m`` (both included), e.g. a line cut.

    The archive geometry is a ``1 x n`` grid of pitch ``d = |end - start| / (n - 1)`` rotated
    along the line, ``angle = atan2(dy, dx)``, so ``GridGeometry.pixel_xy`` gives the same
    positions: cell centres at ``-L/2 + (i + 1/2) d`` with ``L = n d``.
    """
    if not (isinstance(n, int) and n >= 2):
        raise ConfigError(f"line.n = {n!r} must be an integer >= 2")
    (x0, y0), (x1, y1) = start_m, end_m
    length = math.hypot(x1 - x0, y1 - y0)
    if length == 0:
        raise ConfigError("line: start and end coincide; give two different points")
    pitch = length / (n - 1)
    geometry = GridGeometry(
        centre_x_m=(x0 + x1) / 2,
        centre_y_m=(y0 + y1) / 2,
        width_m=n * pitch,
        height_m=pitch,
        nx=n,
        ny=1,
        angle_deg=math.degrees(math.atan2(y1 - y0, x1 - x0)),
    )
    t = np.linspace(0.0, 1.0, n)
    cells = np.stack([np.zeros(n, dtype=np.int64), np.arange(n)], axis=-1)
    return Plan(geometry, cells, x0 + t * (x1 - x0), y0 + t * (y1 - y0))


def point_plan(x_m: Sequence[float], y_m: Sequence[float]) -> Plan:
    """Explicit points, visited in the given order, stored as a ``1 x n`` archive row."""
    x, y = np.asarray(x_m, dtype=np.float64), np.asarray(y_m, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ConfigError(f"points: x_m and y_m must be equally long, non-empty lists (got {x.shape}, {y.shape})")
    if not np.all(np.isfinite(x) & np.isfinite(y)):
        raise ConfigError("points: positions must be finite numbers (m)")
    geometry = GridGeometry(
        centre_x_m=float(x.min() + x.max()) / 2,
        centre_y_m=float(y.min() + y.max()) / 2,
        width_m=max(float(np.ptp(x)), _MIN_EXTENT_M),
        height_m=max(float(np.ptp(y)), _MIN_EXTENT_M),
        nx=int(x.size),
        ny=1,
    )
    cells = np.stack([np.zeros(x.size, dtype=np.int64), np.arange(x.size)], axis=-1)
    return Plan(geometry, cells, x, y)


def plan_from_config(config: RunConfig) -> Plan:
    """The plan of a run config's ``[grid]``, ``[line]`` or ``[points]`` section."""
    p = config.plan
    if config.plan_kind == "grid":
        return grid_plan(GridGeometry.from_dict(p))
    if config.plan_kind == "line":
        return line_plan((p["start_x_m"], p["start_y_m"]), (p["end_x_m"], p["end_y_m"]), p["n"])
    return point_plan(p["x_m"], p["y_m"])
