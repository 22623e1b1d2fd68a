"""``stslive soak`` short version: 24 x 16 pixels, one kill of each kind, every check passing.

The soak runs as a user would run it (a subprocess); its checks are then shown to fail on
doctored copies of its files, so a passing soak means something.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from stslive.acquisition.jobs.soak import Soak, SoakSettings, fault_entries
from stslive.acquisition.jobs.soak_watch import MemoryLog
from stslive.mocks.faults import FaultPlan

NX, NY, POINTS = 24, 16, 401
pytestmark = pytest.mark.timeout(240)


def stslive(*args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stslive.acquisition.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("soak") / "run"
    done = stslive(
        "soak",
        "--grid",
        f"{NX}x{NY}",
        "--points",
        str(POINTS),
        "--seed",
        "3",
        "--kills",
        "1",
        "--analyser-kills",
        "1",
        "--viewer-kills",
        "1",
        "--out",
        str(out),
        "--duration-hint",
        "60",
    )
    assert done.returncode == 0, f"soak failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = json.loads(done.stdout)
    assert summary == json.loads((out / "soak.json").read_text())
    return out, summary


def test_short_soak_passes_every_check(soaked: tuple[Path, dict]) -> None:
    out, summary = soaked
    assert summary["ok"]
    procs = summary["processes"]
    assert procs["scan_killed"] == 1 and procs["scan_started"] == 2
    assert procs["analyser_killed"] == 1 and procs["analyser_started"] == 2
    assert procs["viewer_killed"] == 1 and procs["viewer_started"] == 2 and procs["viewer_alive_at_end"] == 1
    assert procs["actions_not_done"] == 0 and procs["control_remeasure"] == 1
    assert procs["control_pause"] == procs["control_resume"] == 1
    px = summary["pixels"]
    assert px["total"] == NX * NY == px["measured"] + px["failed"]
    assert px["both"] == 0 and px["neither"] == 0 and px["resumes"] == 1
    assert not px["failed_without_reason"] and not px["stream_events_twice"]
    # the planned triple faults failed pixels (one may since be recovered by the remeasure)
    failures = sum(px["failure_reasons"].values())
    assert failures == summary["faults_planned"]["pixels_to_fail"]
    assert set(px["failure_reasons"]) <= {"ControllerError", "InstrumentTimeout", "InstrumentConnectionError"}
    assert px["failed"] + len(px["pixel_recovered"]) == failures
    assert len(px["pixel_replaced"]) == 1 and px["pixel_replaced"][0] in px["remeasure_requested"]
    maps = summary["maps"]
    assert maps["ok"] and maps["measured_equal"] and maps["valid_pixels"] > 0.5 * NX * NY
    assert all(maps[name]["mismatched_pixels"] == 0 for name in ("delta_eV", "alpha", "b", "valid", "reason"))
    for role in ("lab", "scan", "analyser"):
        peaks = summary["rss_MB"]["peak"][role]
        assert set(peaks) == {"start", "middle", "end"} and all(10 < v < 4000 for v in peaks.values())
    assert summary["rss_MB"]["bounded"]
    assert (out / "run.analysis.h5").is_file() and (out / "offline" / "maps.h5").is_file()


def _soak_on(out: Path) -> Soak:
    soak = Soak(SoakSettings(nx=NX, ny=NY, out=out, points=POINTS, kills=1), log=lambda _: None)
    soak.watch = SimpleNamespace(events=Counter(), failed=Counter(), kinds=Counter(), malformed=0)  # type: ignore[assignment]
    return soak


def test_pixel_check_catches_a_pixel_both_measured_and_failed(soaked: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = soaked
    shutil.copy(out / "run.h5", tmp_path / "run.h5")
    assert _soak_on(tmp_path)._check_pixels()["ok"]
    with h5py.File(tmp_path / "run.h5", "r+") as f:
        iy, ix = np.argwhere(f["entry/measured"][()])[0]
        f["entry/failed"][iy, ix] = True
    result = _soak_on(tmp_path)._check_pixels()
    assert result["both"] == 1 and not result["ok"]


def test_map_check_catches_a_live_map_that_differs_from_offline(soaked: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = soaked
    shutil.copy(out / "run.h5", tmp_path / "run.h5")
    shutil.copy(out / "run.analysis.h5", tmp_path / "run.analysis.h5")
    from stslive.live.results_io import load_maps_h5, save_maps_h5

    model = load_maps_h5(tmp_path / "run.analysis.h5")
    iy, ix = np.argwhere(model.maps["valid"])[0]
    model.maps["delta_eV"][iy, ix] *= 1.01
    save_maps_h5(model, tmp_path / "run.analysis.h5")
    result = _soak_on(tmp_path)._check_maps()
    assert not result["ok"] and result["delta_eV"]["mismatched_pixels"] == 1
    assert result["delta_eV"]["max_rel_diff"] == pytest.approx(0.01, rel=1e-3)


def test_map_check_fails_without_an_analysis_file(soaked: tuple[Path, dict], tmp_path: Path) -> None:
    shutil.copy(soaked[0] / "run.h5", tmp_path / "run.h5")
    result = _soak_on(tmp_path)._check_maps()
    assert not result["ok"] and "run.analysis.h5" in result["error"]


def test_fault_schedule_is_seeded_valid_and_fails_the_planned_pixels(tmp_path: Path) -> None:
    entries, failing = fault_entries(NX * NY, seed=5, timeout_s=0.5)
    assert entries == fault_entries(NX * NY, seed=5, timeout_s=0.5)[0]
    assert entries != fault_entries(NX * NY, seed=6, timeout_s=0.5)[0]
    from stslive.acquisition.jobs.supervisor import toml_text

    path = tmp_path / "faults.toml"
    path.write_text(toml_text({"fault": entries}))
    plan = FaultPlan.from_toml(path)
    assert len(plan.faults) == len(entries)
    assert {f.kind.value for f in plan.faults} == {"connection_drop", "no_reply", "delay", "error_reply"}
    calls = sorted(e["at_call"] for e in entries)
    runs = np.split(calls, np.nonzero(np.diff(calls) != 1)[0] + 1)
    assert sum(len(r) == 3 for r in runs) == failing == 2 and all(len(r) in (1, 3) for r in runs)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    done = stslive("soak", "--grid", "4x3", "--out", str(tmp_path / "x"), timeout=60)
    assert done.returncode == 1 and "too small" in done.stderr and "Traceback" not in done.stderr
    done = stslive("soak", "--grid", "24x16", "--points", "50", "--out", str(tmp_path / "y"), timeout=60)
    assert done.returncode == 1 and "--points" in done.stderr


def test_memory_check_tells_growth_from_noise() -> None:
    memory = MemoryLog()
    for role in ("lab", "scan", "analyser"):
        memory.peaks[role] = {"start": 300.0, "middle": 320.0, "end": 330.0}
    assert memory.bounded() and memory.growth()["scan"] == 30.0
    memory.peaks["analyser"]["end"] = 300.0 + 160.0  # > max(100 MB, 50 %) more than at the start
    assert not memory.bounded()
    del memory.peaks["lab"]["end"]  # a role never sampled at the end cannot be judged
    memory.peaks["analyser"]["end"] = 330.0
    assert not memory.bounded()
