"""Unit tests of live.kernels: conventions, reason codes, channel picking, shapes and dtypes."""

from __future__ import annotations

import numpy as np
import pytest

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels import (
    KernelOptions,
    ReasonCode,
    analyse_spectra,
    check_sweep_is_bias,
    conductance_sign,
    derivative,
    extract_gap,
    fit_power_law,
    pick_channels,
    prepare_sweep,
)
from stslive.mocks.film import FilmParams, make_film


@pytest.fixture(scope="module")
def film_spectra():
    """A small seeded film: 6 x 5 pixels of the default 1601-point sweep, with noise."""
    film = make_film(FilmParams(ny=6, nx=5, seed=11))
    iy, ix = np.indices((6, 5))
    sp = film.spectra(iy, ix, noise=True)
    return film, sp.current_A, sp.lockin_x_A


def test_reversed_sweep_and_flipped_current_sign_give_the_same_result(film_spectra):
    film, current, _ = film_spectra
    ref = analyse_spectra(film.bias_V, current=current)
    flipped = analyse_spectra(film.bias_V[::-1], current=-current[..., ::-1])
    assert ref.valid.mean() > 0.9
    np.testing.assert_allclose(flipped.delta_eV, ref.delta_eV, rtol=1e-5)
    np.testing.assert_allclose(flipped.alpha, ref.alpha, rtol=1e-5)


def test_single_spectrum_is_the_batch_call_with_one_row(film_spectra):
    film, current, _ = film_spectra
    batch = analyse_spectra(film.bias_V, current=current, options=KernelOptions(dynes_width_eV=1e-4))
    one = analyse_spectra(film.bias_V, current=current[2, 3], options=KernelOptions(dynes_width_eV=1e-4))
    assert one.delta_eV.shape == ()
    # bit-identical: every row is computed on its own (rowwise_matmul, row-wise reductions)
    for name in batch._fields:
        assert np.array_equal(getattr(one, name), getattr(batch, name)[2, 3], equal_nan=True), name


def test_float32_stays_float32_and_outputs_have_the_batch_shape(film_spectra):
    film, current, lockin = film_spectra
    res = analyse_spectra(film.bias_V, current=current, lockin=lockin)
    assert current.dtype == np.float32
    for name in ("delta_eV", "alpha", "b", "visibility", "rms_log_residual"):
        arr = getattr(res, name)
        assert arr.shape == (6, 5) and arr.dtype == np.float32, name
    assert res.valid.dtype == bool and res.reason.shape == (6, 5)


def test_nan_spectrum_gives_nan_and_a_reason_never_zero(film_spectra):
    film, current, _ = film_spectra
    bad = current.copy()
    bad[1, 1, 700] = np.nan  # inside the gap region
    bad[4, 0, :] = np.nan  # a pixel never measured
    res = analyse_spectra(film.bias_V, current=bad)
    for iy, ix in ((1, 1), (4, 0)):
        assert np.isnan(res.delta_eV[iy, ix])
        assert res.reason[iy, ix] == ReasonCode.NAN_INPUT and not res.valid[iy, ix]
    assert res.valid[0, 0]


def test_sweep_not_covering_the_fit_window_is_refused_per_pixel(film_spectra):
    film, current, _ = film_spectra
    keep = np.abs(film.bias_V) <= 20e-3
    law = fit_power_law(film.bias_V[keep], derivative(film.bias_V[keep], current[..., keep]))
    assert np.all(law.reason == ReasonCode.WINDOW_NOT_COVERED) and np.all(np.isnan(law.alpha))


def test_a_spectrum_without_gap_reports_no_peaks():
    bias = np.linspace(-40e-3, 40e-3, 1601)
    ohmic = np.tile(bias * 1e-8, (3, 1))  # 10 nS, no gap
    ohmic += np.random.default_rng(0).normal(0, 0.5e-12, ohmic.shape)
    gap = extract_gap(bias, derivative(bias, ohmic), current_A=ohmic, dynes_width_eV=1e-4)
    assert np.all(np.isnan(gap.delta_eV))
    # noise alone makes a maximum somewhere; the template fit must then fail to lock on a peak
    assert set(gap.reason.tolist()) <= {
        ReasonCode.NO_PEAKS,
        ReasonCode.PEAK_AT_EDGE,
        ReasonCode.PEAK_NOT_BRACKETED,
        ReasonCode.POOR_PEAK_FIT,
    }


