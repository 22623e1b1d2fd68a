"""The analysis on conditions it was not tuned on, against a truth computed independently.

Each condition is a 64 x 48 simulated film (1 nm pixels, the film's default) that
differs from the reference (1601 points over +-40 mV, 0.5 pA, 0.3 K, Dynes width 0.08 meV,
Delta ~1.2 meV, 50 uV rms modulation) in one knob of FilmParams. The truth is the paper's
definitions on the film's noise-free thermal dI/dV, written again in ``reference_truth`` from
the DOS formula (2 uV grid, scipy), never from the kernels or the film's own truth code. The
options are those a recording gives: its temperature and modulation.

Asserted per condition and channel: the goal (Delta rms in meV, alpha rms), the valid fraction,
that no valid pixel is off by more than 5x the goal (no silent garbage), and that the standard
errors are calibrated: over valid pixels (estimate - truth) / sigma has an rms in 0.7..1.5.
``pytest -s`` prints the table of every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from reference_truth import reference_truth

from stslive.live.kernels import KernelOptions, ReasonCode, analyse_spectra
from stslive.mocks.film import FilmParams, make_film

NY, NX, SEED = 48, 64, 11
REFERENCE = {"dynes_gamma_eV": 0.08e-3}  # the reference film (the film's default is 0.1 meV)


@dataclass(frozen=True)
class Goal:
    """Goals of one channel in one condition (None: no goal stated)."""

    delta_meV: float | None = None
    alpha: float | None = None
    min_valid_delta: float = 0.0
    min_valid_alpha: float = 0.0
    #: instead of meeting delta_meV, every pixel may be refused with this reason
    or_refused: ReasonCode | None = None
    #: alpha is refused everywhere with this reason (the sweep misses its window)
    alpha_refused: ReasonCode | None = None
    #: why the goal is not met (measured shortfall), the test then expects the failure
    shortfall: str = ""


NOT_COVERED = ReasonCode.WINDOW_NOT_COVERED
COARSE = ReasonCode.BIAS_STEP_TOO_COARSE
CONDITIONS: dict[str, tuple[dict, Goal, Goal]] = {
    # name: (film knobs, lock-in goal, current goal)
    "baseline": ({}, Goal(0.010, 0.0015, 0.98, 0.98), Goal(0.020, 0.0015, 0.98, 0.98)),
    "401 points": (
        {"n_points": 401},
        # the lock-in alone cannot reach 0.015 at this step (its Cramer-Rao bound is 0.016 meV,
        # test_information_bound.py): the lock-in's Delta combined with the current's does
        Goal(0.015, None, 0.95),
        Goal(0.03, None, 0.95),
    ),
    "201 points": (
        {"n_points": 201},
        # the 0.4 mV step is 3.4x the lock-in's peak width: with both channels Delta stands where
        # they agree (the rest BIAS_STEP_TOO_COARSE, test_coarse_step.py); I(V) alone is refused
        Goal(0.03, None, 0.95),
        Goal(0.06, or_refused=COARSE),
    ),
    "noise 2 pA": ({"current_noise_A": 2e-12}, Goal(), Goal(0.05, 0.006, 0.95, 0.95)),
    "noise 5 pA": ({"current_noise_A": 5e-12}, Goal(0.010, 0.010, 0.90, 0.90), Goal(None, 0.010, 0.0, 0.90)),
    "1.2 K": ({"temperature_K": 1.2}, Goal(0.015, None, 0.95), Goal()),
    "Dynes 0.15 meV": ({"dynes_gamma_eV": 0.15e-3}, Goal(0.02, None, 0.95), Goal(0.02, None, 0.95)),
    "modulation 200 uV": ({"modulation_Vrms": 200e-6}, Goal(0.015, None, 0.95), Goal()),
    "Delta 0.6 meV": (
        {"delta_mean_eV": 0.6e-3, "aa_saturation_eV": 0.6e-3},
        Goal(0.015),
        Goal(0.04),
    ),
    "+-15 mV": (
        {"bias_start_V": -0.015, "bias_end_V": 0.015, "n_points": 601},
        Goal(0.010, None, 0.95, alpha_refused=NOT_COVERED),
        Goal(0.020, None, 0.95, alpha_refused=NOT_COVERED),
    ),
    "-20..+40 mV": (
        {"bias_start_V": -0.020, "bias_end_V": 0.040, "n_points": 1201},
        Goal(0.010, None, 0.95, alpha_refused=NOT_COVERED),
        Goal(0.020, None, 0.95, alpha_refused=NOT_COVERED),
    ),
    "+-5 mV": (
        {"bias_start_V": -0.005, "bias_end_V": 0.005, "n_points": 201},
        Goal(),
        Goal(0.020, None, 0.95, alpha_refused=NOT_COVERED),
    ),
}


_CACHE: dict[str, tuple] = {}


def condition_data(name: str):
    """(film, spectra, truth) of a condition, computed once per session."""
    if name not in _CACHE:
        film = make_film(FilmParams(ny=NY, nx=NX, seed=SEED, **{**REFERENCE, **CONDITIONS[name][0]}))
        spectra = film.spectra(*np.indices(film.shape))
        _CACHE[name] = (film, spectra, reference_truth(film))
    return _CACHE[name]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else math.nan


ROWS: list[str] = []


def _figures(name: str, channel: str):
    film, spectra, truth = condition_data(name)
    p = film.params
    options = KernelOptions(temperature_K=p.temperature_K, modulation_Vrms=p.modulation_Vrms)  # the recording's
    res = analyse_spectra(
        spectra.bias_V,
        current=spectra.current_A,
        lockin=spectra.lockin_x_A if channel == "lock-in" else None,
        options=options,
    )
    vd, va = res.valid_delta, res.valid_alpha
    d_err = (res.delta_eV.astype(np.float64) - truth.delta_eV)[vd] * 1e3
    a_err = (res.alpha.astype(np.float64) - truth.alpha)[va]
    z_d = d_err / (res.delta_sigma_eV[vd] * 1e3)
    z_a = a_err / res.alpha_sigma[va]
    fig = {
        "valid_delta": float(vd.mean()),
        "valid_alpha": float(va.mean()),
        "delta_rms_meV": _rms(d_err),
        "delta_worst_meV": float(np.abs(d_err).max()) if d_err.size else math.nan,
        "alpha_rms": _rms(a_err),
        "alpha_worst": float(np.abs(a_err).max()) if a_err.size else math.nan,
        "z_delta": _rms(z_d),
        "z_alpha": _rms(z_a),
        "delta_reasons": {
            ReasonCode(int(k)).name: int(c)
            for k, c in zip(*np.unique(res.gap_reason, return_counts=True), strict=True)
            if k
        },
        "alpha_reasons": {
            ReasonCode(int(k)).name: int(c)
            for k, c in zip(*np.unique(res.alpha_reason, return_counts=True), strict=True)
            if k
        },
        "dynes": float(np.isfinite(res.delta_dynes_eV).mean()),
    }
    ROWS.append(
        f"{name:18s} {channel:8s} valid D {fig['valid_delta']:6.1%} a {fig['valid_alpha']:6.1%}  "
        f"Delta rms {fig['delta_rms_meV']:7.4f} worst {fig['delta_worst_meV']:6.3f} meV z {fig['z_delta']:4.2f}  "
        f"alpha rms {fig['alpha_rms']:7.5f} worst {fig['alpha_worst']:6.4f} z {fig['z_alpha']:4.2f}  "
        f"Dynes fits {fig['dynes']:4.0%}  refused D {fig['delta_reasons']} a {fig['alpha_reasons']}"
    )
    return fig


def _check(goal: Goal, fig: dict) -> None:
    if goal.or_refused is not None and fig["valid_delta"] == 0:
        assert set(fig["delta_reasons"]) == {goal.or_refused.name}, fig["delta_reasons"]
    elif goal.delta_meV is not None:
        assert fig["delta_rms_meV"] <= goal.delta_meV, fig
        assert fig["delta_worst_meV"] <= 5 * goal.delta_meV, fig  # no silent garbage
    assert fig["valid_delta"] >= goal.min_valid_delta, fig
    if fig["valid_delta"] * NY * NX >= 100:
        assert 0.7 <= fig["z_delta"] <= 1.5, fig
    if goal.alpha_refused is not None:
        assert fig["valid_alpha"] == 0 and set(fig["alpha_reasons"]) == {goal.alpha_refused.name}, fig
    else:
        assert fig["valid_alpha"] >= goal.min_valid_alpha, fig
        if goal.alpha is not None:
            assert fig["alpha_rms"] <= goal.alpha and fig["alpha_worst"] <= 5 * goal.alpha, fig
        if fig["valid_alpha"] * NY * NX >= 100:
            assert 0.7 <= fig["z_alpha"] <= 1.5, fig


def _cases():
    for name, (_, lockin_goal, current_goal) in CONDITIONS.items():
        for channel, goal in (("lock-in", lockin_goal), ("I(V)", current_goal)):
            marks = [pytest.mark.xfail(strict=True, reason=goal.shortfall)] if goal.shortfall else []
            yield pytest.param(name, channel, goal, id=f"{name}-{channel}", marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "channel", "goal"), list(_cases()))
def test_goals_of_the_condition_matrix(name, channel, goal):
    _check(goal, _figures(name, channel))


@pytest.mark.slow
def test_print_the_matrix(capsys):
    """The table of every figure above (``pytest -s``), after the matrix ran."""
    with capsys.disabled():
        print("\ncondition          channel  figures (64 x 48 films, Delta against the independent truth)")
        for row in ROWS:
            print(row)
    assert ROWS  # the matrix ran first in this module


def test_film_truth_agrees_with_the_independent_truth():
    """The film's own definition truth (film_truth) equals the independent computation."""
    film, _, truth = condition_data("baseline")
    own = film.definition_truth()
    assert np.max(np.abs(own.delta_pp_eV - truth.delta_eV)) < 2e-6  # 2 ueV: the 2 uV grid's rounding
    assert np.max(np.abs(own.alpha_def - truth.alpha)) < 1e-6
    film, _, truth = condition_data("1.2 K")
    assert np.max(np.abs(film.definition_truth().delta_pp_eV - truth.delta_eV)) < 2e-6


