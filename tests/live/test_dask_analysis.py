"""The Dask path of ``stslive analyse`` gives the single-process maps, on a 2-worker LocalCluster."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import dask.config
import h5py
import numpy as np
import pytest
from distributed import Client, LocalCluster

from stslive.acquisition.cli import main
from stslive.acquisition.formats.nanonis3ds import write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions
from stslive.live.offline.dask import (
    FIELDS,
    _file_info,
    analyse_inputs_dask,
    analysis_array,
    dask_client,
    require_dask,
    rows_per_block,
)
from stslive.live.pipeline import analyse_source, calibrate_source, open_input
from stslive.live.results import MAP_SPECS, ResultsModel
from stslive.mocks.film import FilmParams, make_film

NY, NX = 14, 18
ROW_BYTES = NX * 1601 * 4 * 2  # current + lock-in, float32
#: compared maps: every map the analysis fills ("time" is when a result was stored)
MAPS = tuple(name for name in MAP_SPECS if name not in ("time",))


#: How long a loaded machine may take to start the workers or to connect a second client, s.
#: The first CLI test failed once on the module's former fixed 10 s connect timeout under load.
UP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """ONE 2-worker cluster for the whole file (its start-up is seconds on a loaded machine)."""
    with (
        dask.config.set({"distributed.comm.timeouts.connect": f"{UP_TIMEOUT_S}s"}),
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster, timeout=UP_TIMEOUT_S) as c,
    ):
        c.wait_for_workers(2, timeout=UP_TIMEOUT_S)
        yield c


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("dask")
    paths = []
    for k, temperature in enumerate((0.3, 1.2)):
        path = root / f"run{k}.h5"
        write_film_archive(make_film(FilmParams(ny=NY, nx=NX, seed=10 + k, temperature_K=temperature)), path)
        paths.append(path)
    return paths


def _single(path: Path, options: KernelOptions, max_block_bytes: int) -> tuple[ResultsModel, KernelOptions]:
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)
        return analyse_source(source, options=options, max_block_bytes=max_block_bytes), options


def _assert_same_maps(a: ResultsModel, b: ResultsModel) -> None:
    for name in MAPS:
        np.testing.assert_array_equal(a.maps[name], b.maps[name], err_msg=name)


def test_maps_bit_identical_with_the_same_row_blocks(client: Client, archives: list[Path]) -> None:
    """4-row blocks: 4 tasks per map, the same batches as the single path -> identical maps."""
    block = 4 * ROW_BYTES
    assert rows_per_block(NX, 1601, 2, max_block_bytes=block) == 4
    runs = {
        run.path: run
        for run in analyse_inputs_dask(archives, client=client, options=KernelOptions(), max_block_bytes=block)
    }
    assert set(runs) == set(archives)
    for path in archives:
        single, options = _single(path, KernelOptions(), block)
        assert runs[path].options.dynes_width_eV == options.dynes_width_eV  # the same calibration rule
        assert runs[path].options.threads == 1
        _assert_same_maps(single, runs[path].model)
        assert single.maps["valid"].sum() > 0.9 * NY * NX


def test_other_blocks_differ_by_float32_rounding_only(client: Client, archives: list[Path]) -> None:
    """2-row tasks against the single path's one 64 MB block: BLAS summation order, nothing else."""
    (run,) = analyse_inputs_dask(archives[:1], client=client, options=KernelOptions(), max_block_bytes=2 * ROW_BYTES)
    single, _ = _single(archives[0], KernelOptions(), 64 * 2**20)
    for name in ("valid", "reason", "alpha", "alpha_pos", "alpha_neg", "b"):
        np.testing.assert_array_equal(single.maps[name], run.model.maps[name], err_msg=name)
    np.testing.assert_allclose(run.model.maps["delta_eV"], single.maps["delta_eV"], rtol=1e-5, atol=0)


