"""The batch engine is the public step functions: bit-equal results on several kinds of sweep.

analyse_spectra derives and smooths only the columns its fits read; given those columns the
public functions (conductance_sign, measure_noise, derivative, extract_gap, fit_power_law) must
give the same bits. Sweeps: symmetric, asymmetric, one-sided, coarse (401 points), fine (3201 points),
recorded from positive to negative bias; float32 and float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from stslive.drivers.errors import AnalysisError
from stslive.live import flags, theory
from stslive.live.kernels import (
    KernelOptions,
    ReasonCode,
    Smoothing,
    analyse_spectra,
    buffers,
    calibrate,
    conductance_sign,
    derivative,
    estimate_dynes_width,
    extract_gap,
    fit_power_law,
    gap_search_covered,
    measure_noise,
    prepare_sweep,
    templates,
)
from stslive.live.kernels.derivative import running_mean_into, running_mean_span
from stslive.live.kernels.noise import noise_triples
from stslive.live.kernels.powerlaw import window_columns
from stslive.mocks.film import FilmParams, make_film

SWEEPS = {
    "symmetric": {"n_points": 1601},
    "asymmetric": {"n_points": 1201, "bias_start_V": -0.02, "bias_end_V": 0.04},
    "one-sided": {"n_points": 1601},  # the positive half, cut below
    "coarse": {"n_points": 401},
    "fine": {"n_points": 3201},
    "reversed": {"n_points": 1601, "bias_start_V": 0.04, "bias_end_V": -0.04},
}
MODULATION_VRMS = 50e-6


@pytest.fixture(scope="module", params=sorted(SWEEPS))
def sweep(request):
    film = make_film(FilmParams(ny=4, nx=5, seed=7, **SWEEPS[request.param]))
    iy, ix = np.indices(film.shape)
    sp = film.spectra(iy, ix)
    bias, cur, lia = sp.bias_V, sp.current_A, sp.lockin_x_A
    if request.param == "one-sided":
        keep = bias >= 0
        bias, cur, lia = bias[keep], cur[..., keep], lia[..., keep]
    return request.param, bias, cur, lia


def _same(a, b, what):
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.dtype == y.dtype, (what, name, x.dtype, y.dtype)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (what, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("gap_source", "alpha_source"), [("current", "current"), ("lockin", "current"), ("lockin", "lockin")]
)
def test_engine_equals_the_public_steps_bit_for_bit(sweep, dtype, gap_source, alpha_source):
    name, bias, cur, lia = sweep
    cur, lia = cur.astype(dtype), lia.astype(dtype)
    window = (5e-3, 20e-3) if name == "asymmetric" else (5e-3, 30e-3)
    opts = KernelOptions(
        gap_source=gap_source,
        alpha_source=alpha_source,
        fit_window_V=window,
        dynes_width_eV=1e-4,
        gap_eV=1.2e-3,
        smoothing_points=11,
        lockin_smoothing_points=7,
        modulation_Vrms=MODULATION_VRMS,
        joint_fit_above=0.0 if dtype == np.float32 else float("inf"),  # both the joint and the per-peak path
        chunk=7,
    )
    result = analyse_spectra(bias, current=cur, lockin=lia, options=opts)

    b, c, li = prepare_sweep(np.asarray(bias, dtype=np.float64), cur, lia)
    signed_current = c * conductance_sign(b, c)[..., None]
    signed_lockin = li * conductance_sign(b, li, kind="didv")[..., None]
    triples = noise_triples(b.tobytes(), opts.gap_search_V[1])
    noise = {"current": measure_noise(c, triples), "lockin": measure_noise(li, triples)}
    signal = signed_current if gap_source == "current" else signed_lockin
    gap = extract_gap(b, signal, integrated=gap_source == "current", options=opts, noise=noise[gap_source])
    if alpha_source == "current":
        smoothing = Smoothing("box", 11)
        windows = window_columns(b.tobytes(), window, smoothing.reach, smoothing.stride)
        ranges = tuple((w.start, w.stop) for w in windows if w is not None)
        didv = derivative(b, signed_current, points=11, columns=ranges) if ranges else np.full_like(c, np.nan)
    else:
        smoothing = Smoothing("mean", 7)
        didv = np.full_like(li, np.nan)
        running_mean_into(didv, signed_lockin, ((0, b.size),), points=7)
    law = fit_power_law(b, didv, window_V=window, smoothing=smoothing, noise=noise[alpha_source])

    engine_gap = (result.delta_eV, result.peak_neg_V, result.peak_pos_V, result.visibility, result.peak_score,
                  result.delta_sigma_eV, result.delta_dynes_eV, result.gamma_dynes_eV, result.gap_reason)  # fmt: skip
    _same(gap, engine_gap, name)
    engine_law = (result.alpha, result.alpha_pos, result.alpha_neg, result.b, result.b_pos, result.b_neg,
                  result.rms_log_residual, result.alpha_sigma, result.alpha_reason)  # fmt: skip
    _same(law, engine_law, name)
    if name in ("symmetric", "coarse", "fine", "reversed"):  # the sweeps that cover both fits: not all NaN
        assert result.valid.mean() >= 0.5, (name, np.bincount(result.reason.ravel()))


def test_the_calibration_is_the_public_calibration(sweep):
    name, bias, cur, _ = sweep
    opts = KernelOptions(gap_source="current")
    result = analyse_spectra(bias, current=cur, options=opts)
    fixed = calibrate(bias, current=cur.reshape(-1, cur.shape[-1]), options=opts)
    assert fixed.calibrated and estimate_dynes_width(bias, current=cur, options=opts) == fixed.dynes_width_eV
    _same(result, analyse_spectra(bias, current=cur, options=fixed), name)


def test_a_derivative_on_columns_is_the_derivative_of_the_sub_sweep(sweep):
    # The engine derives a range from the samples it depends on (or the whole row near an end):
    # bit-equal to the public derivative of that sub-sweep.
    name, bias, cur, _ = sweep
    b, c = prepare_sweep(np.asarray(bias, dtype=np.float64), cur)
    n, p = b.size, 11
    for lo, hi in ((p, n // 3), (n // 3, n // 2), (2, 40), (n - 60, n - 3), (0, n)):
        part = derivative(b, c, points=p, columns=((lo, hi),))
        a, z = running_mean_span(max(lo, (p + 1) // 2), min(hi, n - (p + 1) // 2), reach=p, n=n)
        sub = derivative(b[a:z], c[..., a:z], points=p)
        assert np.array_equal(part[..., lo:hi], sub[..., lo - a : hi - a], equal_nan=True), (name, lo, hi)
        assert np.isnan(part[..., :lo]).all() and np.isnan(part[..., hi:]).all()
        # and the whole-row derivative to float rounding
        whole = derivative(b, c, points=p)
        np.testing.assert_allclose(part[..., lo:hi], whole[..., lo:hi], rtol=1e-5, atol=1e-15)
    with pytest.raises(AnalysisError, match="box"):
        derivative(b, c, method="savgol", columns=((0, 10),))


def test_a_sweep_too_short_for_the_gap_gives_a_reason_not_an_error():
    # This sweep reaches +-0.6 mV: the map's gap (~1.2 meV) lies outside it. The kernels used
    # to raise "cannot estimate the Dynes width"; now every spectrum is refused with a reason.
    film = make_film(FilmParams(ny=2, nx=3, seed=1, n_points=121, bias_start_V=-0.0006, bias_end_V=0.0006))
    sp = film.spectra(*np.indices(film.shape))
    res = analyse_spectra(sp.bias_V, current=sp.current_A, lockin=sp.lockin_x_A)
    assert np.all(res.gap_reason != ReasonCode.OK) and np.isnan(res.delta_eV).all()
    assert np.all(res.alpha_reason == ReasonCode.WINDOW_NOT_COVERED)
    assert gap_search_covered(sp.bias_V, (0.1e-3, 0.5e-3)) and not gap_search_covered(
        sp.bias_V, (0.1e-3, 0.5e-3), edge=60
    )


def test_one_boltzmann_constant_and_one_scratch_pool():
    assert templates.K_B_EV_PER_K is theory.K_B_EV_PER_K and flags.K_B_EV is theory.K_B_EV_PER_K
    assert pytest.approx(8.617333262e-5, rel=1e-10) == theory.K_B_EV_PER_K  # CODATA 2018, eV/K
    assert flags._scratch is buffers.scratch


def test_scratch_arrays_are_per_name_per_thread_and_big_ones_are_not_kept():
    import threading

    a = buffers.scratch("test.a", (4, 6), np.float32)
    assert a.flags.c_contiguous and a.shape == (4, 6)
    assert np.shares_memory(a, buffers.scratch("test.a", (3, 5), np.float32))
    assert not np.shares_memory(a, buffers.scratch("test.b", (4, 6), np.float32))
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(buffers.scratch("test.a", (4, 6), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(a, other[0])
    rows = buffers.MAX_KEPT_BYTES // (8 * 10) + 1
    big = buffers.scratch("test.big", (rows, 10), np.float64)
    assert not np.shares_memory(big, buffers.scratch("test.big", (rows, 10), np.float64))
    nan = buffers.nan_buffer("test.nan", 3, 8, np.float64, ((2, 4),))
    nan[:, 2:4] = 1.0
    again = buffers.nan_buffer("test.nan", 3, 8, np.float64, ((2, 4),))
    assert np.shares_memory(nan, again) and np.isnan(again[:, :2]).all() and np.isnan(again[:, 4:]).all()
