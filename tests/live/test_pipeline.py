"""live.pipeline: one code path from stored spectra to results (offline and live)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.simulate import CHANNELS, write_film_archive
from stslive.drivers.errors import AnalysisError, FileFormatError
from stslive.live import theory
from stslive.live.correlations import correlation_report
from stslive.live.kernels import KernelOptions, ReasonCode, SpectrumAnalysis
from stslive.live.pipeline import (
    analyse_arrays,
    analyse_input,
    analyse_pixels,
    apply_to_model,
    calibrate_options,
    calibrate_source,
    calibration_sample,
    open_input,
)
from stslive.live.results import ResultsModel
from stslive.live.snapshots import correlation_snapshot
from stslive.live.theory import TheoryConstants
from stslive.mocks.film import FilmParams, make_film

NY, NX = 40, 48


@pytest.fixture(scope="module")
def film_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "film.h5"
    write_film_archive(make_film(FilmParams(ny=NY, nx=NX, seed=0)), path)
    return path


@pytest.fixture(scope="module")
def truth(film_archive: Path) -> dict[str, np.ndarray]:
    with open_archive(film_archive) as reader:
        return reader.ground_truth


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize(("gap_source", "delta_goal_eV"), [("auto", 0.015e-3), ("current", 0.03e-3)])
def test_archive_analysis_meets_issue_accuracy(
    film_archive: Path, truth: dict[str, np.ndarray], gap_source: str, delta_goal_eV: float
) -> None:
    """Issue 2 goals vs the definition truth: Delta 0.015 meV (lock-in) / 0.03 meV (I(V)), alpha 0.003."""
    model = analyse_input(film_archive, options=KernelOptions(gap_source=gap_source))
    valid = model.maps["valid"]
    assert model.maps["measured"].all() and valid.mean() >= 0.99
    assert _rms(model.maps["delta_eV"][valid], truth["delta_def"][valid]) <= delta_goal_eV
    assert _rms(model.maps["alpha"][valid], truth["alpha_def"][valid]) <= 0.003
    assert model.maps["delta_eV"].dtype == np.float32
    assert np.all(model.maps["reason"][valid] == 0) and np.all(model.maps["reason"][~valid] > 0)
    assert model.pixel_nm == pytest.approx(1.0)
    np.testing.assert_allclose(model.topography, truth["topography"], rtol=1e-6)


def test_progress_reports_every_pixel_once(film_archive: Path) -> None:
    calls: list[tuple[int, int]] = []
    analyse_input(
        film_archive,
        options=KernelOptions(gap_source="current"),
        progress=lambda d, t: calls.append((d, t)),
        max_block_bytes=10 * NX * 1601 * 4,
    )
    assert calls[0] == (0, NY * NX) and calls[-1] == (NY * NX, NY * NX)
    assert len(calls) >= 1 + math.ceil(NY / 10)  # blocks of at most 10 rows (fewer when the lock-in is read too)
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(calls))


def test_one_pixel_equals_its_batch_row(film_archive: Path) -> None:
    """The live analyser's single-pixel call goes through the same code as the batch."""
    with open_archive(film_archive) as reader:
        spectra = reader.read_pixels(slice(0, 2))
        bias = reader.bias
    # the map's calibration fixed first: no batch estimate
    options = calibrate_options(bias, spectra, list(CHANNELS), options=KernelOptions(gap_source="current"))
    batch = analyse_pixels(bias, spectra, list(CHANNELS), options=options)
    one = analyse_pixels(bias, spectra[1, 7], list(CHANNELS), options=options)
    assert batch.delta_eV.shape == (2, NX) and one.delta_eV.shape == ()
    assert one.delta_eV == pytest.approx(float(batch.delta_eV[1, 7]), abs=1e-9)
    assert one.alpha == pytest.approx(float(batch.alpha[1, 7]), abs=1e-6)


