"""The control-room window: run banner, maps (or a line cut's curves), statistics, spectra, flags, convergence.

The window reads no file and analyses nothing: a :class:`~stslive.live.viewer.sources.DataSource`
fills the :class:`~stslive.live.results.ResultsModel` (what the analysis found) and its
:class:`~stslive.live.viewer.scan_state.ScanState` (what was measured) on its own threads, and a
QTimer pulls from both, redrawing only what changed; the O(N) summaries (histograms, scatter,
flag map, colour levels) at most ``summary_hz`` times a second. Until results arrive the screen
shows the measured pixels, the newest raw spectrum and why the analysis lags.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z
from stslive.drivers.errors import ConfigError, FileFormatError
from stslive.live.results import ResultsModel
from stslive.live.viewer.convergence import target_from_stop_rule
from stslive.live.viewer.convergence_panel import ConvergencePanel, RunProgress
from stslive.live.viewer.line_panels import LineProfilePanel
from stslive.live.viewer.map_panels import FlagMapPanel, MapPanel, backdrop_codes
from stslive.live.viewer.panels import reason_text, reversed_cmap
from stslive.live.viewer.scan_state import ScanFrame, ScanView
from stslive.live.viewer.sources import DataSource
from stslive.live.viewer.spectrum_panels import SpectrumPanel, WaterfallPanel
from stslive.live.viewer.stat_panels import CorrelationPanel, HistogramPanel, ScatterPanel
from stslive.live.viewer.status_panels import (
    FlagsPanel,
    ScreenStatus,
    StatusBanner,
    TemperaturePanel,
    screen_status,
)

DEFAULT_SIZE = (1600, 1000)
MIN_SIZE = (400, 300)
#: Largest window (px per side): bigger than any screen, and its offscreen image (4 bytes a pixel)
#: would already take 256 MB.
MAX_SIDE = 8192
#: Seconds after the last hover before the spectrum panel follows the newest pixel again.
HOVER_HOLD_S = 5.0
#: Short panel-title form of each topography origin; a longer title than ~35 characters widens
#: the plot's layout and squeezes the colour bar off the panel.
TOPO_TITLES = {TOPO_FROM_FILE: "stored map", TOPO_FROM_Z: "tip height z − plane"}


def check_window_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` if a window of that size can be drawn; ConfigError otherwise."""
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise ConfigError(f"window size {width}x{height} too small to draw the screen; use at least 400x300")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ConfigError(
            f"window size {width}x{height} is larger than any screen; use at most {MAX_SIDE}x{MAX_SIDE} "
            "(e.g. 1600x1000)"
        )
    return int(width), int(height)


def qt_app() -> QtWidgets.QApplication:
    """The process's QApplication (created once); pyqtgraph images are row-major throughout."""
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)  # antialiased paths cost ~10x
    app = QtWidgets.QApplication.instance()
    return app if app is not None else QtWidgets.QApplication([])


def _levels(mean: float, std: float, lo: float, hi: float) -> tuple[float, float]:
    """Colour levels: mean +- 2.5 sigma clipped to the data range, so outliers do not wash out the map."""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return (0.0, 1.0)
    a, b = max(lo, mean - 2.5 * std), min(hi, mean + 2.5 * std)
    return (a, b) if b > a else (a - 1e-6, a + 1e-6)


