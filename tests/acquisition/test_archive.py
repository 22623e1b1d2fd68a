"""The run archive: layout round trip, refusal of foreign files, atomic pixels, SWMR, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.archive import ARCHIVE_VERSION, ArchiveWriter, open_archive
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError, ConfigError

CHANNELS = ["Bias (V)", "Current (A)", "LI Demod 1 X (A)"]
NPTS = 64


def geometry(ny: int = 4, nx: int = 5, order: str = "raster") -> GridGeometry:
    return GridGeometry(
        centre_x_m=1e-7, centre_y_m=-2e-7, width_m=50e-9, height_m=40e-9, nx=nx, ny=ny, angle_deg=0.0, order=order
    )


def sets() -> list[SetpointSet]:
    return [
        SetpointSet(
            id=0,
            name="sts",
            bias_setpoint_V=-0.01,
            current_setpoint_A=150e-12,
            sweep_start_V=-0.04,
            sweep_end_V=0.04,
            n_points=NPTS,
            lockin_amplitude_Vrms=1e-4,
        ),
        SetpointSet(
            id=1,
            name="low",
            bias_setpoint_V=-0.01,
            current_setpoint_A=50e-12,
            sweep_start_V=0.04,
            sweep_end_V=-0.04,
            n_points=NPTS,
        ),
    ]


def spectrum(iy: int, ix: int) -> np.ndarray:
    """A pixel-unique deterministic spectrum, so completeness can be checked after a kill."""
    return np.arange(len(CHANNELS) * NPTS, dtype=np.float32).reshape(len(CHANNELS), NPTS) + 1000 * iy + ix


def meta(geo: GridGeometry, iy: int, ix: int, set_id: int = 0) -> PixelMeta:
    x, y = geo.pixel_xy(iy, ix)
    return PixelMeta(
        x_m=float(x),
        y_m=float(y),
        setpoint_set_id=set_id,
        t_start=10.0 + ix,
        t_sweep_start=11.0,
        t_sweep_end=12.0,
        t_end=13.0,
        temperature_before_K=0.3,
        temperature_after_K=0.31,
        z_m=1e-10 * ix,
        lockin_status=4,
        lockin_overload=ix == 2,
    )


def test_layout_round_trip(tmp_path: Path) -> None:
    geo = geometry()
    topo = np.random.default_rng(1).normal(size=geo.shape).astype(np.float32) * 1e-10
    truth = {"delta": (np.full(geo.shape, 1.2e-3), "eV"), "alpha": np.full(geo.shape, 0.35)}
    path = tmp_path / "run.h5"
    with ArchiveWriter.create(
        path,
        geometry=geo,
        channel_names=CHANNELS,
        n_points=NPTS,
        setpoint_sets=sets(),
        start_doc={"uid": "run-1", "time": 1.7e9},
        topography=topo,
        ground_truth=truth,
    ) as w:
        w.write_pixel(0, 0, spectrum(0, 0), meta(geo, 0, 0))
        w.write_pixel(2, 3, spectrum(2, 3), meta(geo, 2, 3, set_id=1))
        w.record_failure(1, 1, "nanonis: timeout", code=3, attempts=3)
        w.append_log("pause", reason="temperature")
        w.add_setpoint_set(
            SetpointSet(
                id=7,
                name="new",
                bias_setpoint_V=0.01,
                current_setpoint_A=1e-10,
                sweep_start_V=-0.01,
                sweep_end_V=0.01,
                n_points=NPTS,
            )
        )
        w.write_document("stop", {"exit_status": "success", "time": 1.7e9 + 5})
    with open_archive(path) as r:
        assert r.geometry == geo
        assert r.channel_names == CHANNELS and r.channel_units == ["V", "A", "A"]
        np.testing.assert_allclose(r.bias, np.linspace(-0.04, 0.04, NPTS))
        assert r.run_uid == "run-1"
        measured = np.zeros(geo.shape, bool)
        measured[0, 0] = measured[2, 3] = True
        np.testing.assert_array_equal(r.measured, measured)
        assert r.failed.sum() == 1 and r.failed[1, 1] and r.failure_codes[1, 1] == 3
        assert r.failures[0]["reason"] == "nanonis: timeout" and r.failures[0]["attempts"] == 3
        np.testing.assert_array_equal(r.read_pixels()[2, 3], spectrum(2, 3))
        assert np.isnan(r.read_pixels()[1, 1]).all()
        assert r.read_pixels(channels=["Current (A)"]).shape == (*geo.shape, 1, NPTS)
        assert r.pixel(2, 3) == meta(geo, 2, 3, set_id=1)
        assert r.pixel_meta["setpoint_set_id"][1, 1] == -1
        assert sorted(r.setpoint_sets) == [0, 1, 7] and r.setpoint_sets[1] == sets()[1]
        assert r.documents["start"]["uid"] == "run-1" and r.documents["stop"]["exit_status"] == "success"
        assert r.documents["writer"]["pid"] == os.getpid()
        assert [e["event"] for e in r.log] == ["pause"]
        np.testing.assert_array_equal(r.topography, topo)
        assert r.ground_truth_units == {"alpha": "", "delta": "eV"}
        np.testing.assert_array_equal(r.ground_truth["delta"], truth["delta"][0])
        blocks = list(r.iter_blocks(rows=3))
        assert [b[0] for b in blocks] == [slice(0, 3), slice(3, 4)]
    with h5py.File(path, "r") as f:  # NeXus essentials a generic viewer relies on
        assert f.attrs["stslive_archive_version"] == ARCHIVE_VERSION
        assert f["entry"].attrs["NX_class"] == "NXentry"
        data = f["entry/data"]
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["signal"] == "spectra"
        assert list(data.attrs["axes"]) == ["y", "x", ".", "bias"]
        assert data["spectra"].chunks == (1, 1, 3, NPTS) and data["spectra"].compression is None
        assert f["entry/pixels/x_m"].attrs["units"] == "m"


def test_write_block_and_ground_truth_without_swmr(tmp_path: Path) -> None:
    geo = geometry(ny=6, nx=4)
    path = tmp_path / "sim.h5"
    block = np.random.default_rng(0).normal(size=(6, 4, 3, NPTS)).astype(np.float32)
    with ArchiveWriter.create(
        path, geometry=geo, channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}, swmr=False
    ) as w:
        w.write_block(
            slice(0, 3),
            slice(None),
            block[:3],
            {"setpoint_set_id": 0, "t_start": 1.0, "t_sweep_start": 1.0, "t_sweep_end": 2.0, "t_end": 2.0},
        )
        with pytest.raises(ArchiveError, match="required"):
            w.write_block(slice(3, 6), slice(None), block[3:], {"setpoint_set_id": 0})
        w.write_ground_truth({"delta": (np.ones(geo.shape), "eV")})
    with open_archive(path) as r:
        assert r.measured[:3].all() and not r.measured[3:].any()
        np.testing.assert_array_equal(r.read_pixels(slice(0, 3)), block[:3])
        x, _y = geo.pixel_xy(*np.indices(geo.shape))
        np.testing.assert_allclose(r.pixel_meta["x_m"][:3], x[:3])
        assert r.pixel_meta["lockin_status"][0, 0] == 0 and r.ground_truth_units["delta"] == "eV"
        assert len(r.run_uid) == 36  # a uuid4 when the start document has none


def test_ground_truth_refused_in_swmr_mode(tmp_path: Path) -> None:
    with ArchiveWriter.create(
        tmp_path / "a.h5",
        geometry=geometry(),
        channel_names=CHANNELS,
        n_points=NPTS,
        setpoint_sets=sets(),
        start_doc={},
    ) as w:
        with pytest.raises(ArchiveError, match="SWMR"):
            w.write_ground_truth({"a": np.zeros(3)})
        with pytest.raises(ArchiveError, match="unknown"):
            w.write_pixel(0, 0, spectrum(0, 0), meta(geometry(), 0, 0, set_id=5))
        with pytest.raises(ArchiveError, match="outside"):
            w.write_pixel(4, 0, spectrum(0, 0), meta(geometry(), 0, 0))


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.h5"
    ArchiveWriter.create(
        good, geometry=geometry(), channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}
    ).close()
    with pytest.raises(ArchiveError, match="no such file"):
        open_archive(tmp_path / "absent.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b'Grid dim="2 x 2"\r\n' * 10)
    with pytest.raises(ArchiveError, match="not an HDF5 file"):
        open_archive(garbage)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ArchiveError, match="not an stslive archive"):
        open_archive(other)
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["stslive_archive_version"] = ARCHIVE_VERSION + 1
    with pytest.raises(ArchiveError, match=f"version {ARCHIVE_VERSION + 1}"):
        open_archive(newer)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_archive(truncated)
    incomplete = tmp_path / "incomplete.h5"
    incomplete.write_bytes(good.read_bytes())
    with h5py.File(incomplete, "r+") as f:
        del f["entry/measured"]
    with pytest.raises(ArchiveError, match="missing"):
        open_archive(incomplete)


def test_measured_flag_is_written_after_data_and_a_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard for pixel atomicity: data, flush, measured flag, flush - in this order."""
    w = ArchiveWriter.create(
        tmp_path / "a.h5",
        geometry=geometry(),
        channel_names=CHANNELS,
        n_points=NPTS,
        setpoint_sets=sets(),
        start_doc={},
    )
    calls: list[str] = []
    for name, sink in w._sinks.items():
        monkeypatch.setattr(sink, "write", lambda *a, _n=name, _w=sink.write: (calls.append(_n), _w(*a))[1])
    real_flush = w._f.flush
    monkeypatch.setattr(w._f, "flush", lambda: (calls.append("flush"), real_flush())[1])
    w.write_pixel(1, 2, spectrum(1, 2), meta(geometry(), 1, 2))
    assert calls[-2:] == ["measured", "flush"] and calls[-3] == "flush"
    assert set(calls[:-3]) == set(w._sinks) - {"measured"}
    w.close()


