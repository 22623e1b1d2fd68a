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
from stslive.live import analyser_file
from stslive.live.analyser_file import AnalysisFileWriter
from stslive.live.analyser_publisher import ResultsPublisher
from stslive.live.analyser_runs import RunHandler
from stslive.live.analyser_settings import AnalyserSettings
from stslive.live.analyser_snapshots import SnapshotScheduler
from stslive.live.analyser_status import status_line
from stslive.live.flag_config import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.results import ResultsModel
from stslive.live.results_io import decode_message, load_maps_h5


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
