"""Status panels of the control-room window: the run banner, the temperature trace and the flag lists.

:func:`screen_status` merges what the scan recorded (:class:`~stslive.live.viewer.scan_state.ScanView`:
measured pixels, the run's phase) with what the analyser published (the results model's status)
into the :class:`ScreenStatus` the banner shows: the progress counts measured pixels, whether or
not they are analysed yet, and a user abort reads "aborted by user", not "failed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtWidgets

from stslive.live.provisional import ProvisionalWidth
from stslive.live.results import RunStatus, SetFlagSummary
from stslive.live.viewer.panels import NoData, PixelCallback, flag_text, make_plot, set_title
from stslive.live.viewer.scan_state import RunPhase, ScanView

#: Colour of each state's label; an abort is the operator's decision, not an error: neutral grey.
STATE_COLORS = {
    "running": "#2ca02c",
    "calibrating": "#2ca02c",
    "paused": "#ff7f0e",
    "stopping": "#6b8fb3",
    "done": "#1f77b4",
    "aborted": "#8a8f98",
    "failed": "#d62728",
    "interrupted": "#d62728",
}
NEUTRAL_COLOR = "#8a8f98"
#: The scan's pause reasons in words.
PAUSE_WORDS = {
    "user": "by the user",
    "temperature": "temperature out of its band",
    "failures": "repeated failed pixels",
}


def state_text(phase: RunPhase) -> tuple[str, str]:
    """What the screen says of a run phase, and the colour it says it in."""
    state, reason = phase.state, phase.reason
    if state == "paused":
        words = ", ".join(PAUSE_WORDS.get(r.strip(), r.strip()) for r in reason.split(",") if r.strip())
        text = f"paused: {words}" if words else "paused"
    elif state == "aborted":
        text = "aborted by user" + (f" ({reason})" if reason and reason != "abort command" else "")
    elif state in ("failed", "interrupted"):
        text = f"{state}: {reason}" if reason else f"{state} (no reason recorded)"
    elif state == "unknown":
        text = "state unknown"
    else:
        text = state
    return text, STATE_COLORS.get(state, NEUTRAL_COLOR)


def analysis_text(n_measured: int | None, n_analysed: int, provisional: ProvisionalWidth | None) -> str:
    """Where the analysis stands against the measurement, and whether its values are final ("" when both hold).

    ``n_measured`` None: the measured count is unknown (a stream without its archive).
    ``provisional``: the analyser's status while its template width is provisional (its values
    are then analysed again once the width is fixed).
    """
    parts = []
    if n_measured is not None and n_analysed < n_measured:
        parts.append(f"analysed {n_analysed:,} of {n_measured:,}" if n_analysed else "not analysed yet")
    if provisional is not None:
        width = f" {provisional.width_eV * 1e3:.3f} meV" if math.isfinite(provisional.width_eV) else ""
        parts.append(
            f"provisional: template width{width} fixed after {provisional.spectra:,} of {provisional.needed:,} spectra"
        )
    return "; ".join(parts)


@dataclass(frozen=True)
class ScreenStatus:
    """Everything the banner shows."""

    phase: RunPhase
    text: str
    color: str
    n_total: int
    n_measured: int
    n_analysed: int
    pixels_per_hour: float
    eta_s: float
    current_set: int
    last_seq: int
    analysis: str
    note: str

    @property
    def progress(self) -> float:
        return self.n_measured / self.n_total if self.n_total else 0.0


def screen_status(st: RunStatus, view: ScanView | None) -> ScreenStatus:
    """Merge the scan's own record (``view``, None without the archive) with the analyser's status."""
    phase = view.phase if view is not None and view.phase.state != "unknown" else RunPhase(st.state)
    text, color = state_text(phase)
    measured = st.n_measured
    if view is not None:  # the archive is the record; the analyser may be a poll ahead of it
        measured = view.n_measured if view.truncated else max(view.n_measured, st.n_measured)
    rate, eta = st.pixels_per_hour, st.eta_s
    if view is not None and math.isfinite(view.pixels_per_hour):
        rate, eta = view.pixels_per_hour, view.eta_s
    if phase.ended:
        eta = math.nan if measured < st.n_total else 0.0  # nothing more will be measured
    return ScreenStatus(
        phase=phase,
        text=text,
        color=color,
        n_total=st.n_total,
        n_measured=measured,
        n_analysed=st.n_measured,
        pixels_per_hour=rate,
        eta_s=eta,
        current_set=st.current_set,
        last_seq=st.last_seq,
        analysis=analysis_text(None if view is None else measured, st.n_measured, st.provisional_width),
        note="" if view is None else view.note,
    )


def duration_text(seconds: float) -> str:
    """ "1 h 05 min" or "4 min 10 s"; "-" when unknown."""
    if not math.isfinite(seconds):
        return "-"
    h, rem = divmod(int(seconds), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


class StatusBanner:
    """The line across the top of the window: state, progress, analysis, rate, ETA; alarms below."""

    def __init__(self) -> None:
        self.widget = QtWidgets.QFrame()
        self.widget.setFrameShape(QtWidgets.QFrame.StyledPanel)
        outer = QtWidgets.QVBoxLayout(self.widget)
        outer.setContentsMargins(6, 3, 6, 3)
        outer.setSpacing(2)
        row = QtWidgets.QHBoxLayout()
        self.state = QtWidgets.QLabel("state unknown")
        self.state.setMinimumWidth(150)
        font = self.state.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        self.state.setFont(font)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMinimumWidth(220)
        self.analysis = QtWidgets.QLabel("")
        self.figures = QtWidgets.QLabel("")
        row.addWidget(self.state)
        row.addWidget(self.progress, 3)
        row.addWidget(self.analysis, 2)
        row.addWidget(self.figures, 3)
        outer.addLayout(row)
        self.alarms = QtWidgets.QLabel("")
        self.alarms.setWordWrap(True)
        self.alarms.setVisible(False)
        outer.addWidget(self.alarms)
        self.shown: ScreenStatus | None = None
        self._alarms: list[str] = []

    def show(self, status: ScreenStatus, alarms: list[str]) -> None:
        if status == self.shown and alarms == self._alarms:
            return  # every label set again would lay the window out again
        self.shown, self._alarms = status, list(alarms)
        pill = f"background:{status.color}; color:white; padding:2px 6px"
        self.state.setText(f"<span style='{pill}'><b>&nbsp;{status.text}&nbsp;</b></span>")
        self.state.setToolTip(status.text)
        self.progress.setValue(round(1000 * status.progress))
        self.progress.setFormat(
            f"{status.n_measured:,} / {status.n_total:,} pixels measured ({100 * status.progress:.1f} %)"
        )
        self.analysis.setText(f"<b>{status.analysis}</b>" if status.analysis else "")
        rate = "-" if not math.isfinite(status.pixels_per_hour) else f"{status.pixels_per_hour:,.0f}"
        parts = [f"{rate} pixels/h", f"ETA {duration_text(status.eta_s)}"]
        if status.current_set >= 0:
            parts.append(f"set {status.current_set}")
        if status.last_seq >= 0:
            parts.append(f"seq {status.last_seq}")
        self.figures.setText(" · ".join(parts))
        lines = ([f"<b style='color:#ff9f1a'>{status.note}</b>"] if status.note else []) + [
            f"<b style='color:#ff5555'>{m}</b>" for m in alarms
        ]
        self.alarms.setText("<br>".join(lines))
        self.alarms.setVisible(bool(lines))


class TemperaturePanel:
    """The temperature at each pixel against time (0 = latest)."""

    def __init__(self) -> None:
        self.widget = make_plot("temperature", "time (min, 0 = latest)", "T (K)")
        self.curve = self.widget.plot(pen=pg.mkPen("#ff7f00", width=1))
        # a long run has ~10^4 readings: draw at most one peak pair per screen pixel
        self.curve.setDownsampling(auto=True, method="peak")
        self.curve.setClipToView(True)
        self.no_data = NoData(self.widget)
        self._shown: tuple[int, float] | None = None  # (readings, time of the last) drawn

    def show(self, t_s: np.ndarray, temperature_K: np.ndarray) -> None:
        key = (t_s.size, float(t_s[-1]) if t_s.size else math.nan)
        if key == self._shown:
            return
        self._shown = key
        if not t_s.size:
            self.curve.setData([], [])
            set_title(self.widget, "temperature: no readings")
            self.no_data.show("no temperature readings")
            return
        self.no_data.show(None)
        rel = t_s - t_s.max()
        hours = rel.min() < -7200  # a long run reads better in hours
        self.widget.setLabel("bottom", f"time ({'h' if hours else 'min'}, 0 = latest)")
        self.curve.setData(rel / (3600.0 if hours else 60.0), temperature_K)
        self.widget.getPlotItem().enableAutoRange()
        set_title(self.widget, f"temperature: {temperature_K[-1]:.3f} K latest, {t_s.size} readings")


class FlagsPanel:
    """Flags per set-point set (table) and the flagged pixels (click to locate)."""

    COLUMNS = ("set", "pixels", "flagged", "%", "dominant", "first", "last")

    def __init__(self, on_pick: PixelCallback) -> None:
        self.widget = QtWidgets.QWidget()
        lay = QtWidgets.QVBoxLayout(self.widget)
        lay.setContentsMargins(2, 2, 2, 2)
        self.table = QtWidgets.QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QtWidgets.QHeaderView.ResizeToContents)
        self.table.setMaximumHeight(110)
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
                "unknown" if s.set_id < 0 else s.set_id,
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
        self.messages.setText(
            "<br>".join(f"<b style='color:#ff5555'>{m}</b>" for m in alarms)
            or ("no set flagged" if summaries else "no analysed pixel yet")
        )
        if flagged != self._shown:
            self._shown = flagged
            self.pixels.clear()
            self.pixels.addItems([f"(iy {iy}, ix {ix})  {flag_text(f)}" for iy, ix, f in flagged])
            self.pixels_label.setText(f"{len(flagged)} flagged pixels (click to locate)")

    def _clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        iy, ix, _ = self._shown[self.pixels.row(item)]
        self._on_pick(iy, ix)
