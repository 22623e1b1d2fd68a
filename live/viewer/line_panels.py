"""Line-cut panels of the control-room window: one quantity along the line, e.g. Delta(x) or alpha(x).

A line cut (a grid of one row) is drawn as curves, not as a one-pixel stripe of a map: valid values
as points joined by a line, flagged ones ringed, and a row of markers under the curve for the pixels
without a value (measured but not analysed yet, or analysed without one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg

from stslive.live.viewer.panels import (
    INVALID_COLOR,
    MIN_PLOT_HEIGHT,
    PENDING_COLOR,
    NoData,
    PixelCallback,
    make_plot,
    set_title,
)


class LineProfilePanel:
    """``values`` against position along a line, with invalid, pending and flagged pixels marked.

    Parameters
    ----------
    title, y_label, color
        Plot title, y-axis label (with unit) and curve colour.
    on_click
        Called with (0, ix) of the pixel nearest a click.
    """

    def __init__(self, title: str, y_label: str, color: str, *, on_click: PixelCallback) -> None:
        self.title = title
        self.widget = make_plot(title, "x (nm)", y_label, min_height=MIN_PLOT_HEIGHT)
        self.curve = self.widget.plot(
            pen=pg.mkPen(color, width=1.5), symbol="o", symbolSize=5, symbolBrush=color, connect="finite"
        )
        self.flagged = pg.ScatterPlotItem(size=11, symbol="o", pen=pg.mkPen("#ff7f0e", width=1.5), brush=None)
        self.invalid = pg.ScatterPlotItem(size=9, symbol="x", pen=pg.mkPen(INVALID_COLOR, width=2), brush=None)
        self.pending = pg.ScatterPlotItem(size=9, symbol="t1", pen=None, brush=pg.mkBrush(PENDING_COLOR))
        for item in (self.flagged, self.invalid, self.pending):
            self.widget.addItem(item)
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen("r", width=1.5, style=pg.QtCore.Qt.DashLine))
        self.marker.setVisible(False)
        self.widget.addItem(self.marker)
        self.no_data = NoData(self.widget)
        self.x_nm = np.zeros(0)
        self._on_click = on_click
        self.widget.scene().sigMouseClicked.connect(self._clicked)

    def show(
        self,
        x_nm: np.ndarray,
        values: np.ndarray,
        *,
        valid: np.ndarray,
        analysed: np.ndarray,
        measured: np.ndarray,
        flagged: np.ndarray,
        x_label: str = "x (nm)",
    ) -> None:
        """One value per pixel (NaN where none) and the masks that say why a value is missing."""
        self.x_nm = np.asarray(x_nm, dtype=np.float64)
        self.widget.setLabel("bottom", x_label)
        ok = valid & np.isfinite(values)
        invalid = analysed & ~ok
        pending = measured & ~analysed
        if not (ok.any() or invalid.any() or pending.any()):
            self.curve.setData([], [])
            for item in (self.flagged, self.invalid, self.pending):
                item.setData([], [])
            set_title(self.widget, f"{self.title}: no data yet")
            self.no_data.show("no data yet")
            return
        self.no_data.show(None)
        self.curve.setData(self.x_nm, np.where(ok, values, np.nan))
        self.flagged.setData(self.x_nm[ok & flagged], values[ok & flagged])
        # markers for the pixels without a value sit just under the curve's range
        shown = values[ok]
        lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
        base = lo - 0.08 * ((hi - lo) or abs(lo) or 1.0)
        self.invalid.setData(self.x_nm[invalid], np.full(int(invalid.sum()), base))
        self.pending.setData(self.x_nm[pending], np.full(int(pending.sum()), base))
        self.widget.getPlotItem().enableAutoRange()
        parts = [f"{int(ok.sum())} values"]
        if invalid.any():
            parts.append(f"{int(invalid.sum())} without (×)")
        if pending.any():
            parts.append(f"{int(pending.sum())} not analysed (▲)")
        if (ok & flagged).any():
            parts.append(f"{int((ok & flagged).sum())} flagged (○)")
        set_title(self.widget, f"{self.title}: " + ", ".join(parts))

    def mark(self, ix: int) -> None:
        if 0 <= ix < self.x_nm.size:
            self.marker.setValue(float(self.x_nm[ix]))
            self.marker.setVisible(True)

    def _clicked(self, event: Any) -> None:  # pyqtgraph's MouseClickEvent
        plot = self.widget.getPlotItem()
        if self.x_nm.size == 0 or not plot.sceneBoundingRect().contains(event.scenePos()):
            return
        x = plot.vb.mapSceneToView(event.scenePos()).x()
        self._on_click(0, int(np.argmin(np.abs(self.x_nm - x))))
