"""The screen's convergence panel, offscreen: synthetic histories, a progressive scan of a simulated
film, a finished maps.h5, the live stream and the archive's stop rule."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("PySide6")

from screen_data import create_archive  # this folder's archive helper

from stslive.acquisition.cli import main
from stslive.live import results_io as rio
from stslive.live.results import ResultsModel
from stslive.live.snapshot_history import SnapshotHistory
from stslive.live.viewer.archive_source import FileSource
from stslive.live.viewer.convergence_panel import EMPTY
from stslive.live.viewer.stream_source import StreamSource

BIAS = np.linspace(-0.04, 0.04, 101)


def model_with_history(n: list[int], *, width=lambda n: 2 * n**-0.5, rate: float = 150.0) -> ResultsModel:
    """A 40 x 50 model whose l_Delta, l_alpha (relative) and rho_cross(0) (absolute) bands are ``width(n)`` wide."""
    model = ResultsModel(40, 50, pixel_nm=1.0)
    history = SnapshotHistory()
    for i, ni in enumerate(n):
        w = width(ni)
        snap = SimpleNamespace(
            time=1.7e9 + 600.0 * i,
            n_pixels=ni,
            l_delta_nm=10.0,
            l_delta_nm_ci90=(10.0 - 5.0 * w, 10.0 + 5.0 * w),
            l_alpha_nm=20.0,
            l_alpha_nm_ci90=(20.0 - 10.0 * w, 20.0 + 10.0 * w),
            rho_cross_0=-0.5,
            rho_cross_0_ci90=(-0.5 - w / 2, -0.5 + w / 2),
        )
        history.append(snap, n_measured=ni)
    model.set_history(history)
    model.update_block(np.arange(n[-1]) // 50, np.arange(n[-1]) % 50, valid=True)
    model.update_status(state="running", pixels_per_hour=rate)
    return model


def test_empty_history_says_so(window_factory) -> None:
    w = window_factory(ResultsModel(10, 12, pixel_nm=1.0))
    w.redraw_all()
    panel = w.convergence
    assert all(note.text == EMPTY and note.label.isVisible() for note in panel.no_data)
    assert not panel.bands["l_delta_nm"].estimate.isVisible()
    assert "no correlation snapshot yet" in panel.text.text().lower()
    assert w.tabs.tabText(w.tabs.indexOf(panel.widget)) == "convergence"


def test_panel_draws_bands_and_forecasts_from_a_history(window_factory) -> None:
    w = window_factory(model_with_history([25, 50, 100]))
    w.redraw_all()
    panel = w.convergence
    assert not any(note.label.isVisible() for note in panel.no_data)
    x, y = panel.bands["l_delta_nm"].estimate.getData()
    np.testing.assert_allclose(10.0**x, [25, 50, 100])  # log axis: pyqtgraph holds log10(n)
    np.testing.assert_allclose(y, 10.0)
    assert panel.bands["rho_cross_0"].fill.isVisible() and not panel.bands["rho_cross_0"].fill.path().isEmpty()
    # 2 n^-1/2 reaches 0.1 at 400 pixels: 300 more at 150 px/h
    assert panel.forecasts["l_delta_nm"].n_target == pytest.approx(400.0)
    assert panel.forecasts["rho_cross_0"].n_target == pytest.approx(400.0)  # absolute width, default 0.10
    assert panel.headline == "~ 2 h 00 min (at 150 px/h)"
    assert w.tabs.tabText(w.tabs.indexOf(panel.widget)) == "convergence: ~ 2 h 00 min"
    assert "default, no stop rule" in panel.text.text()
    # no corrected figure in these snapshots: the plain 1/e lengths, and the title says so
    assert panel.lengths.getPlotItem().titleLabel.text.endswith("(1/e)")
    # the trend is drawn from the fitted snapshots to the target
    tx, ty = panel.trend_curves["l_delta_nm"].getData()
    assert 10.0 ** tx[-1] == pytest.approx(400.0) and 10.0 ** ty[-1] == pytest.approx(0.1)


def test_a_status_tick_moves_the_forecast_not_the_bands(window_factory) -> None:
    # the window redraws on every 0.5 s status tick; the snapshot history changes every few
    # hundred pixels: between snapshots only the forecasts, trend lines and text follow the run
    model = model_with_history([25, 50, 100])
    w = window_factory(model)
    w.redraw_all()
    panel = w.convergence
    assert panel.headline == "~ 2 h 00 min (at 150 px/h)"
    drawn = []
    panel.bands["l_delta_nm"].show = lambda *a: drawn.append(a)  # type: ignore[method-assign]
    model.update_status(state="running", pixels_per_hour=300.0)  # twice the rate, no new snapshot
    w.redraw_all()
    assert panel.headline == "~ 1 h 00 min (at 300 px/h)" and "(at 300 px/h)" in panel.text.text()
    assert drawn == []
    # a new snapshot is drawn
    history = model.history
    history.append(SimpleNamespace(time=1.7e9 + 3600.0, l_delta_nm=10.0, l_delta_nm_ci90=(9.5, 10.5)), n_measured=200)
    model.set_history(history)
    w.redraw_all()
    assert len(drawn) == 1 and 200 in drawn[0][0]


def test_panel_survives_nan_bands_a_single_row_and_non_monotone_n(window_factory) -> None:
    nan_bands = model_with_history([25, 50, 100], width=lambda n: math.nan)
    single = model_with_history([60])
    shuffled = model_with_history([100, 25, 50])
    for model, expected in ((nan_bands, "no 90 % band yet"), (single, "1 snapshot"), (shuffled, None)):
        w = window_factory(model)
        w.redraw_all()
        panel = w.convergence
        if expected is None:
            x, _ = panel.bands["l_alpha_nm"].estimate.getData()
            np.testing.assert_allclose(10.0**x, [25, 50, 100])  # drawn in pixel order
            assert panel.forecasts["l_alpha_nm"].n_target == pytest.approx(400.0)
        else:
            assert panel.headline == f"cannot predict yet ({expected})"
            if expected == "no 90 % band yet":
                assert not panel.bands["l_delta_nm"].fill.isVisible()


def test_a_stop_rule_in_the_archive_sets_the_target(tmp_path: Path, window_factory) -> None:
    archive = tmp_path / "run.h5"
    with create_archive(archive, ny=40, nx=50, bias=BIAS) as writer:
        rule = {"results": "tcp://127.0.0.1:5999", "max_relative_width": 0.2, "figures": ["l_delta_nm"]}
        writer.write_document("start", {"metadata": {"config": {"stop": rule}}})
    analysis = tmp_path / "maps.h5"
    rio.save_maps_h5(model_with_history([25, 50, 100]), analysis)
    source = FileSource(archive, analysis=analysis, poll_s=0.05)
    source.start()
    assert source.loaded.wait(10)
    # the file's whole history, not only its last snapshot
    assert len(source.model.history) == 3
    w = window_factory(source.model, source)
    w.redraw_all()
    panel = w.convergence
    # 2 n^-1/2 reaches 0.2 at 100 pixels: the lengths are there; rho needs 0.2 * 0.5 = 0.1 wide: n = 400
    assert panel.forecasts["l_delta_nm"].state == "reached"
    assert panel.forecasts["rho_cross_0"].target == pytest.approx(0.1)
    assert "the run's stop rule" in panel.text.text()
    # the rule waits for l_Delta alone: the headline is its forecast, rho_cross(0) is not waited for
    assert panel.forecasts["rho_cross_0"].state == "predicted"
    assert panel.headline == "reached" and w.tabs.tabText(w.tabs.indexOf(panel.widget)) == "convergence: reached"
    assert "<b>l_Δ: reached</b>" in panel.text.text()
    assert panel.text.text().count("(not in the stop rule)") == 2  # l_alpha and rho_cross(0)


def test_a_stop_rule_waiting_for_l_cross_forecasts_it_too(tmp_path: Path, window_factory) -> None:
    # l_cross has no band in these snapshots: the rule cannot be forecast, whatever the others say
    archive = tmp_path / "run.h5"
    with create_archive(archive, ny=40, nx=50, bias=BIAS) as writer:
        rule = {"results": "tcp://127.0.0.1:5999", "max_relative_width": 0.1, "figures": ["l_delta_nm", "l_cross_nm"]}
        writer.write_document("start", {"metadata": {"config": {"stop": rule}}})
    analysis = tmp_path / "maps.h5"
    rio.save_maps_h5(model_with_history([25, 50, 100, 400]), analysis)
    source = FileSource(archive, analysis=analysis, poll_s=0.05)
    source.start()
    assert source.loaded.wait(10)
    w = window_factory(source.model, source)
    w.redraw_all()
    panel = w.convergence
    assert panel.forecasts["l_delta_nm"].state == "reached"
    assert panel.forecasts["l_cross_nm"].state == "unknown"
    assert panel.headline == "cannot predict yet (no 90 % band yet)"
    assert "l_Δ and l_cross: cannot predict yet" in panel.text.text()
    assert set(panel.bands) == {"l_delta_nm", "l_alpha_nm", "rho_cross_0"}  # l_cross is written, not drawn


def test_a_late_viewer_gets_the_whole_history_from_the_stream(window_factory) -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    origin = model_with_history([25, 50, 100])
    stop = threading.Event()

    def publish() -> None:  # the analyser's full state, again and again (a viewer may join any time)
        while not stop.is_set():
            for message in rio.model_messages(origin):
                pub.send_multipart(rio.encode_message(*message))
            time.sleep(0.02)

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    source = StreamSource.connect(f"tcp://127.0.0.1:{port}", timeout_s=5, context=ctx)
    source.start()
    try:
        deadline = time.monotonic() + 5
        while len(source.model.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(source.model.history) == 3
        w = window_factory(source.model, source)
        w.redraw_all()
        assert w.convergence.forecasts["l_delta_nm"].n_target == pytest.approx(400.0)
    finally:
        stop.set()
        th.join()
        source.stop()
        pub.close()
        ctx.term()


def progressive_model(ny: int = 40, nx: int = 48, fractions=(0.05, 0.1, 0.2, 0.4, 0.7)) -> ResultsModel:
    """A model fed the snapshots of a progressive scan over a simulated film (the live analyser's path)."""
    from stslive.acquisition.plans import progressive_order
    from stslive.live.snapshots import correlation_snapshot
    from stslive.mocks.film import make_film
    from stslive.mocks.film_params import FilmParams

    film = make_film(FilmParams(ny=ny, nx=nx, pixel_m=1e-9, seed=2))
    order = progressive_order(nx, ny)
    model = ResultsModel(ny, nx, pixel_nm=1.0)
    for k, fraction in enumerate(fractions):
        n = round(fraction * ny * nx)
        iy, ix = order[:n, 0], order[:n, 1]
        model.update_block(iy, ix, delta_eV=film.delta_eV[iy, ix], alpha=film.alpha[iy, ix], valid=True)
        model.set_snapshot(dataclasses.replace(correlation_snapshot(model), time=1.7e9 + 60.0 * k))
    model.update_status(state="running", pixels_per_hour=400.0)
    return model


def test_panel_of_a_progressive_scan_of_a_simulated_film(window_factory) -> None:
    model = progressive_model()
    w = window_factory(model)
    w.redraw_all()
    panel = w.convergence
    assert len(model.history) == 5
    bands = model.history.arrays()
    x, _ = panel.bands["l_delta_nm"].estimate.getData()
    np.testing.assert_allclose(10.0**x, bands["n_measured"][np.isfinite(bands["l_delta_nm_corrected"])])
    text = panel.text.text()
    for name in ("l_Δ", "l_α", "ρ_cross(0)", "all three"):
        assert name in text
    # every number the forecast gives rests on at least three finite bands
    for f in panel.forecasts.values():
        assert f.state in ("reached", "unknown") or f.snapshots >= 3


def test_panel_of_a_finished_analysed_run(tmp_path: Path, window_factory) -> None:
    archive = tmp_path / "sim.h5"
    assert main(["simulate", "--grid", "40x30", "--points", "401", "--out", str(archive)]) == 0
    assert main(["analyse", str(archive), "--out", str(tmp_path / "ana"), "--examples", "0"]) == 0
    source = FileSource(archive, analysis=tmp_path / "ana" / "maps.h5", poll_s=0.05)
    source.start()
    assert source.loaded.wait(20)
    w = window_factory(source.model, source)
    w.redraw_all()
    panel = w.convergence
    assert len(source.model.history) == 1  # the offline analysis takes one snapshot, of the whole map
    assert not panel.no_data[0].label.isVisible()
    # one snapshot of a 40 x 30 map: no forecast (and no finite band on this film)
    assert panel.headline == "cannot predict yet (no 90 % band yet)"
    _, y = panel.bands["l_delta_nm"].estimate.getData()
    assert y.size == 1 and np.isfinite(y[0])
