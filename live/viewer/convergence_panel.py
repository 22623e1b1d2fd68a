"""The convergence panel of the control-room window: are l_Delta, l_alpha and rho_cross(0) pinned down yet?

Three plots against the pixels measured (log axis): the lengths' estimates with their 90 % bands,
rho_cross(0)'s, and each band's width with its target, the fitted trend and where it meets the
target; a text below says per figure "reached", "~ 3 h 20 min (at 410 px/h)" or why it cannot
be said yet (:mod:`~stslive.live.viewer.convergence`). The screen never knows the film's truth:
nothing here is drawn against it. Without a snapshot every plot says so instead of empty axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from stslive.live.viewer.convergence import (
    FORECAST_FIGURES,
    Forecast,
    Series,
    Target,
    band_width,
    combine,
    figure_series,
    figure_target,
    forecast_figure,
    forecast_text,
    hours_text,
)
from stslive.live.viewer.panels import NoData, legend_label, make_plot, set_title

#: How each figure is named and drawn: label, unit, colour (the correlation panel's colours).
STYLE = {
    "l_delta_nm": ("l_Δ", " nm", "#4daf4a"),
    "l_alpha_nm": ("l_α", " nm", "#377eb8"),
    "rho_cross_0": ("ρ_cross(0)", "", "#e41a1c"),
    "l_cross_nm": ("l_cross", " nm", "#984ea3"),  # written (when a stop rule waits for it), not drawn
}
EMPTY = "no correlation snapshot yet"
#: Forecast states the window's tab names ("convergence: ~ 3 h 20 min"); the others need the panel's words.
TAB_STATES = ("reached", "predicted", "beyond")


@dataclass(frozen=True)
class RunProgress:
    """What the forecast needs of the run besides the history: pixels now, of the map, rate, ended."""

    n_now: float
    n_total: float
    pixels_per_hour: float
    ended: bool
    target: Target = field(default_factory=Target)


def _rgba(color: str, alpha: int) -> QtGui.QColor:
    c = pg.mkColor(color)
    c.setAlpha(alpha)
    return c


class _Band:
    """An estimate (line and points) and its 90 % band (a fill between its two edge curves)."""

    def __init__(self, plot: pg.PlotItem, color: str) -> None:
        # the band's edges need a pen: a PlotDataItem without one builds no path to fill between
        edge = pg.mkPen(_rgba(color, 110), width=1)
        self.low = pg.PlotDataItem(pen=edge)
        self.high = pg.PlotDataItem(pen=edge)
        self.fill = pg.FillBetweenItem(self.low, self.high, brush=_rgba(color, 70))
        self.estimate = pg.PlotDataItem(pen=pg.mkPen(color, width=2), symbol="o", symbolSize=4, symbolBrush=color)
        self.estimate.setSymbolPen(None)
        for item in (self.low, self.high, self.fill, self.estimate):
            plot.addItem(item)

    def show(self, n: np.ndarray, estimate: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        keep = np.isfinite(estimate) & (n > 0)
        self.estimate.setData(n[keep], estimate[keep])
        # a band only where the snapshot had one (an interval without an upper bound is not drawn)
        band = np.isfinite(low) & np.isfinite(high) & (n > 0)
        self.low.setData(n[band], low[band])
        self.high.setData(n[band], high[band])
        self.fill.setVisible(bool(band.any()))


class ConvergencePanel:
    """Estimates, bands and band widths of the correlation figures against pixels measured, with forecasts.

    ``widget`` holds the three plots and the forecast text; :attr:`headline` is the one-line
    forecast of all figures together (the window puts it in the tab's name).
    """

    def __init__(self) -> None:
        self.lengths = make_plot("correlation lengths", "pixels measured", "length (nm)")
        self.rho = make_plot("ρ_cross(0)", "pixels measured", "ρ_cross(0)")
        self.widths = make_plot("90 % band width", "pixels measured", "band width")
        for w in (self.lengths, self.rho, self.widths):
            w.getPlotItem().setLogMode(x=True, y=w is self.widths)
        # fixed 1-2-5 ticks: pyqtgraph labels every minor tick of a log axis (2 3 4 5 6 ...), which overlap
        for w in (self.lengths, self.rho, self.widths):
            w.getPlotItem().getAxis("bottom").setTicks([[(math.log10(v), _count(v)) for v in _steps(1, 1e7)]])
        self.widths.getPlotItem().getAxis("left").setTicks([[(math.log10(v), f"{v:g}") for v in _steps(1e-3, 1e3)]])
        self.bands = {
            "l_delta_nm": _Band(self.lengths.getPlotItem(), STYLE["l_delta_nm"][2]),
            "l_alpha_nm": _Band(self.lengths.getPlotItem(), STYLE["l_alpha_nm"][2]),
            "rho_cross_0": _Band(self.rho.getPlotItem(), STYLE["rho_cross_0"][2]),
        }
        self.width_curves = {
            f: self.widths.plot(pen=pg.mkPen(STYLE[f][2], width=2), symbol="o", symbolSize=4, symbolBrush=STYLE[f][2])
            for f in FORECAST_FIGURES
        }
        self.trend_curves = {
            f: self.widths.plot(pen=pg.mkPen(STYLE[f][2], width=1, style=QtCore.Qt.DashLine)) for f in FORECAST_FIGURES
        }
        # horizontal target lines as curves: an InfiniteLine ignores the log axis
        self.target_lines = {
            key: self.widths.plot(pen=pg.mkPen(color, width=1, style=QtCore.Qt.DotLine))
            for key, color in (("lengths", "#dddddd"), ("rho_cross_0", STYLE["rho_cross_0"][2]))
        }
        self.no_data = [NoData(w) for w in (self.lengths, self.rho, self.widths)]
        self.text = legend_label()
        self.text.setAlignment(QtCore.Qt.AlignTop | QtCore.Qt.AlignLeft)
        self.widget = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(self.widget)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        grid.addWidget(self.lengths, 0, 0)
        grid.addWidget(self.rho, 0, 1)
        grid.addWidget(self.widths, 1, 0)
        grid.addWidget(self.text, 1, 1)
        self.headline = ""
        #: the name of the window's tab: "convergence", with the forecast when there is one
        self.tab_text = "convergence"
        self.forecasts: dict[str, Forecast] = {}
        self._shown: tuple[int, RunProgress] | None = None
        #: the series of the snapshots shown (``_shown``'s version), None: none drawn
        self._series: dict[str, Series] | None = None

    # -- drawing -----------------------------------------------------------------------------
    def show(self, arrays: dict[str, np.ndarray] | None, progress: RunProgress, *, version: int = -1) -> None:
        """Draw a history's :meth:`~stslive.live.snapshot_history.SnapshotHistory.arrays` (None: none yet).

        ``version`` (the model's snapshot version) skips a redraw of what is already shown.
        """
        if version >= 0 and self._shown == (version, progress):
            return
        # the snapshots drawn already (the 0.5 s status tick moves only the progress): the
        # bands, titles and ranges stay; the forecasts, trend lines and text follow the progress
        same = (
            self._series is not None
            and self._shown is not None
            and self._shown[0] == version
            and self._shown[1].target.figures == progress.target.figures
        )
        self._shown = (version, progress) if version >= 0 else None
        if same:
            assert self._series is not None
            k = int(np.asarray(arrays.get("n_measured", ())).size) if arrays is not None else 0
            self._follow(self._series, progress, k)
            return
        self._series = None
        k = 0 if arrays is None else int(np.asarray(arrays.get("n_measured", ())).size)
        items = [*self.width_curves.values(), *self.trend_curves.values(), *self.target_lines.values()]
        for band in self.bands.values():
            items += [band.estimate, band.fill]
        for item in items:
            item.setVisible(k > 0)
        if arrays is None or k == 0:
            for w, note in zip((self.lengths, self.rho, self.widths), self.no_data, strict=True):
                set_title(w, EMPTY)
                note.show(EMPTY)
            self.forecasts, self.headline, self.tab_text = {}, "", "convergence"
            self.text.setText("No correlation snapshot yet: the analyser takes one every few hundred pixels.")
            return
        for note in self.no_data:
            note.show(None)
        # the drawn figures, and any other the run's stop rule waits for (l_cross: forecast, not drawn)
        figures = dict.fromkeys((*FORECAST_FIGURES, *progress.target.figures))
        series = self._series = {f: figure_series(arrays, f) for f in figures}
        for f in FORECAST_FIGURES:
            s = series[f]
            self.bands[f].show(s.n, s.estimate, s.low, s.high)
        self._titles(series)
        self._follow(series, progress, k)
        for w in (self.lengths, self.rho, self.widths):
            w.getPlotItem().enableAutoRange()

    def _follow(self, series: dict, progress: RunProgress, k: int) -> None:
        """What moves with the run's progress: the forecasts, the trend and target lines, the text."""
        self.forecasts = self._forecasts(series, progress)
        self._draw_widths(series, progress)
        self._write(series, progress, k)

    def _titles(self, series: dict) -> None:
        parts = []
        for f in ("l_delta_nm", "l_alpha_nm"):
            name, unit, color = STYLE[f]
            parts.append(f"<span style='color:{color}'>{name} {_last(series[f].estimate):.1f}{unit}</span>")
        corrected = all(
            s.corrected is not None and s.corrected.size and s.corrected[-1]
            for f, s in series.items()
            if f in FORECAST_FIGURES
        )
        set_title(self.lengths, " · ".join(parts) + (" (corrected)" if corrected else " (1/e)"))
        set_title(self.rho, f"ρ_cross(0) {_last(series['rho_cross_0'].estimate):+.2f} (90 % band)")

    def _forecasts(self, series: dict, progress: RunProgress) -> dict[str, Forecast]:
        out = {}
        for f, s in series.items():
            target = figure_target(f, progress.target, _last(s.estimate))
            out[f] = forecast_figure(s, target, n_now=progress.n_now, n_total=progress.n_total)
        return out

    def _draw_widths(self, series: dict, progress: RunProgress) -> None:
        drawn = {f: series[f] for f in FORECAST_FIGURES}
        n_all = np.concatenate([s.n[np.isfinite(band_width(s))] for s in drawn.values()])
        n_all = n_all[n_all > 0]
        right = max(float(n_all.max()) if n_all.size else 1.0, 1.0)
        left = float(n_all.min()) if n_all.size else 1.0
        for f, s in drawn.items():
            width = band_width(s)
            ok = np.isfinite(width) & (width > 0) & (s.n > 0)
            self.width_curves[f].setData(s.n[ok], width[ok])
            fc = self.forecasts[f]
            if fc.trend is None or fc.state not in ("predicted", "due", "beyond"):
                self.trend_curves[f].setData([], [])
                continue
            # the trend from the fitted snapshots to the target (or the map's end)
            end = min(fc.n_target, progress.n_total) if math.isfinite(progress.n_total) else fc.n_target
            n_line = np.geomspace(max(s.n[ok].max() / 4.0, 1.0), max(end, s.n[ok].max()), 24)
            self.trend_curves[f].setData(n_line, fc.trend.width_at(n_line))
            right = max(right, float(n_line[-1]))
        lengths_target = self.forecasts["l_delta_nm"].target
        rho_target = self.forecasts["rho_cross_0"].target
        for key, value in (("lengths", lengths_target), ("rho_cross_0", rho_target)):
            shown = math.isfinite(value) and value > 0 and not (key == "rho_cross_0" and value == lengths_target)
            self.target_lines[key].setData([left, right] if shown else [], [value, value] if shown else [])
        set_title(self.widths, f"90 % band width (target {100 * lengths_target:g} %)")

    def _write(self, series: dict, progress: RunProgress, k: int) -> None:
        target = progress.target
        rho_target = self.forecasts["rho_cross_0"].target
        rho_text = f"{rho_target:.2g}" if math.isfinite(rho_target) else "?"
        source = "the run's stop rule" if target.source == "stop rule" else "default, no stop rule"
        lines = [
            f"target: 90 % band ≤ {100 * target.value:g} % of each length, ρ_cross(0) ≤ {rho_text} wide ({source})"
        ]

        def say(fc: Forecast) -> str:
            return forecast_text(
                fc,
                pixels_per_hour=progress.pixels_per_hour,
                n_now=progress.n_now,
                n_total=progress.n_total,
                ended=progress.ended,
            )

        for f, s in series.items():
            name, unit, color = STYLE[f]
            fc = self.forecasts[f]
            estimate = _last(s.estimate)
            value = f"{estimate:+.2f}" if f == "rho_cross_0" else f"{estimate:.1f}{unit}"
            if math.isfinite(fc.width):
                value += f", band {fc.width:.2f}" if f == "rho_cross_0" else f", band {100 * fc.width:.0f} %"
            waited = "" if f in target.figures else " (not in the stop rule)"
            lines.append(f"<span style='color:{color}'><b>{name}</b></span> {value}: {say(fc)}{waited}")
        overall = combine([self.forecasts[f] for f in target.figures])
        headline = say(overall)
        self.headline = headline
        self.tab_text = "convergence" + (f": {headline.split(' (')[0]}" if overall.state in TAB_STATES else "")
        every = "all three" if set(target.figures) == set(FORECAST_FIGURES) else _named(target.figures)
        lines.append(f"<b>{every}: {headline}</b>")
        n, t = series["l_delta_nm"].n, series["l_delta_nm"].time
        span = float(np.nanmax(t) - np.nanmin(t)) if np.isfinite(t).any() else math.nan
        since = f", {hours_text(span / 3600.0)} after the first" if math.isfinite(span) and span > 0 else ""
        lines.append(f"{k} snapshot{'s' * (k != 1)}, the latest at {np.nanmax(n):,.0f} pixels{since}")
        self.text.setText("<br>".join(lines))


def _named(figures: tuple[str, ...]) -> str:
    """The figures a stop rule waits for, by their screen names: "l_Δ and ρ_cross(0)"."""
    names = [STYLE[f][0] for f in figures]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _steps(low: float, high: float) -> list[float]:
    """1, 2, 5 times the powers of ten from ``low`` to ``high``."""
    decades = range(round(math.log10(low)), round(math.log10(high)) + 1)
    return [m * 10.0**d for d in decades for m in (1, 2, 5)]


def _count(v: float) -> str:
    """A pixel count as a tick label: 500, 2k, 50k, 1M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def _last(values: np.ndarray) -> float:
    """The last finite value (rows in pixel order), NaN without one."""
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan
