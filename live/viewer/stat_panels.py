"""Statistics panels of the control-room window: histograms, the Delta-alpha scatter, correlations.

Each draws numbers the results model already holds (valid pixels only) and says "no data" when
there are none, instead of empty axes.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore

from stslive.live.results import CorrelationSnapshot, Histogram
from stslive.live.viewer.panels import NoData, make_plot, set_title

#: Above this many valid pixels the scatter is drawn as a density image: 4,000 points added ~2.7 ms
#: to every full repaint of the window, the image nothing measurable.
SCATTER_POINTS_MAX = 1500


class HistogramPanel:
    """Histogram of valid values with the mean (solid) and mean +- sigma (dashed) marked."""

    def __init__(self, title: str, x_label: str, color: str) -> None:
        self.title = title
        self.widget = make_plot(title, x_label, "pixels")
        self.curve = self.widget.plot(
            [0, 1], [0], stepMode="center", fillLevel=0, brush=pg.mkBrush(color), pen=pg.mkPen(color)
        )
        self.lines = [
            pg.InfiniteLine(angle=90, pen=pg.mkPen("w", width=2, style=s))
            for s in (QtCore.Qt.SolidLine, QtCore.Qt.DashLine, QtCore.Qt.DashLine)
        ]
        for line in self.lines:
            self.widget.addItem(line)
        self.no_data = NoData(self.widget)

    def show(self, hist: Histogram, mean: float, std: float, *, scale: float, unit: str, n: int) -> None:
        empty = hist.counts.size == 0
        for item in (self.curve, *self.lines):
            item.setVisible(not empty)
        if empty:
            set_title(self.widget, f"{self.title}: no valid pixels yet")
            self.no_data.show("no data yet")
            return
        self.no_data.show(None)
        self.curve.setData(hist.edges * scale, hist.counts)
        for line, x in zip(self.lines, (mean, mean - std, mean + std), strict=True):
            line.setValue(x * scale)
        self.widget.getPlotItem().enableAutoRange()
        # short enough for a third of a small screen: "Δ 1.290 ± 0.034 meV (2.6 %)"
        rel = f" ({100 * std / mean:.1f} %)" if mean else ""
        set_title(self.widget, f"{self.title} {mean * scale:.3f} ± {std * scale:.3f}{unit}{rel}")


DENSITY_BINS = 80


def density(x: np.ndarray, y: np.ndarray, *, bins: int) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Counts (bins_y, bins_x) of the points on a regular grid spanning their range, and that range.

    One ``bincount`` of the cell indices: ``np.histogram2d`` took ~15 ms for a 300 x 250 map's
    pixels, too long for the screen's summary pass.
    """
    ranges = []
    cells = []
    for v in (x, y):
        lo, hi = float(v.min()), float(v.max())
        hi = hi if hi > lo else lo + 1e-12
        ranges.append((lo, hi))
        cells.append(np.minimum(((v - lo) * (bins / (hi - lo))).astype(np.intp), bins - 1))
    counts = np.bincount(cells[1] * bins + cells[0], minlength=bins * bins).reshape(bins, bins)
    return counts, ranges[0], ranges[1]


class ScatterPanel:
    """Delta against alpha of every valid pixel, with Pearson's r: the anticorrelation at a glance.

    Up to :data:`SCATTER_POINTS_MAX` pixels are drawn as points, more as a density image (log scale).
    """

    def __init__(self) -> None:
        self.widget = make_plot("Δ-α scatter", "Δ (meV)", "α")
        self.points = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(120, 200, 255, 150))
        self.density = pg.ImageItem(axisOrder="row-major")
        self.density.setColorMap(pg.colormap.get("inferno"))
        self.widget.addItem(self.density)
        self.widget.addItem(self.points)
        self.no_data = NoData(self.widget)

    def show(self, delta_meV: np.ndarray, alpha: np.ndarray) -> None:
        keep = np.isfinite(delta_meV) & np.isfinite(alpha)
        d, a = delta_meV[keep], alpha[keep]
        if d.size < 2:
            self.points.setVisible(False)
            self.density.setVisible(False)
            set_title(self.widget, "Δ-α scatter: fewer than 2 valid pixels")
            self.no_data.show("no data yet")
            return
        self.no_data.show(None)
        dense = d.size > SCATTER_POINTS_MAX
        self.points.setVisible(not dense)
        self.density.setVisible(dense)
        if dense:
            bins = int(np.clip(math.sqrt(d.size) / 1.5, 24, DENSITY_BINS))  # ~2 pixels a cell at least
            counts, (d0, d1), (a0, a1) = density(d, a, bins=bins)
            self.density.setImage(np.log1p(counts), autoLevels=True)
            self.density.setRect(QtCore.QRectF(d0, a0, d1 - d0, a1 - a0))
        else:
            self.points.setData(d, a)
        self.widget.getPlotItem().enableAutoRange()
        r = float(np.corrcoef(d, a)[0, 1]) if d.std() > 0 and a.std() > 0 else math.nan
        set_title(self.widget, f"Δ vs α: Pearson r = {r:+.2f}, N {d.size:,}")


