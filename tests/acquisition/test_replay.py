"""stslive replay: archives and real Nanonis grids published as a run stream, received intact."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.documents import DescriptorDoc, EventDoc, FailedPixelDoc, StartDoc, StopDoc
from stslive.acquisition.formats.nanonis3ds import open_3ds
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.acquisition.replay import open_replay, replay, schedule
from stslive.drivers.errors import ConfigError, FileFormatError, NanonisFileError

pytestmark = pytest.mark.timeout(60)

CHANNELS = ("Bias (V)", "Current (A)")


def _set(sid: int) -> SetpointSet:
    return SetpointSet(
        id=sid,
        name=f"set{sid}",
        bias_setpoint_V=-0.01 * (sid + 1),
        current_setpoint_A=100e-12,
        sweep_start_V=-0.005,
        sweep_end_V=0.005,
        n_points=16,
    )


@pytest.fixture()
def small_archive(tmp_path: Path) -> tuple[Path, dict]:
    """A 3 x 4 archive: 9 pixels measured out of raster order, one failed, two never measured."""
    geometry = GridGeometry(centre_x_m=1e-7, centre_y_m=-2e-7, width_m=40e-9, height_m=30e-9, nx=4, ny=3)
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(7)
    # recorded order: serpentine over rows 0-1, then row 2 partly (pixels (2,2),(2,3) not measured)
    order = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2), (1, 1), (1, 0), (2, 0)]
    spectra = {}
    with ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=CHANNELS,
        n_points=16,
        setpoint_sets=[_set(0), _set(1)],
        start_doc={"instruments": {"stm": "mock"}},
        swmr=False,
    ) as w:
        t = 1.7e9
        for k, (iy, ix) in enumerate(order):
            arr = rng.normal(size=(2, 16)).astype(np.float32)
            arr[1, -2:] = np.nan  # a sweep cut short
            spectra[(iy, ix)] = arr
            t0 = t + 0.01 * k
            meta = PixelMeta(
                x_m=float(ix),
                y_m=float(iy),
                setpoint_set_id=k % 2,
                t_start=t0,
                t_sweep_start=t0 + 0.001,
                t_sweep_end=t0 + 0.004,
                t_end=t0 + 0.005,
                temperature_before_K=1.5 + k * 1e-3,
                z_m=1e-9 if k != 3 else math.nan,
                lockin_status=k % 3,
            )
            w.write_pixel(iy, ix, arr, meta)
        w.record_failure(2, 1, "InstrumentTimeout: nanonis: no reply", code=2, attempts=3, setpoint_set_id=1)
    return path, {"order": order, "spectra": spectra, "failed": (2, 1)}


def _collect(source, **kwargs) -> list:
    """Replay ``source`` to a real SUB over loopback TCP; every document received, in order."""
    ctx = zmq.Context()
    try:
        with RunPublisher("tcp://127.0.0.1:0", context=ctx) as pub:
            sub = RunSubscriber(pub.pub_endpoint, context=ctx)
            try:
                pub.wait_for_subscribers(1, timeout_s=10)
                replay(source, pub, **kwargs)
                docs = list(sub.iter(idle_timeout_s=5, until_stop=True))
                assert not sub.rejected and not sub.gaps(docs[0].run_uid)
            finally:
                sub.close()
    finally:
        ctx.term()
    return docs


def _check_frame(docs: list) -> tuple[StartDoc, list[EventDoc], StopDoc]:
    assert isinstance(docs[0], StartDoc) and isinstance(docs[1], DescriptorDoc) and isinstance(docs[-1], StopDoc)
    assert [d.seq for d in docs] == list(range(len(docs)))  # every document, in order, no gap
    events = [d for d in docs if isinstance(d, EventDoc)]
    assert docs[-1].counts["event"] == len(events)
    return docs[0], events, docs[-1]


def test_archive_replay_equals_file(small_archive: tuple[Path, dict]) -> None:
    path, truth = small_archive
    with open_replay(path) as source:
        docs = _collect(source)
    start, events, stop = _check_frame(docs)
    assert start.channel_names == CHANNELS and start.n_points == 16
    assert [s["id"] for s in start.setpoint_sets] == [0, 1]
    assert start.grid["nx"] == 4 and start.grid["ny"] == 3 and start.metadata["sweep_signal"] == "Bias (V)"
    assert start.instruments == {"stm": "mock"}
    # the recorded order (by pixel time), not the raster order; unmeasured pixels not sent
    assert [(e.iy, e.ix) for e in events] == truth["order"]
    for k, e in enumerate(events):
        np.testing.assert_array_equal(e.arrays["spectra"], truth["spectra"][(e.iy, e.ix)])
        assert e.arrays["spectra"].dtype == np.float32
        assert e.setpoint_set_id == k % 2 and e.lockin_status == k % 3
        assert e.temperature_before_K == pytest.approx(1.5 + k * 1e-3) and e.temperature_after_K is None
        assert e.z_m == (None if k == 3 else 1e-9)
        assert e.timestamps["t_end"] - e.timestamps["t_start"] == pytest.approx(0.005, abs=1e-6)
    failed = [d for d in docs if isinstance(d, FailedPixelDoc)]
    assert [(f.iy, f.ix, f.attempts, f.setpoint_set_id) for f in failed] == [(2, 1, 3, 1)]
    assert "no reply" in failed[0].reason
    assert isinstance(docs[-2], FailedPixelDoc)  # recorded after the last pixel, sent after it
    assert stop.exit_status == "success" and stop.counts["failed"] == 1


def test_kpfm_grid_replays_every_measured_pixel(shared_data: Path) -> None:
    path = shared_data / "nanonis-grid-kpfm-20x20.3ds"
    with open_replay(path) as source:
        docs = _collect(source)
    start, events, stop = _check_frame(docs)
    with open_3ds(path) as grid:
        measured = grid.measured
        data = grid.read_block()
        names = grid.channel_names
    assert len(events) == int(measured.sum()) == 400
    assert [(e.iy, e.ix) for e in events] == [tuple(p) for p in np.argwhere(measured)]  # record order
    for e in events:
        np.testing.assert_array_equal(e.arrays["spectra"], data[e.iy, e.ix])
    assert list(start.channel_names) == names and start.n_points == 128
    assert start.metadata["sweep_signal"] == "Bias (V)"
    sp = start.setpoint_sets[0]  # built from the header, and the start doc says so
    assert (sp["bias_setpoint_V"], sp["sweep_start_V"], sp["sweep_end_V"]) == (0.2, 0.2, -0.1)
    assert sp["current_setpoint_A"] == pytest.approx(94.6981e-12)
    assert SetpointSet.from_dict(sp).n_points == 128
    assert "header" in start.metadata["setpoint_source"]["note"]
    assert start.metadata["setpoint_source"]["current_setpoint_A"] == "Current>Current (A)"
    assert stop.exit_status == "success"


def test_zsweep_grid_is_replayed_and_says_its_sweep(shared_data: Path) -> None:
    path = shared_data / "nanonis-grid-zspec.3ds"
    with open_replay(path) as source:
        docs = _collect(source, rate=2000.0)
    start, events, _ = _check_frame(docs)
    with open_3ds(path) as grid:
        n_measured = int(grid.measured.sum())
    assert start.metadata["sweep_signal"] == "Z (m)"
    assert len(events) == n_measured > 0 and len(start.channel_names) == 16
    assert start.setpoint_sets[0]["current_setpoint_A"] == pytest.approx(5.00001e-12)  # Z-Controller>Setpoint in A


def test_as_recorded_is_refused_for_a_3ds(shared_data: Path) -> None:
    with open_replay(shared_data / "nanonis-grid-kpfm-20x20.3ds") as source:
        with pytest.raises(ConfigError, match="--rate"):
            schedule(np.array([i.t for i in source.items]), as_recorded=True)


def test_schedule() -> None:
    t = np.array([10.0, 10.5, 12.0])
    np.testing.assert_allclose(schedule(t, rate=4.0), [0.0, 0.25, 0.5])
    np.testing.assert_allclose(schedule(t, as_recorded=True), [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(schedule(t), [0.0, 0.0, 0.0])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError):
            schedule(t, rate=bad)
    with pytest.raises(ConfigError):
        schedule(t, rate=1.0, as_recorded=True)


class _FakeClock:
    """A monotonic clock whose sleep always oversleeps by 7 ms (a loaded machine)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sent: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + 0.007


