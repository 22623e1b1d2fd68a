"""The pipelined engine: a pixel is archived and published during the next pixel's sweep.

Against the simulated lab's TCP servers (in-process, port 0): re-measures of the pixel still
waiting to be recorded and of the cell the plan visits next, order of archive and stream, the
overhead statistics, and ``stslive bench scan --compare`` with ``stslive mock-lab`` as a child.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stslive.acquisition.engine import OVERHEAD_PHASES, ScanEngine
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.scan import run_scan
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 5, 4, 101
pytestmark = pytest.mark.timeout(120)


def _run(lab: MockLab, path: Path, on_ready: Any = None, **sections: Any) -> ScanEngine:
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources, nx=lab.nx, ny=lab.ny, pixel_m=lab.pixel_m, n_points=POINTS, **sections
        )
        return run_scan(config, path, announce=False, on_ready=on_ready)


def test_pixels_are_recorded_during_the_next_sweep_in_plan_order(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=2, ny=NY, nx=NX, speed=0)
    seen: list[tuple[int, int, int]] = []  # (cell being swept, measured cells in the archive so far)

    def on_ready(engine: ScanEngine) -> None:
        measure = engine.procedure.measure

        def spy(point: Any, sp: Any, **kwargs: Any) -> Any:
            seen.append((point.iy, point.ix, int(engine._measured.sum())))
            return measure(point, sp, **kwargs)

        engine.procedure.measure = spy  # type: ignore[method-assign]

    engine = _run(lab, tmp_path / "run.h5", on_ready)
    # when pixel k starts, k - 1 pixels are archived: the one before it is recorded during its sweep
    assert [n for _, _, n in seen] == [max(0, k - 1) for k in range(NX * NY)]
    assert engine.stats.measured == NX * NY and engine.machine.state == "done"
    assert len(engine.stats.overhead_s) == len(engine.stats.work_s) == NX * NY
    assert all(len(engine.stats.phase_s[name]) == NX * NY for name in OVERHEAD_PHASES)
    assert all(o > 0 for o in engine.stats.overhead_s)
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.measured.all()
        t_start = reader.pixel_meta["t_start"]
    assert np.all(np.diff(t_start.ravel()) > 0)  # archived in plan order, each once


def test_remeasure_of_the_waiting_pixel_and_of_the_next_plan_cell(tmp_path: Path) -> None:
    """Queued right after (0, 2) was measured, while it waits to be recorded: (0, 2) is replaced
    (old record logged) and (0, 3), measured out of turn, is not measured again by the plan."""
    lab = MockLab.from_seed(seed=4, ny=NY, nx=NX, speed=0)
    order: list[tuple[int, int]] = []

    def on_ready(engine: ScanEngine) -> None:
        measure = engine.procedure.measure

        def spy(point: Any, sp: Any, **kwargs: Any) -> Any:
            result = measure(point, sp, **kwargs)
            order.append((point.iy, point.ix))
            if len(order) == 3:
                engine.machine.execute("remeasure", {"pixels": [[0, 2], [0, 3]], "reason": "test"})
            return result

        engine.procedure.measure = spy  # type: ignore[method-assign]

    engine = _run(lab, tmp_path / "run.h5", on_ready)
    assert order[:5] == [(0, 0), (0, 1), (0, 2), (0, 2), (0, 3)]
    assert order.count((0, 2)) == 2 and order.count((0, 3)) == 1 and len(order) == NX * NY + 1
    assert engine.stats.measured == NX * NY + 1 and engine.machine.state == "done"
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.measured.all() and not reader.failed.any()
        replaced = [r for r in reader.log if r["event"] == "pixel_replaced"]
        t_02 = reader.pixel(0, 2).t_start
    assert [(r["iy"], r["ix"], r["reason"]) for r in replaced] == [(0, 2, "test")]
    assert t_02 > replaced[0]["previous"]["t_start"]  # the archive holds the second spectrum


def test_failed_pixel_after_a_measured_one_keeps_both_records_in_order(tmp_path: Path) -> None:
    from stslive.mocks.faults import FaultPlan

    # the 4th sweep fails twice (no retry left): the waiting pixel (0, 2) is recorded before the failure
    faults = FaultPlan.from_list(
        [{"kind": "error_reply", "instrument": "nanonis", "command": "BiasSpectr.Start", "at_call": n} for n in (4, 5)]
    )
    lab = MockLab.from_seed(seed=5, ny=NY, nx=NX, speed=0, faults=faults)
    engine = _run(lab, tmp_path / "run.h5", run={"retries": 1})
    assert engine.stats.failed == 1 and engine.stats.measured == NX * NY - 1
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.failed[0, 3] and int(reader.measured.sum()) == NX * NY - 1
        assert reader.measured[0, 2] and reader.pixel(0, 2).t_start < reader.pixel(0, 4).t_start


def test_bench_scan_compare_reports_both_lab_placements(capsys: pytest.CaptureFixture[str]) -> None:
    from stslive.acquisition.cli import main

    assert main(["bench", "scan", "--grid", "3x2", "--points", "51", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "mock lab process" in out and "mock lab in-process" in out, out
    for match in re.finditer(r"all: p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms", out):
        assert 0 < float(match[1]) <= float(match[2])
    assert len(re.findall(r"all: p50", out)) == 2
    assert main(["bench", "scan", "--repeat", "0"]) == 1  # ConfigError, printed without a traceback
