"""The control-room screen as an operator meets it: from the first pixel, run states, damaged files, layout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")

from screen_data import create_archive  # this folder's archive helper

from stslive.acquisition.cli import main
from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.runmodel import PixelMeta
from stslive.acquisition.jobs.bench_viewer import snapshot_of, synthetic_maps
from stslive.drivers.errors import ArchiveError, ConfigError, StreamError
from stslive.live.provisional import ProvisionalWidth
from stslive.live.results import FlagKind, ResultsModel
from stslive.live.results_io import save_maps_h5
from stslive.live.viewer.archive_open import open_for_viewing
from stslive.live.viewer.archive_source import FileSource
from stslive.live.viewer.map_panels import FLAG_ORDER, INVALID, PENDING, flag_codes
from stslive.live.viewer.panels import MIN_PLOT_HEIGHT
from stslive.live.viewer.scan_state import RunPhase, phase_from_archive
from stslive.live.viewer.status_panels import NEUTRAL_COLOR, STATE_COLORS, analysis_text, state_text
from stslive.live.viewer.stream_source import StreamSource
from stslive.live.viewer.window import check_window_size, qt_app, render_snapshot

NY, NX, NPTS = 12, 16, 201
BIAS = np.linspace(-0.02, 0.02, NPTS)
#: the analyser's status before its template width is fixed: results provisional, none yet
PROVISIONAL = ProvisionalWidth(spectra=0, needed=512)


def current(delta_eV: float = 1.2e-3) -> np.ndarray:
    """A Dynes-BCS I(V) (test data, not the physics mock)."""
    e = BIAS + 5e-5j
    dos = np.abs(np.real(e / np.sqrt(e**2 - delta_eV**2)))
    return np.cumsum(dos) * (BIAS[1] - BIAS[0]) * 1e-9


def write_archive(
    path: Path,
    *,
    pixels: int,
    ny: int = NY,
    nx: int = NX,
    centre_nm: tuple[float, float] = (0.0, 0.0),
    stop: dict | None = None,
    log: list[tuple[str, dict]] = (),
    swmr: bool = False,
) -> ArchiveWriter:
    """An archive with its first ``pixels`` pixels (raster order) measured one by one, 2 s apart."""
    writer = create_archive(path, ny=ny, nx=nx, bias=BIAS, centre_nm=centre_nm, swmr=swmr)
    geo = writer.geometry
    spectrum = np.stack([BIAS, current()]).astype(np.float32)
    for k in range(pixels):
        iy, ix = divmod(k, nx)
        t = 1.7e9 + 2.0 * k
        x, y = geo.pixel_xy(iy, ix)
        meta = PixelMeta(
            x_m=float(x), y_m=float(y), setpoint_set_id=0, t_start=t - 1, t_sweep_start=t - 1, t_sweep_end=t, t_end=t
        )
        writer.write_pixel(iy, ix, spectrum, meta)
    for event, fields in log:
        writer.append_log(event, **fields)
    if stop is not None:
        writer.write_document("stop", stop)
    if swmr:
        return writer
    writer.close()
    return writer


def loaded(source: FileSource) -> FileSource:
    source.start()
    assert source.loaded.wait(10)
    return source


def title(widget) -> str:
    return widget.getPlotItem().titleLabel.text


# -- run states -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("documents", "log", "writing", "expected"),
    [
        ({"stop": {"exit_status": "success"}}, [], False, RunPhase("done")),
        (
            {"stop": {"exit_status": "abort", "reason": "abort command"}},
            [],
            False,
            RunPhase("aborted", "abort command"),
        ),
        (
            {},
            [
                {"event": "run_started"},
                {"event": "stopping", "exit_status": "abort"},
                {"event": "done"},
                {"event": "stop", "exit_status": "abort"},
            ],
            False,
            RunPhase("aborted"),
        ),
        (
            {},
            [{"event": "run_started"}, {"event": "failed", "reason": "InstrumentTimeout: sr830"}, {"event": "stop"}],
            False,
            RunPhase("failed", "InstrumentTimeout: sr830"),
        ),
        (
            {},
            [
                {"event": "run_started"},
                {"event": "paused", "reason": "temperature"},
                {"event": "paused", "reason": "user"},
            ],
            True,
            RunPhase("paused", "temperature, user"),
        ),
        (
            {},
            [{"event": "run_started"}, {"event": "paused", "reason": "user"}, {"event": "resumed", "reason": "user"}],
            True,
            RunPhase("running"),
        ),
        ({}, [{"event": "run_started"}], False, RunPhase("interrupted", "x")),
    ],
)
def test_run_phase_from_the_archive_record(documents, log, writing, expected):
    phase = phase_from_archive(documents, log, writing=writing)
    assert phase.state == expected.state
    if expected.state != "interrupted":
        assert phase.reason == expected.reason


def test_each_state_reads_distinctly():
    aborted, colour = state_text(RunPhase("aborted", "abort command"))
    assert aborted == "aborted by user" and colour == NEUTRAL_COLOR != STATE_COLORS["failed"]
    failed, colour = state_text(RunPhase("failed", "InstrumentTimeout: sr830 did not answer"))
    assert failed == "failed: InstrumentTimeout: sr830 did not answer" and colour == STATE_COLORS["failed"]
    paused, colour = state_text(RunPhase("paused", "temperature, user"))
    assert paused == "paused: temperature out of its band, by the user" and colour == STATE_COLORS["paused"]
    assert state_text(RunPhase("done")) == ("done", STATE_COLORS["done"])
    texts = {state_text(RunPhase(s, "why"))[0] for s in ("done", "aborted", "failed", "paused", "running")}
    assert len(texts) == 5


def test_an_aborted_run_is_not_shown_as_failed(tmp_path, window_factory):
    run = tmp_path / "RUN.h5"
    write_archive(run, pixels=40, stop={"exit_status": "abort", "reason": "abort command"})
    model = ResultsModel(NY, NX, pixel_nm=1.0)
    model.update_status(state="failed")  # what the analyser publishes for an aborted run
    save_maps_h5(model, tmp_path / "RUN.analysis.h5")
    source = loaded(FileSource(run))
    w = window_factory(source.model, source)
    w.redraw_all()
    assert "aborted by user" in w.banner.state.text() and NEUTRAL_COLOR in w.banner.state.text()
    assert "failed" not in w.banner.state.text()


# -- useful from the first pixel --------------------------------------------------------------
def test_calibration_text():
    """How far the analysis is behind, and whether its values are final: from the status fields, not its words."""
    provisional = ProvisionalWidth(spectra=300, needed=512, width_eV=0.1e-3)
    words = "provisional: template width 0.100 meV fixed after 300 of 512 spectra"
    assert analysis_text(300, 300, provisional) == words
    assert analysis_text(900, 600, provisional) == f"analysed 600 of 900; {words}"
    assert analysis_text(None, 0, PROVISIONAL) == "provisional: template width fixed after 0 of 512 spectra"
    assert analysis_text(900, 0, None) == "not analysed yet"
    assert analysis_text(900, 600, None) == "analysed 600 of 900"
    assert analysis_text(900, 900, None) == ""


@pytest.mark.parametrize(
    "bad",
    [
        {"spectra": "12", "needed": 512},
        {"spectra": 12},
        {"spectra": 12, "needed": 0},
        {"spectra": 12, "needed": 512, "width_eV": "wide"},
        {"spectra": 12, "needed": 512, "width": 1e-4},
    ],
)
def test_a_malformed_provisional_width_is_refused_and_changes_nothing(bad: dict) -> None:
    from stslive.drivers.errors import AnalysisError, StsliveError
    from stslive.live.results_io import apply_message, status_message

    model = ResultsModel(2, 2)
    model.update_status(provisional_width=PROVISIONAL)
    with pytest.raises(AnalysisError):
        model.update_status(provisional_width=bad)
    topic, header, arrays = status_message(model)
    with pytest.raises(StsliveError):  # what a viewer's stream source counts as rejected
        apply_message(model, topic, {**header, "provisional_width": bad}, arrays)
    assert model.status().provisional_width == PROVISIONAL


def test_the_analysers_provisional_width_reaches_the_banner_through_the_stream() -> None:
    """The live analyser says its values are provisional until the run's width is fixed, then says nothing."""
    from test_analyser_sim import geometry, make_lab, make_sets, measure_run, pixel_inputs, start_fields

    from stslive.live.flag_config import FlagConfig
    from stslive.live.kernels import KernelOptions
    from stslive.live.results_io import apply_message, decode_message, encode_message, status_message
    from stslive.live.run_context import RunContext
    from stslive.live.viewer.status_panels import screen_status
    from stslive.mocks.faults import FaultPlan

    sets = make_sets()
    pixels = pixel_inputs(list(measure_run(make_lab(4, 8, FaultPlan.from_list([])), sets, lambda iy, ix: 0)))
    options = KernelOptions(chunk=20)
    live = RunContext("live", start_fields(geometry(4, 8), sets), options=options, flag_config=FlagConfig())
    viewer = ResultsModel(4, 8)

    def banner() -> str:
        apply_message(viewer, *decode_message(encode_message(*status_message(live.model))))
        return screen_status(viewer.status(), None).analysis

    live.process(pixels[:12])
    width = live.provisional_width_eV
    assert width is not None and banner() == (
        f"provisional: template width {width * 1e3:.3f} meV fixed after 12 of 20 spectra"
    )
    live.process(pixels[12:25])  # the 20th spectrum fixes the width
    assert live.provisional is None and banner() == ""
    assert viewer.status().provisional_width is None


