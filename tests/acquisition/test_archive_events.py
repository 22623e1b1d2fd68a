"""The one path from an archive to run-stream documents: ArchiveReader.events(order) and start_document()."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.formats.archive import EVENT_ORDERS, ArchiveWriter, open_archive
from stslive.acquisition.formats.documents import StartDoc, decode, encode
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError

CHANNELS = ("Bias (V)", "Current (A)", "LI Demod 1 X (A)")
T0 = 1.7e9


def _set(sid: int) -> SetpointSet:
    return SetpointSet(
        id=sid,
        name=f"set{sid}",
        bias_setpoint_V=-0.01,
        current_setpoint_A=1e-10,
        sweep_start_V=-0.02,
        sweep_end_V=0.02,
        n_points=5,
    )


# (iy, ix) -> (t_start, t_end) offsets from T0; written in this (serpentine-like) order
WRITTEN = {
    (0, 0): (0.0, 1.0),
    (0, 1): (1.0, 2.0),
    (1, 1): (2.0, 3.0),
    (1, 0): (3.0, math.nan),  # the end was not recorded: its start (3.0) orders it
    (2, 0): (5.0, 7.0),
    (2, 1): (5.0, 7.0),  # the same end as (2, 0): visiting order decides
    (0, 2): (math.nan, math.nan),  # no time at all: last
}


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=3e-9, nx=3, ny=3, order="serpentine")
    path = tmp_path / "run.h5"
    start = {
        "uid": "u" * 32,
        "time": T0 - 10,
        "instruments": {"stm": "Nanonis (simulated)"},
        "metadata": {"config": {"limit_K": math.inf}, "sample": "NbN"},
        "plan": "not a start field",
    }
    with ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=CHANNELS,
        n_points=5,
        setpoint_sets=[_set(1), _set(0)],
        start_doc=start,
        swmr=False,
    ) as w:
        for k, ((iy, ix), (t_start, t_end)) in enumerate(WRITTEN.items()):
            meta = PixelMeta(
                x_m=float(ix),
                y_m=float(iy),
                setpoint_set_id=k % 2,
                t_start=T0 + t_start,
                t_sweep_start=T0 + t_start,
                t_sweep_end=T0 + t_start,
                t_end=T0 + t_end,
                z_m=1e-10 * k,
            )
            w.write_pixel(iy, ix, np.full((3, 5), 10 * iy + ix, np.float32), meta)
    return path


def test_event_orders(archive: Path) -> None:
    with open_archive(archive) as ar:
        assert ar.event_pixels("row-major") == sorted(WRITTEN)
        # serpentine: row 1 runs right to left
        assert ar.event_pixels("visit") == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (2, 0), (2, 1)]
        assert ar.event_pixels("end-time") == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1), (0, 2)]
        assert ar.event_pixels("row-major", pixels=[(2, 1), (0, 0), (2, 2), (9, 9), (-1, 0)]) == [(0, 0), (2, 1)]
        with pytest.raises(ArchiveError, match="order"):
            ar.event_pixels("random")  # type: ignore[arg-type]
        for order in EVENT_ORDERS:
            events = list(ar.events(order, descriptor_uid="d" * 32))
            assert [(e.iy, e.ix) for e in events] == ar.event_pixels(order)
            for e in events:
                assert (e.seq, e.run_uid, e.descriptor_uid) == (-1, "u" * 32, "d" * 32)
                np.testing.assert_array_equal(e.arrays["spectra"], np.full((3, 5), 10 * e.iy + e.ix, np.float32))
                assert not e.arrays["spectra"].flags.writeable
                assert (e.x_m, e.y_m) == (float(e.ix), float(e.iy))


def test_events_carry_the_pixel_metadata(archive: Path) -> None:
    with open_archive(archive) as ar:
        events = {(e.iy, e.ix): e for e in ar.events(array_name="data")}
    assert events[(1, 0)].timestamps == {"t_start": T0 + 3.0, "t_sweep_start": T0 + 3.0, "t_sweep_end": T0 + 3.0}
    assert events[(0, 2)].timestamps == {}
    assert events[(0, 1)].setpoint_set_id == 1 and events[(0, 1)].z_m == pytest.approx(1e-10)
    assert events[(0, 0)].temperature_before_K is None  # NaN in the archive: not read
    assert set(events[(0, 0)].arrays) == {"data"}
    assert encode(events[(2, 1)])[0] == b"stslive.run.event"  # a rebuilt event can be sent as it is


def test_start_document_from_the_archive(archive: Path) -> None:
    with open_archive(archive) as ar:
        start = ar.start_document()
        assert start.run_uid == start.uid == "u" * 32 and start.seq == 0 and start.time == T0 - 10
        assert start.grid == ar.geometry.to_dict() and start.grid["order"] == "serpentine"
        assert start.channel_names == CHANNELS and start.channel_units == ("V", "A", "A")
        assert start.n_points == 5
        assert [s["id"] for s in start.setpoint_sets] == [0, 1]  # sorted by id
        assert start.setpoint_sets[1] == _set(1).to_dict()
        assert start.instruments == {"stm": "Nanonis (simulated)"}
        assert start.software_version == ar.software_version != ""
        assert start.metadata == {"config": {"limit_K": None}, "sample": "NbN"}  # inf -> null: sendable
    frames = encode(start)
    back = decode(frames)
    assert isinstance(back, StartDoc) and back.to_dict() == start.to_dict()


def test_start_document_of_an_archive_without_one(tmp_path: Path) -> None:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=1e-9, height_m=1e-9, nx=1, ny=1)
    path = tmp_path / "bare.h5"
    with ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=CHANNELS[:2],
        n_points=5,
        setpoint_sets=[_set(0)],
        start_doc={"uid": "b" * 32, "time": T0, "instruments": ["not", "a", "map"], "metadata": 3},
        swmr=False,
    ):
        pass
    with open_archive(path) as ar:
        start = ar.start_document()
        assert list(ar.events("end-time")) == []  # nothing measured
    assert start.instruments == {} and start.metadata == {} and start.time == T0


# A writer in its own process (SWMR), measuring pixel (iy, ix) as measurement k on each stdin line
# "iy ix k": spectra all k, t_start T0 + k, t_end T0 + k + 0.5 (a re-measure when already measured).
LIVE_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from test_archive_events import CHANNELS, T0, _set
    from stslive.acquisition.formats.archive import ArchiveWriter
    from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=2e-9, nx=3, ny=2)
    w = ArchiveWriter.create(sys.argv[1], geometry=geometry, channel_names=CHANNELS, n_points=5,
                             setpoint_sets=[_set(0)], start_doc={{"uid": "w" * 32}})
    print("ready", flush=True)
    for line in sys.stdin:
        iy, ix, k = map(int, line.split())
        meta = PixelMeta(x_m=float(ix), y_m=float(iy), setpoint_set_id=0, t_start=T0 + k,
                         t_sweep_start=T0 + k, t_sweep_end=T0 + k + 0.5, t_end=T0 + k + 0.5)
        w.rewrite_pixel(iy, ix, np.full((3, 5), k, np.float32), meta, reason="test")
        print("done", flush=True)
    w.close()
""")


