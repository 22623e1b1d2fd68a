"""Accuracy goals of the kernels on a seeded simulated film, against its definition truth.

1601 points over +-40 mV, T = 0.3 K, 0.5 pA rms current noise at a 150 pA set-point (the
FilmParams defaults): Delta rms error <= 0.03 meV from I(V) alone, <= 0.015 meV with the lock-in
channel; alpha rms error <= 0.003. 40 x 40 = 1600 pixels make the rms meaningful (its own
relative uncertainty ~2 %) and take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from stslive.live.kernels import KernelOptions, ReasonCode, analyse_spectra
from stslive.mocks.film import FilmParams, make_film

GRID = 40


@pytest.fixture(scope="module")
def film_and_spectra():
    film = make_film(FilmParams(ny=GRID, nx=GRID, seed=2024))
    params = film.params
    assert (params.n_points, params.bias_start_V, params.bias_end_V) == (1601, -0.04, 0.04)
    assert (params.temperature_K, params.current_noise_A, params.i_set_A) == (0.3, 0.5e-12, 150e-12)
    iy, ix = np.indices((GRID, GRID))
    spectra = film.spectra(iy, ix, noise=True)
    truth = film.definition_truth()
    return film, spectra, truth


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((np.asarray(a, np.float64) - b) ** 2)))


def _check_coverage(result) -> None:
    # Failures are flagged, never silently dropped: at most 2 % of pixels may be refused, and
    # every refused pixel is NaN with a reason.
    assert result.valid.mean() >= 0.98, np.bincount(result.reason.ravel())
    refused = ~result.valid
    assert np.all(result.reason[refused] != ReasonCode.OK)
    assert np.all(np.isnan(result.delta_eV[result.gap_reason != 0]))


def test_delta_and_alpha_from_current_alone(film_and_spectra):
    film, spectra, (delta_true, alpha_true) = film_and_spectra
    res = analyse_spectra(film.bias_V, current=spectra.current_A)
    _check_coverage(res)
    delta_rms_meV = _rms(res.delta_eV, delta_true) * 1e3
    alpha_rms = _rms(res.alpha, alpha_true)
    print(f"current only: Delta rms {delta_rms_meV:.4f} meV, alpha rms {alpha_rms:.5f}")
    assert delta_rms_meV <= 0.03
    assert alpha_rms <= 0.003


def test_delta_with_the_lockin_channel(film_and_spectra):
    film, spectra, (delta_true, alpha_true) = film_and_spectra
    options = KernelOptions(modulation_Vrms=film.params.modulation_Vrms)
    res = analyse_spectra(film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=options)
    _check_coverage(res)
    delta_rms_meV = _rms(res.delta_eV, delta_true) * 1e3
    print(f"with lock-in: Delta rms {delta_rms_meV:.4f} meV")
    assert delta_rms_meV <= 0.015
    assert _rms(res.alpha, alpha_true) <= 0.003


def test_naive_argmax_misses_the_goal(film_and_spectra):
    """The reason for the template fit: argmax of the smoothed derivative is biased and noisy."""
    from stslive.live.kernels import derivative

    film, spectra, (delta_true, _) = film_and_spectra
    bias = film.bias_V
    didv = derivative(bias, spectra.current_A)
    pos = (bias > 0.3e-3) & (bias < 4e-3)
    neg = (bias < -0.3e-3) & (bias > -4e-3)
    naive = 0.5 * (bias[pos][np.argmax(didv[..., pos], -1)] - bias[neg][np.argmax(didv[..., neg], -1)])
    assert _rms(naive, delta_true) * 1e3 > 0.03


def test_accuracy_at_801_points():
    """Coarser sweeps (0.1 mV steps, the analyser tests' runs) keep the template fit unbiased.

    Measured on this film: Delta rms 0.0245 meV from I(V), 0.0156 meV with the lock-in (the
    goals are stated for 1601 points; before the template window was set in volts the
    801-point figures were 0.11 and 0.18 meV, or Delta < 0 for some template widths).
    """
    film = make_film(FilmParams(ny=GRID, nx=GRID, seed=2024, n_points=801))
    iy, ix = np.indices((GRID, GRID))
    spectra = film.spectra(iy, ix, noise=True)
    delta_true, alpha_true = film.definition_truth()
    res = analyse_spectra(film.bias_V, current=spectra.current_A)
    _check_coverage(res)
    assert np.all(res.delta_eV[res.valid] > 0)
    assert _rms(res.delta_eV, delta_true) * 1e3 <= 0.03
    assert _rms(res.alpha, alpha_true) <= 0.003
    options = KernelOptions(modulation_Vrms=film.params.modulation_Vrms)
    res = analyse_spectra(film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=options)
    _check_coverage(res)
    assert _rms(res.delta_eV, delta_true) * 1e3 <= 0.02
