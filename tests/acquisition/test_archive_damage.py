"""Damaged archives: opening is bounded, a truncated file says so and counts only what it holds.

Regressions: ``head -c 100000 film.h5 > tiny.h5`` then an SWMR open retried inside HDF5 for over
ten minutes; a truncated archive read as "3072 of 3072 measured"; a file left by a killed SWMR
writer and then damaged stalled every SWMR reader.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.archive import ArchiveWriter, open_archive
from stslive.acquisition.formats.archive.opener import swmr_writer_flagged
from stslive.acquisition.formats.recording import open_spectra
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.drivers.errors import ArchiveError, StsliveError
from stslive.mocks.film import FilmParams, make_film

#: generous wall-clock bound of any open of a damaged file, s (the stalls were minutes)
BOUND_S = 10.0
NY, NX, NPTS = 8, 8, 64


@pytest.fixture(scope="module")
def film_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated film written in one go (its flags and metadata land at the end of the file)."""
    path = tmp_path_factory.mktemp("damage") / "film.h5"
    write_film_archive(make_film(FilmParams(ny=48, nx=64, seed=2, n_points=201)), path)
    return path


def _sset() -> SetpointSet:
    return SetpointSet(
        id=0,
        name="s",
        bias_setpoint_V=0.01,
        current_setpoint_A=1e-10,
        sweep_start_V=-0.01,
        sweep_end_V=0.01,
        n_points=NPTS,
    )


def _pixel(writer: ArchiveWriter, k: int) -> None:
    iy, ix = divmod(k, NX)
    spectrum = np.full((1, NPTS), k, dtype=np.float32)
    writer.write_pixel(iy, ix, spectrum, PixelMeta(0.0, 0.0, 0, 1.0 + k, 1.0 + k, 1.0 + k, 1.0 + k))


def _scan(path: str, n: int, kill: bool) -> None:
    """A scan that writes ``n`` pixels one by one (SWMR, as a live run), then is killed or closes."""
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=8e-9, height_m=8e-9, nx=NX, ny=NY)
    writer = ArchiveWriter.create(path, geometry=geometry, channel_names=["Current (A)"], n_points=NPTS,
                                  setpoint_sets=[_sset()], start_doc={"uid": "damage"})  # fmt: skip
    for k in range(n):
        _pixel(writer, k)
    if kill:
        os._exit(0)  # the flags of a live SWMR writer stay in the superblock
    writer.close()


def _timed_open(path: Path, **kwargs: object) -> tuple[object, float]:
    t0 = time.monotonic()
    try:
        reader = open_archive(path, **kwargs)  # type: ignore[arg-type]
    except StsliveError as exc:
        return exc, time.monotonic() - t0
    return reader, time.monotonic() - t0


@pytest.mark.parametrize("size", [100_000, 3_000_000, -60_000])
@pytest.mark.parametrize("swmr", [False, True, "auto"])
def test_truncated_archive_opens_at_once_and_says_so(film_h5: Path, tmp_path: Path, size: int, swmr: object) -> None:
    raw = film_h5.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[:size])
    reader, elapsed = _timed_open(cut, swmr=swmr)
    assert elapsed < BOUND_S
    assert not isinstance(reader, Exception), reader
    with reader:  # type: ignore[attr-defined]
        health = reader.health  # type: ignore[attr-defined]
        assert health.truncated and "TRUNCATED" in health.describe()
        measured = reader.measured  # type: ignore[attr-defined]
        assert health.readable is not None and (measured <= health.readable).all()
        if size > 0:
            assert 0 < measured.sum() < measured.size  # not "3072 of 3072"
        else:
            assert measured.all()  # only metadata at the end was cut
        # what is read is what was written: NaN outside, the film's values inside
        spectra = reader.read_pixels()  # type: ignore[attr-defined]
        assert np.isnan(spectra[~measured]).all() and np.isfinite(spectra[measured][..., 1, :]).all()
    with open_archive(film_h5) as whole:
        np.testing.assert_array_equal(spectra[measured], whole.read_pixels()[measured])


def test_a_cut_that_leaves_nothing_is_a_clear_error(film_h5: Path, tmp_path: Path) -> None:
    cut = tmp_path / "head.h5"
    cut.write_bytes(film_h5.read_bytes()[:2000])
    error, elapsed = _timed_open(cut, swmr=True)
    assert elapsed < BOUND_S and isinstance(error, ArchiveError)
    assert "TRUNCATED" in str(error) and "truncated or corrupt" in str(error)


