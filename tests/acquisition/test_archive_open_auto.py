"""open_archive(swmr="auto"): plain open for finished files, SWMR only while a writer holds the file.

Regression: a truncated archive opened with SWMR could stall inside HDF5 for minutes (the SWMR
reader retries failed metadata reads with back-off); offline readers now open it plainly and fail
at once.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from stslive.acquisition.formats.archive import ArchiveWriter, open_archive
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.drivers.errors import ArchiveError


def _create(path: str) -> ArchiveWriter:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=4e-9, height_m=4e-9, nx=4, ny=4)
    sset = SetpointSet(
        id=0,
        name="s",
        bias_setpoint_V=-0.01,
        current_setpoint_A=150e-12,
        sweep_start_V=-0.04,
        sweep_end_V=0.04,
        n_points=11,
        settle_s=0.0,
        integration_s=0.0,
        lockin_frequency_Hz=973.0,
        lockin_amplitude_Vrms=0.05,
        lockin_time_constant_s=0.001,
        lockin_sensitivity_V=0.5,
        feedback_hold=True,
    )
    return ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=["Bias (V)", "Current (A)"],
        n_points=11,
        setpoint_sets=[sset],
        start_doc={"uid": "run-auto"},
    )


def _hold_open(path: str, ready) -> None:  # child process: a writer that keeps the file open
    writer = _create(path)
    ready.set()
    time.sleep(60)
    writer.close()


def test_auto_reads_a_file_a_live_writer_holds(tmp_path: Path):
    path = str(tmp_path / "live.h5")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_open, args=(path, ready))
    proc.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ArchiveError, match="already open"):
            open_archive(path)
        with open_archive(path, swmr="auto") as reader:
            assert not reader.measured.any()
    finally:
        proc.kill()
        proc.join()
    with open_archive(path, swmr="auto") as reader:  # writer killed: flags left, still readable
        assert reader.measured.shape == (4, 4)


def test_regression_truncated_archive_fails_at_once_with_auto(tmp_path: Path):
    path = tmp_path / "whole.h5"
    _create(str(path)).close()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:3000])
    t0 = time.monotonic()
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_archive(cut, swmr="auto")
    assert time.monotonic() - t0 < 10.0  # not the minutes an SWMR open could stall


@pytest.mark.parametrize("flags, fix_checksum", [(0x01, True), (0x05, False), (0x04, False)])
def test_regression_damaged_open_flags_fail_at_once_with_auto(tmp_path: Path, flags: int, fix_checksum: bool):
    """Fuzzing hung here: flipped superblock flags read as "already open", and the SWMR fallback
    then retried the damaged metadata inside HDF5 for minutes."""
    from stslive.acquisition.formats import _h5status

    path = tmp_path / "flipped.h5"
    _create(str(path)).close()
    raw = bytearray(path.read_bytes())
    raw[11] = flags  # the v2/v3 superblock's file consistency flags
    if fix_checksum:
        sum_at = 12 + 4 * raw[9]
        raw[sum_at : sum_at + 4] = _h5status.lookup3(bytes(raw[:sum_at])).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    t0 = time.monotonic()
    with pytest.raises(ArchiveError, match="corrupt"):
        open_archive(path, swmr="auto")
    assert time.monotonic() - t0 < 10.0