def test_rate_pacing_does_not_drift(small_archive: tuple[Path, dict]) -> None:
    path, _ = small_archive
    clock = _FakeClock()

    class Recorder(RunPublisher):
        def publish(self, doc):  # type: ignore[no-untyped-def]
            clock.sent.append(clock.now)
            return super().publish(doc)

    ctx = zmq.Context()
    try:
        with open_replay(path) as source, Recorder("tcp://127.0.0.1:0", context=ctx) as pub:
            replay(source, pub, rate=10.0, clock=clock, sleep=clock.sleep)
    finally:
        ctx.term()
    sends = np.array(clock.sent[2:-1])  # events and failure; start, descriptor and stop are not paced
    lateness = sends - (sends[0] + np.arange(sends.size) / 10.0)
    # a relative sleep would accumulate 7 ms per document (63 ms by the last); deadlines do not
    assert lateness.max() <= 0.0071 and lateness.min() >= 0.0


def test_as_recorded_follows_archive_times(small_archive: tuple[Path, dict]) -> None:
    path, _ = small_archive
    with open_replay(path) as source:
        offsets = schedule(np.array([i.t for i in source.items]), as_recorded=True)
        assert source.has_times
    # 9 events 10 ms apart, then the failure (recorded when the file was written, later)
    np.testing.assert_allclose(np.diff(offsets[:9]), 0.01, atol=1e-6)
    assert offsets[9] >= offsets[8]


def test_unreadable_inputs_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="no such file"):
        open_replay(tmp_path / "absent.h5")
    junk = tmp_path / "junk.3ds"
    junk.write_bytes(b"not a grid at all")
    with pytest.raises(NanonisFileError):
        open_replay(junk)


def test_cli_replays_to_a_subscriber(small_archive: tuple[Path, dict]) -> None:
    path, truth = small_archive
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stslive.acquisition.cli",
            "replay",
            str(path),
            "--bind",
            "tcp://127.0.0.1:0",
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            "20",
            "--rate",
            "500",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "stream", line
        sub = RunSubscriber(line[1])
        try:
            docs = list(sub.iter(idle_timeout_s=15, until_stop=True))
        finally:
            sub.close()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    _, events, stop = _check_frame(docs)
    assert [(e.iy, e.ix) for e in events] == truth["order"] and stop.counts["failed"] == 1
    assert "replayed 9 events, 1 failed pixels" in out