def test_power_law_is_recovered_exactly_without_noise():
    bias = np.linspace(-40e-3, 40e-3, 1601)
    didv = np.where(bias > 0, 2e-8, 3e-8) * np.abs(bias) ** np.where(bias > 0, 0.30, 0.40)
    law = fit_power_law(bias, didv[None, :])
    assert law.alpha_pos[0] == pytest.approx(0.30, abs=1e-9)
    assert law.alpha_neg[0] == pytest.approx(0.40, abs=1e-9)
    assert law.alpha[0] == pytest.approx(0.35, abs=1e-9)
    assert law.b_pos[0] == pytest.approx(2e-8, rel=1e-7) and law.b_neg[0] == pytest.approx(3e-8, rel=1e-7)
    assert law.reason[0] == ReasonCode.OK and law.rms_log_residual[0] < 1e-9


def test_negative_conductance_in_window_is_flagged():
    bias = np.linspace(-40e-3, 40e-3, 1601)
    didv = 1e-8 * np.abs(bias) ** 0.3
    didv[1300] = -1e-9
    law = fit_power_law(bias, didv)
    assert law.reason == ReasonCode.NONPOSITIVE_CONDUCTANCE and np.isnan(law.alpha)


@pytest.mark.parametrize("method", ["box", "savgol"])
def test_derivative_of_a_cubic_is_exact_in_the_interior(method):
    bias = np.linspace(-40e-3, 40e-3, 1601)
    current = 1e-8 * bias + 3e-6 * bias**3
    d = derivative(bias, current, method=method)
    inner = slice(20, -20)
    expected = 1e-8 + 9e-6 * bias**2
    # the box derivative has a second-order smoothing term 3e-6 * 6 * (s h)^2 * k; bound it
    np.testing.assert_allclose(d[inner], expected[inner], rtol=2e-4 if method == "box" else 1e-9)


def test_conductance_sign_normalises_either_convention():
    bias = np.linspace(-40e-3, 40e-3, 101)
    current = np.stack([1e-8 * bias, -1e-8 * bias])
    assert conductance_sign(bias, current).tolist() == [1, -1]
    assert conductance_sign(bias, -np.ones((2, 101)), kind="didv").tolist() == [-1, -1]


def test_prepare_sweep_reorders_channels_with_the_bias():
    bias = np.array([3.0, 2.0, 1.0])
    b, c = prepare_sweep(bias, np.array([[30.0, 20.0, 10.0]]))
    assert b.tolist() == [1.0, 2.0, 3.0] and c.tolist() == [[10.0, 20.0, 30.0]]


def test_pick_channels_by_name_and_override():
    names = ["Bias calc (V)", "Current (A)", "Current [bwd] (A)", "Input 2 (V)", "LI Demod 1 X (A)", "Z (m)"]
    assert pick_channels(names) == (1, 4)  # the internal lock-in wins over an external input
    assert pick_channels(["Current (A)", "Input 2 (V)"]) == (0, 1)
    assert pick_channels(names, lockin="Input 2 (V)") == (1, 3)
    with pytest.raises(AnalysisError, match="available channels"):
        pick_channels(names, current="I (A)")
    with pytest.raises(AnalysisError, match="Z \\(m\\)"):
        pick_channels(["Z (m)", "Phase (deg)"])


def test_sweep_signal_must_be_the_bias():
    check_sweep_is_bias("Bias (V)")
    check_sweep_is_bias("Bias calc (V)")
    with pytest.raises(AnalysisError, match="not the bias"):
        check_sweep_is_bias("Z (m)")


def test_kernel_options_validate_with_a_fix():
    with pytest.raises(AnalysisError, match="odd"):
        KernelOptions(smoothing_points=10)
    with pytest.raises(AnalysisError, match="low < high"):
        KernelOptions(fit_window_V=(30e-3, 5e-3))
    with pytest.raises(AnalysisError, match="known"):
        KernelOptions.from_dict({"fit_windw_V": (1, 2)})


