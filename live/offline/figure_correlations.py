"""Correlation figures of an analysed run (paper Appendix A), drawn from its snapshot and report.

* :func:`cross_correlation_figure`: the 2D Delta-alpha cross-correlation, zero shift at the
  centre, lags in nm, a diverging colour scale symmetric about 0;
* :func:`profiles_figure`: the radial autocorrelations of Delta and alpha, and beside them the
  Delta-alpha cross profile drawn signed (a sign change must not look like a bump), each with its
  noise band shaded, its 1/e length (dashed) and "into the noise" length (triangle), and the
  90 % intervals where the report has them (bars on the level the length is read at).

Report keys read (absent ones are simply not drawn): ``noise_band_<k>``, ``l_<k>_nm``,
``l_<k>_noise_nm``, ``l_<k>_nm_ci90``, ``rho_cross_0_ci90`` for k in delta, alpha, cross, at
the top level of the report or in its ``correlations`` section; ``warnings`` (a list of
sentences) is printed under the profiles.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stslive.live.offline.figures import RunCaption, new_figure, say_empty, set_title
from stslive.live.results import CorrelationSnapshot

__all__ = ["cross_correlation_figure", "profiles_figure", "report_value", "report_interval"]

_COLOURS = {"delta": "tab:blue", "alpha": "tab:orange", "cross": "tab:green"}
_NAMES = {"delta": "$\\Delta$", "alpha": "$\\alpha$", "cross": "$\\Delta$-$\\alpha$"}
NO_CORRELATION = "no correlation: fewer than 3 valid pixels"
TOO_NARROW = (
    "no radial profile: the map is too narrow (rings reach half its shorter side)\n"
    "$\\rho_{{\\Delta\\alpha}}(0)$ = {rho0:.3f}"
)


def report_value(report: Mapping[str, Any], key: str) -> float | None:
    """A finite number under ``key`` (top level, else the ``correlations`` section), else None."""
    section = report.get("correlations")
    for where in (report, section if isinstance(section, Mapping) else {}):
        value = where.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def report_interval(report: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """A finite ``[low, high]`` pair under ``key`` (where :func:`report_value` looks), else None."""
    section = report.get("correlations")
    for where in (report, section if isinstance(section, Mapping) else {}):
        value = where.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 2:
            try:
                lo, hi = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(lo) and math.isfinite(hi):
                return lo, hi
    return None


def cross_correlation_figure(snapshot: CorrelationSnapshot | None, *, caption: RunCaption | None) -> Figure:
    """The 2D Delta-alpha cross-correlation (fftshifted: zero lag at the centre), lags in nm."""
    fig = new_figure((6.4, 5.6))
    ax = fig.subplots()
    if snapshot is None:
        say_empty(ax, NO_CORRELATION)
        set_title(fig, "$\\Delta$-$\\alpha$ cross-correlation", caption)
        return fig
    cross = snapshot.cross_map
    ny, nx = cross.shape
    p = snapshot.pixel_nm if np.isfinite(snapshot.pixel_nm) else 1.0
    extent = (-(nx // 2 + 0.5) * p, (nx - nx // 2 - 0.5) * p, -(ny // 2 + 0.5) * p, (ny - ny // 2 - 0.5) * p)
    limit = float(np.nanmax(np.abs(cross))) if np.isfinite(cross).any() else 1.0
    im = ax.imshow(
        cross, origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    ax.axhline(0, color="0.3", lw=0.5)
    ax.axvline(0, color="0.3", lw=0.5)
    ax.set_xlabel("shift x (nm)")
    ax.set_ylabel("shift y (nm)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="$\\rho_{\\Delta\\alpha}$")
    set_title(fig, f"$\\Delta$-$\\alpha$ cross-correlation, $\\rho(0)$ = {snapshot.rho_cross_0:.3f}", caption)
    return fig


def _length_text(length: float | None, interval: tuple[float, float] | None) -> str:
    if length is None:
        return "not reached"
    return f"{length:.1f} nm" + ("" if interval is None else f" [{interval[0]:.1f}, {interval[1]:.1f}]")


def _draw_profile(
    ax: Axes,
    r: np.ndarray,
    rho: np.ndarray,
    key: str,
    report: Mapping[str, Any],
    *,
    level: float,
    filled: bool,
    bar_offset: float = 0.0,
) -> None:
    """One profile with its noise band, 1/e length (read at ``level``; its interval bar ``bar_offset`` above)."""
    colour, name = _COLOURS[key], _NAMES[key]
    length = report_value(report, f"l_{key}_nm")
    interval = report_interval(report, f"l_{key}_nm_ci90")
    # the interval is the film process's length (finite-size corrected) when the report gives that
    # value: it need not contain this map's 1/e crossing, so it is drawn at the corrected value
    corrected = report_value(report, f"l_{key}_nm_corrected") if interval is not None else None
    text = f"{length:.1f} nm (this map)" if corrected is not None and length is not None else None
    ax.plot(r, rho, color=colour, lw=1.6, label=f"{name}: $l_{{1/e}}$ = {text or _length_text(length, interval)}")
    band = report_value(report, f"noise_band_{key}")
    if band is not None and filled:
        ax.axhspan(-band, band, color=colour, alpha=0.12, lw=0, label=f"{name} noise band $\\pm${band:.3f}")
    elif band is not None:  # two bands on one panel: edges only, a fill of each would hide the other
        ax.axhline(band, color=colour, ls="-.", lw=0.9, label=f"{name} noise band $\\pm${band:.3f}")
        ax.axhline(-band, color=colour, ls="-.", lw=0.9)
    if length is not None:
        ax.axvline(length, color=colour, ls="--", lw=1)
    centre = corrected if corrected is not None else length
    if centre is not None and interval is not None:
        lo, hi = interval
        label = (
            f"{name} 90 % interval of $l$"
            if corrected is None
            else f"{name} film's $l$ {corrected:.1f} nm, 90 % [{lo:.1f}, {hi:.1f}] (finite-size corrected)"
        )
        ax.errorbar(
            [centre],
            [level + bar_offset],
            xerr=[[max(centre - lo, 0.0)], [max(hi - centre, 0.0)]],
            color=colour,
            capsize=4,
            fmt="o" if corrected is None else "D",
            ms=4,
            label=label,
        )
    noise_length = report_value(report, f"l_{key}_noise_nm")
    if noise_length is not None and band is not None:
        ax.plot(
            [noise_length],
            [band if level >= 0 else -band],
            "v",
            ms=8,
            color=colour,
            mec="k",
            mew=0.5,
            label=f"{name} into the noise: {noise_length:.1f} nm",
        )


def profiles_figure(
    snapshot: CorrelationSnapshot | None, report: Mapping[str, Any], *, caption: RunCaption | None
) -> Figure:
    """Radial autocorrelations (left) and the signed Delta-alpha cross profile (right); see the module docstring."""
    fig = new_figure((13, 5.2))
    ax_auto, ax_cross = fig.subplots(1, 2)
    if snapshot is None or snapshot.r_nm.size < 2:
        # rings reach half the map's shorter side: a line cut (or a 2-pixel-wide map) has only r = 0
        short = NO_CORRELATION if snapshot is None else TOO_NARROW.format(rho0=snapshot.rho_cross_0)
        for ax in (ax_auto, ax_cross):
            say_empty(ax, short)
        set_title(fig, "Correlation profiles", caption)
        return fig
    r = snapshot.r_nm
    # the two interval bars sit just above and below the 1/e line, so neither hides the other
    for key, rho, nudge in (("delta", snapshot.rho_delta, 0.015), ("alpha", snapshot.rho_alpha, -0.015)):
        _draw_profile(ax_auto, r, rho, key, report, level=1 / math.e, filled=False, bar_offset=nudge)
    ax_auto.axhline(1 / math.e, color="gray", ls=":", lw=1, label="1/e")
    ax_auto.set_title("autocorrelations", fontsize=10)
    rho0 = float(snapshot.rho_cross[0]) if np.isfinite(snapshot.rho_cross[0]) else snapshot.rho_cross_0
    _draw_profile(ax_cross, r, snapshot.rho_cross, "cross", report, level=rho0 / math.e, filled=True)
    ax_cross.axhline(rho0 / math.e, color="gray", ls=":", lw=1, label="$\\rho(0)/e$ (1/e of |$\\rho$|)")
    interval = report_interval(report, "rho_cross_0_ci90")
    if interval is not None:
        lo, hi = interval
        ax_cross.errorbar(
            [0.0],
            [rho0],
            yerr=[[max(rho0 - lo, 0.0)], [max(hi - rho0, 0.0)]],
            color="k",
            capsize=4,
            fmt="s",
            ms=4,
            label=f"$\\rho(0)$ = {rho0:.3f}, 90 % [{lo:.2f}, {hi:.2f}]",
        )
    ax_cross.set_title(f"$\\Delta$-$\\alpha$ cross-correlation, signed: $\\rho(0)$ = {rho0:.3f}", fontsize=10)
    top = float(np.nanmax(r)) if np.isfinite(r).any() and np.nanmax(r) > 0 else 1.0
    for ax in (ax_auto, ax_cross):
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlim(-0.02 * top, top)  # room for the bar of rho(0) at r = 0
        ax.set_xlabel("r (nm)")
        ax.set_ylabel("radial correlation $\\rho(r)$")
        ax.legend(fontsize=7.5, loc="best")
    set_title(fig, f"Correlation profiles (paper Appendix A), {snapshot.n_pixels} valid pixels", caption)
    _show_warnings(fig, report)
    return fig


def _show_warnings(fig: Figure, report: Mapping[str, Any]) -> None:
    """The report's ``warnings`` (e.g. too few pixels, a map not much larger than the lengths) under the panels."""
    warnings = report.get("warnings")
    texts = (
        [str(w.get("message", w)) if isinstance(w, Mapping) else str(w) for w in warnings]
        if isinstance(warnings, (list, tuple))
        else []
    )
    if texts:
        # wrapped to the figure's width (a finite-size warning is a long sentence)
        width = max(60, int(fig.get_figwidth() * 15))
        lines = [textwrap.fill("warning: " + t, width=width, subsequent_indent="  ") for t in texts]
        fig.supxlabel("\n".join(lines), color="tab:red", fontsize=9)
