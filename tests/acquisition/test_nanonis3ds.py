"""Nanonis .3ds import/export and the format-independent open_spectra view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.nanonis3ds import export_archive, open_3ds, write_3ds
from stslive.acquisition.formats.recording import open_spectra
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.errors import AnalysisError, ArchiveError, FileFormatError, NanonisFileError

KPFM = "nanonis-grid-kpfm-20x20.3ds"
ZSPEC = "nanonis-grid-zspec.3ds"


def test_kpfm_grid_as_documented(shared_data: Path) -> None:
    with open_3ds(shared_data / KPFM) as g:
        assert g.shape == (20, 20) and g.n_points == 128 and g.sweep_signal == "Bias (V)"
        assert len(g.channel_names) == 10 and "Current (A)" in g.channel_names
        assert g.fixed_parameters == ["Sweep Start", "Sweep End"]
        assert len(g.parameter_names) == 18 and g.experiment_parameters[0] == "X (m)"
        assert g.n_missing == 0 and g.measured.all()
        np.testing.assert_allclose(g.nominal_sweep()[[0, -1]], [0.2, -0.1], rtol=1e-6)
        current = g.channel("Current (A)")
        assert current.shape == (20, 20, 128) and current.dtype == np.float32 and np.isfinite(current).all()
        # the geometry reproduces the X/Y Nanonis recorded at every point
        x, y = g.geometry.pixel_xy(*np.indices(g.shape))
        np.testing.assert_allclose(g.parameter("X (m)"), x, atol=2e-12)
        np.testing.assert_allclose(g.parameter("Y (m)"), y, atol=2e-12)
        assert g.header["Bias Spectroscopy>Z-controller hold"] == "TRUE"


def test_zspec_grid_is_incomplete(shared_data: Path) -> None:
    with open_3ds(shared_data / ZSPEC) as g:
        assert g.shape == (32, 32) and g.n_points == 256 and g.sweep_signal == "Z (m)"
        assert len(g.channel_names) == 16 and "Current [bwd] (A)" in g.channel_names
        assert len(g.parameter_names) == 20
        assert g.n_records == 88 and g.n_missing == 32 * 32 - 88
        assert g.measured.reshape(-1)[:88].all() and not g.measured.reshape(-1)[88:].any()
        z = g.channel("Z (m)")
        # Nanonis itself leaves NaN at the end of some sweeps; unmeasured points are NaN throughout
        assert np.isfinite(z.reshape(-1, 256)[:88, :10]).all() and np.isnan(z.reshape(-1, 256)[88:]).all()
        assert np.isnan(g.parameter("X (m)")[31, 31])
    with open_spectra(shared_data / ZSPEC) as src, pytest.raises(AnalysisError, match="not the bias"):
        src.require_bias_sweep()


def test_cut_files_and_garbage(shared_data: Path, tmp_path: Path) -> None:
    raw = (shared_data / KPFM).read_bytes()
    header_len = raw.index(b":HEADER_END:") + 14
    record = (18 + 10 * 128) * 4
    cut = tmp_path / "cut.3ds"
    cut.write_bytes(raw[: header_len + 45 * record + 100])  # stopped inside record 46
    with open_3ds(cut) as g:
        assert g.n_records == 45 and g.trailing_bytes == 100 and g.n_missing == 400 - 45
        assert np.isnan(g.channel("Current (A)")[2, 5:]).all()
    (tmp_path / "head.3ds").write_bytes(raw[:2000])
    with pytest.raises(NanonisFileError, match="HEADER_END"):
        open_3ds(tmp_path / "head.3ds")
    (tmp_path / "bad.3ds").write_bytes(raw.replace(b"# Parameters (4 byte)=18", b"# Parameters (4 byte)=17"))
    with pytest.raises(NanonisFileError, match="Parameters"):
        open_3ds(tmp_path / "bad.3ds")
    with pytest.raises(NanonisFileError, match="no such file"):
        open_3ds(tmp_path / "absent.3ds")
    with pytest.raises(FileFormatError):
        open_spectra(tmp_path / "head.3ds")


def _geometry() -> GridGeometry:
    return GridGeometry(centre_x_m=5e-9, centre_y_m=-3e-9, width_m=20e-9, height_m=12e-9, nx=5, ny=3, angle_deg=10.0)


def test_write_read_round_trip(tmp_path: Path) -> None:
    geo = _geometry()
    rng = np.random.default_rng(3)
    spectra = rng.normal(size=(3, 5, 2, 32)).astype(np.float32)
    measured = np.ones(geo.shape, bool)
    measured[2, 3:] = False
    start = rng.uniform(-0.05, -0.04, geo.shape)
    path = tmp_path / "out.3ds"
    write_3ds(
        path,
        spectra=spectra,
        channel_names=["Current (A)", "LI Demod 1 X (A)"],
        geometry=geo,
        sweep_start=start,
        sweep_end=0.04,
        n_points=32,
        parameters={"Z (m)": rng.normal(size=geo.shape)},
        measured=measured,
        start_time=1.7e9,
        comment="round\ntrip",
    )
    with open_3ds(path) as g:
        assert g.shape == geo.shape and g.channel_names == ["Current (A)", "LI Demod 1 X (A)"]
        assert g.geometry == geo and g.n_missing == 2
        np.testing.assert_array_equal(g.read_block()[measured], spectra[measured])
        assert np.isnan(g.read_block()[~measured]).all()
        np.testing.assert_allclose(g.parameter("Sweep Start")[measured], start[measured].astype(np.float32))
        assert g.header["Comment"] == "round trip"
    with open_spectra(path) as src:
        assert src.kind == "nanonis3ds" and src.lockin_channel == "LI Demod 1 X (A)" and src.bias_per_pixel
        block = next(src.iter_blocks())
        assert block.bias.shape == (3, 5, 32)
        np.testing.assert_allclose(block.bias[0, 0, [0, -1]], [start[0, 0], 0.04], rtol=1e-6)


def test_archive_export_round_trip(tmp_path: Path) -> None:
    geo = _geometry()
    sset = SetpointSet(
        id=0,
        name="sts",
        bias_setpoint_V=-0.01,
        current_setpoint_A=150e-12,
        sweep_start_V=-0.04,
        sweep_end_V=0.04,
        n_points=32,
        settle_s=0.01,
        integration_s=0.002,
    )
    names = ["Bias (V)", "Current (A)"]
    rng = np.random.default_rng(5)
    data = rng.normal(size=(3, 5, 2, 32)).astype(np.float32)
    path = tmp_path / "run.h5"
    topo = rng.normal(size=geo.shape).astype(np.float32)
    with ArchiveWriter.create(
        path,
        geometry=geo,
        channel_names=names,
        n_points=32,
        setpoint_sets=[sset],
        start_doc={"uid": "r1", "time": 1.7e9},
        topography=topo,
    ) as w:
        for iy, ix in geo.visit_order()[:12]:
            x, y = geo.pixel_xy(iy, ix)
            w.write_pixel(
                int(iy),
                int(ix),
                data[iy, ix],
                PixelMeta(
                    x_m=float(x),
                    y_m=float(y),
                    setpoint_set_id=0,
                    t_start=1.0,
                    t_sweep_start=1.1,
                    t_sweep_end=1.2,
                    t_end=1.3,
                    temperature_before_K=0.3,
                    temperature_after_K=0.3,
                    z_m=1e-10,
                ),
            )
    out = tmp_path / "run.3ds"
    export_archive(path, out, rows_per_block=2)
    with open_3ds(out) as g, open_spectra(path) as src:
        assert g.geometry == geo and g.channel_names == names and g.n_missing == 3
        np.testing.assert_array_equal(g.measured, src.measured)
        np.testing.assert_array_equal(g.read_block()[src.measured], data[src.measured])
        np.testing.assert_allclose(
            g.parameter("X (m)")[src.measured], geo.pixel_xy(*np.indices(geo.shape))[0][src.measured], rtol=1e-6
        )
        np.testing.assert_allclose(g.nominal_sweep(), sset.bias_axis, atol=1e-8)
        assert g.header["stslive>Run uid"] == "r1"
        assert src.kind == "stslive" and src.current_channel == "Current (A)" and src.lockin_channel is None
        assert not src.bias_per_pixel and src.is_bias_sweep
        np.testing.assert_array_equal(src.topography, topo)
        blocks = list(src.iter_blocks(max_bytes=5 * 32 * 4))
        assert [b.rows for b in blocks] == [slice(0, 1), slice(1, 2), slice(2, 3)]
        np.testing.assert_array_equal(blocks[1].current[0], data[1, :, 1])
    with pytest.raises(AnalysisError, match="lock-in channel .* not found"):
        open_spectra(path, lockin="LI Demod 1 X (A)")
    with pytest.raises(ArchiveError):
        export_archive(out, tmp_path / "again.3ds")  # a .3ds is not an archive