def _topo_levels(topo_m: np.ndarray) -> tuple[float, float]:
    """Colour levels (nm) of a topography: its 0.5-99.5 % range, so one spike (a tip change)
    does not flatten the grain relief into one colour."""
    z = topo_m[np.isfinite(topo_m)]
    if not z.size:
        return (0.0, 1.0)
    lo, hi = (float(v) * 1e9 for v in np.percentile(z, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo - 1e-6, lo + 1e-6)


class ControlRoomWindow(QtWidgets.QMainWindow):
    """The control-room screen.

    Parameters
    ----------
    model
        The results model to show (filled by ``source`` or by the caller).
    source
        Optional data source; the window asks it for spectra, its scan state and its status line.
    refresh_hz
        Redraw timer rate.
    summary_hz
        Maximum refresh rate of histograms, scatter, flag map, colour levels and flag summaries.
    size
        Window size (px); ConfigError when impossible (:func:`check_window_size`).
    """

    def __init__(
        self,
        model: ResultsModel,
        source: DataSource | None = None,
        *,
        refresh_hz: float = 15.0,
        summary_hz: float = 2.0,
        size: tuple[int, int] = DEFAULT_SIZE,
    ) -> None:
        width, height = check_window_size(*size)
        super().__init__()
        self.model, self.source = model, source
        self.scan = None if source is None else source.scan
        self.frame = ScanFrame.from_pixel_size(model.pixel_nm) if source is None else source.frame
        self.line_mode = model.ny == 1
        self.setWindowTitle("stslive control room")
        self.setAttribute(QtCore.Qt.WA_DeleteOnClose)
        self.resize(width, height)
        self.frames = 0
        self.selected: tuple[int, int] | None = None
        self.pinned = False
        self.following: tuple[int, int] | None = None
        self._last_hover = -math.inf
        self._seen = {"maps": -1, "snapshot": -1, "status": -1, "scan": -1}
        self._summary_period = 1.0 / summary_hz
        self._last_summary = self._last_status = -math.inf
        self._levels = {"delta": (0.0, 1.0), "alpha": (0.0, 1.0), "topo": (0.0, 1.0)}
        self._alarms: list[str] = []
        self._build(width)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(1000 / refresh_hz))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # -- layout ------------------------------------------------------------------------------
    def _build(self, width: int) -> None:
        self.banner = StatusBanner()
        self.delta_hist = HistogramPanel("Δ", "Δ (meV)", "#4daf4a")
        self.alpha_hist = HistogramPanel("α", "α", "#377eb8")
        self.scatter = ScatterPanel()
        self.corr = CorrelationPanel()
        self.spectrum = SpectrumPanel()
        self.spectrum.clear("no pixel selected:\nhover over or click a map")
        self.temperature = TemperaturePanel()
        self.flags = FlagsPanel(self.select_pixel)
        self.convergence = ConvergencePanel()
        self._history: dict[str, np.ndarray] | None = None
        grid = QtWidgets.QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        self.maps: tuple[MapPanel, ...] = ()
        if self.line_mode:
            self._build_line(grid)
        else:
            self._build_maps(grid)
        for col in range(3):
            grid.setColumnStretch(col, 1)
        left = QtWidgets.QWidget()
        left.setLayout(grid)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(self.flags.widget, "flags")
        self.tabs.addTab(self.temperature.widget, "temperature")
        self.tabs.addTab(self.convergence.widget, self.convergence.tab_text)
        right = QtWidgets.QWidget()
        rlay = QtWidgets.QVBoxLayout(right)
        rlay.setContentsMargins(0, 0, 0, 0)
        rlay.addWidget(self.spectrum.gap, 4)
        rlay.addWidget(self.spectrum.wide, 4)
        rlay.addWidget(self.tabs, 6)
        split = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([int(width * 0.66), int(width * 0.34)])
        central = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(central)
        outer.setContentsMargins(4, 4, 4, 0)
        outer.addWidget(self.banner.widget)
        outer.addWidget(split, 1)
        self.setCentralWidget(central)
        self.readout = QtWidgets.QLabel("")
        self.statusBar().addPermanentWidget(self.readout)

    def _build_maps(self, grid: QtWidgets.QGridLayout) -> None:
        viridis = pg.colormap.get("viridis")
        pick = {"on_click": self.select_pixel, "on_hover": self._hover}
        self.delta_map = MapPanel("gap Δ", "Δ (meV)", viridis, **pick)
        self.alpha_map = MapPanel("AA exponent α", "α (reversed scale)", reversed_cmap(viridis), **pick)
        self.topo_map = MapPanel("topography Z", "Z (nm)", pg.colormap.get("afmhot", source="matplotlib"), **pick)
        self.flag_map = FlagMapPanel(**pick)
        self.maps = (self.delta_map, self.alpha_map, self.topo_map, self.flag_map.map)
        for panel in self.maps:
            panel.set_geometry(self.model.ny, self.model.nx, self.frame)
        cells = (
            (self.delta_map.widget, self.alpha_map.widget, self.flag_map.widget),
            (self.topo_map.widget, self.scatter.widget, self.corr.map_widget),
            (self.delta_hist.widget, self.alpha_hist.widget, self.corr.profile_widget),
        )
        for row, widgets in enumerate(cells):
            for col, w in enumerate(widgets):
                grid.addWidget(w, row, col)
        for row, stretch in enumerate((4, 4, 3)):
            grid.setRowStretch(row, stretch)

    def _build_line(self, grid: QtWidgets.QGridLayout) -> None:
        self.delta_line = LineProfilePanel("gap Δ(x)", "Δ (meV)", "#4daf4a", on_click=self.select_pixel)
        self.alpha_line = LineProfilePanel("AA exponent α(x)", "α", "#377eb8", on_click=self.select_pixel)
        self.waterfall = WaterfallPanel()
        for row, (wide, side) in enumerate(
            ((self.delta_line.widget, self.delta_hist.widget), (self.alpha_line.widget, self.alpha_hist.widget))
        ):
            grid.addWidget(wide, row, 0, 1, 2)
            grid.addWidget(side, row, 2)
        grid.addWidget(self.waterfall.widget, 2, 0, 1, 2)
        grid.addWidget(self.scatter.widget, 2, 2)
        for row, stretch in enumerate((3, 3, 5)):
            grid.setRowStretch(row, stretch)

    # -- interaction -------------------------------------------------------------------------
    def select_pixel(self, iy: int, ix: int) -> None:
        """Pin a pixel (map click or flagged-list click): mark it and fetch its spectrum."""
        self.selected, self.pinned, self.following = (iy, ix), True, None
        self._mark(iy, ix)
        if self.source is not None:
            self.source.request_spectrum(iy, ix)

    def _mark(self, iy: int, ix: int) -> None:
        for panel in self.maps:
            panel.mark(iy, ix)
        if self.line_mode:
            for line in (self.delta_line, self.alpha_line):
                line.mark(ix)

    def _hover(self, iy: int, ix: int) -> None:
        self._last_hover = time.monotonic()
        r = self.model.pixel(iy, ix)
        text = f"(iy {iy}, ix {ix}): " + (
            "no result" if r is None else f"Δ {r.delta_eV * 1e3:.3f} meV, α {r.alpha:.3f}, {reason_text(r.reason)}"
        )
        self.readout.setText(text)
        if not self.pinned and self.source is not None and (iy, ix) != self.selected:
            self.selected, self.following = (iy, ix), None
            self.source.request_spectrum(iy, ix)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:
        if event.key() == QtCore.Qt.Key_Escape:
            self.pinned = False  # spectrum follows the mouse (or the newest pixel) again
        super().keyPressEvent(event)

    def _follow_newest(self, view: ScanView | None) -> None:
        """Show the newest measured pixel's spectrum unless the operator is looking at another."""
        if view is None or view.latest is None or self.source is None or self.pinned:
            return
        if time.monotonic() - self._last_hover < HOVER_HOLD_S or view.latest == self.following:
            return
        self.following = self.selected = view.latest
        self._mark(*view.latest)
        self.source.request_spectrum(*view.latest)

    # -- timer -------------------------------------------------------------------------------
    def redraw_all(self) -> None:
        """Refresh now including the rate-limited summaries (snapshots, tests)."""
        self._last_summary = self._last_status = -math.inf
        self.refresh()

    def refresh(self) -> None:
        """Pull what changed from the model and the scan state and redraw it (the QTimer slot)."""
        m = self.model
        view = None if self.scan is None else self.scan.view()
        now = time.monotonic()
        summary_due = now - self._last_summary >= self._summary_period
        scan_changed = view is not None and view.version != self._seen["scan"]
        maps_changed = m.maps_version != self._seen["maps"] or scan_changed
        if maps_changed and summary_due:
            self._refresh_summaries(view)
            self._last_summary = now
        if maps_changed:
            self._refresh_maps(view)
        snapshot_changed = m.snapshot_version != self._seen["snapshot"]
        if snapshot_changed:
            self._seen["snapshot"] = m.snapshot_version
            with m.lock:
                snap = m.snapshot
                self._history = m.history.arrays() if len(m.history) else None
            self.corr.show(snap)
        status_due = now - self._last_status >= self._summary_period  # rate and ETA move with the clock
        if status_due or scan_changed or snapshot_changed or m.status_version != self._seen["status"]:
            self._seen["status"], self._last_status = m.status_version, now
            st = m.status()
            shown = screen_status(st, view)
            self.banner.show(shown, self._alarms)
            self._show_convergence(shown, view)
            trace = st if view is None or not view.temperature_t.size else view
            self.temperature.show(trace.temperature_t, trace.temperature_K)
        if view is not None:
            self._seen["scan"] = view.version
        if self.source is not None:
            self._follow_newest(view)
            data = self.source.take_spectrum()
            if data is not None:
                self.spectrum.show(data, context="newest measured" if (data.iy, data.ix) == self.following else "")
            self.statusBar().showMessage(self.source.status_text())
        self.frames += 1

    def _show_convergence(self, status: ScreenStatus, view: ScanView | None) -> None:
        """The convergence panel at the run's progress and rate, and its forecast in the tab's name."""
        progress = RunProgress(
            n_now=float(status.n_measured),
            n_total=float(status.n_total),
            pixels_per_hour=status.pixels_per_hour,
            ended=status.phase.ended,  # the forecast then says "not reached"
            target=target_from_stop_rule(None if view is None else view.stop_rule),
        )
        self.convergence.show(self._history, progress, version=self._seen["snapshot"])
        index = self.tabs.indexOf(self.convergence.widget)
        if self.tabs.tabText(index) != self.convergence.tab_text:
            self.tabs.setTabText(index, self.convergence.tab_text)

    def _refresh_maps(self, view: ScanView | None) -> None:
        m = self.model
        with m.lock:
            self._seen["maps"] = m.maps_version
            maps = m.copy_maps(("delta_eV", "alpha", "valid", "measured", "flags"))
            topo = None if m.topography is None else m.topography.copy()
            topo_origin = m.topography_origin
        analysed = maps["measured"]
        valid = maps["valid"] & analysed
        measured = analysed if view is None else view.measured | analysed
        n_valid = int(valid.sum())
        delta = np.where(valid, maps["delta_eV"] * np.float32(1e3), np.float32(np.nan))
        alpha = np.where(valid, maps["alpha"], np.float32(np.nan))
        if self.line_mode:
            x = self.frame.x_centres(m.nx)
            flagged = maps["flags"][0] != 0
            masks = {"valid": valid[0], "analysed": analysed[0], "measured": measured[0], "flagged": flagged}
            x_label = self.frame.axis_labels()[0]
            self.delta_line.show(x, delta[0], x_label=x_label, **masks)
            self.alpha_line.show(x, alpha[0], x_label=x_label, **masks)
            return
        codes = backdrop_codes(measured, analysed, valid)
        self.delta_map.show(delta, self._levels["delta"], backdrop=codes)
        self.alpha_map.show(alpha, self._levels["alpha"], backdrop=codes)
        self.delta_map.set_title(f"gap Δ: {n_valid:,} of {int(measured.sum()):,} valid")
        if topo is not None:
            self.topo_map.show(topo * np.float32(1e9), self._levels["topo"])
            self.topo_map.set_title(f"topography: {TOPO_TITLES.get(topo_origin, 'from the analysis file')}")
        else:
            self.topo_map.show(None, self._levels["topo"])
            self.topo_map.set_title("topography: none (no map, no tip z)")

    def _refresh_summaries(self, view: ScanView | None) -> None:
        m = self.model
        st = m.statistics()
        for key, hist, mean, std, scale in (
            ("delta", st.delta_hist, st.delta_mean_eV, st.delta_std_eV, 1e3),
            ("alpha", st.alpha_hist, st.alpha_mean, st.alpha_std, 1.0),
        ):
            if hist.edges.size:
                self._levels[key] = _levels(mean * scale, std * scale, hist.edges[0] * scale, hist.edges[-1] * scale)
        self.delta_hist.show(st.delta_hist, st.delta_mean_eV, st.delta_std_eV, scale=1e3, unit=" meV", n=st.n_valid)
        self.alpha_hist.show(st.alpha_hist, st.alpha_mean, st.alpha_std, scale=1.0, unit="", n=st.n_valid)
        maps = m.copy_maps(("delta_eV", "alpha", "valid", "measured", "flags"))
        valid = maps["valid"] & maps["measured"]
        self.scatter.show(maps["delta_eV"][valid] * 1e3, maps["alpha"][valid])
        with m.lock:
            topo = m.topography
            if topo is not None:
                self._levels["topo"] = _topo_levels(topo)
        summaries = m.flag_summary()
        self._alarms = [s.message for s in summaries if s.flagged]
        self.flags.show(summaries, m.flagged_pixels(limit=2000))
        if self.line_mode:
            delta = float(np.nanmedian(maps["delta_eV"][valid])) * 1e3 if valid.any() else math.nan
            bias, didv = (None, None) if view is None else (view.line_bias_V, view.line_didv_S)
            self.waterfall.show(bias, didv, self.frame.x_centres(m.nx), delta)
        else:
            self.flag_map.show(maps["flags"], maps["measured"])

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.timer.stop()
        if self.source is not None:
            self.source.stop()
        super().closeEvent(event)


