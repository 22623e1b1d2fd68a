"""Spectrum panels of the control-room window: one pixel's dI/dV with its fits, and a line's waterfall.

:class:`SpectrumPanel` draws the selected (or newest) pixel: the gap region with the coherence
peaks found, the whole sweep with the power-law fits; a pixel not analysed yet is drawn raw and
titled so. :class:`WaterfallPanel` stacks the spectra of a line cut, each normalised to its
conductance at the edge of the gap window, so the gap's change along the line reads at a glance.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg

from stslive.live.viewer.panels import MIN_PLOT_HEIGHT, NoData, flag_text, make_plot, reason_text, set_title
from stslive.live.viewer.sources import DisplaySpectrum

FIT_WINDOW_V = (5e-3, 30e-3)  # the power-law window of the kernels' default (paper: 5..30 mV)
#: Half-width (mV) of the gap window when no gap is known, and its minimum.
GAP_WINDOW_MV = 5.0
GAP_WINDOW_MIN_MV = 3.0
#: Curves of a waterfall at most (a longer line shows every k-th pixel).
WATERFALL_CURVES = 20


def gap_window_mV(delta_meV: float) -> float:
    """Half-width (mV) of the bias window that shows a gap ``delta_meV`` with its peaks and shoulders."""
    return max(GAP_WINDOW_MIN_MV, 3.0 * delta_meV) if math.isfinite(delta_meV) else GAP_WINDOW_MV


class SpectrumPanel:
    """dI/dV of the selected pixel: the gap region with the peaks, the wide range with the fits."""

    def __init__(self) -> None:
        self.gap = make_plot("spectrum: gap region", "V (mV)", "dI/dV (nS)", min_height=MIN_PLOT_HEIGHT)
        self.wide = make_plot(
            "spectrum: wide range, power-law fits", "V (mV)", "dI/dV (nS)", min_height=MIN_PLOT_HEIGHT
        )
        self.gap_curve = self.gap.plot(pen=pg.mkPen("w", width=1.5))
        self.wide_curve = self.wide.plot(pen=pg.mkPen("w", width=1.5))
        self.peak_lines = [pg.InfiniteLine(angle=90, pen=pg.mkPen("#ffbf00", width=1.5)) for _ in range(2)]
        for line in self.peak_lines:
            self.gap.addItem(line)
        self.fit_curves = [self.wide.plot(pen=pg.mkPen("#e41a1c", width=2.5)) for _ in range(2)]
        self.wide.addItem(pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen("#555")))
        self.gap_no_data = NoData(self.gap)
        self.wide_no_data = NoData(self.wide)
        self.shown: DisplaySpectrum | None = None

    def clear(self, text: str) -> None:
        """Nothing to draw: say why."""
        self.shown = None
        for c in (self.gap_curve, self.wide_curve, *self.fit_curves):
            c.setData([], [])
        for line in self.peak_lines:
            line.setVisible(False)
        set_title(self.gap, "spectrum: gap region")
        set_title(self.wide, "spectrum: wide range, power-law fits")
        self.gap_no_data.show(text)
        self.wide_no_data.show(text)

    def show(self, data: DisplaySpectrum, *, context: str = "") -> None:
        """Draw ``data``; ``context`` says why this pixel ("newest measured"), shown in the title."""
        r = data.result
        where = f"pixel (iy {data.iy}, ix {data.ix})" + (f", {context}" if context else "")
        if data.bias_V.size == 0:
            self.clear(f"{where}:\n{data.note}")
            return
        self.shown = data
        self.gap_no_data.show(None)
        self.wide_no_data.show(None)
        for w in (self.gap, self.wide):
            w.getPlotItem().enableAutoRange()
        mv, ns = data.bias_V * 1e3, data.didv_S * 1e9
        lim = gap_window_mV(math.nan if r is None else r.delta_eV * 1e3)
        sel = np.abs(mv) <= lim
        self.gap_curve.setData(mv[sel], ns[sel])
        self.wide_curve.setData(mv, ns)
        peaks = (np.nan, np.nan) if r is None else (r.peak_neg_V, r.peak_pos_V)
        for line, p in zip(self.peak_lines, peaks, strict=True):
            line.setVisible(math.isfinite(p))
            if math.isfinite(p):
                line.setValue(p * 1e3)
        if r is None:
            for c in self.fit_curves:
                c.setData([], [])
            set_title(self.gap, f"{where}: raw dI/dV, not analysed yet")
            set_title(self.wide, "no power-law fit yet")
            return
        delta = "" if not math.isfinite(r.delta_eV) else f", Δ {r.delta_eV * 1e3:.3f} meV"
        set_title(self.gap, f"{where}{delta}, {reason_text(r.reason)}, flags {flag_text(r.flags)}")
        for curve, sign, alpha, b in (
            (self.fit_curves[0], -1.0, r.alpha_neg, r.b_neg),
            (self.fit_curves[1], 1.0, r.alpha_pos, r.b_pos),
        ):
            b = b if math.isfinite(b) else r.b
            v = fit_bias_range(data.bias_V, sign=sign)
            if math.isfinite(alpha) and math.isfinite(b) and v.size:
                curve.setData(sign * v * 1e3, b * v**alpha * 1e9)  # dI/dV = b |V|^alpha (paper Sec. II)
            else:
                curve.setData([], [])
        set_title(
            self.wide,
            f"α {r.alpha:.3f} (−V: {r.alpha_neg:.3f}, +V: {r.alpha_pos:.3f}), fit quality {r.fit_quality:.3g}",
        )


def fit_bias_range(
    bias_V: np.ndarray, *, sign: float, window_V: tuple[float, float] = FIT_WINDOW_V, n: int = 60
) -> np.ndarray:
    """|V| (V) at which to draw one polarity's power law: the fit window clipped to the sweep.

    A curve drawn beyond the sweep would show a fit where no data was; empty when the sweep
    does not reach into the window on that side.
    """
    side = np.abs(bias_V[np.sign(bias_V) == sign]) if bias_V.size else np.zeros(0)
    hi = min(window_V[1], float(side.max())) if side.size else 0.0
    return np.linspace(window_V[0], hi, n) if hi > window_V[0] else np.zeros(0)


def waterfall_rows(measured: np.ndarray, most: int = WATERFALL_CURVES) -> np.ndarray:
    """Indices of the measured pixels to draw, evenly spread, at most ``most``."""
    idx = np.flatnonzero(measured)
    if idx.size <= most:
        return idx
    return idx[np.unique(np.linspace(0, idx.size - 1, most).round().astype(int))]


class WaterfallPanel:
    """The spectra of a line cut stacked by position, normalised at the edge of the gap window.

    Curve k is ``dI/dV / dI/dV(edge) + k * offset`` (edge: the mean over the outer 15 % of the
    window), coloured by position; a few curves are labelled with their x (nm).
    """

    OFFSET = 0.6

    def __init__(self) -> None:
        self.widget = make_plot(
            "spectra along the line", "V (mV)", "dI/dV, normalised + offset", min_height=MIN_PLOT_HEIGHT
        )
        self.widget.getPlotItem().getAxis("left").setStyle(showValues=False)  # offsets, not values
        self.curves: list[pg.PlotDataItem] = []
        self.labels: list[pg.TextItem] = []
        self.cmap = pg.colormap.get("viridis")
        self.no_data = NoData(self.widget)

    def show(self, bias_V: np.ndarray | None, didv_S: np.ndarray | None, x_nm: np.ndarray, delta_meV: float) -> None:
        """``didv_S`` (nx, n_points), NaN rows unmeasured; ``delta_meV`` sets the window (NaN: default)."""
        measured = np.zeros(0, bool) if didv_S is None else np.isfinite(didv_S).all(axis=1)
        rows = waterfall_rows(measured)
        for item in (*self.curves, *self.labels):
            self.widget.removeItem(item)
        self.curves, self.labels = [], []
        if bias_V is None or didv_S is None or rows.size == 0:
            set_title(self.widget, "spectra along the line: none measured yet")
            self.no_data.show("no data yet")
            return
        self.no_data.show(None)
        mv = bias_V * 1e3
        lim = gap_window_mV(delta_meV)
        sel = np.abs(mv) <= lim
        edge = sel & (np.abs(mv) >= 0.85 * lim)
        label_every = max(1, rows.size // 6)
        labelled = [k for k in range(rows.size) if k % label_every == 0]
        if rows.size - 1 - labelled[-1] >= label_every / 2:  # the last curve too, unless it would crowd
            labelled.append(rows.size - 1)
        for k, ix in enumerate(rows):
            y = didv_S[ix, sel]
            norm = float(np.mean(didv_S[ix, edge])) if edge.any() else float(np.max(np.abs(y)))
            color = self.cmap.map(k / max(1, rows.size - 1), mode="qcolor")
            self.curves.append(self.widget.plot(mv[sel], y / norm + k * self.OFFSET, pen=pg.mkPen(color, width=1.2)))
            if k in labelled:
                label = pg.TextItem(f"{x_nm[ix]:.1f} nm", color=color, anchor=(0, 0.5))
                label.setPos(1.02 * lim, 1.0 + k * self.OFFSET)
                self.widget.addItem(label)
                self.labels.append(label)
        plot = self.widget.getPlotItem()
        plot.enableAutoRange(axis="y")
        plot.setXRange(-lim, 1.45 * lim, padding=0.0)  # room on the right for the positions
        set_title(self.widget, f"spectra along the line ({rows.size} of {int(measured.sum())}, first at the bottom)")