def test_first_unmeasured_follows_the_visit_order(tmp_path: Path) -> None:
    geo = geometry(ny=3, nx=3, order="serpentine")
    with ArchiveWriter.create(
        tmp_path / "a.h5", geometry=geo, channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}
    ) as w:
        for iy, ix in geo.visit_order()[:4]:
            w.write_pixel(int(iy), int(ix), spectrum(iy, ix), meta(geo, iy, ix))
        assert w.first_unmeasured() == (1, 1)
        assert w.first_unmeasured("raster") == (1, 0)


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_archive import geometry, meta, sets, spectrum, CHANNELS, NPTS
    from stslive.acquisition.formats.archive import ArchiveWriter
    path, mode, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    geo = geometry(ny=6, nx=5)
    if mode == "create":
        w = ArchiveWriter.create(path, geometry=geo, channel_names=CHANNELS, n_points=NPTS,
                                 setpoint_sets=sets(), start_doc={{"uid": "swmr"}})
    else:
        print("opening", flush=True)  # the resume start-up begins now (kill tests time from here)
        w = ArchiveWriter.open_for_resume(path)
    print("ready", flush=True)
    start = w.first_unmeasured()
    order = [tuple(p) for p in geo.visit_order()]
    for iy, ix in order[order.index(start):] if start else []:
        w.write_pixel(int(iy), int(ix), spectrum(iy, ix), meta(geo, iy, ix))
        time.sleep(delay)
    w.close()