def test_calibrated_options_make_live_pixels_match_the_offline_map(film_archive: Path) -> None:
    """The live analyser calibrates once on a first row, then analyses pixel by pixel."""
    with open_archive(film_archive) as reader:
        first_row = reader.read_pixels(slice(0, 1))
        pixel = reader.read_pixels(slice(30, 31), slice(20, 21))[0, 0]
        bias = reader.bias
    with open_input(film_archive, options=KernelOptions()) as source:
        options = calibrate_source(source, options=KernelOptions())  # the offline rule, on the first spectra measured
    assert options.calibrated and 1e-6 < options.dynes_width_eV < 1e-3 and 1e-3 < options.gap_eV < 1.5e-3
    assert options.temperature_K == pytest.approx(0.3) and options.modulation_Vrms == pytest.approx(
        50e-6
    )  # the archive's
    row_options = calibrate_options(bias, first_row, list(CHANNELS), options=KernelOptions())
    assert row_options.gap_eV == pytest.approx(options.gap_eV, rel=0.02)  # a row calibrates the map alike
    live = analyse_pixels(bias, pixel, list(CHANNELS), options=options)
    offline = analyse_input(film_archive, options=KernelOptions())
    assert float(live.delta_eV) == pytest.approx(float(offline.maps["delta_eV"][30, 20]), abs=2e-6)
    assert float(live.alpha) == pytest.approx(float(offline.maps["alpha"][30, 20]), abs=1e-5)


def test_channels_picked_by_name_sign_and_direction_normalised(film_archive: Path) -> None:
    with open_archive(film_archive) as reader:
        spectra = reader.read_pixels(slice(0, 1), slice(0, 12))[0]
        bias = reader.bias
    options = KernelOptions(gap_source="current")
    ref = analyse_pixels(bias, spectra, list(CHANNELS), options=options)
    # another setup: lock-in first, current negated (other sign convention), sweep recorded backwards
    other = np.stack([spectra[:, 2, ::-1], -spectra[:, 1, ::-1]], axis=-2)
    got = analyse_pixels(bias[::-1], other, ["Input 2 (V)", "Current (A)"], options=options)
    np.testing.assert_allclose(got.delta_eV, ref.delta_eV, atol=1e-9)
    np.testing.assert_allclose(got.alpha, ref.alpha, atol=1e-5)
    with pytest.raises(AnalysisError, match="channel names"):
        analyse_pixels(bias, spectra, ["Current (A)"], options=options)
    with pytest.raises(AnalysisError, match="available channels"):
        analyse_pixels(bias, spectra, list(CHANNELS), options=KernelOptions(current="Current 2 (A)"))


def test_per_pixel_sweeps_are_grouped_by_sweep(film_archive: Path) -> None:
    """Nanonis grids may store a sweep per pixel: each distinct sweep gets its own kernel call."""
    with open_archive(film_archive) as reader:
        spectra = reader.read_pixels(slice(0, 1), slice(0, 8))[0]
        bias = reader.bias
    options = calibrate_options(bias, spectra, list(CHANNELS), options=KernelOptions(gap_source="current"))
    cur = spectra[:, 1].copy()
    per_pixel = np.broadcast_to(bias, cur.shape).copy()
    per_pixel[::2] = per_pixel[::2, ::-1]
    cur[::2] = cur[::2, ::-1]
    ref = analyse_arrays(bias, current=spectra[:, 1], lockin=None, options=options)
    got = analyse_arrays(per_pixel, current=cur, lockin=None, options=options)
    np.testing.assert_allclose(got.delta_eV, ref.delta_eV, atol=1e-9)
    empty = analyse_arrays(bias, current=np.empty((0, bias.size), np.float32), lockin=None, options=options)
    assert empty.delta_eV.shape == (0,) and empty.valid.dtype == bool


