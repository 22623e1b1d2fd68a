"""PNG figures of an offline analysis, and the one way stslive makes a figure file.

Every figure is a :class:`matplotlib.figure.Figure` drawn on an Agg canvas (:func:`new_figure`,
:func:`save_figure`), never through ``pyplot``: no global backend switch and no figure registry,
so a process that also runs Qt (the screen) is not affected and nothing leaks between calls.
The analysis figures: ``maps.png`` (Delta and alpha maps, alpha on the reversed colour scale as in
the paper, plus the topography when there is one), ``histograms.png``, ``cross_correlation.png``
(2D Delta-alpha cross-correlation, zero shift at the centre), ``correlation_profiles.png``
(radial profiles with the 1/e lengths) and ``spectra.png`` (example spectra with the coherence
peaks and the b|V|^alpha fits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stslive.live.results import CorrelationSnapshot

__all__ = [
    "new_figure",
    "save_figure",
    "ExampleSpectrum",
    "maps_figure",
    "histograms_figure",
    "cross_correlation_figure",
    "profiles_figure",
    "spectra_figure",
]

#: Resolution of every figure file, dots per inch.
DPI = 120


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


def _extent_nm(shape: tuple[int, int], pixel_nm: float) -> tuple[float, float, float, float]:
    ny, nx = shape
    p = pixel_nm if np.isfinite(pixel_nm) else 1.0
    return (0.0, nx * p, 0.0, ny * p)


def _robust_limits(values: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    """1st-99th percentile colour limits, so a few outliers do not wash the map out."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    lo, hi = np.percentile(finite, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (None, None)


