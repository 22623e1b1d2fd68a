"""Map panels of the control-room window: a (ny, nx) image in scan coordinates, and the flag map.

:class:`MapPanel` draws one quantity with a colour bar over a backdrop that marks the pixels it
cannot colour (measured but not analysed yet, analysed without a value); :class:`FlagMapPanel`
draws which quality flag each pixel carries. Both keep the map's aspect, put row 0 at the bottom
(y grows with the row index, as in the scan frame and the offline figures) and pick pixels with
the mouse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from stslive.live.results import FLAG_LABELS, FlagKind
from stslive.live.viewer.panels import (
    INVALID_COLOR,
    PENDING_COLOR,
    NoData,
    PixelCallback,
    legend_label,
    make_plot,
    set_title,
    swatch,
)
from stslive.live.viewer.scan_state import ScanFrame

#: Backdrop codes of :meth:`MapPanel.show`: nothing, measured not analysed, analysed without a value.
EMPTY, PENDING, INVALID = 0, 1, 2
_BACKDROP = np.array(
    [[0, 0, 0, 0], [*pg.mkColor(PENDING_COLOR).getRgb()[:3], 255], [*pg.mkColor(INVALID_COLOR).getRgb()[:3], 255]],
    dtype=np.uint8,
)


def backdrop_codes(measured: np.ndarray, analysed: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(ny, nx) uint8 codes: :data:`PENDING` measured but not analysed, :data:`INVALID` analysed, not valid."""
    codes = np.zeros(measured.shape, dtype=np.uint8)
    codes[measured & ~analysed] = PENDING
    codes[analysed & ~valid] = INVALID
    return codes


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

        # the margins change when titles, tick labels or the colour bar do: fit again then
        child.getPlotItem().vb.sigResized.connect(self._fit)

    def set_aspect(self, height_over_width: float) -> None:
        self.aspect = height_over_width
        self._fit()

    def resizeEvent(self, event: Any) -> None:
        self._fit()
        super().resizeEvent(event)

    def _fit(self, *_: object) -> None:
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
    """One (ny, nx) map in scan coordinates with a colour bar, a backdrop, a pixel marker and picking.

    Parameters
    ----------
    title, bar_label
        Plot title and colour-bar label.
    cmap
        Colour map; None for a panel that draws only its backdrop (the flag map).
    on_click, on_hover
        Called with (iy, ix) of the pixel under the mouse.
    """

    def __init__(
        self,
        title: str,
        bar_label: str,
        cmap: pg.ColorMap | None,
        *,
        on_click: PixelCallback,
        on_hover: PixelCallback,
    ) -> None:
        self.plot_widget = make_plot(title, "x (nm)", "y (nm)")
        self.box = AspectBox(self.plot_widget)
        self.legend = legend_label()
        self.widget = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(self.widget)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.box, 1)
        lay.addWidget(self.legend)
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setAspectLocked(True)
        self.plot.setMouseEnabled(x=False, y=False)  # the view is the whole map; clicks pick pixels
        self.plot.hideButtons()
        self.backdrop = pg.ImageItem(axisOrder="row-major")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.backdrop)
        self.plot.addItem(self.image)
        self.bar: pg.ColorBarItem | None = None
        if cmap is not None:
            self.bar = pg.ColorBarItem(colorMap=cmap, label=bar_label, interactive=False, width=12)
            self.bar.setImageItem(self.image, insert_in=self.plot)
            self.bar.getAxis("right").setWidth(48)  # room for "1.250" whatever the first levels were
        self.marker = pg.ScatterPlotItem(size=12, symbol="+", pen=pg.mkPen("r", width=2), brush=None)
        self.plot.addItem(self.marker)
        self.no_data = NoData(self.plot_widget, keep_axes=True)
        self.frame = ScanFrame.from_pixel_size(1.0)
        self.shape = (0, 0)
        self._on_click, self._on_hover = on_click, on_hover
        self.plot_widget.scene().sigMouseClicked.connect(self._clicked)
        self.plot_widget.scene().sigMouseMoved.connect(self._moved)

    def set_title(self, text: str) -> None:
        set_title(self.plot_widget, text)

    def set_geometry(self, ny: int, nx: int, frame: ScanFrame) -> None:
        """Place the (ny, nx) grid where ``frame`` says; the whole grid stays in view while it fills."""
        self.frame, self.shape = frame, (ny, nx)
        x_label, y_label = frame.axis_labels()
        self.plot.setLabel("bottom", x_label)
        self.plot.setLabel("left", y_label)
        left, bottom, width, height = frame.rect(ny, nx)
        self.plot.setRange(xRange=(left, left + width), yRange=(bottom, bottom + height), padding=0.0)
        self.plot.disableAutoRange()
        self.box.set_aspect(height / width)

    def _rect(self) -> QtCore.QRectF:
        return QtCore.QRectF(*self.frame.rect(*self.shape))

    def show(
        self, values: np.ndarray | None, levels: tuple[float, float], *, backdrop: np.ndarray | None = None
    ) -> None:
        """Draw ``values`` (NaN transparent) over ``backdrop`` codes (:func:`backdrop_codes`)."""
        has_values = values is not None and bool(np.isfinite(values).any())
        if values is not None:
            self.image.setImage(values, autoLevels=False, levels=levels)
            self.image.setRect(self._rect())
        if self.bar is not None:
            self.bar.setVisible(has_values)
            if has_values:
                self.bar.setLevels(levels)
        marked = backdrop is not None and bool(backdrop.any())
        self.backdrop.setVisible(marked)
        if marked and backdrop is not None:
            self.show_rgba(_BACKDROP[backdrop])
            counts = np.bincount(backdrop.ravel(), minlength=3)
            keys = [(PENDING_COLOR, counts[PENDING], "not analysed yet"), (INVALID_COLOR, counts[INVALID], "no value")]
            self.legend.setText("  ".join(swatch(c, f"{n:,} {what}") for c, n, what in keys if n))
        elif values is not None:
            self.legend.setText("&nbsp;")  # kept, empty: the map does not jump when a key appears
        left, bottom, width, height = self.frame.rect(*self.shape)
        self.no_data.show(None if has_values or marked else "no data yet", at=(left + width / 2, bottom + height / 2))

    def show_rgba(self, rgba: np.ndarray) -> None:
        """Draw an (ny, nx, 4) uint8 colour image as the backdrop."""
        self.backdrop.setImage(rgba, autoLevels=False)
        self.backdrop.setRect(self._rect())
        self.backdrop.setVisible(True)

    def mark(self, iy: int, ix: int) -> None:
        x, y = self.frame.centre(iy, ix)
        self.marker.setData([x], [y])

    def _pixel_at(self, scene_pos: QtCore.QPointF) -> tuple[int, int] | None:
        if not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot.vb.mapSceneToView(scene_pos)
        iy, ix = self.frame.pixel_at(p.x(), p.y())
        return (iy, ix) if 0 <= iy < self.shape[0] and 0 <= ix < self.shape[1] else None

    def _clicked(self, event: Any) -> None:  # pyqtgraph's MouseClickEvent
        hit = self._pixel_at(event.scenePos())
        if hit is not None:
            self._on_click(*hit)

    def _moved(self, pos: QtCore.QPointF) -> None:
        hit = self._pixel_at(pos)
        if hit is not None:
            self._on_hover(*hit)


