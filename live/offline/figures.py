"""The one way stslive makes a figure file, and the drawing rules every analysis figure shares.

Every figure is a :class:`matplotlib.figure.Figure` drawn on an Agg canvas (:func:`new_figure`,
:func:`save_figure`), never through ``pyplot``: no global backend switch and no figure registry,
so a process that also runs Qt (the screen) is not affected and nothing leaks between calls.
The shared rules: a title with the run's caption (:func:`set_title`: file, temperature,
set-point, date); maps in the scan frame in nm, rotated cells included (:func:`draw_map`), with
pixels measured but not valid hatched and unmeasured ones left pale, each with a legend entry;
an axes without data says so (:func:`say_empty`) instead of showing an empty or invented scale.
The analysis figures themselves: :mod:`~stslive.live.offline.figure_maps`,
:mod:`~stslive.live.offline.figure_spectra`, :mod:`~stslive.live.offline.figure_correlations`,
written together by :mod:`~stslive.live.offline.analysis_figures`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stslive.acquisition.formats.runmodel import GridGeometry

__all__ = [
    "DPI",
    "INVALID_FACE",
    "INVALID_HATCH",
    "UNMEASURED_COLOUR",
    "RunCaption",
    "RunMaps",
    "new_figure",
    "save_figure",
    "set_title",
    "say_empty",
    "robust_limits",
    "cell_corners_nm",
    "pixel_centres_nm",
    "draw_map",
    "marked_pixel_handles",
    "legend_below",
    "mark_unmeasured",
    "map_figure_size",
]

#: Resolution of every figure file, dots per inch.
DPI = 120
#: Face colour, hatch and hatch colour of a pixel that was measured but gave no value.
INVALID_FACE, INVALID_HATCH, INVALID_EDGE = "#d9d9d9", "xxx", "#7f7f7f"
#: Face colour of a pixel that was never measured (its outline: light grey).
UNMEASURED_COLOUR = "white"
_UNMEASURED_EDGE = "#bdbdbd"


@dataclass(frozen=True)
class RunCaption:
    """What every figure's title says about its run; None where the file does not say.

    Attributes
    ----------
    file_name : str
        The input's file name (no folder).
    temperature_K : float or None
        Sample temperature, K.
    setpoint : str or None
        The set-point as text (e.g. "-10 mV, -150 pA"; several sets joined by "; ").
    date : str or None
        When the run started, as text (ISO date and time, with its zone when known).
    """

    file_name: str
    temperature_K: float | None = None
    setpoint: str | None = None
    date: str | None = None

    def line(self) -> str:
        """One line: file, T, set-point, date (unknown values said so)."""
        temperature = "T unknown" if self.temperature_K is None else f"T = {self.temperature_K:.3g} K"
        return " | ".join(
            (
                self.file_name,
                temperature,
                f"set-point {self.setpoint}" if self.setpoint else "set-point unknown",
                self.date or "date unknown",
            )
        )


@dataclass(frozen=True)
class RunMaps:
    """The per-pixel results a figure draws, with where the grid sits and the run's caption.

    ``maps`` holds (ny, nx) arrays named as :data:`stslive.live.results.MAP_SPECS` (SI units);
    per-quantity validity (``valid_delta``, ``valid_alpha``) is used where present, else ``valid``.
    """

    geometry: GridGeometry
    maps: Mapping[str, np.ndarray]
    caption: RunCaption | None = None
    topography: np.ndarray | None = None

    @property
    def measured(self) -> np.ndarray:
        """Pixels with a result, (ny, nx) bool."""
        return np.asarray(self.maps["measured"], dtype=bool)

    def valid(self, quantity: str = "both") -> np.ndarray:
        """Pixels where ``quantity`` ("delta", "alpha" or "both") was extracted, (ny, nx) bool."""
        key = {"delta": "valid_delta", "alpha": "valid_alpha", "both": "valid"}[quantity]
        return np.asarray(self.maps.get(key, self.maps["valid"]), dtype=bool) & self.measured

    def values(self, name: str, quantity: str = "both") -> np.ndarray:
        """Map ``name`` as float64 with NaN outside the pixels valid for ``quantity``."""
        return np.where(self.valid(quantity), np.asarray(self.maps[name], dtype=np.float64), np.nan)

    @property
    def is_line(self) -> bool:
        """A line cut: one row or one column of pixels."""
        return min(self.geometry.shape) == 1 and max(self.geometry.shape) > 1


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure of ``figsize`` inches with constrained layout, on its own Agg canvas."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI`; returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    return path


#: Characters of an 11-point title per inch of figure width (DejaVu Sans averages ~0.6 em a glyph).
_TITLE_CHARS_PER_INCH = 10.5


def set_title(fig: Figure, what: str, caption: RunCaption | None) -> None:
    """Title of a figure: what it shows, then the run's caption, broken between its parts when too wide."""
    if caption is None:
        fig.suptitle(what, fontsize=11)
        return
    width = int(fig.get_figwidth() * _TITLE_CHARS_PER_INCH)
    lines = [""]
    for part in caption.line().split(" | "):
        joined = f"{lines[-1]} | {part}" if lines[-1] else part
        if len(joined) > width and lines[-1]:
            lines.append(part)
        else:
            lines[-1] = joined
    fig.suptitle("\n".join([what, *lines]), fontsize=11)


