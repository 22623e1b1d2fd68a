"""Delta from the lock-in and the current together (``gap_source`` "both", and "auto" with both channels)."""

from __future__ import annotations

import numpy as np
import pytest

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels import GapResult, KernelOptions, ReasonCode, analyse_spectra
from stslive.live.kernels.combine import MAX_DISAGREEMENT, combine_gaps
from stslive.mocks.film import FilmParams, make_film


def _gap(delta, sigma, reason=None, dynes=None):
    delta = np.asarray(delta, np.float64)
    n = delta.size
    return GapResult(
        delta_eV=delta,
        peak_neg_V=-delta,
        peak_pos_V=delta.copy(),
        visibility=np.full(n, 0.5),
        score=np.full(n, 0.9),
        delta_sigma_eV=np.asarray(sigma, np.float64),
        delta_dynes_eV=np.full(n, np.nan) if dynes is None else np.asarray(dynes, np.float64),
        gamma_dynes_eV=np.full(n, np.nan),
        reason=np.zeros(n, np.int8) if reason is None else np.asarray(reason, np.int8),
    )


def test_two_agreeing_channels_combine_by_inverse_variance():
    lockin = _gap([1.00e-3, 1.20e-3], [1e-5, 2e-5], dynes=[0.99e-3, np.nan])
    current = _gap([1.02e-3, 1.22e-3], [2e-5, 2e-5], dynes=[1.01e-3, 1.21e-3])
    out, combined = combine_gaps(lockin, current)
    assert combined.all()
    # weights 1/s^2: 4:1 and 1:1
    np.testing.assert_allclose(out.delta_eV, [(4 * 1.00e-3 + 1.02e-3) / 5, 1.21e-3], rtol=1e-12)
    np.testing.assert_allclose(out.delta_sigma_eV, [1 / np.sqrt(1e10 + 0.25e10), 2e-5 / np.sqrt(2)], rtol=1e-12)
    np.testing.assert_allclose(out.peak_pos_V + out.peak_neg_V, 0, atol=1e-18)
    # a Dynes fit on both: weighted; on the current only: the current's
    np.testing.assert_allclose(out.delta_dynes_eV, [(4 * 0.99e-3 + 1.01e-3) / 5, 1.21e-3], rtol=1e-12)
    assert out.visibility is lockin.visibility and out.reason is lockin.reason


def test_disagreeing_or_refused_channels_leave_the_lockins_delta():
    far = (MAX_DISAGREEMENT + 0.1) * np.hypot(1e-5, 1e-5)
    lockin = _gap([1.0e-3, 1.0e-3, np.nan, 1.0e-3], [1e-5] * 4, reason=[0, 0, ReasonCode.NO_PEAKS, 0])
    current = _gap([1.0e-3 + far, 1.0e-3, 1.0e-3, 1.0e-3], [1e-5] * 4, reason=[0, ReasonCode.POOR_PEAK_FIT, 0, 0])
    out, combined = combine_gaps(lockin, current)
    assert combined.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(out.delta_eV[:3], lockin.delta_eV[:3])  # NaN where the lock-in is refused
    np.testing.assert_array_equal(out.delta_sigma_eV[:3], lockin.delta_sigma_eV[:3])
    assert out.reason.tolist() == [0, 0, ReasonCode.NO_PEAKS, 0]


