"""Panels of the control-room window: maps, histograms, correlations, spectrum, status, flags.

Each panel owns its pyqtgraph/Qt items and draws ready numbers handed to its ``show`` method;
none reads files or analyses anything. Display units: meV, nm, nS, K.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from stslive.live.kernels import ReasonCode
from stslive.live.results import FLAG_LABELS, CorrelationSnapshot, FlagKind, Histogram, RunStatus, SetFlagSummary
from stslive.live.viewer.sources import DisplaySpectrum

PixelCallback = Callable[[int, int], None]
_GREEK = {"Delta": "Δ", "alpha": "α", "cross": "cross"}
FIT_WINDOW_V = (5e-3, 30e-3)  # the power-law window of the kernels' default (paper: 5..30 mV)


def reversed_cmap(cmap: pg.ColorMap) -> pg.ColorMap:
    """A reversed copy (the paper shows alpha with the reversed scale of Delta)."""
    pos, colors = cmap.getStops()
    return pg.ColorMap(pos=1.0 - pos[::-1], color=colors[::-1])


def set_title(widget: pg.PlotWidget, text: str) -> None:
    """One title style for every plot (small enough for the long status titles)."""
    widget.setTitle(text, size="10pt")


def _plot(title: str, x: str, y: str) -> pg.PlotWidget:
    w = pg.PlotWidget()
    set_title(w, title)
    w.setLabel("bottom", x)
    w.setLabel("left", y)
    for side in ("bottom", "left"):
        w.getPlotItem().getAxis(side).enableAutoSIPrefix(False)  # units are already meV, nm, nS
    w.setMinimumSize(120, 110)
    return w


class AspectBox(QtWidgets.QWidget):
    """Holds one plot widget and sizes it so its data area keeps the map's aspect ratio.

    An aspect-locked view in a cell of another shape shows empty axis range (a 64 x 48 map in a
    tall cell spanned y -20..70); shrinking the plot to the map's shape keeps the axes, the
    colour bar and the image the same height. ``margins`` are the plot's non-data pixels
    (axes, title, colour bar) measured after each layout pass.
    """

    def __init__(self, child: pg.PlotWidget) -> None:
        super().__init__()
        self.child = child
        child.setParent(self)
        self.aspect = 1.0  # data height / width
        self.setMinimumSize(160, 140)
        # the margins around the fitted plot take the plot's background: one dark panel, not two
        self.setAutoFillBackground(True)
        palette = self.palette()
        palette.setColor(self.backgroundRole(), pg.mkColor(pg.getConfigOption("background")))
        self.setPalette(palette)

    def set_aspect(self, height_over_width: float) -> None:
        self.aspect = height_over_width
        self._fit()

    def resizeEvent(self, event: object) -> None:
        self._fit()
        super().resizeEvent(event)

    def _fit(self) -> None:
        vb = self.child.getPlotItem().vb
        w, h = self.width(), self.height()
        # non-data pixels of the plot; before its first layout the view box reports 0: use defaults
        extra_w = self.child.width() - vb.width() if vb.width() > 1 else 140.0
        extra_h = self.child.height() - vb.height() if vb.height() > 1 else 60.0
        cw = min(float(w), (h - extra_h) / self.aspect + extra_w)
        ch = min(float(h), (cw - extra_w) * self.aspect + extra_h)
        cw, ch = max(int(cw), 80), max(int(ch), 80)
        self.child.setGeometry((w - cw) // 2, (h - ch) // 2, cw, ch)


class MapPanel:
    """One (ny, nx) map as an image in nm with a colour bar, a pixel marker and mouse picking.

    Orientation: y points up and row 0 is at the bottom, as in the scan frame
    (``runmodel.GridGeometry``: y grows with the row index), the paper's maps and the offline
    figures (``live/figures.py``, ``origin="lower"``).
    """

    def __init__(
        self, title: str, bar_label: str, cmap: pg.ColorMap, *, on_click: PixelCallback, on_hover: PixelCallback
    ) -> None:
        self.plot_widget = _plot(title, "x (nm)", "y (nm)")
        self.widget = AspectBox(self.plot_widget)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setAspectLocked(True)
        self.plot.setMouseEnabled(x=False, y=False)  # the view is the whole map; clicks pick pixels
        self.plot.hideButtons()
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(colorMap=cmap, label=bar_label, interactive=False, width=12)
        self.bar.setImageItem(self.image, insert_in=self.plot)
        self.bar.getAxis("right").setWidth(48)  # room for "1.250" whatever the first levels were
        self.marker = pg.ScatterPlotItem(size=12, symbol="+", pen=pg.mkPen("r", width=2), brush=None)
        self.plot.addItem(self.marker)
        self.pixel_nm = 1.0
        self.shape = (0, 0)
        self._on_click, self._on_hover = on_click, on_hover
        self.plot_widget.scene().sigMouseClicked.connect(self._clicked)
        self.plot_widget.scene().sigMouseMoved.connect(self._moved)

    def set_title(self, text: str) -> None:
        set_title(self.plot_widget, text)

    def set_geometry(self, ny: int, nx: int, pixel_nm: float) -> None:
        self.pixel_nm = pixel_nm if math.isfinite(pixel_nm) and pixel_nm > 0 else 1.0
        if not (math.isfinite(pixel_nm) and pixel_nm > 0):
            self.plot.setLabel("bottom", "x (pixel)")
            self.plot.setLabel("left", "y (pixel)")
        self.shape = (ny, nx)
        width, height = nx * self.pixel_nm, ny * self.pixel_nm
        self.image.setRect(QtCore.QRectF(0, 0, width, height))
        # the whole grid stays in view while it fills, instead of following the measured part
        self.plot.setRange(xRange=(0, width), yRange=(0, height), padding=0.0)
        self.plot.disableAutoRange()
        self.widget.set_aspect(ny / nx)

    def show(self, values: np.ndarray, levels: tuple[float, float]) -> None:
        # NaN (unmeasured or not extracted) is drawn transparent by pyqtgraph
        self.image.setImage(values, autoLevels=False, levels=levels)
        self.image.setRect(QtCore.QRectF(0, 0, self.shape[1] * self.pixel_nm, self.shape[0] * self.pixel_nm))
        self.bar.setLevels(levels)

    def mark(self, iy: int, ix: int) -> None:
        self.marker.setData([(ix + 0.5) * self.pixel_nm], [(iy + 0.5) * self.pixel_nm])

    def _pixel_at(self, scene_pos: QtCore.QPointF) -> tuple[int, int] | None:
        if not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot.vb.mapSceneToView(scene_pos)
        ix, iy = int(p.x() // self.pixel_nm), int(p.y() // self.pixel_nm)
        return (iy, ix) if 0 <= iy < self.shape[0] and 0 <= ix < self.shape[1] else None

    def _clicked(self, event: Any) -> None:  # pyqtgraph's MouseClickEvent
        hit = self._pixel_at(event.scenePos())
        if hit is not None:
            self._on_click(*hit)

    def _moved(self, pos: QtCore.QPointF) -> None:
        hit = self._pixel_at(pos)
        if hit is not None:
            self._on_hover(*hit)


class HistogramPanel:
    """Histogram of valid values with the mean (solid) and mean +- sigma (dashed) marked."""

    def __init__(self, title: str, x_label: str, color: str) -> None:
        self.title = title
        self.widget = _plot(title, x_label, "pixels")
        self.curve = self.widget.plot(
            [0, 1], [0], stepMode="center", fillLevel=0, brush=pg.mkBrush(color), pen=pg.mkPen(color)
        )
        self.lines = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen("w", width=2, style=s))
            for s in (QtCore.Qt.SolidLine, QtCore.Qt.DashLine, QtCore.Qt.DashLine)
        ]
        for line in self.lines:
            self.widget.addItem(line)

    def show(self, hist: Histogram, mean: float, std: float, *, scale: float, unit: str, n: int) -> None:
        if hist.counts.size == 0:
            set_title(self.widget, f"{self.title}: no valid pixels yet")
            return
        self.curve.setData(hist.edges * scale, hist.counts)
        for line, x in zip(self.lines, (mean, mean - std, mean + std), strict=True):
            line.setValue(x * scale)
        # short enough for a third of the screen: "Delta 1.290 ± 0.034 meV (2.6 %), N 3072"
        rel = f" ({100 * std / mean:.1f} %)" if mean else ""
        set_title(self.widget, f"{self.title} {mean * scale:.3f} ± {std * scale:.3f}{unit}{rel}, N {n}")


class CorrelationPanel:
    """The 2D Delta-alpha cross-correlation map and the radial profiles with the lengths marked."""

    def __init__(self) -> None:
        self.map_widget = _plot("Δ-α cross-correlation ρ_cross(r)", "shift x (nm)", "shift y (nm)")
        self.map_widget.getPlotItem().setAspectLocked(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.map_widget.addItem(self.image)
        self.bar = pg.ColorBarItem(colorMap=pg.colormap.get("CET-D1"), label="ρ_cross", interactive=False, width=12)
        self.bar.setImageItem(self.image, insert_in=self.map_widget.getPlotItem())
        self.profile_widget = _plot("radial correlation profiles", "r (nm)", "ρ(r)")
        self.profile_widget.addLegend(offset=(-10, 10))
        self.curves = {
            "Delta": self.profile_widget.plot(pen=pg.mkPen("#4daf4a", width=2), name="ρ_Δ (gap)"),
            "alpha": self.profile_widget.plot(pen=pg.mkPen("#377eb8", width=2), name="ρ_α (AA exponent)"),
            "cross": self.profile_widget.plot(pen=pg.mkPen("#e41a1c", width=2), name="ρ_cross (Δ-α)"),
        }
        self.length_lines = {
            k: pg.InfiniteLine(
                angle=90,
                pen=pg.mkPen(c.opts["pen"].color(), style=QtCore.Qt.DashLine),
                label=f"l_{_GREEK[k]}",
                labelOpts={"position": pos, "color": c.opts["pen"].color(), "anchors": [(0, 0.5), (0, 0.5)]},
            )
            for (k, c), pos in zip(self.curves.items(), (0.92, 0.82, 0.72), strict=True)
        }
        for line in self.length_lines.values():
            self.profile_widget.addItem(line)
        self.profile_widget.addItem(
            pg.InfiniteLine(
                pos=1 / math.e,
                angle=0,
                pen=pg.mkPen("#888", style=QtCore.Qt.DotLine),
                label="1/e",
                labelOpts={"position": 0.95, "color": "#aaa"},
            )
        )
        self.profile_widget.addItem(pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#666")))

    def show(self, snap: CorrelationSnapshot | None) -> None:
        if snap is None:
            set_title(self.map_widget, "cross-correlation: not computed yet")
            set_title(self.profile_widget, "radial profiles: not computed yet")
            return
        cross = np.asarray(snap.cross_map, dtype=np.float32)
        vmax = float(np.nanmax(np.abs(cross))) if np.isfinite(cross).any() else 1.0
        ny, nx = cross.shape
        pix = snap.pixel_nm if math.isfinite(snap.pixel_nm) else 1.0
        self.image.setImage(cross, autoLevels=False, levels=(-vmax, vmax))
        self.image.setRect(QtCore.QRectF(-nx / 2 * pix, -ny / 2 * pix, nx * pix, ny * pix))
        self.bar.setLevels((-vmax, vmax))
        set_title(self.map_widget, f"Δ-α cross-correlation, ρ_cross(0) = {snap.rho_cross_0:.2f}")
        for key, rho in (("Delta", snap.rho_delta), ("alpha", snap.rho_alpha), ("cross", snap.rho_cross)):
            self.curves[key].setData(snap.r_nm, rho)
        for key, length in (("Delta", snap.l_delta_nm), ("alpha", snap.l_alpha_nm), ("cross", snap.l_cross_nm)):
            line = self.length_lines[key]
            line.setVisible(math.isfinite(length))
            if math.isfinite(length):
                line.setValue(length)
                line.label.setFormat(f"l_{_GREEK[key]} {length:.1f} nm")
        set_title(
            self.profile_widget,
            f"l_Δ {snap.l_delta_nm:.1f} nm, l_α {snap.l_alpha_nm:.1f} nm, l_cross {snap.l_cross_nm:.1f} nm;  "
            f"σ_ρ {snap.sigma_rho_ohm:.0f} Ω (Eq. 2) → predicted σ_Δ/Δ {snap.predicted_delta_rel_sigma:.3f} (Eq. 3);  "
            f"N {snap.n_pixels}",
        )


class SpectrumPanel:
    """dI/dV of the selected pixel: the gap region with the peaks, the wide range with the fits."""

    def __init__(self) -> None:
        self.gap = _plot("spectrum: gap region", "V (mV)", "dI/dV (nS)")
        self.wide = _plot("spectrum: wide range, power-law fits", "V (mV)", "dI/dV (nS)")
        self.gap_curve = self.gap.plot(pen=pg.mkPen("w", width=1.5))
        self.wide_curve = self.wide.plot(pen=pg.mkPen("w", width=1.5))
        self.peak_lines = [pg.InfiniteLine(angle=90, pen=pg.mkPen("#ffbf00", width=1.5)) for _ in range(2)]
        for line in self.peak_lines:
            self.gap.addItem(line)
        self.fit_curves = [self.wide.plot(pen=pg.mkPen("#e41a1c", width=2.5)) for _ in range(2)]
        self.wide.addItem(pg.InfiniteLine(pos=0, angle=90, pen=pg.mkPen("#555")))

    def show(self, data: DisplaySpectrum) -> None:
        r = data.result
        where = f"pixel (iy {data.iy}, ix {data.ix})"
        if data.bias_V.size == 0:
            for c in (self.gap_curve, self.wide_curve, *self.fit_curves):
                c.setData([], [])
            set_title(self.gap, f"{where}: {data.note}")
            set_title(self.wide, "")
            return
        mv, ns = data.bias_V * 1e3, data.didv_S * 1e9
        lim = 5.0
        if r is not None and math.isfinite(r.delta_eV):
            lim = max(3.0, 3.0 * r.delta_eV * 1e3)
        sel = np.abs(mv) <= lim
        self.gap_curve.setData(mv[sel], ns[sel])
        self.wide_curve.setData(mv, ns)
        peaks = (np.nan, np.nan) if r is None else (r.peak_neg_V, r.peak_pos_V)
        for line, p in zip(self.peak_lines, peaks, strict=True):
            line.setVisible(math.isfinite(p))
            if math.isfinite(p):
                line.setValue(p * 1e3)
        delta = "" if r is None or not math.isfinite(r.delta_eV) else f", Δ {r.delta_eV * 1e3:.3f} meV"
        set_title(
            self.gap,
            f"{where}{delta}" + ("" if r is None else f", {reason_text(r.reason)}, flags {_flag_text(r.flags)}"),
        )
        if r is None:
            for c in self.fit_curves:
                c.setData([], [])
            set_title(self.wide, f"{where}: no analysis result")
            return
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


def reason_text(code: int) -> str:
    """A kernel reason code as its :class:`ReasonCode` name ("OK", "NO_PEAKS", ...)."""
    if code < 0:
        return "not analysed"
    try:
        return ReasonCode(int(code)).name
    except ValueError:
        return f"unknown reason {code}"  # a newer analyser's code: show it rather than fail


def _flag_text(flags: int) -> str:
    names = [FLAG_LABELS[k] for k in FlagKind if flags & int(k)]
    return "+".join(names) if names else "none"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(seconds), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


class StatusPanel:
    """Run state, progress, rate, ETA, set-point set, sequence number and the temperature trace."""

    def __init__(self) -> None:
        self.widget = QtWidgets.QGroupBox("run status")
        form = QtWidgets.QFormLayout(self.widget)
        self.state = QtWidgets.QLabel("-")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.rate, self.eta, self.set_id, self.seq, self.message = (QtWidgets.QLabel("-") for _ in range(5))
        self.message.setWordWrap(True)
        for label, w in (
            ("state", self.state),
            ("progress", self.progress),
            ("pixels/hour", self.rate),
            ("ETA", self.eta),
            ("set-point set", self.set_id),
            ("last seq", self.seq),
            ("note", self.message),
        ):
            form.addRow(label, w)
        self.temperature = _plot("temperature", "time (min, 0 = latest)", "T (K)")
        self.temperature.setMinimumHeight(110)
        self.temp_curve = self.temperature.plot(pen=pg.mkPen("#ff7f00", width=1))
        # a long run has ~10^4 readings: draw at most one peak pair per screen pixel
        self.temp_curve.setDownsampling(auto=True, method="peak")
        self.temp_curve.setClipToView(True)
        form.addRow(self.temperature)

    def show(self, st: RunStatus) -> None:
        color = {"running": "#2ca02c", "paused": "#ff7f0e", "failed": "#d62728", "done": "#1f77b4"}.get(
            st.state, "#888"
        )
        self.state.setText(f"<b style='color:{color}'>{st.state}</b>")
        self.progress.setValue(round(1000 * st.progress))
        self.progress.setFormat(f"{st.n_measured} / {st.n_total} pixels ({100 * st.progress:.1f} %)")
        self.rate.setText("-" if not math.isfinite(st.pixels_per_hour) else f"{st.pixels_per_hour:,.0f}")
        self.eta.setText(_duration(st.eta_s))
        self.set_id.setText("-" if st.current_set < 0 else str(st.current_set))
        self.seq.setText("-" if st.last_seq < 0 else str(st.last_seq))
        self.message.setText(st.message or "")
        if st.temperature_t.size:
            rel = st.temperature_t - st.temperature_t.max()
            hours = rel.min() < -7200  # a long run reads better in hours
            self.temperature.setLabel("bottom", f"time ({'h' if hours else 'min'}, 0 = latest)")
            self.temp_curve.setData(rel / (3600.0 if hours else 60.0), st.temperature_K)


class FlagsPanel:
    """Flags per set-point set (table and messages) and the flagged pixels (click to locate)."""

    COLUMNS = ("set", "pixels", "flagged", "%", "dominant", "first", "last")

    def __init__(self, on_pick: PixelCallback) -> None:
        self.widget = QtWidgets.QGroupBox("quality flags")
        lay = QtWidgets.QVBoxLayout(self.widget)
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeToContents)
        self.table.setMaximumHeight(130)
        self.messages = QtWidgets.QLabel("no flags")
        self.messages.setWordWrap(True)
        self.pixels = QtWidgets.QListWidget()
        self.pixels_label = QtWidgets.QLabel("flagged pixels (click to locate)")
        for w in (self.table, self.messages, self.pixels_label, self.pixels):
            lay.addWidget(w)
        self._on_pick = on_pick
        self._shown: list[tuple[int, int, int]] = []
        self.pixels.itemClicked.connect(self._clicked)

    def show(self, summaries: list[SetFlagSummary], flagged: list[tuple[int, int, int]]) -> None:
        self.table.setRowCount(len(summaries))
        for row, s in enumerate(summaries):
            cells = (
                s.set_id,
                s.n_pixels,
                s.n_flagged,
                f"{100 * s.fraction:.0f}",
                s.dominant or "-",
                s.first_pixel or "-",
                s.last_pixel or "-",
            )
            for col, value in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(str(value))
                if s.flagged:
                    item.setForeground(pg.mkColor("#ff5555"))
                self.table.setItem(row, col, item)
        alarms = [s.message for s in summaries if s.flagged]
        self.messages.setText("<br>".join(f"<b style='color:#ff5555'>{m}</b>" for m in alarms) or "no set flagged")
        if flagged != self._shown:
            self._shown = flagged
            self.pixels.clear()
            self.pixels.addItems([f"(iy {iy}, ix {ix})  {_flag_text(f)}" for iy, ix, f in flagged])
            self.pixels_label.setText(f"{len(flagged)} flagged pixels (click to locate)")

    def _clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        iy, ix, _ = self._shown[self.pixels.row(item)]
        self._on_pick(iy, ix)