def test_truncated_live_scan_keeps_its_flags(tmp_path: Path) -> None:
    """A scan writes each pixel's flag right after its spectrum: a cut keeps the flagged pixels
    whose spectra it holds, and the text records up to the cut."""
    path = tmp_path / "scan.h5"
    _scan(str(path), 40, kill=False)
    raw = path.read_bytes()
    with open_archive(path) as whole:
        layout = whole.read_pixels()
    for size in range(len(raw) - 30_000, len(raw), 3_000):
        cut = tmp_path / "c.h5"
        cut.write_bytes(raw[:size])
        reader, elapsed = _timed_open(cut, swmr=True)
        assert elapsed < BOUND_S
        if isinstance(reader, Exception):
            assert isinstance(reader, ArchiveError) and "truncated" in str(reader)
            continue
        with reader:  # type: ignore[attr-defined]
            m = reader.measured  # type: ignore[attr-defined]
            assert m.sum() <= 40 and reader.health.recorded_measured <= 40  # type: ignore[attr-defined]
            spectra = reader.read_pixels()  # type: ignore[attr-defined]
            np.testing.assert_array_equal(spectra[m], layout[m])
            assert isinstance(reader.log, list) and isinstance(reader.setpoint_sets, dict)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(6))
def test_bit_flips_fail_or_read_within_the_bound(film_h5: Path, tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = bytearray(film_h5.read_bytes())
    for at in rng.integers(64, len(raw), size=40):
        raw[at] ^= 1 << int(rng.integers(0, 8))
    bad = tmp_path / "flipped.h5"
    bad.write_bytes(bytes(raw))
    for swmr in (False, True):
        t0 = time.monotonic()
        try:
            with open_archive(bad, swmr=swmr) as reader:
                _ = reader.measured, reader.pixel_meta, reader.documents, reader.read_pixels(slice(0, 4))
        except StsliveError as exc:
            assert str(exc)
        assert time.monotonic() - t0 < BOUND_S


def test_killed_swmr_writer_is_read_plainly_and_a_damaged_one_fails_in_time(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    proc = mp.get_context("spawn").Process(target=_scan, args=(str(path), 20, True))
    proc.start()
    proc.join(60)
    assert _h5status.superblock(path).flags & _h5status.SWMR_WRITE_ACCESS  # type: ignore[union-attr]
    with open_archive(path, swmr=True) as reader:  # its metadata read plainly first, then followed
        assert reader.measured.sum() == 20
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    for at in rng.integers(200, len(raw), size=20):
        raw[at] ^= 0xFF
    bad = tmp_path / "killed-flipped.h5"
    bad.write_bytes(bytes(raw))
    error, elapsed = _timed_open(bad, swmr=True)
    assert elapsed < BOUND_S, "an SWMR open of a damaged file nobody writes must not retry for minutes"
    assert isinstance(error, ArchiveError) or hasattr(error, "measured")
    if hasattr(error, "close"):
        error.close()  # type: ignore[attr-defined]


def test_swmr_writer_flag_tells_a_held_file_from_a_closed_one(tmp_path: Path) -> None:
    killed, closed = tmp_path / "killed.h5", tmp_path / "closed.h5"
    proc = mp.get_context("spawn").Process(target=_scan, args=(str(killed), 2, True))
    proc.start()
    proc.join(60)
    _scan(str(closed), 2, kill=False)
    assert swmr_writer_flagged(killed)  # a killed writer's flags stay: the viewer asks writer_alive next
    assert not swmr_writer_flagged(closed)
    assert not swmr_writer_flagged(tmp_path / "absent.h5")


def _live(path: str, ready: object, go: object) -> None:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=8e-9, height_m=8e-9, nx=NX, ny=NY)
    writer = ArchiveWriter.create(path, geometry=geometry, channel_names=["Current (A)"], n_points=NPTS,
                                  setpoint_sets=[_sset()], start_doc={"uid": "live"})  # fmt: skip
    _pixel(writer, 0)
    ready.set()  # type: ignore[attr-defined]
    go.wait(60)  # type: ignore[attr-defined]
    _pixel(writer, 1)
    ready.clear()  # type: ignore[attr-defined]
    time.sleep(60)
    writer.close()


def test_live_writer_is_still_followed_with_swmr(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_live, args=(str(path), ready, go))
    proc.start()
    try:
        assert ready.wait(60)
        with open_archive(path, swmr=True) as reader:
            assert reader._f.swmr_mode and reader.measured.sum() == 1
            go.set()
            deadline = time.monotonic() + 30
            while ready.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            reader.refresh()
            assert reader.measured.sum() == 2  # appended after the open, seen after refresh
    finally:
        proc.kill()
        proc.join()


def test_view_and_analyse_of_tiny_h5_end_in_time(film_h5: Path, tmp_path: Path) -> None:
    """The reported case: ``head -c 100000 film.h5 > tiny.h5`` read by the command line."""
    tiny = tmp_path / "tiny.h5"
    tiny.write_bytes(film_h5.read_bytes()[:100_000])
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stslive.acquisition.cli", "analyse", str(tiny), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in done.stderr
    assert "TRUNCATED" in done.stderr  # analysed as far as it goes, and said so
    with open_spectra(tiny) as source:
        assert "TRUNCATED" in source.damage and 0 < source.measured.sum() < 48 * 64
