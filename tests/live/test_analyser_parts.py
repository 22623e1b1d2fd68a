"""The live analyser's parts on their own: results publisher, snapshot scheduler, analysis file, status line."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from stslive.acquisition.jobs.bench_viewer import synthetic_maps
from stslive.drivers.errors import FileFormatError, StreamError
from stslive.live.analyser import file as analyser_file
from stslive.live.analyser.file import AnalysisFileWriter
from stslive.live.analyser.publisher import ResultsPublisher
from stslive.live.analyser.runs import RunHandler
from stslive.live.analyser.settings import AnalyserSettings
from stslive.live.analyser.snapshots import SnapshotScheduler
from stslive.live.analyser.status import status_line
from stslive.live.flag_config import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.results import ResultsModel
from stslive.live.results_io import decode_message, encode_message, load_maps_h5


def _model(ny: int = 24, nx: int = 30, *, valid: bool = True) -> ResultsModel:
    model = ResultsModel(ny, nx, pixel_nm=1.5)
    maps = synthetic_maps(ny, nx, seed=1, length_px=3.0)
    maps["valid"] = np.full((ny, nx), valid)
    model.update_block(slice(None), slice(None), **maps)
    return model


def test_publisher_sends_pixels_model_and_status_then_closes() -> None:
    ctx = zmq.Context()
    pub = ResultsPublisher("tcp://127.0.0.1:0", context=ctx, hwm=1000)
    sub = ctx.socket(zmq.SUB)
    try:
        endpoint = pub.endpoint
        assert endpoint is not None and endpoint.startswith("tcp://127.0.0.1:")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        time.sleep(0.3)  # the subscription must reach the publisher first
        model = _model()
        pub.send_pixels({"iy": np.array([1, 2]), "ix": np.array([3, 4]), "delta_eV": np.array([1e-3, 2e-3])})
        pub.send_model(model)
        pub.send_status(model)
        topics = []
        while sub.poll(2000):
            topics.append(decode_message(sub.recv_multipart())[0])
        assert topics[0] == "pixels" and topics[1] == "maps" and topics[-2:] == ["status", "status"]
        assert pub.pixel_seconds > 0
    finally:
        pub.close()
        sub.close(linger=0)
        ctx.term()
    assert pub.endpoint is None
    pub.send_status(_model())  # closed: nothing sent, nothing raised
    pub.close()  # twice is fine


def test_publisher_refuses_other_interfaces_without_keys() -> None:
    ctx = zmq.Context()
    try:
        with pytest.raises(StreamError, match="without authentication"):
            ResultsPublisher("tcp://0.0.0.0:0", context=ctx, hwm=10)
    finally:
        ctx.term()


def test_snapshot_scheduler_computes_off_thread_and_stops() -> None:
    model = _model()
    scheduler = SnapshotScheduler(lambda: model)
    scheduler.request()
    deadline = time.monotonic() + 20
    while model.snapshot is None and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    assert model.snapshot is not None and model.snapshot.n_pixels == 24 * 30
    assert scheduler.seconds > 0


def test_snapshot_with_too_few_valid_pixels_keeps_the_previous_one() -> None:
    model = _model(valid=False)
    SnapshotScheduler(lambda: model).take(model)  # logged, not raised
    assert model.snapshot is None


def test_analysis_file_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run.analysis.h5"
    writer = AnalysisFileWriter(target, every_s=10.0)
    assert writer.due(time.monotonic())
    first = _model()
    writer.write(first)
    assert not writer.due(time.monotonic())
    np.testing.assert_array_equal(load_maps_h5(target).maps["delta_eV"], first.maps["delta_eV"])

    def broken(model: ResultsModel, path: Path) -> None:
        Path(path).write_bytes(b"half a file")
        raise FileFormatError(path, "disk full")

    monkeypatch.setattr(analyser_file, "save_maps_h5", broken)
    with pytest.raises(FileFormatError, match="disk full"):
        writer.write(_model(12, 10))
    np.testing.assert_array_equal(load_maps_h5(target).maps["delta_eV"], first.maps["delta_eV"])


def test_status_line_names_every_count() -> None:
    runs = RunHandler(
        options=KernelOptions(),
        flag_config=FlagConfig(),
        settings=AnalyserSettings(),
        publisher=None,
        file=None,
        rejected=collections.Counter(),
        status=lambda: "",
    )
    runs.analysed = 3
    assert status_line(runs, subscriber_stats={}, missing_start={}) == "3 pixels analysed"
    runs.analysed, runs.duplicates = 10, 2
    runs.scan_failures[(0, 1)] = "InstrumentTimeout"
    runs.reject("pixel", "outside the grid")
    text = status_line(
        runs,
        subscriber_stats={"rejected": {"malformed": 4}, "gaps": {"r": [(3, 5)]}},
        missing_start={"r2": "missed its start document"},
    )
    for part in (
        "10 pixels analysed",
        "2 repeated measurement(s) skipped",
        "1 pixel(s) failed in the scan",
        "rejected malformed 4, pixel 1",
        "run r2 missed its start document",
        "1 open seq gap(s)",
    ):
        assert part in text


def test_analyser_with_an_unwritable_out_exits_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stslive.acquisition.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    t0 = time.monotonic()
    code = main(["analyser", "--connect", "tcp://127.0.0.1:9", "--out", str(a_file / "run.analysis.h5"), "--once"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - t0 < 10
    assert len(err.strip().splitlines()) == 1 and "cannot write the analysis file" in err and "Traceback" not in err


def test_a_failed_analysis_file_write_stops_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: ResultsModel, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(analyser_file, "save_maps_h5", broken)
    errors: list[str] = []
    runs = RunHandler(
        options=KernelOptions(),
        flag_config=FlagConfig(),
        settings=AnalyserSettings(),
        publisher=None,
        file=AnalysisFileWriter(tmp_path / "run.analysis.h5", every_s=0.0),
        rejected=collections.Counter(),
        status=lambda: "",
        errors=errors,
    )
    from test_analyser_sim import geometry, make_sets, start_fields

    runs.handle([("start", ("r", start_fields(geometry(2, 2), make_sets())))])
    runs.periodic()
    assert errors and "No space left on device" in errors[0] and runs.rejected["write"] == 1


def test_pixels_are_analysed_at_once_and_again_with_the_run_width() -> None:
    """No calibration wait: the first pixel has results; once the width is fixed every pixel so far is redone."""
    from test_analyser_sim import geometry, make_lab, make_sets, measure_run, pixel_inputs, start_fields

    from stslive.live.run_context import RunContext
    from stslive.mocks.faults import FaultPlan

    sets = make_sets()
    pixels = pixel_inputs(list(measure_run(make_lab(6, 8, FaultPlan.from_list([])), sets, lambda iy, ix: 0)))
    options = KernelOptions(chunk=20)  # the run's width is fixed on its first 20 spectra
    live = RunContext("live", start_fields(geometry(6, 8), sets), options=options, flag_config=FlagConfig())
    first = live.process(pixels[:1])
    assert first["iy"].tolist() == [0] and np.isfinite(first["delta_eV"][0])  # at once, not held back
    assert live.calibrating and live.model.maps["measured"].sum() == 1
    for p in pixels[1:19]:
        assert len(live.process([p])["iy"]) == 1
    redone = live.process(pixels[19:21])  # the 20th spectrum fixes the width: all 21 analysed again
    assert not live.calibrating and sorted(zip(redone["iy"], redone["ix"], strict=True)) == sorted(
        (p.iy, p.ix) for p in pixels[:21]
    )
    for lo in range(21, len(pixels), 5):
        live.process(pixels[lo : lo + 5])
    whole = RunContext("whole", start_fields(geometry(6, 8), sets), options=options, flag_config=FlagConfig())
    whole.process(pixels)  # one batch: the width fixed before any result, as offline
    assert live.options.dynes_width_eV == whole.options.dynes_width_eV
    for name in ("delta_eV", "alpha", "valid", "flags", "tip_epoch"):
        np.testing.assert_allclose(
            live.model.maps[name].astype(float), whole.model.maps[name].astype(float), rtol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
def test_regression_a_pixel_measured_again_is_calibrated_on_once_as_offline(tmp_path: Path, same_batch: bool) -> None:
    """A pixel measured again before the run's width is fixed (a run shorter than ``chunk``,
    like the soak's 384 pixels) replaces its earlier measurement in the calibration sample.

    The archive keeps the last measurement only, and offline samples the archive; the live
    sample held both, so in the soaks its gap differed from offline's by up to 2.4e-4 of itself,
    and a pixel near a kernel decision came out at Delta 1.242 meV live, 1.258 meV offline.
    """
    import test_analyser_sim as sim

    from stslive.acquisition.formats.archive import ArchiveWriter
    from stslive.live.pipeline import analyse_input, calibrate_source, open_input
    from stslive.live.run_context import RunContext
    from stslive.mocks.faults import FaultPlan

    ny, nx, again_at = 4, 6, (1, 2)
    sets = sim.make_sets()[:1]
    lab = sim.make_lab(ny, nx, FaultPlan.from_list([]))
    first = list(sim.measure_run(lab, sets, lambda iy, ix: 0))
    again = next(p for p in sim.measure_run(lab, sets, lambda iy, ix: 0) if (p.iy, p.ix) == again_at)  # new noise
    archive = tmp_path / "run.h5"
    with ArchiveWriter.create(
        archive,
        geometry=sim.geometry(ny, nx),
        channel_names=sim.CHANNELS,
        n_points=sim.N_POINTS,
        setpoint_sets=sets,
        start_doc={},
        swmr=False,
    ) as writer:
        for p in first:
            writer.write_pixel(p.iy, p.ix, p.spectra, p.meta)
        writer.rewrite_pixel(again.iy, again.ix, again.spectra, again.meta, reason="remeasure")
    options = KernelOptions()  # nothing calibrated: the live rule fixes it at the end, on every pixel
    with open_input(archive, options=options) as source:
        offline_options = calibrate_source(source, options=options)
    offline = analyse_input(archive, options=options)

    live = RunContext("live", sim.start_fields(sim.geometry(ny, nx), sets), options=options, flag_config=FlagConfig())
    inputs = sim.pixel_inputs([*first, again])
    batches = [inputs] if same_batch else [inputs[:10], inputs[10:-1], inputs[-1:]]
    for batch in batches:
        live.process(batch)
    assert live.calibrating  # 24 pixels < chunk: fixed by finish(), on what arrived
    live.finish()
    assert live.options == offline_options
    np.testing.assert_array_equal(live.model.maps["measured"], offline.maps["measured"])
    for name in ("delta_eV", "alpha", "b", "valid", "reason"):
        np.testing.assert_allclose(
            live.model.maps[name].astype(float), offline.maps[name].astype(float), rtol=1e-5, err_msg=name
        )
    assert live.model.maps["time"][again_at] == again.meta.t_end  # the later measurement is the one kept


def test_the_published_pixels_carry_every_map_the_analyser_keeps() -> None:
    """A viewer's model built from the ``pixels`` messages alone equals the analyser's, map for map.

    The per-quantity validity and reasons, standard errors and Dynes maps included: they were
    stored in the analyser's model but never published, so the screen had no Delta-only pixel.
    """
    from test_analyser_sim import geometry, make_lab, make_sets, measure_run, pixel_inputs, start_fields

    from stslive.live.results import MAP_SPECS
    from stslive.live.results_io import apply_message, pixels_message
    from stslive.live.run_context import RunContext, result_rows
    from stslive.mocks.faults import FaultPlan

    sets = make_sets()
    pixels = pixel_inputs(list(measure_run(make_lab(6, 8, FaultPlan.from_list([])), sets, lambda iy, ix: 0)))
    options = KernelOptions(chunk=20)
    live = RunContext("live", start_fields(geometry(6, 8), sets), options=options, flag_config=FlagConfig())
    viewer = ResultsModel(6, 8)
    published = []
    for lo in range(0, len(pixels), 7):  # provisional width first, then every pixel again with the run's
        published.append(live.process(pixels[lo : lo + 7]))
        published.append(live.take_revisions() or {})
    published.append(live.finish())
    for columns in filter(None, published):
        apply_message(viewer, *decode_message(encode_message(*pixels_message(columns))))
    assert live.model.maps["measured"].all()
    for name in MAP_SPECS:
        np.testing.assert_array_equal(viewer.maps[name], live.model.maps[name], err_msg=name)
    assert live.model.maps["valid_delta"].all() and np.isfinite(live.model.maps["delta_sigma_eV"]).all()
    rows = result_rows(published[0])  # the per-pixel records keep each map's type
    assert isinstance(rows[0].valid_delta, bool) and isinstance(rows[0].reason_alpha, int)
    assert rows[0].delta_sigma_eV == pytest.approx(float(published[0]["delta_sigma_eV"][0]))


def test_snapshot_history_follows_the_model_onto_the_wire_and_into_the_file(tmp_path: Path) -> None:
    import dataclasses
    from types import SimpleNamespace

    from stslive.live.results_io import apply_message, model_from_message, model_messages, save_maps_h5
    from stslive.live.snapshot_history import SnapshotHistory
    from stslive.live.snapshots import correlation_snapshot

    model = _model()
    snap = correlation_snapshot(model)
    model.set_snapshot(snap)
    model.set_snapshot(snap)  # the same snapshot again (a viewer gets it with every full state): kept once
    model.set_snapshot(dataclasses.replace(snap, time=snap.time + 1.0, n_pixels=100))
    assert len(model.history) == 2
    rows = model.history.arrays()
    assert rows["n_measured"].tolist() == [24 * 30, 24 * 30] and rows["n_pixels"].tolist() == [24 * 30, 100]
    assert rows["l_delta_nm"][0] == pytest.approx(snap.l_delta_nm)
    viewer = None
    for topic, header, arrays in model_messages(model):
        viewer = viewer or model_from_message(*decode_message(encode_message(topic, header, arrays))[:2])
        apply_message(viewer, *decode_message(encode_message(topic, header, arrays)))
    assert viewer is not None
    for name, values in model.history.arrays().items():
        np.testing.assert_array_equal(viewer.history.arrays()[name], values, err_msg=name)
    save_maps_h5(model, tmp_path / "maps.h5")
    loaded = load_maps_h5(tmp_path / "maps.h5").history.arrays()
    for name, values in model.history.arrays().items():
        np.testing.assert_array_equal(loaded[name], values, err_msg=name)
    # the 90 % band of a figure, when the estimator gives one
    history = SnapshotHistory()
    history.append(SimpleNamespace(time=1.0, n_pixels=10, l_delta_nm=20.0, l_delta_nm_ci90=(15.0, 27.0)), n_measured=12)
    assert history.arrays()["l_delta_nm_low"].tolist() == [15.0] and np.isnan(history.arrays()["l_alpha_nm_high"][0])


def test_snapshots_are_taken_on_time_as_well_as_on_pixel_count() -> None:
    from test_analyser_sim import geometry, make_sets, start_fields

    model_seen: list[int] = []
    runs = RunHandler(
        options=KernelOptions(),
        flag_config=FlagConfig(),
        settings=AnalyserSettings(snapshot_every=10_000, snapshot_every_s=0.0),
        publisher=None,
        file=None,
        rejected=collections.Counter(),
        status=lambda: "",
    )
    runs._snapshots.request = lambda: model_seen.append(1)  # type: ignore[method-assign]
    runs.handle([("start", ("r", start_fields(geometry(2, 2), make_sets())))])
    runs.periodic()
    assert model_seen == []  # nothing new: no snapshot
    runs._since_snapshot = 3  # three pixels since the last one, far fewer than snapshot_every
    runs.periodic()
    assert model_seen == [1]
