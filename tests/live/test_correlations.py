"""Periodic correlations of paper Appendix A and the two correlation-length rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stslive.drivers.errors import AnalysisError
from stslive.live import correlations as cr
from stslive.live.correlation_estimator import MaskedCorrelator, gaussian_fit_length

NM = 1e-9


def gaussian_field(shape: tuple[int, int], kernel_sigma_px: float, seed: int) -> np.ndarray:
    """White noise smoothed by a periodic Gaussian of std s: covariance exp(-r^2 / 4 s^2), 1/e at r = 2 s."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * math.pi**2 * kernel_sigma_px**2 * (ky**2 + kx**2))
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * transfer).real


def brute_force(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Eq. (A2) literally: sum_r' (X(r') - <X>)(Y(r' - r) - <Y>) / (N sigma_X sigma_Y), periodic."""
    dx, dy = x - x.mean(), y - y.mean()
    out = np.empty(x.shape)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.sum(dx * np.roll(dy, (i, j), axis=(0, 1)))
    return out / (x.size * x.std() * y.std())


def test_fft_equals_the_definition_on_a_small_grid() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    np.testing.assert_allclose(cr.correlation_map(x, y, periodic=True), brute_force(x, y), atol=1e-12)
    np.testing.assert_allclose(cr.correlation_map(x, periodic=True), brute_force(x, x), atol=1e-12)


def overlap_pairs(shape: tuple[int, int]) -> np.ndarray:
    """Pairs of a fully measured frame at each minimum-image lag without wrapping: (ny - |dy|)(nx - |dx|)."""
    ly = np.abs(np.fft.fftfreq(shape[0], 1 / shape[0]))
    lx = np.abs(np.fft.fftfreq(shape[1], 1 / shape[1]))
    return (shape[0] - ly)[:, None] * (shape[1] - lx)[None, :]


def test_white_noise_is_a_delta_at_zero() -> None:
    noise = np.random.default_rng(1).standard_normal((128, 96)).astype(np.float32)
    rho = cr.correlation_map(noise, periodic=True)
    assert rho.dtype == np.float32
    assert rho[0, 0] == pytest.approx(1.0, abs=1e-6)
    off = np.abs(rho.ravel()[1:])
    assert off.max() < 5 / math.sqrt(noise.size)  # each lag ~ N(0, 1/N)
    # without wrapping, a lag of P pairs is ~ N(0, 1/P)
    rho = cr.correlation_map(noise)
    assert rho.dtype == np.float32 and rho[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert (np.abs(rho) * np.sqrt(overlap_pairs(noise.shape))).ravel()[1:].max() < 5
    report = cr.correlation_report(noise, noise, pixel_size_m=NM, intervals=False)
    assert report["l_delta_noise_nm"] is not None and report["l_delta_noise_nm"] <= 1.5
    assert report["noise_band_delta"] == pytest.approx(2 / math.sqrt(noise.size), rel=0.2)


@pytest.mark.parametrize("kernel_sigma_px", [2.0, 4.0])
def test_gaussian_covariance_gives_its_1e_length(kernel_sigma_px: float) -> None:
    field = gaussian_field((512, 512), kernel_sigma_px, seed=2)
    profile = cr.radial_profile(cr.correlation_map(field), pixel_size_m=0.5 * NM)
    expected = 2 * kernel_sigma_px * 0.5 * NM
    assert cr.correlation_length_1e(profile) == pytest.approx(expected, rel=0.03)


def test_cross_with_negative_is_minus_one_and_uses_abs_profile() -> None:
    field = gaussian_field((128, 128), 3.0, seed=3)
    assert cr.correlation_map(field, -field)[0, 0] == pytest.approx(-1.0, abs=1e-12)
    report = cr.correlation_report(field, -field, pixel_size_m=NM, intervals=False)
    assert report["rho_cross_0"] == pytest.approx(-1.0, abs=1e-12)
    assert report["l_cross_nm"] == pytest.approx(report["l_delta_nm"], rel=1e-9)
    assert report["l_cross_noise_nm"] == pytest.approx(report["l_delta_noise_nm"], rel=1e-9)


def test_periodic_shift_invariance() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((32, 40)), rng.standard_normal((32, 40))
    base = cr.correlation_map(x, y, periodic=True)
    shift = (7, -13)
    moved_both = cr.correlation_map(np.roll(x, shift, axis=(0, 1)), np.roll(y, shift, axis=(0, 1)), periodic=True)
    np.testing.assert_allclose(moved_both, base, atol=1e-12)
    # shifting X alone by s moves every correlation to lag r + s
    moved_x = cr.correlation_map(np.roll(x, shift, axis=(0, 1)), y, periodic=True)
    np.testing.assert_allclose(moved_x, np.roll(base, shift, axis=(0, 1)), atol=1e-12)


def test_nan_pixels_use_pair_counts() -> None:
    field = gaussian_field((256, 256), 3.0, seed=5)
    full = cr.correlation_length_1e(cr.radial_profile(cr.correlation_map(field), pixel_size_m=NM))
    holed = field.copy()
    holed[np.random.default_rng(6).random(field.shape) < 0.2] = np.nan
    rho = cr.correlation_map(holed)
    assert rho[0, 0] == pytest.approx(1.0, abs=1e-12)  # zero lag: only measured pixels pair
    masked = cr.correlation_length_1e(cr.radial_profile(rho, pixel_size_m=NM))
    assert masked == pytest.approx(full, rel=0.03)
    # a run stopped early: the unmeasured rows are excluded, not zeros that dilute rho
    stopped = field.copy()
    stopped[200:] = np.nan
    # horizontal lags pair only measured rows: exactly the correlation of the measured block
    assert cr.correlation_map(stopped)[0, 1] == pytest.approx(cr.correlation_map(field[:200])[0, 1], abs=1e-12)


def test_sparse_lags_become_nan() -> None:
    x = np.full((8, 8), np.nan)
    x[0, :4] = [1.0, 2.0, 0.0, 3.0]
    rho = cr.correlation_map(x, min_pair_fraction=0.5)
    assert rho[0, 0] == pytest.approx(1.0) and np.isnan(rho[4, 4])


def test_radial_profile_of_a_known_function() -> None:
    shape = (64, 48)
    radius = cr.lag_radius_m(shape, pixel_size_m=(2 * NM, 1 * NM))
    assert (
        radius[0, 0] == 0
        and radius[1, 0] == pytest.approx(2 * NM)
        and radius[-1, -1] == pytest.approx(math.hypot(2, 1) * NM)
    )
    profile = cr.radial_profile(np.exp(-radius / (10 * NM)), pixel_size_m=(2 * NM, 1 * NM))
    assert profile.radius_m[0] == 0 and profile.n_lags[0] == 1
    assert profile.radius_m.max() <= 24 * NM  # half the shorter side (48 px * 1 nm)
    np.testing.assert_allclose(profile.value, np.exp(-profile.radius_m / (10 * NM)), rtol=0.02)
    assert cr.correlation_length_1e(profile) == pytest.approx(10 * NM, rel=0.02)


def test_noise_rule_is_longer_than_1e_for_a_correlated_field() -> None:
    field = gaussian_field((256, 256), 3.0, seed=7)
    other = gaussian_field((256, 256), 3.0, seed=8)
    report = cr.correlation_report(field, other, pixel_size_m=NM, topography=other, intervals=False)
    assert report["l_delta_nm"] is not None and report["l_delta_noise_nm"] is not None
    assert report["l_delta_noise_nm"] > report["l_delta_nm"]
    # two independent fields: the cross profile sits inside its noise band already at 0 or near it
    assert abs(report["rho_cross_0"]) < report["noise_band_cross"] * 1.5
    assert report["rho_delta_topo_0"] == pytest.approx(report["rho_cross_0"])


def test_report_keys_and_none_topography() -> None:
    field = gaussian_field((64, 64), 2.0, seed=9)
    report = cr.correlation_report(field, 0.5 * field + gaussian_field((64, 64), 2.0, seed=10), pixel_size_m=NM)
    figures = ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")
    assert set(report) == {
        "l_delta_nm",
        "l_alpha_nm",
        "l_cross_nm",
        "l_delta_noise_nm",
        "l_alpha_noise_nm",
        "l_cross_noise_nm",
        "noise_band_delta",
        "noise_band_alpha",
        "noise_band_cross",
        "l_delta_fit_nm",
        "l_alpha_fit_nm",
        "l_cross_fit_nm",
        "rho_cross_0",
        "rho_delta_topo_0",
        "correlation_pixels",
        "correlation_pixel_fraction",
        "warnings",
        *(f"{key}_corrected" for key in figures),
        *(f"{key}_ci90" for key in figures),
    }
    assert report["rho_delta_topo_0"] is None
    assert 0.2 < report["rho_cross_0"] < 0.8
    assert report["correlation_pixels"] == 64 * 64 and report["correlation_pixel_fraction"] == 1.0
    for key in figures:
        low, high = report[f"{key}_ci90"]
        assert low <= report[f"{key}_corrected"] <= high


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.ones((4, 4)), None, "constant"),
        (np.zeros(5), None, "2D"),
        (np.random.default_rng(0).random((4, 4)), np.random.default_rng(1).random((4, 5)), "shape"),
        (np.full((4, 4), np.nan), None, "finite"),
    ],
)
def test_bad_maps_are_refused(x: np.ndarray, y: np.ndarray | None, match: str) -> None:
    with pytest.raises(AnalysisError, match=match):
        cr.correlation_map(x, y)


