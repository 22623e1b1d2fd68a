"""The control-room window: maps, statistics, correlations, spectra, run status and flags.

The window reads no file and analyses nothing: a :class:`~stslive.live.viewer.sources.DataSource`
fills the :class:`~stslive.live.results.ResultsModel` on its own threads, and a QTimer pulls from
the model, redrawing only the parts whose version counter moved; the O(N) summaries (histograms,
colour levels, flags) at most ``summary_hz`` times a second.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from stslive.acquisition.formats.recording import TOPO_FROM_FILE, TOPO_FROM_Z
from stslive.live.results import ResultsModel
from stslive.live.viewer.panels import (
    CorrelationPanel,
    FlagsPanel,
    HistogramPanel,
    MapPanel,
    SpectrumPanel,
    StatusPanel,
    reason_text,
    reversed_cmap,
)
from stslive.live.viewer.sources import DataSource

DEFAULT_SIZE = (1800, 1100)
#: Short panel-title form of each topography origin (acquisition.inputs); a longer title than
#: ~35 characters widens the plot's layout and squeezes the colour bar off the panel.
TOPO_TITLES = {TOPO_FROM_FILE: "stored map", TOPO_FROM_Z: "tip height z − plane"}


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
        Optional data source; the window asks it for spectra and its status line.
    refresh_hz
        Redraw timer rate.
    summary_hz
        Maximum refresh rate of histograms, colour levels and flag summaries.
    """

    def __init__(
        self,
        model: ResultsModel,
        source: DataSource | None = None,
        *,
        refresh_hz: float = 15.0,
        summary_hz: float = 2.0,
    ) -> None:
        super().__init__()
        self.model, self.source = model, source
        self.setWindowTitle("stslive control room")
        self.setAttribute(QtCore.Qt.WA_DeleteOnClose)
        self.resize(*DEFAULT_SIZE)
        self.frames = 0
        self.selected: tuple[int, int] | None = None
        self.pinned = False
        self._seen = {"maps": -1, "snapshot": -1, "status": -1}
        self._summary_period = 1.0 / summary_hz
        self._last_summary = -math.inf
        self._levels = {"delta": (0.0, 1.0), "alpha": (0.0, 1.0), "topo": (0.0, 1.0)}
        self._build()
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(1000 / refresh_hz))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        viridis = pg.colormap.get("viridis")
        pick = {"on_click": self.select_pixel, "on_hover": self._hover}
        self.delta_map = MapPanel("gap Δ", "Δ (meV)", viridis, **pick)
        self.alpha_map = MapPanel("AA exponent α (reversed scale)", "α", reversed_cmap(viridis), **pick)
        self.topo_map = MapPanel("topography Z", "Z (nm)", pg.colormap.get("afmhot", source="matplotlib"), **pick)
        self.maps = (self.delta_map, self.alpha_map, self.topo_map)
        for panel in self.maps:
            panel.set_geometry(self.model.ny, self.model.nx, self.model.pixel_nm)
        self.delta_hist = HistogramPanel("Δ", "Δ (meV)", "#4daf4a")
        self.alpha_hist = HistogramPanel("α", "α", "#377eb8")
        self.corr = CorrelationPanel()
        self.spectrum = SpectrumPanel()
        self.status_panel = StatusPanel()
        self.flags = FlagsPanel(self.select_pixel)

        grid = QtWidgets.QGridLayout()
        for col, panel in enumerate(self.maps):
            grid.addWidget(panel.widget, 0, col)
        grid.addWidget(self.delta_hist.widget, 1, 0)
        grid.addWidget(self.alpha_hist.widget, 1, 1)
        grid.addWidget(self.corr.map_widget, 1, 2)
        grid.addWidget(self.corr.profile_widget, 2, 0, 1, 3)
        # maps keep their aspect (AspectBox): a landscape or square map needs about a third of the height
        grid.setRowStretch(0, 4)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(2, 3)
        left = QtWidgets.QWidget()
        left.setLayout(grid)
        right = QtWidgets.QWidget()
        rlay = QtWidgets.QVBoxLayout(right)
        rlay.addWidget(self.spectrum.gap, 6)
        rlay.addWidget(self.spectrum.wide, 6)
        rlay.addWidget(self.status_panel.widget, 4)
        rlay.addWidget(self.flags.widget, 3)
        split = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([int(DEFAULT_SIZE[0] * 0.68), int(DEFAULT_SIZE[0] * 0.32)])
        self.setCentralWidget(split)
        self.readout = QtWidgets.QLabel("")
        self.statusBar().addPermanentWidget(self.readout)

    # -- interaction -------------------------------------------------------------------------
    def select_pixel(self, iy: int, ix: int) -> None:
        """Pin a pixel (map click or flagged-list click): mark it and fetch its spectrum."""
        self.selected, self.pinned = (iy, ix), True
        for panel in self.maps:
            panel.mark(iy, ix)
        if self.source is not None:
            self.source.request_spectrum(iy, ix)

    def _hover(self, iy: int, ix: int) -> None:
        r = self.model.pixel(iy, ix)
        text = f"(iy {iy}, ix {ix}): " + (
            "not measured" if r is None else f"Δ {r.delta_eV * 1e3:.3f} meV, α {r.alpha:.3f}, {reason_text(r.reason)}"
        )
        self.readout.setText(text)
        if not self.pinned and self.source is not None and (iy, ix) != self.selected:
            self.selected = (iy, ix)
            self.source.request_spectrum(iy, ix)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:
        if event.key() == QtCore.Qt.Key_Escape:
            self.pinned = False  # spectrum follows the mouse again
        super().keyPressEvent(event)

    # -- timer -------------------------------------------------------------------------------
    def redraw_all(self) -> None:
        """Refresh now including the rate-limited summaries (snapshots, tests)."""
        self._last_summary = -math.inf
        self.refresh()

    def refresh(self) -> None:
        """Pull what changed from the model and redraw it (the QTimer slot)."""
        m = self.model
        now = time.monotonic()
        summary_due = now - self._last_summary >= self._summary_period
        maps_changed = m.maps_version != self._seen["maps"]
        if maps_changed and summary_due:
            self._refresh_summaries()
            self._last_summary = now
        if maps_changed:
            self._refresh_maps()
        if m.snapshot_version != self._seen["snapshot"]:
            self._seen["snapshot"] = m.snapshot_version
            with m.lock:
                snap = m.snapshot
            self.corr.show(snap)
        if summary_due or m.status_version != self._seen["status"]:
            self._seen["status"] = m.status_version
            self.status_panel.show(m.status())
        if self.source is not None:
            data = self.source.take_spectrum()
            if data is not None:
                self.spectrum.show(data)
            self.statusBar().showMessage(self.source.status_text())
        self.frames += 1

    def _refresh_maps(self) -> None:
        m = self.model
        with m.lock:
            self._seen["maps"] = m.maps_version
            maps = m.copy_maps(("delta_eV", "alpha", "valid", "measured"))
            topo = None if m.topography is None else m.topography.copy()
            topo_origin = m.topography_origin
        shown = maps["valid"]
        self.delta_map.show(
            np.where(shown, maps["delta_eV"] * np.float32(1e3), np.float32(np.nan)), self._levels["delta"]
        )
        self.alpha_map.show(np.where(shown, maps["alpha"], np.float32(np.nan)), self._levels["alpha"])
        if topo is not None:
            self.topo_map.show(topo * np.float32(1e9), self._levels["topo"])
            self.topo_map.set_title(f"topography: {TOPO_TITLES.get(topo_origin, 'from the analysis file')}")
        else:
            self.topo_map.set_title("topography: none (no map, no tip z)")
        n_meas, n_valid = int(maps["measured"].sum()), int(shown.sum())
        self.delta_map.set_title(f"gap Δ ({n_valid} valid of {n_meas} measured)")

    def _refresh_summaries(self) -> None:
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
        with m.lock:
            topo = m.topography
            if topo is not None:
                self._levels["topo"] = _topo_levels(topo)
        self.flags.show(m.flag_summary(), m.flagged_pixels(limit=2000))

    def closeEvent(self, event: object) -> None:
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

    ``pixel`` (or, if None, the valid pixel nearest the centre) is selected and its spectrum read
    synchronously, which is fine here: a snapshot has no interactive event loop to keep alive.
    """
    app = qt_app()
    model = window.model
    if pixel is None:
        valid = model.copy_maps(("valid",))["valid"]
        iy, ix = np.nonzero(valid)
        if iy.size:
            k = int(np.argmin((iy - model.ny / 2) ** 2 + (ix - model.nx / 2) ** 2))
            pixel = (int(iy[k]), int(ix[k]))
    if pixel is not None:
        window.selected = pixel
        for panel in window.maps:
            panel.mark(*pixel)
        fetch = getattr(window.source, "fetch_spectrum_now", None)
        if fetch is not None:
            window.spectrum.show(fetch(*pixel))
    window.show()
    for _ in range(3):  # plots update their auto-range on the next event pass; let them settle
        window.redraw_all()
        app.processEvents()
    path = Path(path)
    if not window.grab().save(str(path)):
        from stslive.drivers.errors import FileFormatError

        raise FileFormatError(path, "could not write the PNG; check the directory exists and is writable")
    return path
