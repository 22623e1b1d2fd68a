"""The film process's own correlation functions (film_maps.ensemble_correlations) against its generation code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft

from stslive.drivers.errors import ConfigError
from stslive.live import theory
from stslive.live.correlations import correlation_report
from stslive.mocks import film_maps
from stslive.mocks.film import make_film
from stslive.mocks.film_params import FilmParams


class ImpulseNoise:
    """Stands in for the generator's white noise with a unit impulse: the generator then returns its kernel."""

    def standard_normal(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape)
        out[0, 0] = 1.0
        return out


def kernel_correlations(params: FilmParams, n: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ensemble correlations on an n x n torus: the covariance of k_x * W and k_y * W is k_x (x) k_y."""
    correlation_px = params.l_rho_m / params.pixel_m
    rho = film_maps.gaussian_random_field((n, n), sigma=1.0, correlation_px=correlation_px, rng=ImpulseNoise())
    alpha = theory.aa_exponent_shift(
        rho, bias_V=params.aa_bias_V, diffusion_m2_s=params.diffusion_m2_s, l_alpha_m=params.l_rho_m
    )
    gap = theory.gap_relative_shift(rho, hbar_omega_D_K=params.hbar_omega_D_K, gap_K=params.gap_eq3_K)
    gap = film_maps.smooth_periodic(gap, sigma_px=film_maps.gap_smoothing_m(params) / params.pixel_m)
    spectra = {name: scipy.fft.rfft2(k) for name, k in (("delta", gap), ("alpha", alpha))}

    def cov(a: str, b: str) -> np.ndarray:
        return scipy.fft.irfft2(spectra[a] * np.conj(spectra[b]), s=(n, n))

    dd, aa, da = cov("delta", "delta"), cov("alpha", "alpha"), cov("delta", "alpha")
    return dd / dd[0, 0], aa / aa[0, 0], da / math.sqrt(dd[0, 0] * aa[0, 0])


def test_analytic_ensemble_equals_the_generation_kernel() -> None:
    params = FilmParams(ny=8, nx=8)
    exact = kernel_correlations(params)
    lag = np.fft.fftfreq(512, 1 / 512)
    radius_m = np.hypot(lag[:, None], lag[None, :]) * params.pixel_m
    near = radius_m < 100e-9
    for numeric, analytic in zip(exact, film_maps.ensemble_correlations(radius_m, params), strict=True):
        np.testing.assert_allclose(numeric[near], analytic[near], atol=2e-3)
    truth = film_maps.true_correlation_figures(params)
    assert truth["rho_cross_0"] == pytest.approx(exact[2][0, 0], abs=1e-3) and truth["rho_cross_0"] < -0.9
    # the paper's geometry: l_Delta = sqrt(l^2 + 4 s^2) with s = 2 xi(0) = 10.5 nm
    assert truth["l_alpha_nm"] == pytest.approx(18.0) and truth["l_delta_nm"] == pytest.approx(27.62, abs=0.01)
    assert truth["l_cross_nm"] == pytest.approx(23.31, abs=0.01)


def test_a_large_film_measures_its_ensemble_lengths() -> None:
    """make_film's own maps (its smoothing, not film_maps's) on 1024 x 1024 pixels: within 3 sampling sigmas."""
    params = FilmParams(ny=1024, nx=1024, seed=5)
    film = make_film(params)
    measured = correlation_report(film.delta_eV, film.alpha, pixel_size_m=params.pixel_m, intervals=False)
    truth = film_maps.true_correlation_figures(params)
    for key in ("l_delta_nm", "l_alpha_nm", "l_cross_nm"):
        assert measured[key] == pytest.approx(truth[key], rel=0.06), key
    assert measured["rho_cross_0"] == pytest.approx(truth["rho_cross_0"], abs=0.01)


def test_a_film_without_fluctuations_has_no_lengths() -> None:
    with pytest.raises(ConfigError, match="sigma_rho_ohm = 0"):
        film_maps.true_correlation_figures(FilmParams(ny=4, nx=4, sigma_rho_ohm=0.0))
