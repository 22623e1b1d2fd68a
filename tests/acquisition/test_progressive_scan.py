"""A scan in progressive order: the plan, the settle time that grows with the move, alternating sets,
re-measures, and the same spectra as a raster scan of the same film."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stslive.acquisition.config import RunConfig
from stslive.acquisition.engine import ScanEngine
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.plans import plan_from_config, progressive_order
from stslive.acquisition.scan import run_scan
from stslive.mocks.film import FilmParams, make_film
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 12, 10, 101
pytestmark = pytest.mark.timeout(120)


def config_for(lab: MockLab, servers: LabServers, *, order: str, **sections: Any) -> RunConfig:
    config = mock_lab_config(servers.resources, nx=lab.nx, ny=lab.ny, pixel_m=lab.pixel_m, n_points=POINTS, **sections)
    doc = config.to_dict()
    doc["grid"]["order"] = order
    return RunConfig.from_dict(doc)


def test_the_plan_is_the_progressive_permutation_and_the_archive_knows_it(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=1, ny=NY, nx=NX, speed=0)
    with LabServers.start(lab) as servers:
        config = config_for(lab, servers, order="progressive")
        plan = plan_from_config(config)
        cells = np.array([(p.iy, p.ix) for p in plan])
        assert np.array_equal(cells, progressive_order(NX, NY))
        run_scan(config, tmp_path / "run.h5", announce=False)
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.geometry.order == "progressive" and reader.measured.all()
        visit = reader.event_pixels("visit")
        # the order the archive calls the visiting order is the order the pixels were measured in
        assert visit == [tuple(c) for c in cells.tolist()] == reader.event_pixels("end-time")


def test_settle_grows_with_the_move_and_sets_alternate_along_the_visiting_order(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=2, ny=NY, nx=NX, speed=0)
    base, per_nm = 1e-4, 2e-5
    with LabServers.start(lab) as servers:
        config = mock_lab_config(servers.resources, nx=NX, ny=NY, pixel_m=lab.pixel_m, n_points=POINTS)
        doc = config.to_dict()
        doc["grid"]["order"] = "progressive"
        doc["run"].update(setpoint_mode="alternate", move_settle_s=base, move_settle_per_nm_s=per_nm)
        doc["setpoint_set"].append({**doc["setpoint_set"][0], "id": 1, "name": "the other set-point"})
        doc["setpoint_set"][1]["current_setpoint_A"] = 100e-12
        config = RunConfig.from_dict(doc)
        engine = run_scan(config, tmp_path / "run.h5", announce=False)
    plan = plan_from_config(config)
    xy = np.array([(p.x_m, p.y_m) for p in plan])
    step_nm = np.hypot(*np.diff(xy, axis=0).T) * 1e9
    first_nm = math.hypot(NX, NY) * lab.pixel_m * 1e9 / 2  # from where the tip was: half the diagonal
    expected = base + per_nm * np.concatenate([[first_nm], step_nm])
    np.testing.assert_allclose(engine.stats.settle_s, expected, rtol=1e-9)
    # the jump back to the top of the frame at the start of a finer level waits longest
    extra = np.asarray(engine.stats.settle_s[1:]) - base
    assert extra.max() > 8 * float(np.median(extra))
    with open_archive(tmp_path / "run.h5") as reader:
        sets = reader.pixel_meta["setpoint_set_id"]
    cells = progressive_order(NX, NY)
    assert np.array_equal(sets[cells[:, 0], cells[:, 1]], np.arange(NX * NY) % 2)
    for set_id in (0, 1):  # each set covers the whole frame (its opposite quarters), not a strip
        mine = sets == set_id
        assert mine[: NY // 2, : NX // 2].any() and mine[NY // 2 :, NX // 2 :].any()


def test_a_remeasure_in_a_progressive_run_replaces_that_pixel_only(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=3, ny=NY, nx=NX, speed=1)
    with LabServers.start(lab) as servers:
        config = config_for(lab, servers, order="progressive")
        doc = config.to_dict()
        doc["setpoint_set"][0]["integration_s"] = 2e-4  # 101 points: 20 ms a pixel
        config = RunConfig.from_dict(doc)
        holder: dict[str, ScanEngine] = {}

        def remeasure_once_running() -> None:
            deadline = time.monotonic() + 30
            while "engine" not in holder or holder["engine"].stats.measured < 10:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            holder["engine"].machine.execute("remeasure", {"pixels": [[0, 0]], "reason": "a tip change?"})

        helper = threading.Thread(target=remeasure_once_running, daemon=True)
        helper.start()
        run_scan(config, tmp_path / "run.h5", announce=False, on_ready=lambda e: holder.setdefault("engine", e))
        helper.join(5)
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.measured.all()
        replaced = [(r["iy"], r["ix"], r["reason"]) for r in reader.log if r["event"] == "pixel_replaced"]
    assert replaced == [(0, 0, "a tip change?")]


def test_progressive_and_raster_scans_of_a_noiseless_film_hold_the_same_spectra(tmp_path: Path) -> None:
    film = make_film(FilmParams(ny=NY, nx=NX, seed=9, n_points=POINTS, current_noise_A=0.0, lockin_noise_A=0.0))
    archives = {}
    for order in ("raster", "progressive"):
        lab = MockLab(film, speed=0, seed=9)
        with LabServers.start(lab) as servers:
            archives[order] = tmp_path / f"{order}.h5"
            run_scan(config_for(lab, servers, order=order), archives[order], announce=False)
    with open_archive(archives["raster"]) as raster, open_archive(archives["progressive"]) as progressive:
        # the same film, the same spectrum at each pixel: a permuted acquisition, the same maps
        np.testing.assert_array_equal(raster.read_pixels(), progressive.read_pixels())
    # and the same analysis gives the same maps (the calibration sample is the same set of spectra here)
    from stslive.live.kernels import KernelOptions
    from stslive.live.pipeline import analyse_input

    maps = {order: analyse_input(path, options=KernelOptions()).maps for order, path in archives.items()}
    for name in ("delta_eV", "alpha", "valid_delta", "valid_alpha", "reason"):
        np.testing.assert_array_equal(maps["raster"][name], maps["progressive"][name], err_msg=name)
    assert maps["raster"]["valid_alpha"].mean() > 0.9  # 101 points: alpha only (a 0.8 mV step refuses Delta)
