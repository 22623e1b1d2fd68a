"""Delta at a bias step too coarse for the coherence peaks (0.4 mV steps, 3.4x the lock-in's peak width).

A window then holds one or two samples of a peak. What the analysis does there
(docs/physics.md 3.4): the map's width from the current's joint-fit profile likelihood, each
spectrum's joint fit started from its best grid shift over the whole range, and a Delta only
where the lock-in and the current agree. The accuracy goal (<= 0.03 meV) is asserted on the
matrix's film by ``test_gap_accuracy.py``; these tests hold the parts, and the goal on other
films, against the film's truth computed independently (``reference_truth``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from reference_truth import reference_truth

from stslive.live.kernels import KernelOptions, ReasonCode, analyse_spectra
from stslive.live.kernels.gap import gap_model, model_tables, step_too_coarse
from stslive.live.kernels.joint import joint_fit
from stslive.live.kernels.noise import measure_noise, noise_triples
from stslive.live.kernels.widths import profile_width
from stslive.mocks.film import FilmParams, make_film

WIDTH_EV = 0.08e-3


def _film(seed: int = 3, **knobs):
    shape = {"ny": 16, "nx": 32, **knobs}
    film = make_film(FilmParams(seed=seed, n_points=201, dynes_gamma_eV=WIDTH_EV, **shape))
    return film, film.spectra(*np.indices(film.shape))


@pytest.fixture(scope="module", params=[3, 4])
def coarse(request):
    return _film(request.param)


def _options(film) -> KernelOptions:
    return KernelOptions(temperature_K=film.params.temperature_K, modulation_Vrms=film.params.modulation_Vrms)


def _model(film, width_eV: float, *, integrated: bool):
    bias = np.asarray(film.bias_V, np.float64)
    return gap_model(
        step=float(bias[1] - bias[0]),
        options=_options(film),
        integrated=integrated,
        gap_eV=film.params.delta_mean_eV,
        width_eV=width_eV,
        coarse=True,
    )


def _rows(film, signal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bias = np.asarray(film.bias_V, np.float64)
    rows = np.asarray(signal).reshape(-1, bias.size).astype(np.float64)
    rows *= np.sign(rows[:, -1])[:, None]  # positive conductance (the current's sign follows V)
    return bias, rows, measure_noise(rows, noise_triples(bias.tobytes(), float(_options(film).gap_search_V[1])))


def test_the_step_is_coarse_for_the_lockins_peaks(coarse):
    film, _ = coarse
    bias = np.asarray(film.bias_V)
    opts = dataclasses.replace(_options(film), dynes_width_eV=WIDTH_EV)
    assert step_too_coarse(float(bias[1] - bias[0]), opts, integrated=False)


def test_the_maps_width_comes_from_the_currents_joint_fit_profile(coarse):
    film, spectra = coarse
    bias, rows, noise = _rows(film, spectra.current_A)
    width = profile_width(bias, rows, noise, lambda w: _model(film, w, integrated=True))
    assert width is not None and abs(np.log(width / WIDTH_EV)) < np.log(1.1), width


def test_the_joint_fit_searches_the_whole_shift_grid_for_its_start():
    # nearly noise-free spectra: from the far end of the shift grid one Gauss-Newton step lands
    # far off; searched, the fit finds the film's truth
    film, spectra = _film(lockin_noise_A=1e-16, current_noise_A=1e-15, ny=4, nx=8)
    truth = reference_truth(film).delta_eV.ravel()
    bias, rows, _ = _rows(film, spectra.lockin_x_A)
    tables = model_tables(bias.tobytes(), _model(film, WIDTH_EV, integrated=False))
    noise = np.full(rows.shape[0], 1e-16)
    searched = joint_fit(rows, None, noise, tables, iterations=4)
    from_edge = joint_fit(rows, np.zeros((rows.shape[0], 2)), noise, tables)

    def delta(fit):
        return 0.5 * (fit.peak_pos_V + fit.peak_neg_V)

    assert np.max(np.abs(delta(searched) - truth)) < 0.01e-3
    assert np.median(np.abs(delta(from_edge) - truth)) > 0.05e-3


def test_one_channel_is_refused_naming_the_step_two_measure_delta_where_they_agree(coarse):
    film, spectra = coarse
    truth = reference_truth(film).delta_eV
    for source in ("lockin", "current"):
        alone = analyse_spectra(
            film.bias_V,
            current=spectra.current_A,
            lockin=spectra.lockin_x_A,
            options=dataclasses.replace(_options(film), gap_source=source),
        )
        assert (alone.gap_reason == ReasonCode.BIAS_STEP_TOO_COARSE).all(), source
    both = analyse_spectra(film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=_options(film))
    _assert_the_goal(both, truth, valid=0.95, rms_meV=0.03)


def _assert_the_goal(both, truth: np.ndarray, *, valid: float, rms_meV: float | None) -> None:
    ok = both.valid_delta
    assert ok.mean() >= valid
    refused = set(np.unique(both.gap_reason[~ok]).tolist())
    fits = {ReasonCode.POOR_PEAK_FIT, ReasonCode.PEAK_AT_EDGE}
    assert refused <= {ReasonCode.BIAS_STEP_TOO_COARSE, *fits} and np.isnan(both.delta_eV[~ok]).all()
    err = (both.delta_eV.astype(np.float64) - truth)[ok]
    z = err / both.delta_sigma_eV[ok]
    if rms_meV is not None:
        assert np.sqrt(np.mean(err**2)) <= rms_meV * 1e-3  # the goal
    assert np.abs(err).max() <= 5 * 0.03e-3  # no silent garbage (5x the goal)
    assert 0.7 <= np.sqrt(np.mean(z**2)) <= 1.5  # calibrated errors


@pytest.mark.parametrize("current_noise_pA", [1.0, 2.0])
def test_a_noisier_current_still_gives_no_silent_garbage(current_noise_pA):
    # the current arbitrates between the lock-in's two minima (common_start) and checks it: with
    # 2-4x the film's current noise it does so less often; what it cannot settle is refused
    film, spectra = _film(current_noise_A=current_noise_pA * 1e-12)
    truth = reference_truth(film).delta_eV
    both = analyse_spectra(film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=_options(film))
    _assert_the_goal(both, truth, valid=0.9 if current_noise_pA == 1.0 else 0.4, rms_meV=None)