@pytest.mark.parametrize("between", ["event_pixels", "read_pixels"], ids=["before-flags", "before-spectra"])
def test_regression_events_never_pair_spectra_with_another_writes_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, between: str
) -> None:
    """Read while the writer writes (SWMR): a pixel written between the reader's reads is left out.

    ``events`` read every pixel's metadata, then the flags, then the spectra: a pixel re-measured
    in between came out with the new spectra and the old times, one measured for the first time
    with fill values (set-point set -1, no times). The soak's restarted analyser, back-filling
    from the archive the resumed scan was writing, rejected such a pixel as bad input.
    """
    script = tmp_path / "writer.py"
    script.write_text(LIVE_WRITER.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "live.h5"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    writer_in, writer_out = proc.stdin, proc.stdout

    def measure(iy: int, ix: int, k: int) -> None:  # returns once the writer has flushed the pixel
        writer_in.write(f"{iy} {ix} {k}\n")
        writer_in.flush()
        assert writer_out.readline().strip() == "done"

    try:
        assert writer_out.readline().strip() == "ready"
        for iy, ix, k in [(0, 0, 1), (0, 1, 2), (1, 0, 3)]:
            measure(iy, ix, k)
        with open_archive(path, swmr=True) as reader:
            method = getattr(reader, between)
            calls = []

            def writer_acts_first(*args: object, **kwargs: object) -> object:
                if not calls:  # once: the metadata are read by now, the flags or spectra not yet
                    measure(0, 1, 4)  # a re-measure
                    measure(1, 1, 5)  # a first measurement
                calls.append(args)
                return method(*args, **kwargs)

            monkeypatch.setattr(reader, between, writer_acts_first)
            events = list(reader.events("row-major"))
        assert calls
        for e in events:  # every event: spectra and times of one measurement
            k = float(e.arrays["spectra"][0, 0])
            assert (e.setpoint_set_id, e.timestamps.get("t_end")) == (0, T0 + k + 0.5), (e.iy, e.ix)
        assert [(e.iy, e.ix) for e in events] == [(0, 0), (1, 0)]  # the two written meanwhile: left out
        with open_archive(path, swmr=True) as reader:  # read again: there, whole
            again = {(e.iy, e.ix): float(e.arrays["spectra"][0, 0]) for e in reader.events("row-major")}
        assert again == {(0, 0): 1.0, (0, 1): 4.0, (1, 0): 3.0, (1, 1): 5.0}
    finally:
        writer_in.close()
        assert proc.wait(timeout=30) == 0