class CorrelationPanel:
    """The 2D Delta-alpha cross-correlation map and the radial profiles with the lengths marked."""

    def __init__(self) -> None:
        self.map_widget = make_plot("Δ-α cross-correlation ρ_cross(r)", "shift x (nm)", "shift y (nm)")
        self.map_widget.getPlotItem().setAspectLocked(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.map_widget.addItem(self.image)
        self.bar = pg.ColorBarItem(colorMap=pg.colormap.get("CET-D1"), label="ρ_cross", interactive=False, width=12)
        self.bar.setImageItem(self.image, insert_in=self.map_widget.getPlotItem())
        self.map_no_data = NoData(self.map_widget)
        # the curves are named by colour in the title (a legend box covered them)
        self.profile_widget = make_plot("radial correlation profiles", "r (nm)", "ρ_Δ, ρ_α, ρ_cross")
        self.curves = {
            "Delta": self.profile_widget.plot(pen=pg.mkPen("#4daf4a", width=2), name="ρ_Δ"),
            "alpha": self.profile_widget.plot(pen=pg.mkPen("#377eb8", width=2), name="ρ_α"),
            "cross": self.profile_widget.plot(pen=pg.mkPen("#e41a1c", width=2), name="ρ_cross"),
        }
        self.length_lines = {  # the lengths' values are in the title
            k: pg.InfiniteLine(angle=90, pen=pg.mkPen(c.opts["pen"].color(), style=QtCore.Qt.DashLine))
            for k, c in self.curves.items()
        }
        for line in self.length_lines.values():
            self.profile_widget.addItem(line)
        self.guides = [
            pg.InfiniteLine(
                pos=1 / math.e,
                angle=0,
                pen=pg.mkPen("#888", style=QtCore.Qt.DotLine),
                label="1/e",
                labelOpts={"position": 0.95, "color": "#aaa"},
            ),
            pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#666")),
        ]
        for line in self.guides:
            self.profile_widget.addItem(line)
        self.profile_no_data = NoData(self.profile_widget)

    def show(self, snap: CorrelationSnapshot | None) -> None:
        profile_items = [*self.curves.values(), *self.length_lines.values(), *self.guides]
        self.image.setVisible(snap is not None)
        self.bar.setVisible(snap is not None)
        for item in profile_items:
            item.setVisible(snap is not None)
        if snap is None:
            set_title(self.map_widget, "cross-correlation: not computed yet")
            set_title(self.profile_widget, "radial profiles: not computed yet")
            self.map_no_data.show("no data yet")
            self.profile_no_data.show("no data yet")
            return
        self.map_no_data.show(None)
        self.profile_no_data.show(None)
        cross = np.asarray(snap.cross_map, dtype=np.float32)
        vmax = float(np.nanmax(np.abs(cross))) if np.isfinite(cross).any() else 1.0
        ny, nx = cross.shape
        pix = snap.pixel_nm if math.isfinite(snap.pixel_nm) else 1.0
        self.image.setImage(cross, autoLevels=False, levels=(-vmax, vmax))
        self.image.setRect(QtCore.QRectF(-nx / 2 * pix, -ny / 2 * pix, nx * pix, ny * pix))
        self.map_widget.getPlotItem().enableAutoRange()
        self.bar.setLevels((-vmax, vmax))
        set_title(self.map_widget, f"Δ-α cross-correlation, at 0: {snap.rho_cross_0:+.2f}")
        for key, rho in (("Delta", snap.rho_delta), ("alpha", snap.rho_alpha), ("cross", snap.rho_cross)):
            self.curves[key].setData(snap.r_nm, rho)
        for key, length in (("Delta", snap.l_delta_nm), ("alpha", snap.l_alpha_nm), ("cross", snap.l_cross_nm)):
            line = self.length_lines[key]
            line.setVisible(math.isfinite(length))
            if math.isfinite(length):
                line.setValue(length)
        self.profile_widget.getPlotItem().enableAutoRange()
        lengths = " · ".join(
            f"<span style='color:{self.curves[k].opts['pen'].color().name()}'>l_{greek} {length:.1f}</span>"
            for k, greek, length in (
                ("Delta", "Δ", snap.l_delta_nm),
                ("alpha", "α", snap.l_alpha_nm),
                ("cross", "cross", snap.l_cross_nm),
            )
        )
        theory = (
            f"<br>σ_ρ {snap.sigma_rho_ohm:.0f} Ω → σ_Δ/Δ {snap.predicted_delta_rel_sigma:.3f} (Eqs. 2-3)"
            if math.isfinite(snap.sigma_rho_ohm) and math.isfinite(snap.predicted_delta_rel_sigma)
            else ""
        )
        set_title(self.profile_widget, f"{lengths} nm (1/e){theory}")
