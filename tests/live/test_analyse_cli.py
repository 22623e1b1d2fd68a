"""``stslive analyse``: maps.h5, report.json and figures from an archive or a .3ds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.cli.analyse import add_arguments, kernel_options
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.formats.nanonis3ds import write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.live.flag_kinds import FlagKind
from stslive.live.kernels import KernelOptions
from stslive.live.results_io import load_maps_h5
from stslive.mocks.film import FilmParams, make_film

NY, NX = 40, 48
FIGURES = ("maps.png", "histograms.png", "cross_correlation.png", "correlation_profiles.png", "spectra.png")
REPORT_KEYS = (
    "schema",
    "schema_version",
    "software_version",
    "grid",
    "pixels_in_grid",
    "pixels_measured",
    "pixels_valid",
    "pixels_valid_delta",
    "pixels_valid_alpha",
    "reasons_delta",
    "reasons_alpha",
    "gap_channel",
    "alpha_channel",
    "flags",
    "tip_epochs",
    "warnings",
    "delta_mean_meV",
    "delta_std_meV",
    "alpha_mean",
    "alpha_std",
    "l_delta_nm",
    "l_alpha_nm",
    "l_cross_nm",
    "l_delta_noise_nm",
    "l_alpha_noise_nm",
    "l_cross_noise_nm",
    "rho_cross_0",
    "rho_delta_topo_0",
    "sigma_rho_ohm",
    "predicted_delta_rel_sigma",
    "theory_constants",
    "elapsed_s",
    "inputs",
)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("analyse")
    archive = root / "film.h5"
    write_film_archive(make_film(FilmParams(ny=NY, nx=NX, seed=0)), archive)
    out = root / "out"
    code = main(["analyse", str(archive), "--out", str(out), "--set", "diffusion_m2_s=4e-5"])
    return archive, out, code


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_writes_every_output(analysed: tuple[Path, Path, int]) -> None:
    _, out, code = analysed
    assert code == 0
    for name in ("maps.h5", "report.json", *FIGURES):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_keys_and_values_are_sane(analysed: tuple[Path, Path, int]) -> None:
    archive, out, _ = analysed
    r = _report(out)
    assert set(REPORT_KEYS) <= set(r)
    assert r["schema"] == "stslive.report" and r["schema_version"] == 2
    assert r["grid"] == {"nx": NX, "ny": NY} and r["pixels_in_grid"] == NY * NX
    assert r["pixels_measured"] == NY * NX and r["pixels_valid"] >= 0.99 * NY * NX
    assert r["reasons"]["OK"] == r["pixels_valid"]
    assert r["pixels_valid_delta"] >= r["pixels_valid"] and r["pixels_valid_alpha"] >= r["pixels_valid"]
    # "auto" with both channels: the lock-in combined with the current
    assert r["gap_channel"] == "LI Demod 1 X (A) + Current (A)" and r["alpha_channel"] == "Current (A)"
    assert r["flags"]["counts"].keys() == {k.name.lower() for k in FlagKind} and r["flags"]["pixels_flagged"] == 0
    # a simulated archive records no lock-in sensitivity or status: those rules are not judged, and it says so
    assert set(r["flags"]["not_judged"]) == {"lockin_sensitivity", "lockin_overload"}
    assert [w["code"] for w in r["warnings"] if w["code"] != "correlations"] == ["flags_not_judged"]
    # a 40 x 48 nm map of a film with 18-28 nm lengths: every length is finite-size biased, and says so
    tags = [w["message"].split(":")[0] for w in r["warnings"] if w["code"] == "correlations"]
    assert tags == ["finite-size"] * 3 + ["biased-inversion"]
    with open_archive(archive) as reader:
        truth = reader.ground_truth
    assert r["delta_mean_meV"] == pytest.approx(truth["delta_def"].mean() * 1e3, abs=0.015)  # within the RMS goal
    assert r["delta_std_meV"] == pytest.approx(truth["delta_def"].std() * 1e3, rel=0.1)
    assert r["alpha_mean"] == pytest.approx(truth["alpha_def"].mean(), abs=0.002)
    assert 3 < r["l_alpha_nm"] < 40 and 3 < r["l_delta_nm"] < 40 and r["l_cross_nm"] > 3
    assert -1 < r["rho_cross_0"] < -0.5  # the film's gap falls where alpha rises (paper: -0.55)
    assert abs(r["rho_delta_topo_0"]) < 0.3  # topography is independent of the gap in the film
    assert r["theory_constants"] == {"bias_V": 0.01, "diffusion_m2_s": 4e-5, "hbar_omega_D_K": 300.0}
    assert 100 < r["sigma_rho_ohm"] < 5000 and 0 < r["predicted_delta_rel_sigma"] < 1
    assert r["elapsed_s"] > 0
    assert r["inputs"]["channels"] == {"current": "Current (A)", "lockin": "LI Demod 1 X (A)"}
    assert r["inputs"]["options"]["fit_window_V"] == [0.005, 0.03] and r["software_version"]
    assert r["inputs"]["file"].endswith("film.h5") and r["inputs"]["format"] == "stslive"
    gt = r["ground_truth"]
    assert gt["delta_rms_error_meV"] <= 0.015 and gt["alpha_rms_error"] <= 0.003
    assert set(gt["true_maps"]) >= {"l_delta_nm", "l_alpha_nm"}


def test_maps_h5_layout(analysed: tuple[Path, Path, int]) -> None:
    _, out, _ = analysed
    with h5py.File(out / "maps.h5", "r") as f:
        for name in ("delta", "alpha", "b", "alpha_pos", "alpha_neg", "valid", "reason"):
            assert f[name].shape == (NY, NX), name
        assert f["delta"].attrs["units"] == "eV" and f["valid"].dtype == bool
        assert np.issubdtype(f["reason"].dtype, np.integer)
        assert "correlation" in f and f["correlation/cross_map"].shape == (NY, NX)
    model = load_maps_h5(out / "maps.h5")
    assert model.snapshot is not None and model.snapshot.l_alpha_nm == pytest.approx(_report(out)["l_alpha_nm"])


def test_lockin_off_and_options_reach_the_kernels(analysed: tuple[Path, Path, int], tmp_path: Path) -> None:
    archive, _, _ = analysed
    out = tmp_path / "nolockin"
    assert (
        main(
            [
                "analyse",
                str(archive),
                "--out",
                str(out),
                "--no-lockin",
                "--fit-window",
                "6,28",
                "--smoothing",
                "9",
                "--examples",
                "1",
            ]
        )
        == 0
    )
    r = _report(out)
    assert r["inputs"]["options"]["gap_source"] == "current" and r["inputs"]["channels"]["lockin"] is None
    assert r["gap_channel"] == r["alpha_channel"] == "Current (A)"
    assert r["inputs"]["options"]["fit_window_V"] == pytest.approx([0.006, 0.028])
    assert r["inputs"]["options"]["smoothing_points"] == 9
    assert r["ground_truth"]["delta_rms_error_meV"] <= 0.03


def test_gap_source_lockin_takes_delta_from_the_lockin_alone(analysed: tuple[Path, Path, int], tmp_path: Path) -> None:
    archive, out_both, _ = analysed
    out = tmp_path / "lockin"
    assert main(["analyse", str(archive), "--out", str(out), "--gap-source", "lockin", "--examples", "0"]) == 0
    r = _report(out)
    assert r["inputs"]["options"]["gap_source"] == "lockin" and r["gap_channel"] == "LI Demod 1 X (A)"
    with h5py.File(out / "maps.h5", "r") as alone, h5py.File(out_both / "maps.h5", "r") as both:
        np.testing.assert_array_equal(alone["reason_delta"][()], both["reason_delta"][()])
        ok = alone["valid_delta"][()]
        # with the current the gap's standard error shrinks in (nearly) every pixel
        assert np.mean(both["delta_sigma_eV"][()][ok] < alone["delta_sigma_eV"][()][ok]) > 0.95


def test_analyses_a_3ds_written_from_a_film(tmp_path: Path) -> None:
    """A Nanonis grid (sweep +40 -> -40 mV, as the lab records it) analysed like an archive."""
    film = make_film(FilmParams(ny=16, nx=20, seed=5, bias_start_V=0.04, bias_end_V=-0.04))
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=20e-9, height_m=16e-9, nx=20, ny=16)
    path = tmp_path / "film.3ds"
    blocks = (np.stack([b.current_A, b.lockin_x_A], axis=2) for _, b in film.iter_blocks(rows_per_block=4))
    write_3ds(
        path,
        spectra=blocks,
        channel_names=["Current (A)", "LI Demod 1 X (A)"],
        geometry=geometry,
        sweep_start=0.04,
        sweep_end=-0.04,
        n_points=film.params.n_points,
    )
    out = tmp_path / "out"
    assert main(["analyse", str(path), "--out", str(out)]) == 0
    r = _report(out)
    assert r["inputs"]["format"] == "nanonis3ds" and r["pixels_measured"] == 320 and r["pixels_valid"] >= 316
    truth = film.definition_truth()
    model = load_maps_h5(out / "maps.h5")
    valid = model.maps["valid"]
    err = model.maps["delta_eV"][valid] - truth.delta_pp_eV[valid]
    assert np.sqrt(np.mean(err**2)) <= 0.015e-3
    assert r["rho_delta_topo_0"] is None  # a .3ds carries no topography map


def test_real_kpfm_grid_runs_with_reasons(shared_data: Path, tmp_path: Path) -> None:
    assert main(["analyse", str(shared_data / "nanonis-grid-kpfm-20x20.3ds"), "--out", str(tmp_path)]) == 0
    r = _report(tmp_path)
    assert r["pixels_measured"] == 400 and r["pixels_valid"] == 0 and sum(r["reasons"].values()) == 400
    assert "OK" not in r["reasons"] and r["delta_mean_meV"] is None and r["l_delta_nm"] is None
    assert (tmp_path / "maps.png").is_file()


def test_z_sweep_refused_without_traceback(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["analyse", str(shared_data / "nanonis-grid-zspec.3ds"), "--out", str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert code == 1 and "not the bias" in err and "Z (m)" in err and "Traceback" not in err
    assert not (tmp_path / "z" / "report.json").exists()


def test_truncated_archive_is_analysed_as_far_as_it_survives(
    analysed: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, _, _ = analysed
    data = archive.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) * 2 // 3])
    code = main(["analyse", str(cut), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0 and "TRUNCATED" in err and "Traceback" not in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "TRUNCATED" in report["inputs"]["damage"]
    assert 0 < report["pixels_measured"] < report["pixels_in_grid"]  # only the pixels inside the file
    tiny = tmp_path / "tiny.h5"
    tiny.write_bytes(data[:3000])
    code = main(["analyse", str(tiny), "--out", str(tmp_path / "tiny")])
    err = capsys.readouterr().err
    assert code == 1 and "tiny.h5" in err and "truncated" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["not-a-file", "garbage"])
def test_bad_input_gives_a_clear_error(
    analysed: tuple[Path, Path, int], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.h5"
    if kind == "garbage":
        bad.write_bytes(b"this is not a spectroscopy file\n" * 100)
    code = main(["analyse", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "bad.h5" in err and "Traceback" not in err


def test_bad_options_are_refused(
    analysed: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, _, _ = analysed
    for extra, message in (
        (["--fit-window", "5"], "LOW,HIGH"),
        (["--set", "D=1"], "known"),
        (["--lockin", "Input 9 (V)"], "Input 9 (V)"),
        (["--no-lockin", "--gap-source", "both"], "--gap-source both needs the lock-in"),
    ):
        assert main(["analyse", str(archive), "--out", str(tmp_path), *extra]) == 1
        assert message in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["analyse", str(archive), "--out", str(a_file)]) == 1
    assert "give a directory" in capsys.readouterr().err


def test_report_version_is_the_one_software_version(analysed: tuple[Path, Path, int]) -> None:
    from stslive.acquisition.formats import version
    from stslive.live.offline import report

    _, out, _ = analysed
    assert _report(out)["software_version"] == version.software_version()
    assert not hasattr(report, "software_version") or report.software_version is version.software_version


def test_out_is_a_fresh_folder_or_an_earlier_analysis_overwritten(
    analysed: tuple[Path, Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, _, _ = analysed
    out = tmp_path / "out"
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "1"]) == 0
    assert (out / "spectra.png").is_file()
    capsys.readouterr()
    # a figure the earlier analysis wrote and this one does not (an older version's, say)
    manifest = json.loads((out / ".stslive-analyse.json").read_text())
    (out / "old_figure.png").write_bytes(b"\x89PNG old")
    (out / ".stslive-analyse.json").write_text(json.dumps({"written": [*manifest["written"], "old_figure.png"]}))
    # a reused folder is refused: nothing of a second run may land beside the first one's files
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "0"]) == 1
    err = capsys.readouterr().err
    assert "holds an earlier analysis" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --overwrite clears what the earlier analysis wrote: its figure this one does not draw does not survive
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "0", "--overwrite"]) == 0
    assert not (out / "old_figure.png").exists() and (out / "report.json").is_file() and (out / "maps.png").is_file()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left
    # files the command did not write (the run archive, notes) are never cleared nor replaced
    (out / "notes.txt").write_text("mine")
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "0", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    (out / "spectra.png").unlink()
    (out / "spectra.png").mkdir()  # something the command did not write, under a name it writes
    (out / ".stslive-analyse.json").write_text('{"written": ["maps.h5", "report.json"]}')
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "1", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "would replace" in err and "spectra.png" in err and (out / "spectra.png").is_dir()
    assert (out / "report.json").is_file() and not list(tmp_path.glob(".out.*"))


def test_an_interrupted_analysis_leaves_the_folder_as_it_was(
    analysed: tuple[Path, Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stslive.live.offline import analyse as offline

    archive, _, _ = analysed
    out = tmp_path / "out"
    assert main(["analyse", str(archive), "--out", str(out), "--examples", "0"]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(report: dict, path: Path) -> Path:  # Ctrl-C after maps.h5 and the figures are written
        raise KeyboardInterrupt

    monkeypatch.setattr(offline, "write_report", interrupted)
    assert main(["analyse", str(archive), "--out", str(out), "--overwrite", "--smoothing", "9"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # no new maps.h5 beside the old report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_summary_names_why_pixels_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A +-15 mV sweep: Delta everywhere, alpha nowhere (its 5..30 mV window is not covered), and the line says why."""
    archive = tmp_path / "narrow.h5"
    write_film_archive(
        make_film(FilmParams(ny=8, nx=10, seed=1, bias_start_V=-0.015, bias_end_V=0.015, n_points=301)), archive
    )
    assert main(["analyse", str(archive), "--out", str(tmp_path / "out"), "--examples", "0"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "80 of 80 pixels measured, 0 valid" in line and "alpha on 0 (refused: WINDOW_NOT_COVERED 80)" in line
    r = _report(tmp_path / "out")
    assert r["pixels_valid_delta"] == 80 and r["delta_mean_meV"] is not None and r["alpha_mean"] is None
    assert r["reasons_alpha"] == {"WINDOW_NOT_COVERED": 80}
    assert "few_valid_alpha" in [w["code"] for w in r["warnings"]]
    truth = r["ground_truth"]  # the Delta error is over the 80 Delta pixels, not over the 0 valid for both
    assert (truth["pixels_compared"], truth["pixels_compared_delta"], truth["pixels_compared_alpha"]) == (0, 80, 0)
    assert truth["delta_rms_error_meV"] < 0.05 and "alpha_rms_error" not in truth
    assert r["delta_sigma_median_meV"] is not None and r["alpha_sigma_median"] is None


def test_the_cli_defaults_are_the_kernels_own() -> None:
    """`stslive analyse` without options analyses as the live analyser does (KernelOptions' defaults)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = kernel_options(parser.parse_args(["film.h5", "--out", "out"]))
    defaults = KernelOptions()
    for name in ("gap_search_V", "fit_window_V", "gap_source", "alpha_source", "joint_fit_above"):
        assert getattr(options, name) == getattr(defaults, name), name
