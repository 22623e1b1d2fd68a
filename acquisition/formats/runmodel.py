"""The run model: set-point parameter sets, grid geometry and per-pixel metadata (SI units).

These three small value types are shared by the scan engine, the archive, the stream and the
Nanonis import; they hold no behaviour beyond validation, conversion to plain dicts (for JSON
documents and HDF5 attributes) and the pixel -> position mapping of a grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Self

import numpy as np

from stslive.drivers.errors import ConfigError
from stslive.drivers.tomlfile import dataclass_from_mapping

ScanOrder = Literal["raster", "serpentine", "progressive"]
SCAN_ORDERS: tuple[str, ...] = ("raster", "serpentine", "progressive")


def channel_unit(channel_name: str) -> str:
    """The unit in the trailing brackets of a Nanonis-style channel name (``"Current (A)"`` -> ``"A"``), "" if none."""
    name = channel_name.strip()
    if name.endswith(")") and "(" in name:
        return name[name.rindex("(") + 1 : -1]
    return ""


class _Record:
    """``to_dict`` / ``from_dict`` of the run model's value types (``WHAT`` names the type in errors)."""

    __slots__ = ()
    WHAT: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-ready)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown, missing or impossible keys raise ConfigError."""
        return dataclass_from_mapping(cls, data, what=cls.WHAT)


def _require(condition: bool, key: str, message: str, owner: str) -> None:
    if not condition:
        raise ConfigError(f"{owner}.{key}: {message}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unknown(value: float) -> bool:
    """NaN: a value the record does not know."""
    return isinstance(value, float) and math.isnan(value)


#: The lock-in settings of a set-point set, which may be unknown (NaN; null in documents).
_LOCKIN_FIELDS = ("lockin_frequency_Hz", "lockin_amplitude_Vrms", "lockin_time_constant_s", "lockin_sensitivity_V")


@dataclass(frozen=True, slots=True)
class SetpointSet(_Record):
    """Everything that conditions one spectrum (SI units throughout).

    Parameters
    ----------
    id
        Identifier recorded with every spectrum measured under this set (>= 0).
    name
        Human-readable label (e.g. ``"spectroscopy"``).
    bias_setpoint_V, current_setpoint_A
        Tunnelling set-point at which the feedback parks the tip before the sweep (V, A).
    sweep_start_V, sweep_end_V
        Bias sweep limits (V); either direction is allowed, they must differ.
    n_points
        Points per sweep (>= 2).
    settle_s, integration_s
        Settling time before the first point and integration time per point (s).
    lockin_frequency_Hz, lockin_amplitude_Vrms, lockin_time_constant_s, lockin_sensitivity_V
        Lock-in modulation and demodulation settings; amplitude 0 means no lock-in channel.
        NaN means unknown (``null`` in :meth:`to_dict` and documents, read back as NaN): a set
        rebuilt from a file that does not record the value (a Nanonis header); a scan leaves such
        a setting as the lock-in has it.
    feedback_hold
        Open (hold) the Z feedback during the sweep (constant-height spectroscopy).
    """

    WHAT: ClassVar[str] = "setpoint_set"

    id: int
    name: str
    bias_setpoint_V: float
    current_setpoint_A: float
    sweep_start_V: float
    sweep_end_V: float
    n_points: int
    settle_s: float = 0.0
    integration_s: float = 0.0
    lockin_frequency_Hz: float = 0.0
    lockin_amplitude_Vrms: float = 0.0
    lockin_time_constant_s: float = 0.0
    lockin_sensitivity_V: float = 1.0
    feedback_hold: bool = True

    def __post_init__(self) -> None:
        who = f"setpoint_set[{self.id!r}]"
        _require(
            isinstance(self.id, int) and not isinstance(self.id, bool) and self.id >= 0,
            "id",
            "must be an integer >= 0",
            who,
        )
        _require(isinstance(self.name, str), "name", "must be a string", who)
        for key in (
            "bias_setpoint_V",
            "current_setpoint_A",
            "sweep_start_V",
            "sweep_end_V",
            "settle_s",
            "integration_s",
        ):
            _require(_finite(getattr(self, key)), key, "must be a finite number (SI units)", who)
        for key in _LOCKIN_FIELDS:
            value = getattr(self, key)
            _require(
                _finite(value) or _unknown(value), key, "must be a finite number (SI units) or null (unknown)", who
            )
        _require(
            self.bias_setpoint_V != 0.0, "bias_setpoint_V", "must be non-zero: no tunnelling current flows at 0 V", who
        )
        _require(
            self.current_setpoint_A != 0.0 and abs(self.current_setpoint_A) < 1e-6,
            "current_setpoint_A",
            "must be non-zero and below 1 uA (give amperes, e.g. 150e-12)",
            who,
        )
        _require(self.sweep_start_V != self.sweep_end_V, "sweep_end_V", "must differ from sweep_start_V", who)
        _require(
            max(abs(self.sweep_start_V), abs(self.sweep_end_V)) <= 10.0,
            "sweep_start_V",
            "sweep limits must lie within +-10 V (give volts, e.g. -0.04)",
            who,
        )
        _require(
            isinstance(self.n_points, int) and not isinstance(self.n_points, bool) and self.n_points >= 2,
            "n_points",
            "must be an integer >= 2",
            who,
        )
        for key in ("settle_s", "integration_s", *_LOCKIN_FIELDS[:3]):
            value = getattr(self, key)
            _require(_unknown(value) or value >= 0.0, key, "must be >= 0", who)
        sensitivity = self.lockin_sensitivity_V
        _require(_unknown(sensitivity) or sensitivity > 0.0, "lockin_sensitivity_V", "must be > 0", who)
        _require(isinstance(self.feedback_hold, bool), "feedback_hold", "must be true or false", who)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-ready); an unknown lock-in setting is None."""
        out = dataclasses.asdict(self)
        for key in _LOCKIN_FIELDS:
            out[key] = None if _unknown(out[key]) else out[key]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict` (None -> NaN for the lock-in settings); ConfigError as the base."""
        values = {k: math.nan if k in _LOCKIN_FIELDS and v is None else v for k, v in data.items()}
        return dataclass_from_mapping(cls, values, what=cls.WHAT)

    @property
    def bias_axis(self) -> np.ndarray:
        """Nominal sweep axis, ``linspace(sweep_start_V, sweep_end_V, n_points)`` (V, float64)."""
        return np.linspace(self.sweep_start_V, self.sweep_end_V, self.n_points)


@dataclass(frozen=True, slots=True)
class GridGeometry(_Record):
    """A rectangular grid in the scan frame, Nanonis convention.

    Pixel ``(iy, ix)`` sits at the centre of its cell:
    ``u = -width/2 + (ix + 1/2) width/nx``, ``v = -height/2 + (iy + 1/2) height/ny``, rotated by
    ``angle_deg`` (counter-clockwise) about the centre ``(centre_x_m, centre_y_m)``.
    This matches the X/Y parameters Nanonis records in its grid files for angle 0 (checked on the
    reference files). Arrays are always stored row-major ``(ny, nx)``; ``order`` only says in which
    sequence the pixels are visited.
    """

    WHAT: ClassVar[str] = "grid"

    centre_x_m: float
    centre_y_m: float
    width_m: float
    height_m: float
    nx: int
    ny: int
    angle_deg: float = 0.0
    order: str = "raster"

    def __post_init__(self) -> None:
        who = "grid"
        for key in ("centre_x_m", "centre_y_m", "width_m", "height_m", "angle_deg"):
            _require(_finite(getattr(self, key)), key, "must be a finite number (metres / degrees)", who)
        _require(self.width_m > 0 and self.height_m > 0, "width_m", "width_m and height_m must be > 0", who)
        _require(
            max(self.width_m, self.height_m) < 1e-3, "width_m", "grid larger than 1 mm: give metres (e.g. 300e-9)", who
        )
        for key in ("nx", "ny"):
            value = getattr(self, key)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                key,
                "must be an integer >= 1",
                who,
            )
        _require(self.order in SCAN_ORDERS, "order", f"must be one of {SCAN_ORDERS}", who)

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)``."""
        return (self.ny, self.nx)

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """Cell size ``(dx, dy)`` in metres."""
        return (self.width_m / self.nx, self.height_m / self.ny)

    def pixel_xy(self, iy: np.ndarray | int, ix: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Scan-frame position of pixel(s) ``(iy, ix)`` in metres (broadcasting, float64)."""
        dx, dy = self.pixel_size_m
        u = -0.5 * self.width_m + (np.asarray(ix, dtype=np.float64) + 0.5) * dx
        v = -0.5 * self.height_m + (np.asarray(iy, dtype=np.float64) + 0.5) * dy
        c, s = math.cos(math.radians(self.angle_deg)), math.sin(math.radians(self.angle_deg))
        return self.centre_x_m + c * u - s * v, self.centre_y_m + s * u + c * v

    def visit_order(self, order: str | None = None) -> np.ndarray:
        """Pixels in acquisition order, an int array ``(ny*nx, 2)`` of ``(iy, ix)``.

        ``raster`` runs every row left to right; ``serpentine`` reverses every odd row;
        ``progressive`` is :func:`progressive_order`.
        """
        order = self.order if order is None else order
        if order not in SCAN_ORDERS:
            raise ConfigError(f"grid.order: {order!r} is not one of {SCAN_ORDERS}")
        if order == "progressive":
            return progressive_order(self.nx, self.ny)
        iy, ix = np.divmod(np.arange(self.ny * self.nx), self.nx)
        if order == "serpentine":
            ix = np.where(iy % 2 == 1, self.nx - 1 - ix, ix)
        return np.stack([iy, ix], axis=-1)


def progressive_order(nx: int, ny: int) -> np.ndarray:
    """Pixels of an ``ny x nx`` grid, coarse lattice first, then successive refinements.

    Level 0 is the lattice of pixels whose indices are both multiples of ``s0``, the largest
    power of two not above a quarter of the shorter side (at least 1); level ``k`` adds the
    pixels of the lattice of spacing ``s0 / 2^k`` not measured before. Each level is walked in
    serpentine order (rows top to bottom, alternate rows reversed), so after every completed
    level the measured pixels cover the whole frame at that level's spacing, and moves within a
    level stay one lattice step long where the row allows.

    Parameters
    ----------
    nx, ny
        Grid size in pixels (>= 1 each).

    Returns
    -------
    numpy.ndarray
        int64 ``(ny * nx, 2)`` of ``(iy, ix)``: a permutation of the raster order.
    """
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in (nx, ny)):
        raise ConfigError(f"progressive order needs integer nx, ny >= 1; got nx={nx!r}, ny={ny!r}")
    spacing = 1 << max(0, (min(nx, ny) // 4).bit_length() - 1)
    iy, ix = np.divmod(np.arange(ny * nx, dtype=np.int64), nx)
    levels = []
    taken = np.zeros(ny * nx, dtype=bool)
    while spacing >= 1:
        on = (iy % spacing == 0) & (ix % spacing == 0) & ~taken
        taken |= on
        rows, cols = iy[on], ix[on]  # raster order within the level
        row_number = np.unique(rows, return_inverse=True)[1]
        # serpentine: odd rows of the level reversed (sorting by -ix); lexsort sorts by the last key first
        walk = np.lexsort((np.where(row_number % 2 == 1, -cols, cols), rows))
        levels.append(np.stack([rows[walk], cols[walk]], axis=-1))
        spacing //= 2
    return np.concatenate(levels)


@dataclass(frozen=True, slots=True)
class PixelMeta(_Record):
    """Metadata of one measured pixel (SI; times are unix seconds).

    ``lockin_status`` is the lock-in's raw status byte (SR830 ``LIAS?``), 0 when all is well;
    ``z_m`` is the tip height at the set-point before the sweep (NaN when not read).
    """

    WHAT: ClassVar[str] = "pixel_meta"

    x_m: float
    y_m: float
    setpoint_set_id: int
    t_start: float
    t_sweep_start: float
    t_sweep_end: float
    t_end: float
    temperature_before_K: float = math.nan
    temperature_after_K: float = math.nan
    z_m: float = math.nan
    lockin_status: int = 0
    lockin_overload: bool = False


@dataclass(frozen=True, slots=True)
class MetaField:
    """How one PixelMeta field is stored: numpy dtype, unit and fill value of unmeasured pixels."""

    name: str
    dtype: np.dtype
    units: str
    fill: Any = field(default=None)


def _meta_fields() -> tuple[MetaField, ...]:
    units = {
        "x_m": "m",
        "y_m": "m",
        "z_m": "m",
        "temperature_before_K": "K",
        "temperature_after_K": "K",
        "t_start": "s",
        "t_sweep_start": "s",
        "t_sweep_end": "s",
        "t_end": "s",
    }
    out = []
    for f in fields(PixelMeta):
        if f.type in ("int", int):
            out.append(MetaField(f.name, np.dtype(np.int32), "", -1))
        elif f.type in ("bool", bool):
            out.append(MetaField(f.name, np.dtype(np.bool_), "", False))
        else:
            out.append(MetaField(f.name, np.dtype(np.float64), units.get(f.name, ""), math.nan))
    return tuple(out)


#: Storage description of every PixelMeta field, in declaration order.
PIXEL_META_FIELDS: tuple[MetaField, ...] = _meta_fields()