def say_empty(ax: Axes, message: str) -> None:
    """Replace an axes' content by ``message`` (no ticks, no scale: nothing is invented)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", wrap=True, fontsize=10)


def robust_limits(values: np.ndarray) -> tuple[float, float] | None:
    """1st-99th percentile colour limits of the finite values (a few outliers must not wash a map out).

    A constant map gets a narrow range around its value; no finite value gives None.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
    if hi > lo:
        return lo, hi
    pad = max(abs(lo) * 1e-3, 1e-12)
    return lo - pad, hi + pad


def cell_corners_nm(geometry: GridGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Scan-frame x, y (nm) of the cell corners, each ``(ny + 1, nx + 1)`` (rotation included)."""
    iy, ix = np.mgrid[0 : geometry.ny + 1, 0 : geometry.nx + 1]
    x, y = geometry.pixel_xy(iy - 0.5, ix - 0.5)
    return x * 1e9, y * 1e9


def pixel_centres_nm(geometry: GridGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Scan-frame x, y (nm) of the pixel centres, each ``(ny, nx)``."""
    iy, ix = np.mgrid[0 : geometry.ny, 0 : geometry.nx]
    x, y = geometry.pixel_xy(iy, ix)
    return x * 1e9, y * 1e9


def map_figure_size(
    geometry: GridGeometry, panels: int, *, panel_width: float = 5.0, extra_height: float = 1.8
) -> tuple[float, float]:
    """Figure size (inches) for ``panels`` maps side by side, each ``panel_width`` wide at the frame's aspect.

    ``extra_height`` leaves room for the titles, the colour bar's labels and the legends below;
    the aspect is clipped to 0.25..2.5 so a very long or tall frame still leaves readable panels.
    """
    x, y = cell_corners_nm(geometry)
    aspect = float(np.clip(np.ptp(y) / np.ptp(x), 0.25, 2.5)) if np.ptp(x) > 0 else 1.0
    return panel_width * panels + 1.0, panel_width * aspect + extra_height


def _cells(corners: tuple[np.ndarray, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """The quadrilaterals ``(k, 4, 2)`` of the cells where ``mask`` is True."""
    x, y = corners
    iy, ix = np.nonzero(mask)
    xs = np.stack([x[iy, ix], x[iy, ix + 1], x[iy + 1, ix + 1], x[iy + 1, ix]], axis=-1)
    ys = np.stack([y[iy, ix], y[iy, ix + 1], y[iy + 1, ix + 1], y[iy + 1, ix]], axis=-1)
    return np.stack([xs, ys], axis=-1)


def draw_map(
    ax: Axes,
    geometry: GridGeometry,
    values: np.ndarray,
    *,
    valid: np.ndarray,
    measured: np.ndarray,
    cmap: str | Colormap,
    limits: tuple[float, float] | None = None,
) -> QuadMesh:
    """Draw ``values`` on the scan frame: valid pixels coloured, the others marked, not blank.

    Parameters
    ----------
    ax
        Target axes; its labels become x, y (nm) and its aspect equal.
    geometry
        The grid's placement in the scan frame (centre, size, rotation).
    values
        ``(ny, nx)`` map; only ``valid`` pixels are coloured.
    valid, measured
        ``(ny, nx)`` masks: measured and not valid pixels are hatched (:data:`INVALID_HATCH`),
        pixels not measured are :data:`UNMEASURED_COLOUR` with a grey outline.
    cmap, limits
        Colour map and (vmin, vmax); default limits: :func:`robust_limits` of the valid pixels.

    Returns
    -------
    The colour mesh (for a colour bar).
    """
    corners = cell_corners_nm(geometry)
    shown = np.ma.masked_array(values, mask=~valid | ~np.isfinite(values))
    lo, hi = limits if limits is not None else (robust_limits(np.where(valid, values, np.nan)) or (0.0, 1.0))
    mesh = ax.pcolormesh(*corners, shown, cmap=cmap, vmin=lo, vmax=hi, shading="flat", rasterized=True)
    refused = measured & ~valid
    if refused.any():
        cells = list(_cells(corners, refused))
        ax.add_collection(
            PolyCollection(cells, facecolor=INVALID_FACE, edgecolor=INVALID_EDGE, hatch=INVALID_HATCH, linewidths=0.0)
        )
    mark_unmeasured(ax, corners, measured)
    ax.set_aspect("equal")
    ax.set_xlim(float(corners[0].min()), float(corners[0].max()))
    ax.set_ylim(float(corners[1].min()), float(corners[1].max()))
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    return mesh


def mark_unmeasured(ax: Axes, corners: tuple[np.ndarray, np.ndarray], measured: np.ndarray) -> None:
    """Cover the cells never measured with :data:`UNMEASURED_COLOUR`, outlined so they read as cells."""
    if not measured.all():
        cells = list(_cells(corners, ~measured))
        ax.add_collection(
            PolyCollection(cells, facecolor=UNMEASURED_COLOUR, edgecolor=_UNMEASURED_EDGE, linewidths=0.3)
        )


def marked_pixel_handles(*, refused: int, missing: int, refused_label: str) -> list[Patch]:
    """Legend handles for the pixels :func:`draw_map` marks (only the kinds present), with their counts."""
    handles = []
    if refused:
        label = f"{refused_label} ({refused} px)"
        handles.append(Patch(facecolor=INVALID_FACE, edgecolor=INVALID_EDGE, hatch=INVALID_HATCH, label=label))
    if missing:
        handles.append(
            Patch(facecolor=UNMEASURED_COLOUR, edgecolor=_UNMEASURED_EDGE, label=f"not measured ({missing} px)")
        )
    return handles


def legend_below(
    fig: Figure, handles: list[Patch], *, where: Literal["left", "center", "right"] = "center", title: str | None = None
) -> None:
    """A figure legend under the panels (``where``: left, center or right), laid out by the figure's engine."""
    if not handles:
        return
    loc: Literal["outside lower left", "outside lower center", "outside lower right"]
    loc = (
        "outside lower left"
        if where == "left"
        else "outside lower right"
        if where == "right"
        else "outside lower center"
    )
    fig.legend(handles=handles, loc=loc, ncols=min(len(handles), 3), fontsize=8, frameon=False, title=title,
               title_fontsize=8)  # fmt: skip