def test_screen_shows_measured_pixels_and_raw_spectra_while_the_analyser_calibrates(tmp_path, window_factory):
    run = tmp_path / "RUN.h5"
    write_archive(run, pixels=100)
    model = ResultsModel(NY, NX, pixel_nm=1.0)
    model.update_status(state="running", message="0 pixels analysed", provisional_width=PROVISIONAL)
    save_maps_h5(model, tmp_path / "RUN.analysis.h5")
    source = loaded(FileSource(run))
    w = window_factory(source.model, source)
    w.show()
    deadline = time.monotonic() + 5
    while w.spectrum.shown is None and time.monotonic() < deadline:
        w.redraw_all()
        qt_app().processEvents()
        time.sleep(0.02)
    assert w.banner.analysis.text() == (
        "<b>not analysed yet; provisional: template width fixed after 0 of 512 spectra</b>"
    )  # the provisional status read from the analysis file
    assert w.banner.progress.value() == round(1000 * 100 / (NY * NX))  # measured, not the 0 analysed
    backdrop = w.delta_map.backdrop.image
    assert backdrop is not None and w.delta_map.backdrop.isVisible()
    assert "100 not analysed yet" in w.delta_map.legend.text()
    # the newest pixel's raw spectrum, said to be so
    assert (w.spectrum.shown.iy, w.spectrum.shown.ix) == divmod(99, NX) and w.spectrum.shown.result is None
    assert "newest measured" in title(w.spectrum.gap) and "not analysed yet" in title(w.spectrum.gap)