""")


def _start_writer(tmp_path: Path, path: Path, mode: str, delay: float) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, str(delay)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if mode == "resume":
        assert line == "opening"
        line = proc.stdout.readline().strip()
    assert line == "ready"
    return proc


def _assert_complete(path: Path) -> np.ndarray:
    with open_archive(path, swmr=True) as r:
        measured = r.measured
        data = r.read_pixels()
    for iy, ix in np.argwhere(measured):
        np.testing.assert_array_equal(data[iy, ix], spectrum(iy, ix))
    return measured


def test_swmr_reader_sees_pixels_while_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    proc = _start_writer(tmp_path, path, "create", 0.02)
    seen = []
    with open_archive(path, swmr=True) as r:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            r.refresh()
            m = r.measured
            seen.append(int(m.sum()))
            for iy, ix in np.argwhere(m):  # every pixel a reader sees as measured is complete
                np.testing.assert_array_equal(
                    r.read_pixels(slice(iy, iy + 1), slice(ix, ix + 1))[0, 0], spectrum(iy, ix)
                )
            time.sleep(0.05)
    assert proc.wait(timeout=30) == 0
    assert len(set(seen)) >= 3 and seen == sorted(seen), seen
    assert _assert_complete(path).all()


def test_kill_and_resume_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """SIGKILL the writer at random moments; each resume continues at the first unmeasured pixel."""
    rng = np.random.default_rng(7)
    path = tmp_path / "killed.h5"
    proc = _start_writer(tmp_path, path, "create", 0.005)
    for _ in range(3):
        time.sleep(float(rng.uniform(0.01, 0.05)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        measured = _assert_complete(path)
        geo = geometry(ny=6, nx=5)
        flat = measured[tuple(geo.visit_order().T)]
        done = int(flat.sum())
        assert flat[:done].all() and not flat[done:].any()  # a prefix of the visit order, no holes
        assert _h5status.status_flags(path) != 0  # the killed writer left its flags behind
        proc = _start_writer(tmp_path, path, "resume", 0.005)
    assert proc.wait(timeout=30) == 0
    assert _assert_complete(path).all()
    with open_archive(path) as r:
        assert sum(e["event"] == "resume" for e in r.log) == 3


def test_resume_refuses_while_the_writer_lives(tmp_path: Path) -> None:
    path = tmp_path / "busy.h5"
    proc = _start_writer(tmp_path, path, "create", 0.05)
    try:
        with pytest.raises(ArchiveError, match="still be writing"):
            ArchiveWriter.open_for_resume(path)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_lookup3_matches_hdf5_superblock_checksum(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = np.arange(3)
    head = path.read_bytes()[:48]
    assert _h5status.lookup3(head[:44]) == int.from_bytes(head[44:48], "little")
    assert _h5status.clear_status_flags(path) is False


def test_setpoint_set_validation_names_the_key() -> None:
    good = sets()[0].to_dict()
    assert SetpointSet.from_dict(good) == sets()[0]
    with pytest.raises(ConfigError, match="n_points"):
        SetpointSet.from_dict({**good, "n_points": 1})
    with pytest.raises(ConfigError, match="current_setpoint_A"):
        SetpointSet.from_dict({**good, "current_setpoint_A": 150.0})
    with pytest.raises(ConfigError, match="sweep_end_V"):
        SetpointSet.from_dict({**good, "sweep_end_V": good["sweep_start_V"]})
    with pytest.raises(ConfigError, match="unknown key"):
        SetpointSet.from_dict({**good, "colour": "red"})
    with pytest.raises(ConfigError, match="missing key"):
        SetpointSet.from_dict({k: v for k, v in good.items() if k != "name"})
    with pytest.raises(ConfigError, match="order"):
        GridGeometry.from_dict({**geometry().to_dict(), "order": "spiral"})
    assert json.loads(json.dumps(meta(geometry(), 0, 1).to_dict()))["z_m"] == pytest.approx(1e-10)


def _kill_plain_read_write_opener(path: Path) -> None:
    """Leave the state of a writer killed after its read-write open, before SWMR was switched on."""
    code = (
        f"import h5py, time; f = h5py.File({str(path)!r}, 'r+', libver='latest'); "
        "print('open', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        with pytest.raises(ArchiveError, match="open for writing"):  # alive: its HDF5 file lock says so
            ArchiveWriter.open_for_resume(path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_resume_after_a_kill_between_read_write_open_and_swmr_switch(tmp_path: Path) -> None:
    """Regression: write flag without SWMR flag used to block every later open."""
    geo = geometry()
    path = tmp_path / "window.h5"
    with ArchiveWriter.create(
        path, geometry=geo, channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}
    ) as w:
        w.write_pixel(0, 0, spectrum(0, 0), meta(geo, 0, 0))
    _kill_plain_read_write_opener(path)
    assert _h5status.status_flags(path) == _h5status.WRITE_ACCESS
    with pytest.raises(ArchiveError, match="resume it"):
        open_archive(path, swmr=True)
    with ArchiveWriter.open_for_resume(path) as w:
        assert _h5status.status_flags(path) & _h5status.SWMR_WRITE_ACCESS  # SWMR from the open on
        w.write_pixel(0, 1, spectrum(0, 1), meta(geo, 0, 1))
        with open_archive(path, swmr=True) as r:  # a reader while the resumed writer holds the file
            assert r.measured[0, :2].all()
    assert _assert_complete(path).sum() == 2


def test_kill_during_resume_start_up_at_seeded_moments(tmp_path: Path) -> None:
    """SIGKILL within the first milliseconds of open_for_resume; the next resume and readers still open."""
    rng = np.random.default_rng(11)
    path = tmp_path / "startup.h5"
    proc = _start_writer(tmp_path, path, "create", 0.002)
    time.sleep(0.02)
    script = tmp_path / "writer.py"
    for _ in range(8):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        _assert_complete(path)  # an SWMR reader opens whatever the kill left
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), "resume", "0.002"], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "opening"
        time.sleep(float(rng.uniform(0.0, 0.012)))  # open_for_resume takes a few ms
    proc.kill()
    proc.wait(timeout=10)
    proc = _start_writer(tmp_path, path, "resume", 0.0)
    assert proc.wait(timeout=30) == 0
    assert _assert_complete(path).all()


def test_rewrite_pixel_replaces_and_logs_the_previous_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    geo = geometry()
    path = tmp_path / "re.h5"
    w = ArchiveWriter.create(
        path, geometry=geo, channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}
    )
    w.write_pixel(1, 1, spectrum(1, 1), meta(geo, 1, 1))
    with pytest.raises(ArchiveError, match="rewrite_pixel"):
        w.write_pixel(1, 1, spectrum(1, 1), meta(geo, 1, 1))
    calls: list[str] = []
    for name in ("measured", "spectra"):
        sink = w._sinks[name]
        monkeypatch.setattr(
            sink,
            "write",
            lambda iy, ix, v, _n=name, _w=sink.write: (
                calls.append(f"{_n}={v.flat[0]!r}" if _n == "measured" else _n),
                _w(iy, ix, v),
            )[1],
        )
    real_flush = w._f.flush
    monkeypatch.setattr(w._f, "flush", lambda: (calls.append("flush"), real_flush())[1])
    new_meta = dataclasses.replace(meta(geo, 1, 1, set_id=1), t_start=99.0)
    w.rewrite_pixel(1, 1, spectrum(1, 1) + 5, new_meta, reason="tip change flagged")
    # flag cleared and flushed before any new data, set only after the data are flushed
    assert calls == ["measured=np.False_", "flush", "spectra", "flush", "measured=np.True_", "flush"]
    w.close()
    with open_archive(path) as r:
        assert r.measured[1, 1] and r.measured.sum() == 1
        np.testing.assert_array_equal(r.read_pixels()[1, 1], spectrum(1, 1) + 5)
        assert r.pixel(1, 1).t_start == 99.0 and r.pixel(1, 1).setpoint_set_id == 1
        (rec,) = [e for e in r.log if e["event"] == "pixel_replaced"]
    assert (rec["iy"], rec["ix"], rec["reason"]) == (1, 1, "tip change flagged")
    assert rec["previous"]["t_start"] == meta(geo, 1, 1).t_start and rec["previous"]["setpoint_set_id"] == 0


def test_failed_pixel_measured_later_is_no_longer_failed(tmp_path: Path) -> None:
    geo = geometry()
    path = tmp_path / "rec.h5"
    with ArchiveWriter.create(
        path, geometry=geo, channel_names=CHANNELS, n_points=NPTS, setpoint_sets=sets(), start_doc={}
    ) as w:
        w.record_failure(2, 2, "InstrumentTimeout: nanonis", code=1)
        assert w.failed[2, 2]
        w.write_pixel(2, 2, spectrum(2, 2), meta(geo, 2, 2))
        assert not w.failed[2, 2] and w.measured[2, 2]
        with pytest.raises(ArchiveError, match="is measured"):
            w.record_failure(2, 2, "InstrumentTimeout: nanonis", code=1)
    with open_archive(path) as r:
        assert r.measured[2, 2] and not r.failed.any() and r.failure_codes[2, 2] == 0
        assert [f["code"] for f in r.failures] == [1]  # the history stays
        assert [e["failure_code"] for e in r.log if e["event"] == "pixel_recovered"] == [1]


REWRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_archive import geometry, meta, sets, spectrum
    from stslive.acquisition.formats.archive import ArchiveWriter
    import dataclasses
    w = ArchiveWriter.open_for_resume(sys.argv[1])
    geo = geometry(ny=6, nx=5)
    print("ready", flush=True)
    k = 1
    while True:  # version k of every pixel: spectrum + k * 1e5, t_start = 100 + k
        for iy, ix in geo.visit_order():
            m = dataclasses.replace(meta(geo, iy, ix), t_start=100.0 + k)
            w.rewrite_pixel(int(iy), int(ix), spectrum(iy, ix) + k * 1e5, m, reason=f"pass {{k}}")
        k += 1
""")


