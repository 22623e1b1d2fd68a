"""Campaign summary (several inputs of ``stslive analyse``): run conditions, table, figures, output folders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.nanonis3ds import write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions
from stslive.live.offline.analyse import analyse_inputs, expand_inputs, output_dirs, summary_line
from stslive.live.offline.campaign import run_conditions, write_campaign
from stslive.live.theory import TheoryConstants
from stslive.mocks.film import FilmParams, make_film

NY, NX = 10, 12


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two archives at 0.3 and 1.5 K."""
    root = tmp_path_factory.mktemp("campaign") / "runs"
    root.mkdir()
    for k, temperature in enumerate((0.3, 1.5)):
        write_film_archive(
            make_film(FilmParams(ny=NY, nx=NX, seed=k, temperature_K=temperature)), root / f"T{temperature}.h5"
        )
    return root


def _with_field(path: Path, field_T: float) -> None:
    """Record a magnetic field in the archive's start document (as a scan config would)."""
    with ArchiveWriter.open_for_resume(path, swmr=False) as writer:
        start = {"time": 0.0, "conditions": {"magnetic_field_T": field_T}}
        writer.write_document("start", start)


def test_conditions_of_archives(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    write_film_archive(make_film(FilmParams(ny=4, nx=4, seed=1, temperature_K=0.8)), path)
    c = run_conditions(path)
    assert c["temperature_K"] == pytest.approx(0.8) and c["temperature_source"].startswith("pixels")
    assert c["field_T"] is None and c["field_source"] is None
    _with_field(path, 2.5)
    c = run_conditions(path)
    assert c["field_T"] == 2.5 and c["field_source"] == "start document conditions.magnetic_field_T"


def test_conditions_of_3ds_from_header_and_parameters(tmp_path: Path) -> None:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=2e-9, nx=3, ny=2)
    spectra = np.zeros((2, 3, 1, 16), np.float32)
    header = {"Temperature 1>Temperature 1 (K)": "4.2E+0", "Magnet>Field (T)": "-1.5E+0"}
    path = tmp_path / "h.3ds"
    write_3ds(
        path,
        spectra=spectra,
        channel_names=["Current (A)"],
        geometry=geometry,
        sweep_start=-0.01,
        sweep_end=0.01,
        n_points=16,
        header=header,
    )
    c = run_conditions(path)
    assert (c["temperature_K"], c["field_T"]) == (pytest.approx(4.2), pytest.approx(-1.5))
    assert c["temperature_source"] == "header Temperature 1>Temperature 1 (K)"
    # per-pixel thermometer readings win over the header
    temps = np.array([[1.0, 1.1, 1.2], [1.3, 1.4, 9.0]], np.float32)
    write_3ds(
        path,
        spectra=spectra,
        channel_names=["Current (A)"],
        geometry=geometry,
        sweep_start=-0.01,
        sweep_end=0.01,
        n_points=16,
        header=header,
        parameters={"Temperature before (K)": temps},
    )
    c = run_conditions(path)
    assert c["temperature_K"] == pytest.approx(1.25) and "Temperature before (K)" in c["temperature_source"]