def dispose(window: ControlRoomWindow) -> None:
    """Close ``window``, stop its source and delete it now.

    Deleting the Qt objects while the interpreter still runs keeps their teardown (and the
    source's threads) out of interpreter finalisation.
    """
    window.close()  # WA_DeleteOnClose schedules the deletion, closeEvent stops the source
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.DeferredDelete)
    QtCore.QCoreApplication.processEvents()


def render_snapshot(window: ControlRoomWindow, path: str | Path, *, pixel: tuple[int, int] | None = None) -> Path:
    """Draw ``window`` once with everything current and save it as a PNG of the window's size.

    ``pixel`` (or, if None, the valid pixel nearest the centre, else the newest measured one) is
    selected and its spectrum read synchronously, which is fine here: a snapshot has no
    interactive event loop to keep alive.
    """
    app = qt_app()
    model = window.model
    context = ""
    view = None if window.scan is None else window.scan.view()
    if pixel is None:
        valid = model.copy_maps(("valid",))["valid"]
        if view is not None:
            valid &= view.measured  # a result whose spectrum the archive holds
        iy, ix = np.nonzero(valid)
        if iy.size:
            k = int(np.argmin((iy - model.ny / 2) ** 2 + (ix - model.nx / 2) ** 2))
            pixel = (int(iy[k]), int(ix[k]))
        elif view is not None and view.latest is not None:
            pixel, context = view.latest, "newest measured"
    if pixel is not None:
        window.selected, window.pinned = pixel, True
        window._mark(*pixel)
        fetch = getattr(window.source, "fetch_spectrum_now", None)
        if fetch is not None:
            window.spectrum.show(fetch(*pixel), context=context)
    window.show()
    for _ in range(3):  # plots update their auto-range on the next event pass; let them settle
        window.redraw_all()
        app.processEvents()
    path = Path(path)
    if not window.grab().save(str(path)):
        raise FileFormatError(path, "could not write the PNG; check the directory exists and is writable")
    return path
