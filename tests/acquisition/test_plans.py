"""Plans: visiting order, positions against the archive geometry, line cuts, point lists."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.plans import grid_plan, line_plan, point_plan, progressive_order
from stslive.drivers.errors import ConfigError


def test_serpentine_grid_order_and_positions() -> None:
    geo = GridGeometry(centre_x_m=1e-9, centre_y_m=0.0, width_m=4e-9, height_m=2e-9, nx=4, ny=2, order="serpentine")
    plan = grid_plan(geo)
    cells = [(p.iy, p.ix) for p in plan]
    assert cells == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2), (1, 1), (1, 0)]
    p = plan[4]
    assert p.index == 4 and math.isclose(p.x_m, 1e-9 + 1.5e-9) and math.isclose(p.y_m, 0.5e-9)
    assert plan.at(1, 0).index == 7


def test_rotated_grid_keeps_pitch() -> None:
    plan = grid_plan(GridGeometry(centre_x_m=0, centre_y_m=0, width_m=3e-9, height_m=3e-9, nx=3, ny=3, angle_deg=30))
    a, b = plan[0], plan[1]
    assert math.isclose(math.hypot(b.x_m - a.x_m, b.y_m - a.y_m), 1e-9)
    assert math.isclose(math.degrees(math.atan2(b.y_m - a.y_m, b.x_m - a.x_m)), 30)


def test_line_cut_of_twelve_spectra_three_nm_apart_matches_its_geometry() -> None:
    plan = line_plan((0.0, 0.0), (33e-9 * math.cos(0.3), 33e-9 * math.sin(0.3)), 12)
    assert len(plan) == 12 and plan.geometry.shape == (1, 12)
    xy = np.array([(p.x_m, p.y_m) for p in plan])
    assert np.allclose(np.hypot(*np.diff(xy, axis=0).T), 3e-9)
    gx, gy = plan.geometry.pixel_xy(np.zeros(12, int), np.arange(12))
    assert np.allclose(gx, xy[:, 0], atol=1e-18) and np.allclose(gy, xy[:, 1], atol=1e-18)


def test_point_list_and_remaining() -> None:
    plan = point_plan([0.0, 2e-9, 1e-9], [0.0, 0.0, 5e-9])
    assert [(p.ix, p.x_m) for p in plan] == [(0, 0.0), (1, 2e-9), (2, 1e-9)]
    done = np.array([[True, False, False]])
    assert [p.index for p in plan.remaining(done)] == [1, 2]
    single = point_plan([1e-9], [1e-9])
    assert single.geometry.width_m > 0


def test_bad_plans_raise() -> None:
    with pytest.raises(ConfigError):
        line_plan((0, 0), (0, 0), 5)
    with pytest.raises(ConfigError):
        point_plan([0.0], [0.0, 1.0])
    with pytest.raises(ConfigError, match="not part"):
        point_plan([0.0], [0.0]).at(0, 3)


@pytest.mark.parametrize(("nx", "ny"), [(1, 1), (9, 1), (1, 6), (7, 5), (64, 48), (300, 250)])
def test_progressive_order_measures_every_pixel_once(nx: int, ny: int) -> None:
    order = progressive_order(nx, ny)
    assert order.shape == (nx * ny, 2) and order.dtype == np.int64
    assert np.array_equal(np.sort(order[:, 0] * nx + order[:, 1]), np.arange(nx * ny))


def test_progressive_order_refines_a_coarse_lattice_level_by_level() -> None:
    order = progressive_order(300, 250)  # shorter side 250: coarsest spacing 32 (a quarter is 62)
    done = 0
    for spacing in (32, 16, 8, 4, 2, 1):
        lattice = {(iy, ix) for iy in range(0, 250, spacing) for ix in range(0, 300, spacing)}
        level = order[done : len(lattice)]
        # after each level the measured pixels are exactly the lattice of its spacing: the whole frame
        assert {tuple(p) for p in order[: len(lattice)].tolist()} == lattice
        # serpentine within the level: rows top to bottom, one lattice step along a row, every other row reversed
        rows = np.unique(level[:, 0])
        assert np.all(np.diff(level[:, 0]) >= 0)
        for k, row in enumerate(rows):
            cols = level[level[:, 0] == row, 1]
            steps = np.diff(cols)
            assert np.all(steps < 0) if k % 2 else np.all(steps > 0)
            assert np.all(np.abs(steps) <= 2 * spacing)  # one step, two where the coarser level holds the pixel
        done = len(lattice)
    assert done == 300 * 250


@pytest.mark.parametrize(("nx", "ny"), [(0, 5), (5, -1), (2.5, 4), (True, 3)])
def test_progressive_order_refuses_a_bad_grid(nx: object, ny: object) -> None:
    with pytest.raises(ConfigError, match="nx, ny >= 1"):
        progressive_order(nx, ny)  # type: ignore[arg-type]