def test_invalid_pixels_are_marked(window_factory):
    model = ResultsModel(NY, NX, pixel_nm=1.0)
    maps = synthetic_maps(NY, NX, seed=2, length_px=3.0)
    maps["valid"][3, 4] = False
    model.update_block(slice(None), slice(None), **maps)
    w = window_factory(model)
    w.redraw_all()
    assert np.isnan(w.delta_map.image.image[3, 4])
    rgba = w.delta_map.backdrop.image
    assert tuple(rgba[3, 4, :3]) == (0xE8, 0x33, 0x6D) and rgba[0, 0, 3] == 0  # pink there, clear elsewhere
    assert "1 no value" in w.delta_map.legend.text()


def test_backdrop_codes():
    from stslive.live.viewer.map_panels import backdrop_codes

    measured = np.array([[True, True, True, False]])
    analysed = np.array([[True, True, False, False]])
    valid = np.array([[True, False, False, False]])
    assert backdrop_codes(measured, analysed, valid).tolist() == [[0, INVALID, PENDING, 0]]


# -- damaged archives -------------------------------------------------------------------------
def test_truncated_archive_opens_within_the_deadline_and_reports_what_it_could_read(tmp_path, window_factory):
    import h5py

    whole = tmp_path / "whole.h5"
    write_archive(whole, pixels=NY * NX)
    cut = int(whole.stat().st_size * 0.6)
    with h5py.File(whole, "r") as f:  # pixels whose spectra chunk ends before the cut
        ds = f["entry/data/spectra"]
        ends = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
        expected = sum(info.byte_offset + info.size <= cut for info in ends)
    assert 0 < expected < NY * NX
    run = tmp_path / "RUN.h5"
    run.write_bytes(whole.read_bytes()[:cut])
    t0 = time.monotonic()
    source = loaded(FileSource(run, timeout_s=20))
    assert time.monotonic() - t0 < 20
    view = source.scan.view()
    assert view.n_measured == expected
    assert f"{expected} of its {NY * NX} measured pixels readable" in view.note and "TRUNCATED" in view.note
    assert "MB present" in view.note
    w = window_factory(source.model, source)
    w.redraw_all()
    assert "TRUNCATED" in w.banner.alarms.text() and w.banner.progress.value() == round(1000 * expected / (NY * NX))
    lost = np.argwhere(~source.spectra.health.readable)[0]
    assert "past the end of the truncated file" in source.fetch_spectrum_now(*lost).note