#: Flags from the most to the least telling: a pixel with several shows the first.
FLAG_ORDER = (
    FlagKind.FAILED_PIXEL,
    FlagKind.LOCKIN_OVERLOAD,
    FlagKind.TIP_CHANGE,
    FlagKind.NO_PEAKS,
    FlagKind.SWEEP_COVERAGE,
    FlagKind.SETPOINT,
    FlagKind.THERMAL,
    FlagKind.MODULATION,
    FlagKind.LOCKIN_SENSITIVITY,
    FlagKind.LOCKIN_MISMATCH,
    FlagKind.POOR_FIT,
)
FLAG_COLORS = (
    "#d62728",
    "#ff7f0e",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#9467bd",
    "#ffdd57",
    "#2ca02c",
    "#8c564b",
    "#aec7e8",
    "#1f77b4",
)
UNFLAGGED_COLOR = "#303030"


def flag_codes(flags: np.ndarray, analysed: np.ndarray) -> np.ndarray:
    """(ny, nx) uint8: 0 not analysed, 1 no flag, 2 + k the pixel's first flag in :data:`FLAG_ORDER`."""
    codes = np.where(analysed, 1, 0).astype(np.uint8)
    for k in range(len(FLAG_ORDER) - 1, -1, -1):  # least telling first: the most telling is written last
        codes[analysed & (flags & np.uint32(FLAG_ORDER[k]) != 0)] = 2 + k
    return codes


class FlagMapPanel:
    """Which quality flag each analysed pixel carries (the first of :data:`FLAG_ORDER`), with a legend."""

    def __init__(self, *, on_click: PixelCallback, on_hover: PixelCallback) -> None:
        self.map = MapPanel("quality flags", "", None, on_click=on_click, on_hover=on_hover)
        self.widget = self.map.widget
        colors = [(0, 0, 0, 0), pg.mkColor(UNFLAGGED_COLOR).getRgb(), *(pg.mkColor(c).getRgb() for c in FLAG_COLORS)]
        self._lut = np.array(colors, dtype=np.uint8)

    def show(self, flags: np.ndarray, analysed: np.ndarray) -> None:
        codes = flag_codes(flags, analysed)
        counts = np.bincount(codes.ravel(), minlength=len(self._lut))
        n_analysed, n_flagged = int(counts[1:].sum()), int(counts[2:].sum())
        if n_analysed == 0:
            self.map.show(None, (0.0, 1.0))
            self.map.set_title("quality flags: none analysed yet")
            self.map.legend.setText("&nbsp;")
            return
        self.map.show_rgba(self._lut[codes])
        self.map.no_data.show(None)
        self.map.set_title(f"quality flags: {n_flagged} of {n_analysed} flagged")
        entries = [(UNFLAGGED_COLOR, "no flag", int(counts[1]))] + [
            (FLAG_COLORS[k], FLAG_LABELS[kind], int(counts[2 + k]))
            for k, kind in enumerate(FLAG_ORDER)
            if counts[2 + k]
        ]
        self.map.legend.setText("  ".join(swatch(c, f"{name} {n:,}") for c, name, n in entries))
