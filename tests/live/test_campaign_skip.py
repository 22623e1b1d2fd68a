"""A campaign goes on past an input it cannot analyse, and lists it with its reason.

Regression: one Z-sweep grid in the folder stopped ``stslive analyse FOLDER`` with exit 1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.formats.nanonis3ds import write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.live.kernels import KernelOptions
from stslive.live.offline.analyse import analyse_inputs, expand_inputs
from stslive.live.theory import TheoryConstants
from stslive.mocks.film import FilmParams, make_film


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("campaign")
    for k, temperature in enumerate((0.3, 0.9)):
        film = make_film(FilmParams(ny=12, nx=14, seed=k, temperature_K=temperature, n_points=801))
        write_film_archive(film, root / f"a{k}.h5")
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=4e-9, height_m=4e-9, nx=4, ny=4)
    write_3ds(  # a Z spectroscopy grid among the bias maps
        root / "m_zsweep.3ds",
        spectra=np.random.default_rng(0).normal(size=(4, 4, 1, 32)).astype(np.float32) * 1e-10,
        channel_names=["Current (A)"],
        geometry=geometry,
        sweep_start=2e-10,
        sweep_end=-8e-10,
        n_points=32,
        sweep_signal="Z (m)",
    )
    (root / "z_broken.3ds").write_bytes(b'Grid dim="4 x 4"\r\nnot a header at all')
    return root


def test_campaign_skips_unsuitable_inputs_with_their_reason(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["analyse", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipping" in err and "m_zsweep.3ds" in err and "not the bias" in err and "z_broken.3ds" in err
    rows = list(csv.DictReader((out / "campaign.csv").open()))
    assert [r["run"] for r in rows] == ["a0", "a1", "m_zsweep", "z_broken"]
    assert rows[0]["skipped"] == rows[1]["skipped"] == "" and rows[0]["pixels_valid"] == "168"
    assert "not the bias" in rows[2]["skipped"] and rows[2]["pixels_valid"] == ""
    assert "HEADER_END" in rows[3]["skipped"]
    table = json.loads((out / "campaign.json").read_text())["runs"]
    assert table[2]["skipped"] and table[2]["delta_mean_meV"] is None
    assert (out / "a0" / "report.json").is_file() and not (out / "m_zsweep").exists()
    assert (out / "campaign_vs_temperature.png").is_file()  # the figure from the analysed runs


def test_library_reports_what_it_left_out(folder: Path, tmp_path: Path) -> None:
    left_out: list[tuple[Path, str]] = []
    analysis = analyse_inputs(
        expand_inputs([folder]),
        tmp_path,
        options=KernelOptions(),
        constants=TheoryConstants(),
        examples=0,
        on_unsuitable=lambda path, reason: left_out.append((path, reason)),
    )
    assert [r.path.name for r in analysis.runs] == ["a0.h5", "a1.h5"]
    assert [p.name for p, _ in analysis.skipped] == ["m_zsweep.3ds", "z_broken.3ds"] == [p.name for p, _ in left_out]


def test_a_single_unsuitable_input_is_still_an_error(folder: Path, tmp_path: Path) -> None:
    assert main(["analyse", str(folder / "m_zsweep.3ds"), "--out", str(tmp_path / "z")]) == 1