def maps_figure(
    path: Path, *, delta_eV: np.ndarray, alpha: np.ndarray, pixel_nm: float, topography_m: np.ndarray | None = None
) -> Path:
    """Delta (meV) and alpha maps side by side (alpha colour scale reversed, paper Fig. 2)."""
    panels = [("Gap $\\Delta$ (meV)", delta_eV * 1e3, "viridis"), ("AA exponent $\\alpha$", alpha, "viridis_r")]
    if topography_m is not None:
        panels.append(("Topography Z (pm)", (topography_m - np.nanmean(topography_m)) * 1e12, "gray"))
    fig = new_figure((5.2 * len(panels), 4.6))
    extent = _extent_nm(delta_eV.shape, pixel_nm)
    for ax, (title, values, cmap) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=False):
        lo, hi = _robust_limits(values)
        im = ax.imshow(values, origin="lower", extent=extent, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
        fig.colorbar(im, ax=ax, shrink=0.85)
    return save_figure(fig, path)


def histograms_figure(path: Path, *, delta_eV: np.ndarray, alpha: np.ndarray, bins: int = 50) -> Path:
    """Histograms of the valid Delta (meV) and alpha values (0.5-99.5 % range), mean and std in the titles."""
    fig = new_figure((10, 4))
    for ax, values, label, unit in zip(
        fig.subplots(1, 2), (delta_eV * 1e3, alpha), ("$\\Delta$", "$\\alpha$"), (" meV", ""), strict=False
    ):
        v = values[np.isfinite(values)]
        if v.size:
            lo, hi = np.percentile(v, [0.5, 99.5])
            ax.hist(v, bins=bins, range=(lo, hi) if hi > lo else None, color="tab:blue", alpha=0.8)
            ax.axvline(v.mean(), color="k", lw=1)
            ax.set_title(f"{label}: mean {v.mean():.4g}{unit}, std {v.std():.3g}{unit}, N = {v.size}")
        ax.set_xlabel(f"{label}{' (meV)' if unit else ''}")
        ax.set_ylabel("pixels")
    return save_figure(fig, path)


def cross_correlation_figure(path: Path, snapshot: CorrelationSnapshot) -> Path:
    """The 2D Delta-alpha cross-correlation (fftshifted: zero lag at the centre), lags in nm."""
    cmap_map = snapshot.cross_map
    ny, nx = cmap_map.shape
    p = snapshot.pixel_nm if np.isfinite(snapshot.pixel_nm) else 1.0
    extent = (-(nx // 2) * p, (nx - 1 - nx // 2) * p, -(ny // 2) * p, (ny - 1 - ny // 2) * p)
    limit = float(np.nanmax(np.abs(cmap_map))) if np.isfinite(cmap_map).any() else 1.0
    fig = new_figure((6, 5))
    ax = fig.subplots()
    im = ax.imshow(
        cmap_map, origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
    )
    ax.set_title(f"$\\Delta$-$\\alpha$ cross-correlation, $\\rho(0)$ = {snapshot.rho_cross_0:.2f}")
    ax.set_xlabel("shift x (nm)")
    ax.set_ylabel("shift y (nm)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="$\\rho_{\\Delta\\alpha}$")
    return save_figure(fig, path)


def profiles_figure(path: Path, snapshot: CorrelationSnapshot) -> Path:
    """Radial profiles of the Delta and alpha autocorrelations and |cross|, 1/e lengths marked."""
    fig = new_figure((7, 4.6))
    ax = fig.subplots()
    curves = [
        ("$\\Delta$ auto", snapshot.rho_delta, snapshot.l_delta_nm, "tab:blue"),
        ("$\\alpha$ auto", snapshot.rho_alpha, snapshot.l_alpha_nm, "tab:orange"),
        ("|$\\Delta$-$\\alpha$ cross|", np.abs(snapshot.rho_cross), snapshot.l_cross_nm, "tab:green"),
    ]
    for label, values, length, colour in curves:
        text = f"{length:.1f} nm" if np.isfinite(length) else "not reached"
        ax.plot(snapshot.r_nm, values, color=colour, lw=1.6, label=f"{label}: $l_{{1/e}}$ = {text}")
        if np.isfinite(length):
            ax.axvline(length, color=colour, ls="--", lw=1)
    ax.axhline(1 / np.e, color="gray", ls=":", lw=1, label="1/e (auto; cross: 1/e of |$\\rho(0)$|)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlim(0, float(np.nanmax(snapshot.r_nm)) if snapshot.r_nm.size else 1)
    ax.set_xlabel("r (nm)")
    ax.set_ylabel("radial correlation $\\rho(r)$")
    ax.set_title("Correlation profiles (Appendix A)")
    ax.legend()
    return save_figure(fig, path)


@dataclass(frozen=True)
class ExampleSpectrum:
    """One pixel's dI/dV and the analysis results to draw on it (SI units).

    ``didv`` (unit ``unit``) is what the power law was fitted to; ``gap_trace`` (on ``bias_V``,
    label ``gap_label``) is what the gap zoom shows: the lock-in, or a lightly smoothed
    derivative, because the fit's 11-point smoothing moves the visible maxima outwards.
    """

    iy: int
    ix: int
    bias_V: np.ndarray
    didv: np.ndarray
    unit: str
    delta_eV: float
    peak_neg_V: float
    peak_pos_V: float
    alpha_pos: float
    alpha_neg: float
    b_pos: float
    b_neg: float
    gap_trace: np.ndarray | None = None
    gap_label: str = ""


def spectra_figure(path: Path, examples: list[ExampleSpectrum], *, fit_window_V: tuple[float, float]) -> Path:
    """Per example: full sweep with the b|V|^alpha fits (solid on the window), and a gap zoom with peaks."""
    rows = max(1, len(examples))
    fig = new_figure((11, 3.2 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    lo, hi = fit_window_V
    for (ax_full, ax_gap), ex in zip(axes, examples, strict=False):
        mv = ex.bias_V * 1e3
        ax_full.plot(mv, ex.didv, color="0.35", lw=0.8, label="dI/dV")
        ax_full.set_ylabel(f"dI/dV ({ex.unit})")
        gap_trace = ex.didv if ex.gap_trace is None else ex.gap_trace
        ax_gap.plot(mv, gap_trace, color="0.35", lw=0.8)
        ax_gap.set_ylabel(ex.gap_label or f"dI/dV ({ex.unit})")
        for ax in (ax_full, ax_gap):
            ax.set_xlabel("bias (mV)")
        for sign, b, a in ((1, ex.b_pos, ex.alpha_pos), (-1, ex.b_neg, ex.alpha_neg)):
            if not (np.isfinite(b) and np.isfinite(a)):
                continue
            v_all = np.linspace(0.5e-3, np.max(np.abs(ex.bias_V)), 200)
            v_fit = np.linspace(lo, hi, 100)
            ax_full.plot(sign * v_all * 1e3, b * v_all**a, color="tab:red", ls=":", lw=1)
            ax_full.plot(
                sign * v_fit * 1e3,
                b * v_fit**a,
                color="tab:red",
                lw=2,
                label=f"b|V|$^\\alpha$, $\\alpha_{{{'+' if sign > 0 else '-'}}}$ = {a:.3f}",
            )
        for edge in (-hi, -lo, lo, hi):
            ax_full.axvline(edge * 1e3, color="tab:red", lw=0.5, alpha=0.4)
        ax_full.set_title(f"pixel (iy={ex.iy}, ix={ex.ix}): power law on {lo * 1e3:g}-{hi * 1e3:g} mV")
        ax_full.legend(fontsize=8, loc="upper center")
        zoom = np.abs(ex.bias_V) <= 4e-3
        ax_gap.set_xlim(-4, 4)
        if zoom.any() and np.isfinite(gap_trace[zoom]).any():
            finite = gap_trace[zoom][np.isfinite(gap_trace[zoom])]
            pad = 0.05 * (finite.max() - finite.min())
            ax_gap.set_ylim(finite.min() - pad, finite.max() + pad)
        for peak in (ex.peak_neg_V, ex.peak_pos_V):
            if np.isfinite(peak):
                ax_gap.axvline(peak * 1e3, color="tab:blue", ls="--", lw=1)
        ax_gap.set_title(f"coherence peaks (dashed): $\\Delta$ = {ex.delta_eV * 1e3:.3f} meV")
    return save_figure(fig, path)
