"""What every panel of the control-room window shares: plot style, titles, "no data", colours, names.

Panels (``map_panels``, ``stat_panels``, ``spectrum_panels``, ``line_panels``, ``status_panels``)
own their pyqtgraph/Qt items and draw ready numbers handed to their ``show`` methods; none reads
files or analyses anything. Display units: meV, nm, nS, K.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from stslive.live.kernels import ReasonCode
from stslive.live.results import FLAG_LABELS, FlagKind

PixelCallback = Callable[[int, int], None]

#: Colour of pixels measured but not analysed yet, and of analysed pixels without Delta/alpha.
PENDING_COLOR = "#6b6b6b"
INVALID_COLOR = "#e8336d"
#: Minimum plot height (px) at which the tick labels of a data plot stay apart.
MIN_PLOT_HEIGHT = 150


def set_title(widget: pg.PlotWidget, text: str) -> None:
    """One title style for every plot; an unchanged title is not set again (that lays the plot out)."""
    if widget.getPlotItem().titleLabel.text != text:
        widget.setTitle(text, size="9pt")


def _title_never_widens(label: pg.LabelItem) -> None:
    """Let a title wider than its plot be cut instead of widening the plot.

    pyqtgraph makes a title's text width its minimum width at every resize, which on a narrow
    screen pushed colour bars and right-hand axes out of their panels.
    """
    update_min = label.updateMin

    def without_width() -> None:
        update_min()
        label.setMinimumWidth(0)

    label.updateMin = without_width


def make_plot(title: str, x: str, y: str, *, min_height: int = 110) -> pg.PlotWidget:
    """A plot with the window's title style, axis labels in display units and no SI prefixing."""
    w = pg.PlotWidget()
    _title_never_widens(w.getPlotItem().titleLabel)
    set_title(w, title)
    w.setLabel("bottom", x)
    w.setLabel("left", y)
    for side in ("bottom", "left"):
        w.getPlotItem().getAxis(side).enableAutoSIPrefix(False)  # units are already meV, nm, nS
    w.setMinimumSize(120, min_height)
    return w


class NoData:
    """A centred message over a plot that has nothing to draw, instead of empty axes.

    ``show(text)`` hides the plot's axes (unless ``keep_axes``: a map's extent is real even when
    empty) and writes ``text`` in the middle of the view; ``show(None)`` restores them.
    """

    def __init__(self, widget: pg.PlotWidget, *, keep_axes: bool = False) -> None:
        self.plot = widget.getPlotItem()
        self.keep_axes = keep_axes
        self.label = pg.TextItem("", color="#c8c8c8", anchor=(0.5, 0.5))
        self.label.setZValue(100)
        self.label.setVisible(False)
        self.plot.addItem(self.label, ignoreBounds=True)
        self.text: str | None = None

    def show(self, text: str | None, *, at: tuple[float, float] | None = None) -> None:
        """Show ``text`` (None: hide) at data point ``at``, by default the middle of a 0..1 view."""
        if text == self.text and at is None:
            return
        self.text = text
        self.label.setVisible(text is not None)
        if not self.keep_axes:
            for side in ("left", "bottom"):
                self.plot.showAxis(side, text is None)
        if text is None:
            return
        self.label.setText("\n".join(textwrap.fill(part, 48) for part in text.split("\n")))
        if at is None:
            self.plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.0)
            at = (0.5, 0.5)
        self.label.setPos(*at)


def reversed_cmap(cmap: pg.ColorMap) -> pg.ColorMap:
    """A reversed copy (the paper shows alpha with the reversed scale of Delta)."""
    pos, colors = cmap.getStops()
    return pg.ColorMap(pos=1.0 - pos[::-1], color=colors[::-1])


def reason_text(code: int) -> str:
    """A kernel reason code as its :class:`ReasonCode` name ("OK", "NO_PEAKS", ...)."""
    if code < 0:
        return "not analysed"
    try:
        return ReasonCode(int(code)).name
    except ValueError:
        return f"unknown reason {code}"  # a newer analyser's code: show it rather than fail


def flag_text(flags: int) -> str:
    """The flag bits of a pixel as their labels joined by "+", "none" without any."""
    names = [FLAG_LABELS[k] for k in FlagKind if flags & int(k)]
    return "+".join(names) if names else "none"


def legend_label() -> QtWidgets.QLabel:
    """A word-wrapped line under a plot, in the plots' colours, for colour keys and counts."""
    label = QtWidgets.QLabel("&nbsp;")
    label.setTextFormat(QtCore.Qt.TextFormat.RichText)
    label.setWordWrap(True)
    label.setStyleSheet(f"background: {pg.getConfigOption('background')}; color: #d0d0d0; padding: 1px 4px")
    return label


def swatch(color: str, text: str) -> str:
    """A coloured square and its meaning, for a :func:`legend_label`."""
    return f"<span style='color:{color}'>■</span>&nbsp;{text}"