def test_at_a_coarse_step_delta_stands_only_where_both_channels_agree():
    # agreement_only (a step too coarse for the peaks): a pixel the current refuses or contradicts
    # is BIAS_STEP_TOO_COARSE with every measured field NaN; agreeing ones combine
    far = (MAX_DISAGREEMENT + 0.1) * np.hypot(1e-5, 1e-5)
    lockin = _gap([1.0e-3, 1.0e-3, np.nan, 1.0e-3], [1e-5, 1e-5, np.nan, 1e-5], reason=[0, 0, ReasonCode.NO_PEAKS, 0])
    current = _gap([1.0e-3 + far, 1.0e-3, 1.0e-3, 1.01e-3], [1e-5] * 4, reason=[0, ReasonCode.POOR_PEAK_FIT, 0, 0])
    out, combined = combine_gaps(lockin, current, agreement_only=True)
    assert combined.tolist() == [False, False, False, True]
    coarse = int(ReasonCode.BIAS_STEP_TOO_COARSE)
    assert out.reason.tolist() == [coarse, coarse, ReasonCode.NO_PEAKS, 0]
    for field in ("delta_eV", "peak_neg_V", "peak_pos_V", "delta_sigma_eV"):
        assert np.isnan(getattr(out, field)[:3]).all(), field
    np.testing.assert_allclose(out.delta_eV[3], 1.005e-3, rtol=1e-12)
    assert out.reason.dtype == lockin.reason.dtype and out.delta_eV.dtype == lockin.delta_eV.dtype
    # without it the same inputs keep the lock-in's value
    assert combine_gaps(lockin, current)[0].reason.tolist() == [0, 0, ReasonCode.NO_PEAKS, 0]


@pytest.fixture(scope="module")
def film():
    f = make_film(FilmParams(ny=12, nx=16, seed=5, n_points=801))
    return f, f.spectra(*np.indices(f.shape))


def _analyse(spectra, current=None, **options):
    return analyse_spectra(
        spectra.bias_V,
        current=spectra.current_A if current is None else current,
        lockin=spectra.lockin_x_A,
        options=KernelOptions(temperature_K=0.3, modulation_Vrms=50e-6, **options),
    )


def test_auto_with_both_channels_is_both_and_keeps_the_lockins_validity(film):
    _, spectra = film
    auto, both, lockin = _analyse(spectra), _analyse(spectra, gap_source="both"), _analyse(spectra, gap_source="lockin")
    np.testing.assert_array_equal(auto.delta_eV, both.delta_eV)
    np.testing.assert_array_equal(both.gap_reason, lockin.gap_reason)
    assert lockin.valid_delta.mean() > 0.9
    ok = both.valid_delta
    # the current adds information: every combined pixel's standard error shrinks
    assert np.all(both.delta_sigma_eV[ok] < lockin.delta_sigma_eV[ok])
    assert not np.array_equal(both.delta_eV[ok], lockin.delta_eV[ok])


def test_a_current_of_another_film_is_refused_pixel_by_pixel(film):
    _, spectra = film
    other = make_film(FilmParams(ny=12, nx=16, seed=5, n_points=801, delta_mean_eV=1.0e-3))
    wrong = other.spectra(*np.indices(other.shape)).current_A  # its gaps are 0.2 meV smaller
    both = _analyse(spectra, current=wrong, gap_source="both", gap_eV=1.2e-3, dynes_width_eV=0.1e-3)
    lockin = _analyse(spectra, current=wrong, gap_source="lockin", gap_eV=1.2e-3, dynes_width_eV=0.1e-3)
    alone = _analyse(spectra, current=wrong, gap_source="current", gap_eV=1.2e-3, dynes_width_eV=0.1e-3)
    assert alone.valid_delta.mean() > 0.5  # the wrong current's Delta is valid: the disagreement refuses it
    np.testing.assert_array_equal(both.delta_eV, lockin.delta_eV)
    np.testing.assert_array_equal(both.delta_sigma_eV, lockin.delta_sigma_eV)


def test_both_needs_both_channels(film):
    _, spectra = film
    with pytest.raises(AnalysisError, match="no current channel"):
        analyse_spectra(spectra.bias_V, lockin=spectra.lockin_x_A, options=KernelOptions(gap_source="both"))
    with pytest.raises(AnalysisError, match="no lock-in channel"):
        analyse_spectra(spectra.bias_V, current=spectra.current_A, options=KernelOptions(gap_source="both"))
    with pytest.raises(AnalysisError, match="'auto', 'current', 'lockin' or 'both'"):
        KernelOptions(gap_source="average")
