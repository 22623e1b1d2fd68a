"""Example spectra of an analysed run: the data with what the analysis extracted drawn over it.

:func:`spectra_figure`, one row per example pixel: the whole sweep with the power laws
b|V|^alpha (linear axes), the power law on log-log axes for both polarities with the fit window
shaded, and the gap region with the model conductance over the data (when one is known) and
the coherence peaks marked. :func:`draw_waterfall` stacks the gap region of many pixels (the line
cut). Units: bias in mV, conductance in nS, the gap channel in its own display unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from stslive.live.offline.figures import RunCaption, new_figure, say_empty, set_title

__all__ = ["NO_SPECTRUM", "ExampleSpectrum", "gap_zoom_V", "spectra_figure", "draw_waterfall"]

#: Smallest |V| drawn on the log-log panel, in bias steps (the derivative is meaningless at 0).
LOG_START_STEPS = 2
NO_SPECTRUM = "no measured pixel: no spectrum to show"
#: Gap region half-width in units of Delta, and its floor, V.
ZOOM_DELTAS, ZOOM_MIN_V = 3.0, 1e-3


@dataclass(frozen=True)
class ExampleSpectrum:
    """One pixel's spectra and the analysis results to draw on them.

    Attributes
    ----------
    iy, ix : int
        Pixel indices; ``x_nm``, ``y_nm`` its scan-frame position.
    bias_V : ndarray
        Ascending bias, V.
    didv : ndarray
        dI/dV the power law was fitted to, nS.
    gap_trace, gap_label : ndarray, str
        The channel the gap was taken from, in its display unit, and its axis label.
    delta_eV, peak_neg_V, peak_pos_V : float
        Gap and coherence-peak positions (NaN when not extracted).
    alpha_pos, alpha_neg, b_pos, b_neg : float
        Power laws dI/dV = b |V|^alpha per polarity, b in nS / V^alpha.
    status : str
        "" for a valid pixel, else why it is not (the kernel's reason).
    model, model_label : ndarray or None, str
        Model conductance on ``bias_V`` in the gap trace's unit (NaN outside where it was fitted),
        and what it is.
    """

    iy: int
    ix: int
    x_nm: float
    y_nm: float
    bias_V: np.ndarray
    didv: np.ndarray
    gap_trace: np.ndarray
    gap_label: str
    delta_eV: float
    peak_neg_V: float
    peak_pos_V: float
    alpha_pos: float
    alpha_neg: float
    b_pos: float
    b_neg: float
    status: str = ""
    model: np.ndarray | None = None
    model_label: str = ""

    @property
    def where(self) -> str:
        """The pixel and its position, for titles."""
        return f"pixel (iy={self.iy}, ix={self.ix}) at ({self.x_nm:.1f}, {self.y_nm:.1f}) nm"


def gap_zoom_V(delta_eV: float, bias_V: np.ndarray, fallback_V: float) -> float:
    """Half-width (V) of the gap region drawn: :data:`ZOOM_DELTAS` Delta, ``fallback_V`` without a Delta."""
    half = ZOOM_DELTAS * delta_eV if np.isfinite(delta_eV) and delta_eV > 0 else fallback_V
    return float(min(max(half, ZOOM_MIN_V), np.max(np.abs(bias_V))))


def _set_ylim_from(ax: Axes, *curves: np.ndarray) -> None:
    finite = np.concatenate([c[np.isfinite(c)] for c in curves])
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.06 * (hi - lo) or 0.06 * abs(hi) or 1.0
        ax.set_ylim(lo - pad, hi + pad)


def _power_law_lines(ax: Axes, ex: ExampleSpectrum, window_V: tuple[float, float], *, log: bool) -> None:
    """b|V|^alpha per polarity: solid on the fit window, dotted beyond (log: against |V|)."""
    lo, hi = window_V
    v_max = float(np.max(np.abs(ex.bias_V)))
    step = float(np.min(np.diff(ex.bias_V))) if ex.bias_V.size > 1 else lo
    for sign, b, a, colour in ((1, ex.b_pos, ex.alpha_pos, "tab:red"), (-1, ex.b_neg, ex.alpha_neg, "tab:blue")):
        if not (np.isfinite(b) and np.isfinite(a)):
            continue
        v_all = np.geomspace(max(LOG_START_STEPS * step, 1e-5), v_max, 200)
        v_fit = np.geomspace(lo, hi, 100) if lo > 0 else np.linspace(lo, hi, 100)
        x_all, x_fit = (v_all, v_fit) if log else (sign * v_all, sign * v_fit)
        ax.plot(x_all * 1e3, b * v_all**a, color=colour, ls=":", lw=1)
        polarity = "+" if sign > 0 else "-"
        ax.plot(x_fit * 1e3, b * v_fit**a, color=colour, lw=1.4, label=f"fit $\\alpha_{{{polarity}}}$ = {a:.3f}")


def _draw_full(ax: Axes, ex: ExampleSpectrum, window_V: tuple[float, float]) -> None:
    ax.plot(ex.bias_V * 1e3, ex.didv, color="0.35", lw=0.8, label="dI/dV")
    _power_law_lines(ax, ex, window_V, log=False)
    lo, hi = window_V
    for a, b in ((-hi, -lo), (lo, hi)):
        ax.axvspan(a * 1e3, b * 1e3, color="tab:red", alpha=0.07, lw=0)
    ax.set_xlabel("bias (mV)")
    ax.set_ylabel("dI/dV (nS)")
    ax.set_title(ex.where + ("" if not ex.status else f"\nnot valid: {ex.status}"), fontsize=9)
    ax.legend(fontsize=7, loc="upper center")


def _draw_log(ax: Axes, ex: ExampleSpectrum, window_V: tuple[float, float]) -> None:
    step = float(np.min(np.diff(ex.bias_V))) if ex.bias_V.size > 1 else 0.0
    floor = LOG_START_STEPS * step
    drawn = False
    for sign, colour, label in ((1, "tab:red", "V > 0"), (-1, "tab:blue", "V < 0")):
        side = (sign * ex.bias_V > floor) & (ex.didv > 0)
        if side.any():
            ax.plot(np.abs(ex.bias_V[side]) * 1e3, ex.didv[side], "-", lw=0.8, color=colour, alpha=0.45, label=label)
            drawn = True
    if not drawn:
        say_empty(ax, "no positive dI/dV to draw on log axes")
        return
    _power_law_lines(ax, ex, window_V, log=True)
    ax.axvspan(window_V[0] * 1e3, window_V[1] * 1e3, color="0.5", alpha=0.15, lw=0, label="fit window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|bias| (mV)")
    ax.set_ylabel("dI/dV (nS)")
    ax.set_title("power law dI/dV = b|V|$^\\alpha$ (log-log)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def _draw_gap(ax: Axes, ex: ExampleSpectrum, fallback_V: float) -> None:
    half = gap_zoom_V(ex.delta_eV, ex.bias_V, fallback_V)
    zoom = np.abs(ex.bias_V) <= half
    ax.plot(ex.bias_V[zoom] * 1e3, ex.gap_trace[zoom], color="0.35", lw=0.8, label="data")
    curves = [ex.gap_trace[zoom]]
    if ex.model is not None and np.isfinite(ex.model[zoom]).any():
        ax.plot(ex.bias_V[zoom] * 1e3, ex.model[zoom], color="tab:orange", lw=1.6, label="model")
        curves.append(ex.model[zoom])
    for k, peak in enumerate((ex.peak_neg_V, ex.peak_pos_V)):
        if np.isfinite(peak):
            ax.axvline(peak * 1e3, color="tab:blue", ls="--", lw=1, label="fitted peaks" if k == 0 else None)
    _set_ylim_from(ax, *curves)
    ax.set_xlim(-half * 1e3, half * 1e3)
    ax.set_xlabel("bias (mV)")
    ax.set_ylabel(ex.gap_label)
    gap = f"$\\Delta$ = {ex.delta_eV * 1e3:.3f} meV" if np.isfinite(ex.delta_eV) else "no $\\Delta$"
    model = f"\nmodel: {ex.model_label}" if ex.model is not None and ex.model_label else ""
    ax.set_title(f"gap: {gap}{model}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.8)


def spectra_figure(
    examples: Sequence[ExampleSpectrum],
    *,
    fit_window_V: tuple[float, float],
    gap_search_V: tuple[float, float],
    caption: RunCaption | None,
    empty: str = NO_SPECTRUM,
) -> Figure:
    """One row per example: full sweep, log-log power law, gap region with the model (module docstring).

    Without an example the figure says ``empty``.
    """
    if not examples:
        fig = new_figure((8, 3))
        say_empty(fig.subplots(), empty)
        set_title(fig, "Example spectra", caption)
        return fig
    fig = new_figure((15, 3.6 * len(examples) + 0.6))
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for (ax_full, ax_log, ax_gap), ex in zip(axes, examples, strict=True):
        _draw_full(ax_full, ex, fit_window_V)
        _draw_log(ax_log, ex, fit_window_V)
        _draw_gap(ax_gap, ex, gap_search_V[1])
    lo, hi = fit_window_V
    set_title(fig, f"Example spectra: power law fitted on {lo * 1e3:g}-{hi * 1e3:g} mV (shaded)", caption)
    return fig


def draw_waterfall(
    ax: Axes, spectra: Sequence[ExampleSpectrum], positions_nm: np.ndarray, *, axis_label: str, fallback_V: float
) -> None:
    """The gap region of each spectrum, normalised and stacked in the order of ``positions_nm``.

    Each trace is divided by its median over the outer third of the region (the normal state
    there), so traces of different set-points or tips stack evenly; fitted peaks are dots, pixels
    that are not valid grey. The y ticks name the positions (``axis_label``, nm).
    """
    deltas = np.array([s.delta_eV for s in spectra], dtype=np.float64)
    typical = float(np.nanmedian(deltas)) if np.isfinite(deltas).any() else np.nan
    half = gap_zoom_V(typical, spectra[0].bias_V, fallback_V)
    traces = []
    for s in spectra:
        zoom = np.abs(s.bias_V) <= half
        outer = zoom & (np.abs(s.bias_V) >= 2 * half / 3)
        norm = np.nanmedian(s.gap_trace[outer]) if outer.any() else np.nan
        traces.append(s.gap_trace / norm if np.isfinite(norm) and norm != 0 else None)
    # offset: most of a trace's height, so neighbours touch but gaps and peaks stay readable
    zooms = [np.abs(s.bias_V) <= half for s in spectra]
    heights = [np.nanpercentile(t[z], [5, 95]) for t, z in zip(traces, zooms, strict=True) if t is not None]
    offset = 0.6 * float(np.median([hi - lo for lo, hi in heights])) if heights else 1.0
    for k, (s, trace) in enumerate(zip(spectra, traces, strict=True)):
        if trace is None:
            continue
        zoom = np.abs(s.bias_V) <= half
        colour = "0.2" if not s.status else "0.65"
        ax.plot(s.bias_V[zoom] * 1e3, trace[zoom] + k * offset, color=colour, lw=0.8)
        peaks = np.array([s.peak_neg_V, s.peak_pos_V])
        peaks = peaks[np.isfinite(peaks)]
        if peaks.size:
            ax.plot(peaks * 1e3, np.interp(peaks, s.bias_V, trace) + k * offset, "o", ms=3, color="tab:blue")
    ticks = np.unique(np.linspace(0, len(spectra) - 1, min(6, len(spectra))).round().astype(int))
    ax.set_yticks(ticks * offset + 1.0, [f"{positions_nm[t]:.1f}" for t in ticks])
    ax.set_ylabel(f"{axis_label} (nm); traces normalised to 1 outside the gap, offset {offset:.2g}")
    ax.set_xlabel("bias (mV)")
    ax.set_xlim(-half * 1e3, half * 1e3)
    ax.set_title("gap spectra along the line (dots: fitted peaks; grey: not valid)", fontsize=9)