def test_a_tiny_truncated_archive_fails_in_one_line_within_the_timeout(tmp_path, capfd):
    whole = tmp_path / "whole.h5"
    write_archive(whole, pixels=NY * NX)
    tiny = tmp_path / "tiny.h5"
    tiny.write_bytes(whole.read_bytes()[:20_000])
    t0 = time.monotonic()
    code = main(["view", str(tiny), "--snapshot", str(tmp_path / "x.png"), "--timeout", "3"])
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and elapsed < 3 + 10
    # its metadata lies past the cut: an SWMR read would retry for minutes; the opener never makes one
    assert len(err) == 1 and "TRUNCATED" in err[0] and "the file is truncated or corrupt" in err[0]


def _killed_writer_archive(path: Path) -> None:
    """An archive left by an SWMR writer that died (its flags still say 'being written')."""
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[2]); "
        "from test_screen import write_archive; from pathlib import Path; "
        "w = write_archive(Path(sys.argv[1]), pixels=5, swmr=True); os._exit(0)"  # w: kept open until killed
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(Path(__file__).parent)], check=True)


def test_an_archive_held_for_swmr_writing_opens_and_a_damaged_one_fails_within_the_deadline(tmp_path):
    from stslive.acquisition.formats.archive.opener import swmr_writer_flagged

    run = tmp_path / "RUN.h5"
    _killed_writer_archive(run)
    assert swmr_writer_flagged(run)  # the file still says an SWMR writer holds it
    reader = open_for_viewing(run, timeout_s=10)  # whole: opens, read in SWMR mode
    assert int(reader.measured.sum()) == 5 and not reader.health.truncated and reader._f.swmr_mode
    reader.close()
    data = bytearray(run.read_bytes())
    root = int.from_bytes(data[12 + 3 * data[9] : 12 + 4 * data[9]], "little")  # root object header
    data[root + 20] ^= 0xFF  # its checksum now fails: an SWMR reader retries for minutes
    run.write_bytes(bytes(data))
    t0 = time.monotonic()
    with pytest.raises(ArchiveError, match="checksum|HDF5 kept retrying within 2 s"):
        open_for_viewing(run, timeout_s=2)
    assert time.monotonic() - t0 < 2 + 5


# -- layout -----------------------------------------------------------------------------------
def full_model(ny: int = NY, nx: int = NX) -> ResultsModel:
    maps = synthetic_maps(ny, nx, seed=1, length_px=3.0)
    model = ResultsModel(ny, nx, pixel_nm=1.0)
    model.update_block(slice(None), slice(None), **maps)
    if ny > 1:
        model.set_snapshot(snapshot_of(maps["delta_eV"], maps["alpha"], pixel_nm=1.0))
    model.update_status(state="running", current_set=1, last_seq=7)
    return model


@pytest.mark.parametrize("size", [(1600, 1000), (1280, 800)])
def test_spectrum_panels_have_room(size, window_factory):
    w = window_factory(full_model(), size=size)
    w.show()
    w.redraw_all()
    qt_app().processEvents()
    assert w.spectrum.gap.height() >= MIN_PLOT_HEIGHT and w.spectrum.wide.height() >= MIN_PLOT_HEIGHT
    # every map panel shows its whole plot: the colour bar is not pushed out of a narrow column
    for panel in (w.delta_map, w.alpha_map, w.topo_map):
        assert panel.plot_widget.getPlotItem().size().width() <= panel.box.width() + 1