def test_unmeasured_pixels_stay_nan(tmp_path: Path, film_archive: Path) -> None:
    """A run stopped early: only the measured pixels are analysed and marked measured."""
    partial = tmp_path / "partial.h5"
    partial.write_bytes(film_archive.read_bytes())
    with h5py.File(partial, "r+") as f:
        f["entry/measured"][25:, :] = False
        f["entry/measured"][24, 30:] = False
    model = analyse_input(partial, options=KernelOptions(gap_source="current"))
    measured = model.maps["measured"]
    assert measured.sum() == 24 * NX + 30
    assert np.isnan(model.maps["delta_eV"][~measured]).all() and not model.maps["valid"][~measured].any()
    assert (model.maps["reason"][~measured] == -1).all()
    assert np.isfinite(model.maps["delta_eV"][measured]).mean() > 0.99
    snap = correlation_snapshot(model)  # mid-run correlations on the measured part only
    assert snap.n_pixels == int(model.maps["valid"].sum())


def test_truncated_archive_is_analysed_where_it_survives_else_a_clear_error(tmp_path: Path, film_archive: Path) -> None:
    cut = tmp_path / "cut.h5"
    data = film_archive.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    model = analyse_input(cut, options=KernelOptions())
    measured = model.maps["measured"]
    assert 0 < measured.sum() < measured.size  # the pixels whose spectra lie inside the half file
    assert np.isfinite(model.maps["delta_eV"][measured]).mean() > 0.99
    cut.write_bytes(data[:3000])
    with pytest.raises(FileFormatError, match="cut.h5.*truncated"):
        analyse_input(cut, options=KernelOptions())


def test_apply_to_model_single_pixel_and_block() -> None:
    model = ResultsModel(3, 4)
    n = 2
    fields = {
        f: np.full(n, 0.5, np.float32)
        for f in (
            "delta_eV",
            "peak_neg_V",
            "peak_pos_V",
            "visibility",
            "peak_score",
            "alpha",
            "alpha_pos",
            "alpha_neg",
            "b",
            "b_pos",
            "b_neg",
            "rms_log_residual",
            "delta_sigma_eV",
            "alpha_sigma",
            "delta_dynes_eV",
            "gamma_dynes_eV",
        )
    }
    analysis = SpectrumAnalysis(
        **fields,
        gap_reason=np.zeros(n, np.int8),
        alpha_reason=np.array([0, 9], np.int8),
        valid_delta=np.array([True, True]),
        valid_alpha=np.array([True, False]),
        valid=np.array([True, False]),
        reason=np.array([0, 9], np.int8),
    )
    apply_to_model(model, np.array([0, 2]), np.array([1, 3]), analysis, setpoint_set=4)
    assert model.maps["measured"].sum() == 2 and model.maps["valid"][0, 1] and not model.maps["valid"][2, 3]
    assert model.maps["reason"][2, 3] == ReasonCode.POOR_POWER_LAW_FIT and model.maps["setpoint_set"][0, 1] == 4
    # each quantity keeps its own validity and reason: Delta valid where alpha was refused
    assert model.maps["valid_delta"][2, 3] and not model.maps["valid_alpha"][2, 3]
    assert model.maps["reason_delta"][2, 3] == 0 and model.maps["reason_alpha"][2, 3] == ReasonCode.POOR_POWER_LAW_FIT
    one = SpectrumAnalysis(*(np.asarray(v[0]) for v in analysis))
    apply_to_model(model, 1, 1, one, time_s=123.0)
    assert model.maps["measured"][1, 1] and model.maps["time"][1, 1] == 123.0
    assert model.maps["fit_quality"][1, 1] == np.float32(0.5)