@pytest.mark.slow
@pytest.mark.parametrize("channel", ["lock-in", "I(V)"])
def test_the_dynes_fit_recovers_the_films_gap_and_width(channel):
    """Beyond the peak-to-peak Delta: the Dynes fit (joint fit everywhere) against the film's model maps."""
    film, spectra, _ = condition_data("baseline")
    p = film.params
    options = KernelOptions(temperature_K=p.temperature_K, modulation_Vrms=p.modulation_Vrms, joint_fit_above=0.0)
    res = analyse_spectra(
        spectra.bias_V,
        current=spectra.current_A,
        lockin=spectra.lockin_x_A if channel == "lock-in" else None,
        options=options,
    )
    fitted = np.isfinite(res.delta_dynes_eV)
    gap_rms = _rms((res.delta_dynes_eV[fitted] - film.delta_eV[fitted]) * 1e3)
    width = float(np.median(res.gamma_dynes_eV[fitted]))
    spread = float(np.std(np.log(res.gamma_dynes_eV[fitted])))
    print(f"\nDynes fit, {channel}: {fitted.mean():.1%} fitted, gap rms {gap_rms:.4f} meV, width median "
          f"{width * 1e3:.4f} meV (film {p.dynes_gamma_eV * 1e3} meV), ln-spread {spread:.3f}")  # fmt: skip
    assert fitted.mean() >= 0.95
    assert gap_rms <= 0.02 and abs(width / p.dynes_gamma_eV - 1) <= 0.05