def test_gap_from_lockin_needs_a_lockin(film_spectra):
    film, current, _ = film_spectra
    with pytest.raises(AnalysisError, match="gap_source='current'"):
        analyse_spectra(film.bias_V, current=current, options=KernelOptions(gap_source="lockin"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_derivative_of_the_used_columns_equals_the_full_derivative(dtype):
    """The batch path derives only the columns the fits read (also near the padded sweep ends)."""
    from stslive.live.kernels.derivative import box_derivative_into

    rng = np.random.default_rng(5)
    bias = np.linspace(-40e-3, 40e-3, 401)
    current = (1e-8 * bias + 3e-6 * bias**3 + rng.normal(0, 1e-12, (7, bias.size))).astype(dtype)
    sign = np.array([1, -1, 1, 1, -1, 1, 1], np.int8)
    full = derivative(bias, current, points=11) * sign[:, None]
    out = np.full_like(current, np.nan)
    columns = ((6, 40), (100, 180), (390, 395))  # the first and last reach into the padded ends
    box_derivative_into(out, current, columns, points=11, step=float(bias[1] - bias[0]), sign=sign)
    for lo, hi in columns:
        np.testing.assert_allclose(out[:, lo:hi], full[:, lo:hi], rtol=2e-4 if dtype == np.float32 else 1e-9)
    assert np.isnan(out[:, 40:100]).all() and out.dtype == dtype


def test_median_sign_counts_like_numpy_median():
    from stslive.live.kernels.sweep import _median_sign

    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 1, (200, 9))
    even = np.array([[-1.0, -3.0, 2.0, 5.0], [-3.0, -1.0, 2.0, 1.0], [0.0, 0.0, -1.0, 1.0], [np.nan, 1, 2, 3]])
    for arr in (x, even, np.where(x > 1, 0.0, x)):
        expected = np.sign(np.median(arr, axis=-1))
        np.testing.assert_array_equal(np.where(expected < 0, -1, 1), np.where(_median_sign(arr) < 0, -1, 1))


def test_threads_and_chunks_do_not_change_the_result(film_spectra):
    film, current, lockin = film_spectra
    base = KernelOptions(dynes_width_eV=1e-4, modulation_Vrms=film.params.modulation_Vrms)
    whole = analyse_spectra(film.bias_V, current=current, lockin=lockin, options=base)
    runs = [
        analyse_spectra(
            film.bias_V,
            current=current,
            lockin=lockin,
            options=KernelOptions(**{**base.__dict__, "chunk": 4, "threads": threads}),
        )
        for threads in (1, 2)
    ]
    for name in whole._fields:
        # same chunks: bit-identical whatever the threads; other chunks: BLAS blocks sum in
        # another order, equal to float32 rounding
        np.testing.assert_array_equal(getattr(runs[1], name), getattr(runs[0], name), err_msg=name)
        np.testing.assert_allclose(getattr(runs[1], name), getattr(whole, name), rtol=1e-5, err_msg=name)


def test_stage_seconds_reports_every_stage(film_spectra):
    film, current, _ = film_spectra
    seconds: dict[str, float] = {}
    analyse_spectra(film.bias_V, current=current, options=KernelOptions(chunk=8), stage_seconds=seconds)
    assert set(seconds) == {"sign + derivative", "coarse peaks", "template refinement", "power-law fit", "assemble"}
    assert all(t >= 0 for t in seconds.values()) and sum(seconds.values()) > 0
    with pytest.raises(AnalysisError, match="threads"):
        KernelOptions(threads=0)


def test_bench_prints_rates_ratio_and_the_stage_breakdown(capsys):
    import argparse

    from stslive.acquisition.cli import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert (
        bench.run(
            parser.parse_args(["analysis", "--grid", "12x10", "--sample", "5", "--repeat", "2", "--threads", "2"])
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "spectra/s" in out and "ratio:" in out and "median of 2 passes" in out
    for stage in ("sign + derivative", "coarse peaks", "template refinement", "power-law fit"):
        assert stage in out
    from stslive.drivers.errors import ConfigError

    with pytest.raises(ConfigError, match="repeat"):
        bench.run(parser.parse_args(["analysis", "--repeat", "0"]))