def test_folder_input_writes_runs_and_campaign(series: Path, tmp_path: Path) -> None:
    with h5py.File(series / "maps.h5", "w") as f:  # not an archive (an earlier analysis): skipped
        f["delta"] = np.zeros((2, 2))
    out = tmp_path / "out"
    assert main(["analyse", str(series), "--out", str(out), "--examples", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "T0.3",
        "T1.5",
        "campaign.csv",
        "campaign.json",
        "campaign_vs_temperature.png",
    ]
    rows = json.loads((out / "campaign.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["T0.3", "T1.5"]
    assert [r["temperature_K"] for r in rows] == pytest.approx([0.3, 1.5])
    for row in rows:
        report = json.loads((out / row["run"] / "report.json").read_text())
        for key in ("pixels", "valid_pixels", "delta_mean_meV", "alpha_std", "l_alpha_nm", "rho_cross_0"):
            assert row[key] == report[key], key
        assert row["dynes_width_meV"] == pytest.approx(report["inputs"]["options"]["dynes_width_eV"] * 1e3)
    # a film warmer than the Dynes templates of 0.3 K shows a larger apparent gap (thermal smearing)
    assert rows[1]["delta_mean_meV"] > rows[0]["delta_mean_meV"]
    with open(out / "campaign.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["temperature_K"]) for r in table] == pytest.approx([0.3, 1.5])
    assert table[0]["field_T"] == "" and float(table[1]["alpha_mean"]) == pytest.approx(rows[1]["alpha_mean"])
    assert (out / "campaign_vs_temperature.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_campaign_figures_follow_what_varies(tmp_path: Path) -> None:
    src = tmp_path / "a.h5"
    write_film_archive(make_film(FilmParams(ny=4, nx=4, seed=2)), src)
    report = {
        "pixels": 16,
        "delta_mean_meV": 1.2,
        "delta_std_meV": 0.02,
        "alpha_mean": 0.35,
        "alpha_std": 0.01,
        "l_delta_nm": 3.0,
        "l_alpha_nm": 4.0,
        "l_cross_nm": 3.5,
        "inputs": {"format": "stslive"},
    }
    same = write_campaign(tmp_path / "same", [("a", src, report), ("b", src, report)])
    assert [p.name for p in same] == ["campaign.csv", "campaign.json", "campaign_runs.png"]
    b = tmp_path / "b.h5"
    write_film_archive(make_film(FilmParams(ny=4, nx=4, seed=2, temperature_K=1.0)), b)
    _with_field(src, 0.0)
    _with_field(b, 1.0)
    varied = write_campaign(tmp_path / "varied", [("a", src, report), ("b", b, report)])
    assert [p.name for p in varied][2:] == ["campaign_vs_temperature.png", "campaign_vs_field.png"]
    rows = json.loads((tmp_path / "varied" / "campaign.json").read_text())["runs"]
    assert rows[0]["l_delta_noise_nm"] is None  # absent report keys are null, never invented


def test_output_folders_and_input_errors(series: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "run.h5", tmp_path / "y" / "run.3ds"
    assert output_dirs([a], tmp_path / "o") == [tmp_path / "o"]
    assert output_dirs([a, b], tmp_path / "o") == [tmp_path / "o" / "run_h5", tmp_path / "o" / "run_3ds"]
    with pytest.raises(ConfigError, match="several inputs would write"):
        output_dirs([a, tmp_path / "z" / "run.h5"], tmp_path / "o")
    with pytest.raises(ConfigError, match="given twice"):
        expand_inputs([series, series / "T0.3.h5"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no stslive archive"):
        expand_inputs([empty])


def test_offline_library_analyses_without_the_command_line(series: Path, tmp_path: Path) -> None:
    """The library behind ``stslive analyse``: folders expanded (non-archives reported), runs and campaign."""
    stray = tmp_path / "in"
    stray.mkdir()
    for archive in series.glob("T*.h5"):
        (stray / archive.name).write_bytes(archive.read_bytes())
    with h5py.File(stray / "maps.h5", "w") as f:
        f["delta"] = np.zeros((2, 2))
    skipped: list[Path] = []
    files = expand_inputs([stray], on_skip=skipped.append)
    assert [p.name for p in files] == ["T0.3.h5", "T1.5.h5"] and skipped == [stray / "maps.h5"]
    options, constants = KernelOptions(), TheoryConstants()
    one = analyse_inputs(files[:1], tmp_path / "one", options=options, constants=constants, examples=0)
    assert [r.out for r in one.runs] == [tmp_path / "one"] and one.campaign == []
    assert one.runs[0].report == json.loads((tmp_path / "one" / "report.json").read_text())
    assert summary_line(one.runs[0].report).startswith(f"{NY * NX} of {NY * NX} pixels valid")
    both = analyse_inputs(files, tmp_path / "both", options=options, constants=constants, examples=0)
    assert [r.out.name for r in both.runs] == ["T0.3", "T1.5"]
    assert [p.name for p in both.campaign] == ["campaign.csv", "campaign.json", "campaign_vs_temperature.png"]


def test_campaign_module_leaves_the_matplotlib_backend_alone() -> None:
    """Figures are drawn on their own Agg canvas: importing or drawing switches no global backend."""
    code = (
        "import sys, matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "import stslive.live.offline.campaign as c\n"
        "assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