def test_maps_are_drawn_in_scan_coordinates(tmp_path, window_factory):
    run = tmp_path / "RUN.h5"
    write_archive(run, pixels=NY * NX, centre_nm=(250.0, -40.0))
    source = loaded(FileSource(run))
    w = window_factory(source.model, source)
    w.redraw_all()
    rect = w.delta_map.image.mapRectToParent(w.delta_map.image.boundingRect())
    assert rect.left() == pytest.approx(250.0 - NX / 2) and rect.right() == pytest.approx(250.0 + NX / 2)
    assert rect.top() == pytest.approx(-40.0 - NY / 2) and rect.bottom() == pytest.approx(-40.0 + NY / 2)
    (x0, x1), _ = w.delta_map.plot.vb.viewRange()
    assert x0 >= 250.0 - NX / 2 - 0.5 and x1 <= 250.0 + NX / 2 + 0.5


def test_a_line_cut_is_drawn_as_curves_and_a_waterfall(tmp_path, window_factory):
    run = tmp_path / "LINE.h5"
    write_archive(run, pixels=NX, ny=1, centre_nm=(100.0, 0.0))
    model = full_model(1, NX)
    model.maps["valid"][0, 5] = False  # one pixel without a value
    save_maps_h5(model, tmp_path / "LINE.analysis.h5")
    source = loaded(FileSource(run))
    w = window_factory(source.model, source)
    w.redraw_all()
    assert w.line_mode and not w.maps and not hasattr(w, "delta_map")  # no 1-pixel stripe of a map
    x, y = w.delta_line.curve.getData()
    np.testing.assert_allclose(x, 100.0 - NX / 2 + np.arange(NX) + 0.5)  # scan coordinates
    expected = np.where(np.arange(NX) == 5, np.nan, model.maps["delta_eV"][0] * 1e3)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert w.delta_line.invalid.getData()[0].tolist() == [x[5]]
    assert w.alpha_line.curve.getData()[1][0] == pytest.approx(float(model.maps["alpha"][0, 0]))
    assert len(w.waterfall.curves) == NX  # one spectrum per measured pixel of this short line


def test_flag_map_and_scatter(window_factory):
    model = full_model()
    model.maps["flags"][:] = 0
    model.maps["flags"][1, 1] = int(FlagKind.POOR_FIT) | int(FlagKind.TIP_CHANGE)
    model.maps["flags"][2, 2] = int(FlagKind.MODULATION)
    model.update_block(slice(None), slice(None), flags=model.maps["flags"].copy())
    w = window_factory(model)
    w.redraw_all()
    codes = flag_codes(model.maps["flags"], model.maps["measured"])
    assert codes[1, 1] == 2 + FLAG_ORDER.index(FlagKind.TIP_CHANGE)  # the more telling of the two
    assert codes[2, 2] == 2 + FLAG_ORDER.index(FlagKind.MODULATION) and codes[0, 0] == 1
    legend = w.flag_map.map.legend.text()
    assert "tip_change 1" in legend and "modulation 1" in legend and f"no flag {NY * NX - 2}" in legend
    valid = model.maps["valid"]
    r = np.corrcoef(model.maps["delta_eV"][valid], model.maps["alpha"][valid])[0, 1]
    assert f"r = {r:+.2f}" in title(w.scatter.widget)
    assert len(w.scatter.points.data) == NY * NX and not w.scatter.density.isVisible()  # few: points
    big = full_model(60, 50)  # 3,000 pixels: a density image
    w2 = window_factory(big)
    w2.redraw_all()
    assert w2.scatter.density.isVisible() and not w2.scatter.points.isVisible()
    assert np.expm1(w2.scatter.density.image).sum() == pytest.approx(60 * 50)  # every pixel in a cell


def test_empty_inputs_say_no_data(window_factory):
    w = window_factory(ResultsModel(NY, NX, pixel_nm=1.0))
    w.redraw_all()
    assert w.delta_hist.no_data.label.isVisible() and not w.delta_hist.curve.isVisible()
    assert not w.delta_hist.widget.getPlotItem().getAxis("bottom").isVisible()
    assert w.delta_map.no_data.label.isVisible() and not w.delta_map.bar.isVisible()  # no invented colour range
    assert w.scatter.no_data.label.isVisible() and w.corr.map_no_data.label.isVisible()
    assert w.temperature.no_data.text == "no temperature readings"


