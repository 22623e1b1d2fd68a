"""The figure of a line cut (a grid of one row or one column): Delta(x), alpha(x) and a waterfall.

A map one pixel wide is a stripe nobody can read; a physicist wants the profiles along the line
and the spectra themselves. :func:`linecut_figure` draws Delta and alpha against the position
along the line (scan-frame x for a row, y for a column, the distance from the first pixel when
the frame is rotated), with error bars when the maps carry per-pixel uncertainties
(``delta_sigma_eV``, ``alpha_sigma``), pixels without a value marked on the axis, and the
gap spectra stacked beside them (:func:`~stslive.live.offline.figure_spectra.draw_waterfall`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from stslive.live.offline.figure_maps import no_valid_message
from stslive.live.offline.figure_spectra import NO_SPECTRUM, ExampleSpectrum, draw_waterfall
from stslive.live.offline.figures import RunMaps, new_figure, pixel_centres_nm, say_empty, set_title

__all__ = ["line_positions_nm", "linecut_figure"]


def line_positions_nm(maps: RunMaps) -> tuple[np.ndarray, str]:
    """Position of each pixel along the line (nm, in grid order) and the axis name."""
    x, y = (c.ravel() for c in pixel_centres_nm(maps.geometry))
    if maps.geometry.angle_deg == 0.0:
        return (x, "x") if maps.geometry.ny == 1 else (y, "y")
    return np.hypot(x - x[0], y - y[0]), "distance along the line"


def _mark_missing(ax: Axes, position: np.ndarray, refused: np.ndarray, missing: np.ndarray, what: str) -> None:
    """Rug marks on the bottom of ``ax`` for refused (x) and unmeasured (|) pixels, with legend entries."""
    rug = blended_transform_factory(ax.transData, ax.transAxes)
    for mask, marker, colour, size, label in (
        (refused, "x", "tab:red", 5, f"no {what}"),
        (missing, "|", "0.6", 8, "not measured"),
    ):
        if mask.any():
            count = int(mask.sum())
            ax.plot(position[mask], np.full(count, 0.03), marker, color=colour, ms=size, transform=rug,
                    label=f"{label} ({count} px)")  # fmt: skip


def _profile(
    ax: Axes,
    position: np.ndarray,
    maps: RunMaps,
    curves: Sequence[tuple[str, str, float, str, str]],
    quantity: str,
    what: str,
) -> None:
    """Curves (map name, sigma map name, scale, colour, label) of one quantity along the line."""
    valid = maps.valid(quantity).ravel()
    measured = maps.measured.ravel()
    if not valid.any():
        say_empty(ax, no_valid_message(maps, quantity))
        return
    for name, sigma_name, scale, colour, label in curves:
        values = np.asarray(maps.maps[name], dtype=np.float64).ravel() * scale
        shown = np.where(valid, values, np.nan)  # NaN breaks the line at a refused pixel
        ax.plot(position, shown, "-", color=colour, lw=1, alpha=0.8)
        sigma = maps.maps.get(sigma_name)
        err = None if sigma is None else np.asarray(sigma, dtype=np.float64).ravel()[valid] * scale
        ax.errorbar(
            position[valid],
            values[valid],
            yerr=err,
            fmt="o",
            ms=3,
            color=colour,
            capsize=2 if err is not None else 0,
            label=label + (" (error bars: 1 sigma)" if err is not None else ""),
        )
    _mark_missing(ax, position, measured & ~valid, ~measured, what)
    ax.legend(fontsize=8, loc="best")


def linecut_figure(maps: RunMaps, spectra: Sequence[ExampleSpectrum], *, gap_search_V: tuple[float, float]) -> Figure:
    """Delta(x) and alpha(x) on the left, the waterfall of the gap spectra on the right (module docstring)."""
    position, axis = line_positions_nm(maps)
    fig = new_figure((14, 7.5))
    grid = fig.add_gridspec(2, 2, width_ratios=(1.3, 1))
    ax_delta = fig.add_subplot(grid[0, 0])
    ax_alpha = fig.add_subplot(grid[1, 0], sharex=ax_delta)
    ax_fall = fig.add_subplot(grid[:, 1])
    _profile(
        ax_delta, position, maps, [("delta_eV", "delta_sigma_eV", 1e3, "tab:blue", "$\\Delta$")], "delta", "$\\Delta$"
    )
    ax_delta.set_ylabel("gap $\\Delta$ (meV)")
    _profile(
        ax_alpha,
        position,
        maps,
        [
            ("alpha", "alpha_sigma", 1.0, "k", "$\\alpha$ (mean)"),
            ("alpha_pos", "", 1.0, "tab:red", "$\\alpha_+$ (V > 0)"),
            ("alpha_neg", "", 1.0, "tab:blue", "$\\alpha_-$ (V < 0)"),
        ],
        "alpha",
        "$\\alpha$",
    )
    ax_alpha.set_ylabel("AA exponent $\\alpha$")
    ax_alpha.set_xlabel(f"{axis} (nm)")
    if spectra:
        index = [s.iy * maps.geometry.nx + s.ix for s in spectra]
        draw_waterfall(ax_fall, spectra, position[index], axis_label=axis, fallback_V=gap_search_V[1])
    else:
        say_empty(ax_fall, NO_SPECTRUM)
    set_title(fig, f"Line cut of {position.size} pixels", maps.caption)
    return fig
