"""``stslive simulate``: a simulated film scan as a run archive, ground truth inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.simulate import CHANNELS, write_film_archive
from stslive.mocks.film import FilmParams, make_film


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "run.h5"
    assert (
        main(
            [
                "simulate",
                "--grid",
                "12x8",
                "--out",
                str(path),
                "--seed",
                "3",
                "--points",
                "801",
                "--noise-pA",
                "0.2",
                "--set",
                "sigma_rho_ohm=900",
                "--set",
                "grain_height_m=1e-10,2e-10",
            ]
        )
        == 0
    )
    return path


def test_archive_holds_the_film_spectra(simulated: Path) -> None:
    params = FilmParams(
        ny=8, nx=12, seed=3, n_points=801, current_noise_A=0.2e-12, sigma_rho_ohm=900.0, grain_height_m=(1e-10, 2e-10)
    )
    film = make_film(params)
    with open_archive(simulated) as reader:
        assert reader.shape == (8, 12) and reader.channel_names == list(CHANNELS)
        assert reader.channel_units == ["V", "A", "A"] and reader.measured.all()
        np.testing.assert_allclose(reader.bias, film.bias_V)
        spectra = reader.read_pixels()
        (rows, block), *_ = list(film.iter_blocks())
        np.testing.assert_array_equal(spectra[rows, :, 1], block.current_A)
        np.testing.assert_array_equal(spectra[rows, :, 2], block.lockin_x_A)
        np.testing.assert_array_equal(spectra[0, 0, 0], film.bias_V.astype(np.float32))
        (s,) = reader.setpoint_sets.values()
        assert s.bias_setpoint_V == params.v_set_V and s.current_setpoint_A == pytest.approx(-150e-12)
        assert s.lockin_amplitude_Vrms == params.modulation_Vrms
        assert reader.geometry.pixel_size_m == pytest.approx((1e-9, 1e-9))
        assert reader.documents["start"]["film_params"]["sigma_rho_ohm"] == 900.0
        assert reader.documents["stop"]["exit_status"] == "success"


def test_ground_truth_and_topography_are_stored(simulated: Path) -> None:
    film = make_film(
        FilmParams(
            ny=8,
            nx=12,
            seed=3,
            n_points=801,
            current_noise_A=0.2e-12,
            sigma_rho_ohm=900.0,
            grain_height_m=(1e-10, 2e-10),
        )
    )
    truth = film.definition_truth()
    with open_archive(simulated) as reader:
        gt, units = reader.ground_truth, reader.ground_truth_units
        np.testing.assert_allclose(gt["delta_model"], film.delta_eV)
        np.testing.assert_allclose(gt["alpha_model"], film.alpha)
        np.testing.assert_allclose(gt["delta_rho"], film.delta_rho_ohm)
        np.testing.assert_allclose(gt["delta_def"], truth.delta_pp_eV)
        np.testing.assert_allclose(gt["alpha_def"], truth.alpha_def)
        np.testing.assert_allclose(reader.topography, film.topography_m, rtol=1e-6)
        assert units["delta_def"] == "eV" and units["delta_rho"] == "ohm" and units["topography"] == "m"


def test_block_size_does_not_change_the_archive(tmp_path: Path, simulated: Path) -> None:
    film = make_film(
        FilmParams(
            ny=8,
            nx=12,
            seed=3,
            n_points=801,
            current_noise_A=0.2e-12,
            sigma_rho_ohm=900.0,
            grain_height_m=(1e-10, 2e-10),
        )
    )
    other = tmp_path / "rows3.h5"
    write_film_archive(film, other, rows_per_block=3)
    with open_archive(other) as a, open_archive(simulated) as b:
        np.testing.assert_array_equal(a.read_pixels(), b.read_pixels())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "12by8"], "columns x rows"),
        (["--grid", "0x8"], "columns x rows"),
        (["--set", "no_such_field=1"], "known keys"),
        (["--set", "sigma_rho_ohm"], "KEY=VALUE"),
        (["--set", "seed=4"], "dedicated option"),
        (["--noise-pA", "-1"], "current_noise_A"),
    ],
)
def test_bad_arguments_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", "--out", str(tmp_path / "x.h5"), "--grid", "4x3", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.h5").exists()


def test_existing_file_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.h5"
    path.write_bytes(b"keep me")
    assert main(["simulate", "--grid", "4x3", "--points", "401", "--out", str(path)]) == 1
    assert "exists" in capsys.readouterr().err and path.read_bytes() == b"keep me"
    assert main(["simulate", "--grid", "4x3", "--points", "401", "--out", str(path), "--overwrite"]) == 0
    with open_archive(path) as reader:
        assert reader.shape == (3, 4)