# -- bad input --------------------------------------------------------------------------------
def test_impossible_window_sizes_are_refused(tmp_path, capfd):
    with pytest.raises(ConfigError, match="larger than any screen"):
        check_window_size(100_000, 100_000)
    assert check_window_size(1600, 1000) == (1600, 1000)
    run = tmp_path / "RUN.h5"
    write_archive(run, pixels=4)
    assert main(["view", str(run), "--snapshot", str(tmp_path / "x.png"), "--size", "100000x100000"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "larger than any screen" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_a_nonsense_endpoint_is_one_error(capfd):
    with pytest.raises(StreamError, match="cannot connect to 'nonsense'"):
        StreamSource.connect("nonsense", timeout_s=1)
    assert main(["view", "--connect", "nonsense", "--timeout", "1"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nonsense" in err[0]


def test_snapshot_of_a_running_archive_without_results(tmp_path, window_factory):
    run = tmp_path / "RUN.h5"
    write_archive(run, pixels=30)
    source = loaded(FileSource(run))
    w = window_factory(source.model, source)
    png = render_snapshot(w, tmp_path / "s.png")
    assert png.stat().st_size > 10_000
    assert w.selected == divmod(29, NX) and "newest measured" in title(w.spectrum.gap)


def test_density_counts_as_histogram2d():
    from stslive.live.viewer.stat_panels import density

    rng = np.random.default_rng(3)
    x, y = rng.normal(1.3, 0.05, 5000), rng.normal(0.35, 0.03, 5000)
    counts, (x0, x1), (y0, y1) = density(x, y, bins=40)
    expected, x_edges, y_edges = np.histogram2d(x, y, bins=40)
    np.testing.assert_array_equal(counts, expected.T)
    assert (x0, x1, y0, y1) == (x_edges[0], x_edges[-1], y_edges[0], y_edges[-1])


def test_progress_counts_the_archive_and_a_truncated_one_only_its_readable_pixels():
    from stslive.live.results import RunStatus
    from stslive.live.viewer.scan_state import ScanFrame, ScanState
    from stslive.live.viewer.status_panels import screen_status

    empty = np.zeros(0)
    analysed = RunStatus("running", NY * NX, 60, np.nan, np.nan, 0, 9, "60 pixels analysed", empty, empty)
    scan = ScanState(NY, NX, frame=ScanFrame.from_pixel_size(1.0))
    measured = np.zeros((NY, NX), bool)
    measured.flat[:50] = True
    scan.update_pixels(measured, np.where(measured, 1.7e9 + np.arange(NY * NX).reshape(NY, NX), np.nan), measured * 0.3)
    live = screen_status(analysed, scan.view())
    assert (live.n_measured, live.n_analysed) == (60, 60)  # the analyser is a poll ahead of the archive
    scan.set_note("TRUNCATED archive: ...", truncated=True)
    cut = screen_status(analysed, scan.view())
    assert cut.n_measured == 50 and cut.note.startswith("TRUNCATED")


def test_a_live_archive_caught_mid_flush_is_opened_again(tmp_path, monkeypatch):
    from stslive.acquisition.formats.archive import opener

    run = tmp_path / "RUN.h5"
    _killed_writer_archive(run)  # flags still say 'being written': the live path
    real, calls = opener.open_view, []

    def first_fails(path):
        calls.append(path)
        if len(calls) == 1:  # what HDF5 says when the writer had not recorded its new end of file yet
            raise OSError("Unable to open file (truncated file: eof = 4669458, stored_eof = 4707882)")
        return real(path)

    monkeypatch.setattr(opener, "open_view", first_fails)
    reader = open_for_viewing(run, timeout_s=10)
    assert len(calls) == 2 and int(reader.measured.sum()) == 5
    reader.close()

    probes = []

    def stalls(args, *, timeout, **kwargs):
        probes.append(timeout)
        raise subprocess.TimeoutExpired(args, timeout)

    def damaged(path):
        raise OSError("Unable to open file (incorrect metadata checksum after all read attempts)")

    monkeypatch.setattr(opener, "open_view", damaged)
    monkeypatch.setattr(opener.subprocess, "run", stalls)
    with pytest.raises(ArchiveError, match="HDF5 kept retrying within 7 s"):
        open_for_viewing(run, timeout_s=7)
    assert probes == [7]  # the screen's deadline bounds the SWMR probe, which is not tried again