def test_correlation_snapshot_matches_appendix_a_and_theory(film_archive: Path) -> None:
    model = analyse_input(film_archive, options=KernelOptions())
    snap = correlation_snapshot(model, pixel_size_m=1e-9)
    valid = model.maps["valid"]
    delta = np.where(valid, model.maps["delta_eV"], np.nan)
    alpha = np.where(valid, model.maps["alpha"], np.nan)
    ref = correlation_report(delta, alpha, pixel_size_m=1e-9)
    assert snap.l_delta_nm == pytest.approx(ref["l_delta_nm"], rel=1e-6)
    assert snap.l_alpha_nm == pytest.approx(ref["l_alpha_nm"], rel=1e-6)
    assert snap.l_cross_nm == pytest.approx(ref["l_cross_nm"], rel=1e-6)
    assert snap.rho_cross_0 == pytest.approx(ref["rho_cross_0"], rel=1e-5) and snap.rho_cross_0 < -0.5
    assert snap.cross_map.shape == (NY, NX) and snap.cross_map[NY // 2, NX // 2] == pytest.approx(snap.rho_cross_0)
    assert snap.r_nm[0] == 0 and snap.rho_delta[0] == pytest.approx(1.0) and snap.rho_alpha.shape == snap.r_nm.shape
    # Eq. (2): sigma_rho = 2 pi R_Q sigma_alpha / ln(eV l^2 / hbar D); Eq. (3) at the measured mean gap
    c = TheoryConstants()
    ratio = c.bias_V * (snap.l_alpha_nm * 1e-9) ** 2 / (theory.HBAR_EV_S * c.diffusion_m2_s)
    expected = 2 * np.pi * theory.resistance_quantum_ohm() * float(np.nanstd(alpha)) / np.log(ratio)
    assert snap.sigma_rho_ohm == pytest.approx(expected, rel=1e-5)
    gap_K = float(np.nanmean(delta)) / theory.K_B_EV_PER_K
    rel = expected / (6 * np.pi * theory.resistance_quantum_ohm()) * np.log(c.hbar_omega_D_K / gap_K) ** 3
    assert snap.predicted_delta_rel_sigma == pytest.approx(rel, rel=1e-5)


def test_non_bias_sweep_is_refused(shared_data: Path) -> None:
    with pytest.raises(AnalysisError, match="not the bias"):
        analyse_input(shared_data / "nanonis-grid-zspec.3ds", options=KernelOptions())


def test_kpfm_grid_runs_and_marks_every_pixel_invalid(shared_data: Path) -> None:
    """A bias sweep of a non-superconductor at 2.4 mV steps: no gap anywhere, each pixel says why."""
    model = analyse_input(shared_data / "nanonis-grid-kpfm-20x20.3ds", options=KernelOptions())
    assert model.maps["measured"].all() and not model.maps["valid"].any()
    assert (model.maps["reason"] > 0).all() and np.isnan(model.maps["delta_eV"]).all()


def _serpentine_archive(path: Path) -> tuple[Path, list]:
    """A 4 x 32 serpentine scan whose right half (ix >= 16) has 4x broader Dynes peaks.

    Returns the archive and the live analyser's inputs in acquisition order. With a 48-spectrum
    calibration sample the acquisition order takes row 0 and the right half of row 1 (the scan
    runs backwards there): 16 narrow + 32 broad spectra; row-major would take 32 narrow + 16 broad.
    """
    from test_analyser_sim import CHANNELS as SIM_CHANNELS
    from test_analyser_sim import N_POINTS, geometry, make_sets, start_fields

    from stslive.acquisition.formats.archive import ArchiveWriter
    from stslive.acquisition.formats.runmodel import PixelMeta
    from stslive.live.run_context import PixelInput

    ny, nx = 4, 32
    iy, ix = np.indices((ny, nx))
    narrow, broad = (
        make_film(FilmParams(ny=ny, nx=nx, seed=5, n_points=N_POINTS, dynes_gamma_eV=g)) for g in (0.05e-3, 0.2e-3)
    )
    a, b = narrow.spectra(iy, ix), broad.spectra(iy, ix)
    current = np.where(ix[..., None] >= nx // 2, b.current_A, a.current_A)
    lockin = np.where(ix[..., None] >= nx // 2, b.lockin_x_A, a.lockin_x_A)
    spectra = np.stack([current, lockin], axis=-2).astype(np.float32)  # (ny, nx, 2, n)
    sets, geom = make_sets(), geometry(ny, nx)
    order = [(y, x) for y in range(ny) for x in (range(nx) if y % 2 == 0 else range(nx - 1, -1, -1))]
    inputs = []
    with ArchiveWriter.create(
        path,
        geometry=geom,
        channel_names=SIM_CHANNELS,
        n_points=N_POINTS,
        setpoint_sets=sets,
        start_doc={"uid": "serp", **start_fields(geom, sets)},
    ) as writer:
        for k, (y, x) in enumerate(order):
            t = 1000.0 + k
            meta = PixelMeta(
                x_m=x * 1e-9,
                y_m=y * 1e-9,
                setpoint_set_id=0,
                t_start=t,
                t_sweep_start=t,
                t_sweep_end=t + 0.5,
                t_end=t + 0.5,
            )
            writer.write_pixel(y, x, spectra[y, x], meta)
            inputs.append(
                PixelInput(
                    iy=y,
                    ix=x,
                    set_id=0,
                    spectra=spectra[y, x],
                    time=t + 0.5,
                    temperatures_K=(0.3, 0.3),
                    lockin_status=0,
                    lockin_overload=False,
                )
            )
    return path, inputs


def test_offline_calibrates_on_the_live_analysers_spectra_for_a_serpentine_scan(tmp_path: Path) -> None:
    """Live = offline: both fix the template width on the first spectra in ACQUISITION order."""
    from test_analyser_sim import geometry, make_sets, start_fields

    from stslive.live.flags import FlagConfig
    from stslive.live.run_context import RunContext

    path, inputs = _serpentine_archive(tmp_path / "serpentine.h5")
    options = KernelOptions(chunk=48)
    with open_input(path, options=options) as source:
        order = source.acquisition_order()
        assert [divmod(int(k), 32) for k in order] == [(p.iy, p.ix) for p in inputs]
        offline = calibrate_source(source, options=options).dynes_width_eV
    ctx = RunContext("serp", start_fields(geometry(4, 32), make_sets()), options=options, flag_config=FlagConfig())
    ctx.process(inputs)  # 128 pixels > the 48 of the sample: calibrated and analysed
    live = ctx.options.dynes_width_eV
    assert live is not None and offline == live
    # the test can tell the orders apart: row-major's first 48 spectra give another width
    with open_archive(path) as reader:
        row_major = reader.read_pixels(slice(0, 2)).reshape(-1, 2, reader.n_points)[:48]
        bias = reader.bias
    assert calibrate_options(bias, row_major, list(reader.channel_names), options=options).dynes_width_eV != live
    # and the offline map uses that width everywhere, as the finished live run does
    model = analyse_input(path, options=options)
    np.testing.assert_array_equal(model.maps["delta_eV"], ctx.model.maps["delta_eV"])


def test_calibration_sample_takes_the_first_chunk_sharing_the_first_sweep() -> None:
    sweeps = [(-0.04, 0.04), (-0.02, 0.02), (-0.04, 0.04), (-0.04, 0.04), (-0.04, 0.04)]
    assert calibration_sample(sweeps, chunk=2).tolist() == [0, 2]
    assert calibration_sample(sweeps, chunk=10).tolist() == [0, 2, 3, 4]
    assert calibration_sample([], chunk=4).size == 0


def test_acquisition_order_sorts_by_start_time_then_row_major() -> None:
    from stslive.acquisition.formats.recording import acquisition_order

    measured = np.array([[True, True, True], [True, False, True]])
    t = np.array([[1.0, 2.0, 3.0], [6.0, np.nan, 4.0]])
    assert acquisition_order(measured, t).tolist() == [0, 1, 2, 5, 3]
    assert acquisition_order(measured, None).tolist() == [0, 1, 2, 3, 5]
    t_missing = np.array([[np.nan, 2.0, 2.0], [1.0, 0.0, np.nan]])
    assert acquisition_order(measured, t_missing).tolist() == [3, 1, 2, 0, 5]