def test_bad_pixel_size_is_refused() -> None:
    with pytest.raises(AnalysisError, match="pixel_size_m"):
        cr.radial_profile(np.ones((4, 4)), pixel_size_m=0.0)


def literal_overlap_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Eq. (A2) without wrapping, over measured pairs only, each lag normalised by its own pairs' second moments."""
    mx, my = np.isfinite(x), np.isfinite(y)
    dx, dy = x - x[mx].mean(), y - y[my].mean()
    ny, nx = x.shape
    out = np.full(x.shape, np.nan)
    for ly in range(-(ny // 2), (ny - 1) // 2 + 1):
        for lx in range(-(nx // 2), (nx - 1) // 2 + 1):
            total, square_x, square_y = 0.0, 0.0, 0.0
            for iy in range(ny):
                for ix in range(nx):
                    jy, jx = iy - ly, ix - lx
                    if 0 <= jy < ny and 0 <= jx < nx and mx[iy, ix] and my[jy, jx]:
                        total += dx[iy, ix] * dy[jy, jx]
                        square_x += dx[iy, ix] ** 2
                        square_y += dy[jy, jx] ** 2
            if square_x > 0:
                out[ly % ny, lx % nx] = total / math.sqrt(square_x * square_y)
    return out


def test_non_wrapping_estimator_equals_the_definition_on_a_map_with_gaps() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((6, 9)), rng.standard_normal((6, 9))
    x[rng.random(x.shape) < 0.3] = np.nan  # unmeasured pixels, different in each map
    y[rng.random(y.shape) < 0.2] = np.nan
    np.testing.assert_allclose(cr.correlation_map(x, y, min_pair_fraction=0.0), literal_overlap_correlation(x, y))
    np.testing.assert_allclose(cr.correlation_map(x, min_pair_fraction=0.0), literal_overlap_correlation(x, x))


def test_non_wrapping_lags_see_no_edge_pairs() -> None:
    """Windows of a larger field: wrapped pairs join far-apart, uncorrelated edges and lower the profile."""
    big = gaussian_field((1000, 960), 4.0, seed=12)  # 1/e length 8 px
    lag = {False: [], True: []}
    for iy in range(0, 1000, 250):
        for ix in range(0, 960, 240):  # 16 windows of 100 x 120
            window = big[iy : iy + 100, ix : ix + 120]
            for periodic in lag:
                lag[periodic].append(cr.correlation_map(window, periodic=periodic)[0, 8])
    flat, wrapped = float(np.mean(lag[False])), float(np.mean(lag[True]))
    # the window's own mean removes ~ pi l^2 / area = 0.017 of the variance: 0.357 expected
    assert flat == pytest.approx(math.exp(-1.0), abs=0.03)
    # wrapping pairs 8 of 120 columns with uncorrelated ones: 8/120 of the value lost
    assert wrapped == pytest.approx(flat * (1 - 8 / 120), abs=0.005)


def test_gaussian_fit_length_ignores_offset_and_amplitude() -> None:
    radius = np.arange(0, 60) * NM
    for amplitude, offset in ((1.0, 0.0), (0.8, -0.05), (-0.6, 0.02)):
        value = amplitude * np.exp(-((radius / (12 * NM)) ** 2)) + offset
        value[0] = 1.0  # the origin holds the white noise too and is not fitted
        profile = cr.RadialProfile(radius, value, np.ones(radius.size, np.int64))
        assert gaussian_fit_length(profile, reference_m=10 * NM) == pytest.approx(12 * NM, rel=1e-3)
    for length_nm, edge in ((100.0, math.inf), (1.0, 0.0)):  # beyond the fitted 3-30 nm: the edge it lies past
        value = np.exp(-((radius / (length_nm * NM)) ** 2)) - 0.01
        profile = cr.RadialProfile(radius, value, np.ones(radius.size, np.int64))
        assert gaussian_fit_length(profile, reference_m=10 * NM) == edge


def test_warnings_name_few_pixels_and_finite_size() -> None:
    field = gaussian_field((200, 200), 1.5, seed=13)  # 1/e length 3 px: 1/67 of the side
    other = 0.7 * field + 0.7 * gaussian_field((200, 200), 1.5, seed=14)
    clean = cr.correlation_report(field, other, pixel_size_m=NM, intervals=False)
    assert clean["warnings"] == []
    holed_x, holed_y = field.copy(), other.copy()
    gone = np.random.default_rng(15).random(field.shape) < 0.6
    holed_x[gone] = holed_y[gone] = np.nan
    holed = cr.correlation_report(holed_x, holed_y, pixel_size_m=NM, intervals=False)
    assert [w.split(":")[0] for w in holed["warnings"]] == ["few-pixels"]
    assert f"{int((~gone).sum())} of 40000 pixels" in holed["warnings"][0]
    small = cr.correlation_report(field[:25, :25], other[:25, :25], pixel_size_m=2 * NM)  # 1/e 6 nm, side 50 nm
    tags = [w.split(":")[0] for w in small["warnings"]]
    assert tags == ["finite-size", "finite-size", "finite-size", "biased-inversion"]
    assert "90 % interval" in small["warnings"][0]


def test_a_length_the_half_box_does_not_reach_is_named() -> None:
    report = {
        "correlation_pixel_fraction": 1.0,
        "correlation_pixels": 100,
        **{f"l_{k}_nm{s}": None for k in ("delta", "alpha", "cross") for s in ("", "_corrected", "_ci90")},
    }
    warnings = cr.correlation_warnings(report, shape=(10, 10), pixel_size_m=(NM, NM))
    assert [w.split(":")[0] for w in warnings] == ["no-length"] * 3 + ["biased-inversion"]
    assert "half box (5 nm)" in warnings[0]


def test_tail_noise_needs_a_profile_that_fluctuates_about_zero() -> None:
    ones = np.ones((12, 12), bool)
    correlator = MaskedCorrelator(ones, ones, pixel_size_m=NM)
    radius = np.arange(7) * NM
    corr_map = np.where(correlator.radius_m >= 2 * NM, 0.1, 1.0)  # every tail lag 0.1 before the pair scaling
    counts = np.ones(7, np.int64)
    fluctuating = cr.RadialProfile(radius, np.array([1.0, 0.4, -0.05, 0.03, -0.02, 0.01, -0.01]), counts)
    level = correlator.tail_noise("delta", corr_map, fluctuating)
    tail = (correlator.radius_m >= 2 * NM) & (correlator.radius_m <= 6 * NM)  # up to the half box
    pairs = overlap_pairs((12, 12))
    assert level == pytest.approx(math.sqrt(np.mean(0.01 * pairs[tail] / pairs[0, 0])))
    dip = cr.RadialProfile(radius, np.array([1.0, 0.4, -0.05, -0.1, -0.2, -0.25, -0.3]), counts)
    assert math.isnan(correlator.tail_noise("delta", corr_map, dip))  # a finite-size dip, not noise


def test_a_handful_of_pixels_gets_no_interval() -> None:
    field = gaussian_field((40, 50), 3.0, seed=17)
    few = np.full(field.shape, np.nan)
    few.flat[[3, 170, 611, 1204, 1777]] = field.flat[[3, 170, 611, 1204, 1777]]
    report = cr.correlation_report(few, 0.8 * few, pixel_size_m=NM)
    assert report["rho_cross_0_ci90"] is None and report["l_delta_nm_ci90"] is None
    assert report["warnings"][0] == "no-interval: only 5 pixels in both maps; intervals need 10."
