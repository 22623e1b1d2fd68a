"""One rule for input recordings: HDF5 signature -> stslive archive, anything else -> Nanonis .3ds."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from stslive.acquisition.formats.archive import ArchiveReader, ArchiveWriter
from stslive.acquisition.formats.nanonis3ds import NanonisGrid
from stslive.acquisition.formats.recording import is_other_hdf5, open_recording, open_spectra, recording_kind
from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.drivers.errors import ArchiveError, FileFormatError, NanonisFileError


def _archive(path: Path) -> Path:
    sset = SetpointSet(
        id=0,
        name="s",
        bias_setpoint_V=-0.01,
        current_setpoint_A=1e-10,
        sweep_start_V=-0.02,
        sweep_end_V=0.02,
        n_points=4,
    )
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=2e-9, height_m=1e-9, nx=2, ny=1)
    with ArchiveWriter.create(
        path,
        geometry=geometry,
        channel_names=("Bias (V)", "Current (A)"),
        n_points=4,
        setpoint_sets=[sset],
        start_doc={},
        swmr=False,
    ):
        pass
    return path


def test_kind_is_told_by_content_not_by_name(tmp_path: Path, shared_data: Path) -> None:
    archive = _archive(tmp_path / "run.3ds")  # an archive, whatever its name says
    grid = tmp_path / "grid.h5"
    shutil.copy(shared_data / "nanonis-sim-grid-5x6.3ds", grid)  # a grid named like an archive
    assert (recording_kind(archive), recording_kind(grid)) == ("stslive", "nanonis3ds")
    with open_recording(archive) as rec:
        assert isinstance(rec, ArchiveReader)
    with open_recording(grid) as rec:
        assert isinstance(rec, NanonisGrid) and rec.shape == (6, 5)
    with open_spectra(archive) as source:
        assert source.kind == "stslive"
    with open_spectra(grid) as source:
        assert source.kind == "nanonis3ds"


def test_what_is_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="no such file"):
        open_recording(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"neither HDF5 nor a Nanonis header")
    with pytest.raises(NanonisFileError):
        open_recording(junk)
    maps = tmp_path / "maps.h5"
    with h5py.File(maps, "w") as f:
        f["delta"] = np.zeros((2, 2))
    with pytest.raises(ArchiveError, match="not an stslive archive"):
        open_recording(maps)


def test_other_hdf5_files_are_told_apart(tmp_path: Path, shared_data: Path) -> None:
    maps = tmp_path / "maps.h5"
    with h5py.File(maps, "w") as f:
        f["delta"] = np.zeros((2, 2))
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert is_other_hdf5(maps)
    assert not is_other_hdf5(_archive(tmp_path / "run.h5"))
    assert not is_other_hdf5(damaged)  # too damaged to tell: an input, whose analysis reports the damage
    assert not is_other_hdf5(shared_data / "nanonis-sim-grid-5x6.3ds")


def test_viewer_archive_spectra_refuse_a_grid_with_a_hint(shared_data: Path) -> None:
    from stslive.live.viewer.archive_source import ArchiveSpectra

    with pytest.raises(FileFormatError, match="stslive analyse"):
        ArchiveSpectra(shared_data / "nanonis-sim-grid-5x6.3ds")