def test_per_pixel_sweeps_of_a_3ds(client: Client, tmp_path: Path) -> None:
    """A .3ds whose second half of rows sweeps another range: the per-pixel sweep array path."""
    film = make_film(FilmParams(ny=8, nx=10, seed=3, bias_start_V=0.04, bias_end_V=-0.04))
    start = np.full((8, 10), 0.04, np.float32)
    end = np.full((8, 10), -0.04, np.float32)
    start[4:], end[4:] = 0.039, -0.039  # another set-point set: the sweep differs per pixel
    path = tmp_path / "grid.3ds"
    write_3ds(
        path,
        spectra=np.concatenate(
            [np.stack([b.current_A, b.lockin_x_A], axis=2) for _, b in film.iter_blocks(rows_per_block=4)]
        ),
        channel_names=["Current (A)", "LI Demod 1 X (A)"],
        sweep_start=start,
        sweep_end=end,
        geometry=GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=10e-9, height_m=8e-9, nx=10, ny=8),
        n_points=film.params.n_points,
    )
    block = 3 * 10 * 1601 * 4 * 2
    (run,) = analyse_inputs_dask([path], client=client, options=KernelOptions(), max_block_bytes=block)
    single, _ = _single(path, KernelOptions(), block)
    _assert_same_maps(single, run.model)
    assert single.maps["valid"].sum() >= 70


def test_cli_on_an_existing_cluster_writes_the_single_path_files(
    client: Client, archives: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One input (the files cost ~10 s a run here); several inputs are covered by test_campaign."""
    path = archives[1]
    assert main(["analyse", str(path), "--out", str(tmp_path / "sp"), "--examples", "1"]) == 0, capsys.readouterr().err
    client.wait_for_workers(2, timeout=UP_TIMEOUT_S)  # both workers up before the CLI connects
    # the CLI's Client takes Dask's connect timeout (None -> config): generous here, under load
    with dask.config.set({"distributed.comm.timeouts.connect": f"{UP_TIMEOUT_S}s"}):
        code = main(
            ["analyse", str(path), "--out", str(tmp_path / "dk"), "--examples", "1", "--dask", client.scheduler.address]
        )
    assert code == 0, f"stslive analyse --dask {client.scheduler.address} failed: {capsys.readouterr().err}"
    sp, dk = tmp_path / "sp", tmp_path / "dk"
    with h5py.File(sp / "maps.h5") as a, h5py.File(dk / "maps.h5") as b:
        for name in ("delta", "alpha", "valid", "reason"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (sp, dk))
    differing = {k for k in ra if ra[k] != rb[k]}
    assert differing == {"elapsed_s", "inputs"}, differing
    assert ra["inputs"]["options"] == {**rb["inputs"]["options"], "threads": None}
    assert sorted(p.name for p in sp.iterdir()) == sorted(p.name for p in dk.iterdir())


def test_an_input_path_after_dask_is_a_clear_error(
    archives: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["analyse", "--out", str(tmp_path / "o"), "--dask", str(archives[0]), str(archives[1])])
    assert code != 0
    assert "not a scheduler address" in capsys.readouterr().err


def test_missing_dask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match=r"stslive\[dask\]"):
        require_dask()


def test_one_fused_task_per_row_block(archives: list[Path]) -> None:
    """Read and kernels are one task: the graph holds exactly one task per block, no spectra arrays."""
    single, options = _single(archives[0], KernelOptions(threads=1), 4 * ROW_BYTES)  # calibrated width
    info = _file_info(archives[0], options)
    result = analysis_array(info, options=options, max_block_bytes=4 * ROW_BYTES)
    assert result.chunks == ((4, 4, 4, 2), (NX,), (len(FIELDS),))
    assert len(dict(result.__dask_graph__())) == 4
    block = result.blocks[3].compute(scheduler="sync")  # rows 12-13, read and analysed in one call
    np.testing.assert_array_equal(block[..., FIELDS.index("alpha")], single.maps["alpha"][12:14])


def test_unreachable_scheduler_names_address_and_timeout() -> None:
    with pytest.raises(ConfigError, match=r"tcp://127\.0\.0\.1:1 within 0\.5s.*TIMEOUTS__CONNECT"):
        with dask_client("tcp://127.0.0.1:1", connect_timeout="0.5s"):
            pass