def test_kill_during_rewrites_leaves_every_measured_pixel_whole(tmp_path: Path) -> None:
    """SIGKILL while pixels are being re-measured: a measured pixel is one version, data and metadata."""
    rng = np.random.default_rng(5)
    path = tmp_path / "rewrite.h5"
    assert _start_writer(tmp_path, path, "create", 0.0).wait(timeout=30) == 0
    script = tmp_path / "rewriter.py"
    script.write_text(REWRITER.format(tests=str(Path(__file__).parent)))
    geo = geometry(ny=6, nx=5)
    base = np.stack([spectrum(iy, ix) for iy, ix in np.ndindex(*geo.shape)]).reshape(*geo.shape, len(CHANNELS), NPTS)
    unmeasured_seen = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.02, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with open_archive(path, swmr=True) as r:
            measured, data, t_start = r.measured, r.read_pixels(), r.pixel_meta["t_start"]
        unmeasured_seen += int((~measured).sum())
        for iy, ix in np.argwhere(measured):
            offset = data[iy, ix] - base[iy, ix]
            k = round(float(offset.flat[0]) / 1e5)
            assert np.all(offset == np.float32(k * 1e5)), f"pixel ({iy}, {ix}) mixes versions"
            assert t_start[iy, ix] == (100.0 + k if k else meta(geo, iy, ix).t_start)
    assert unmeasured_seen <= 4  # at most the pixel in progress per kill
