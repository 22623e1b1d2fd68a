"""Regressions of the gap kernel: sign of Delta on coarse sweeps, and bit-for-bit determinism.

The bug: on 801-point sweeps (+-40 mV, 0.1 mV steps, the analyser tests' runs) template widths
near 0.1 meV gave Delta < 0 for every pixel, peaks swapped, and neighbouring widths did not
(0.104 meV negative, 0.1054 meV positive, 0.106 meV negative): the template bank located the
maximum of its peak shape over a range that, at 0.1 mV steps, also held the opposite coherence
peak of the drawn DOS, as high as the wanted one. Separately, results changed in the last bits
with the chunk size and the thread split (OpenBLAS GEMM rows depend on the block layout).
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest

from stslive.live import kernels
from stslive.live.kernels import KernelOptions, ReasonCode, analyse_spectra, calibrate
from stslive.live.kernels.templates import DYNES_WIDTHS_EV, bank_args, rowwise_matmul, template_bank
from stslive.mocks.film import FilmParams, make_film

GRID = 12
#: Widths around 0.1 meV, including the ones reported (0.104 and 0.1054 meV).
WIDTHS_EV = (0.09e-3, 0.095e-3, 0.1e-3, 0.102e-3, 0.104e-3, 0.1054e-3, 0.106e-3, 0.11e-3, 0.12e-3)


@pytest.fixture(scope="module", params=[801, 1601], ids=["801pts", "1601pts"])
def film_spectra(request):
    film = make_film(FilmParams(ny=GRID, nx=GRID, seed=3, n_points=request.param))
    iy, ix = np.indices((GRID, GRID))
    return film, film.spectra(iy, ix, noise=True), film.definition_truth().delta_pp_eV


@pytest.mark.parametrize("step_V", [5e-5, 1e-4, 2e-4])
@pytest.mark.parametrize("integrated", [True, False])
def test_template_peak_is_the_positive_coherence_peak(step_V, integrated):
    # Every template's maximum lies just above x = 0 (thermal/Dynes broadening pushes it out, by
    # 0.03 meV at the narrowest width to 0.33 meV at the broadest, 0.4 meV), never near the
    # opposite peak of the drawn 1.2 meV gap at x = -2.4 meV.
    widths = tuple(sorted(set(WIDTHS_EV) | set(DYNES_WIDTHS_EV)))
    bank = template_bank(step_V, gap_eV=1.2e-3, **bank_args(0.3, 50e-6, integrated=integrated), widths=widths)
    peak_eV = bank.peak_offset * step_V
    assert np.all(peak_eV > 0) and np.all(peak_eV < 0.6e-3), dict(zip(widths, peak_eV, strict=False))


@pytest.mark.parametrize("step_V", [5e-5, 1e-4])
@pytest.mark.parametrize("gap_eV", [0.3e-3, 0.6e-3, 1.2e-3, 3e-3])
def test_template_window_stays_clear_of_the_opposite_peak(step_V, gap_eV):
    # In volts and in units of the gap, whatever the sampling: the window starts at 0.3 Delta
    # above zero bias (the opposite peak's half never enters; for a 0.6 meV gap the old window,
    # 1.2 mV below the peak, reached the opposite peak) and searches the edge within +-30 %.
    bank = template_bank(step_V, gap_eV=gap_eV, **bank_args(0.3, 0.0, integrated=True), widths=(0.05e-3,))
    assert gap_eV + bank.offsets[0] * step_V == pytest.approx(0.3 * gap_eV, abs=step_V)
    assert bank.shifts[-1] * step_V == pytest.approx(max(0.3 * gap_eV, 2 * step_V), abs=step_V / 4)


@pytest.mark.parametrize("gap_source", ["current", "lockin"])
def test_delta_positive_and_peaks_ordered_for_widths_near_0p1_meV(film_spectra, gap_source):
    film, spectra, truth = film_spectra
    for width in WIDTHS_EV:
        opts = KernelOptions(dynes_width_eV=width, gap_source=gap_source, modulation_Vrms=film.params.modulation_Vrms)
        res = analyse_spectra(film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=opts)
        ok = res.gap_reason == ReasonCode.OK
        assert ok.mean() >= 0.98, (width, np.bincount(res.gap_reason.ravel()))
        assert np.all(res.delta_eV[ok] > 0), width
        assert np.all(res.peak_neg_V[ok] < 0) and np.all(res.peak_pos_V[ok] > 0), width
        # and the right peaks, not just the right sign: within 0.1 meV of the definition truth
        assert np.max(np.abs(res.delta_eV[ok] - truth[ok])) < 0.1e-3, width


def _assert_identical(a, b, what):
    for name, x, y in zip(a._fields, a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (what, name)


@pytest.mark.parametrize("gap_source", ["current", "lockin"])
def test_results_bit_identical_across_runs_threads_and_chunks(film_spectra, gap_source):
    film, spectra, _ = film_spectra
    common = {"gap_source": gap_source, "modulation_Vrms": film.params.modulation_Vrms}

    def run(**kw):
        return analyse_spectra(
            film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=KernelOptions(**common, **kw)
        )

    fixed = calibrate(
        film.bias_V, current=spectra.current_A, lockin=spectra.lockin_x_A, options=KernelOptions(**common)
    )
    calibration = {
        k: getattr(fixed, k) for k in ("gap_eV", "dynes_width_eV", "smoothing_points", "lockin_smoothing_points")
    }
    reference = run(**calibration, threads=1, chunk=512)
    assert np.all(reference.delta_eV[reference.valid] > 0)
    _assert_identical(reference, run(**calibration, threads=1, chunk=512), "rerun")
    for threads, chunk in ((2, 512), (2, 64), (2, 37), (1, 1), (1, 100), (2, 7)):
        _assert_identical(reference, run(**calibration, threads=threads, chunk=chunk), (threads, chunk))
    # width estimated from the first chunk: the same chunk on one or two threads, twice
    estimated = run(threads=1, chunk=64)
    _assert_identical(estimated, run(threads=2, chunk=64), "estimated width, 2 threads")
    _assert_identical(estimated, run(threads=2, chunk=64), "estimated width, rerun")


def test_rowwise_matmul_row_depends_on_its_row_only():
    rng = np.random.default_rng(7)
    b = rng.normal(size=(57, 49)).astype(np.float32)
    a = rng.normal(size=(300, 57)).astype(np.float32)
    full = rowwise_matmul(a, b)
    np.testing.assert_allclose(full, a @ b, rtol=1e-5, atol=1e-5)
    for start, stop in ((0, 1), (5, 6), (3, 40), (77, 300), (150, 151)):
        assert np.array_equal(rowwise_matmul(a[start:stop], b), full[start:stop])
    raw = np.empty(a.size + 8, np.float32)
    for shift in range(1, 8):  # misaligned copies of the same rows
        moved = raw[shift : shift + a.size].reshape(a.shape)
        moved[:] = a
        assert np.array_equal(rowwise_matmul(moved, b), full)
    assert rowwise_matmul(a[:0], b).shape == (0, 49)


# The live analyser calls the kernels with 1-10 spectra at a time; everything that does not depend
# on the spectra (columns, search geometry, fit-window designs, the template bank) is cached per
# bias grid. A cache keyed by the array's identity would go stale when a caller reuses its axis
# buffer for another sweep; the per-polarity geometry would be wrong on asymmetric sweeps.


def _clear_kernel_caches():
    for info in pkgutil.iter_modules(kernels.__path__, prefix=f"{kernels.__name__}."):
        for value in vars(importlib.import_module(info.name)).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


@pytest.mark.parametrize("gap_source", ["current", "lockin"])
def test_batches_of_one_and_seven_equal_the_whole_batch(film_spectra, gap_source):
    film, spectra, _ = film_spectra
    n = film.bias_V.size
    cur, lia = spectra.current_A.reshape(-1, n), spectra.lockin_x_A.reshape(-1, n)
    opts = KernelOptions(gap_source=gap_source, modulation_Vrms=film.params.modulation_Vrms)
    opts = calibrate(film.bias_V, current=cur, lockin=lia, options=opts)
    whole = analyse_spectra(film.bias_V, current=cur, lockin=lia, options=opts)
    for batch in (1, 7):
        parts = [
            analyse_spectra(film.bias_V, current=cur[s : s + batch], lockin=lia[s : s + batch], options=opts)
            for s in range(0, cur.shape[0], batch)
        ]
        joined = type(whole)(*(np.concatenate(field) for field in zip(*parts, strict=False)))
        _assert_identical(whole, joined, batch)


def test_cached_plans_follow_the_axis_values_not_the_array(film_spectra):
    film, spectra, _ = film_spectra
    n = film.bias_V.size
    cur = spectra.current_A.reshape(-1, n)[:8]
    opts = calibrate(film.bias_V, current=cur)
    axis = np.array(film.bias_V, dtype=np.float64)
    first = analyse_spectra(axis, current=cur, options=opts)
    axis *= 0.8  # the same array object now holds another sweep: every cached quantity differs
    reused = analyse_spectra(axis, current=cur, options=opts)
    _clear_kernel_caches()
    fresh = analyse_spectra(axis, current=cur, options=opts)
    _assert_identical(fresh, reused, "second sweep in the first sweep's array")
    assert not np.array_equal(first.alpha, reused.alpha, equal_nan=True)
    ok = first.valid & reused.valid
    assert ok.sum() >= 6 and not np.array_equal(first.delta_eV[ok], reused.delta_eV[ok])


@pytest.mark.parametrize("gap_source", ["current", "lockin"])
def test_gap_on_an_asymmetric_sweep_equals_the_symmetric_one(film_spectra, gap_source):
    # Dropping the far negative bias (beyond the fit window) leaves a sweep whose polarities have
    # different lengths; the gap reads only columns near zero bias, so it must not change at all.
    film, spectra, _ = film_spectra
    n = film.bias_V.size
    cut = n // 8
    cur, lia = spectra.current_A.reshape(-1, n), spectra.lockin_x_A.reshape(-1, n)
    opts = KernelOptions(
        gap_source=gap_source,
        modulation_Vrms=film.params.modulation_Vrms,
        fit_window_V=(5e-3, 20e-3),
        joint_fit_above=0.0,  # the joint fit everywhere: which pixels get it does not hang on the noise
    )
    opts = calibrate(film.bias_V, current=cur, lockin=lia, options=opts)
    full = analyse_spectra(film.bias_V, current=cur, lockin=lia, options=opts)
    short = analyse_spectra(film.bias_V[cut:], current=cur[:, cut:], lockin=lia[:, cut:], options=opts)
    assert -film.bias_V[cut] < film.bias_V[-1] and (full.gap_reason == 0).mean() > 0.9
    for name in ("delta_eV", "peak_neg_V", "peak_pos_V", "visibility", "peak_score", "gap_reason"):
        a, b = getattr(full, name), getattr(short, name)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


def test_a_sweep_covering_one_polarity_reports_search_not_covered(film_spectra):
    # Lock-in gap: the current's derivative would be NaN at the sweep start (V = 0) and win as NAN_INPUT.
    film, spectra, _ = film_spectra
    n = film.bias_V.size
    positive = film.bias_V >= 0
    cur, lia = (a.reshape(-1, n)[:5, positive] for a in (spectra.current_A, spectra.lockin_x_A))
    opts = KernelOptions(
        dynes_width_eV=0.1054e-3, gap_eV=1.2e-3, smoothing_points=11, lockin_smoothing_points=5, gap_source="lockin"
    )
    res = analyse_spectra(film.bias_V[positive], current=cur, lockin=lia, options=opts)
    assert np.all(res.gap_reason == ReasonCode.SEARCH_NOT_COVERED)
    assert np.all(res.alpha_reason == ReasonCode.WINDOW_NOT_COVERED)
    assert np.isnan(res.delta_eV).all() and np.isnan(res.visibility).all() and not res.valid.any()


def test_a_coarse_sweep_missing_the_search_range_builds_no_templates_and_warns_nothing():
    # KPFM-like grid: 2 mV steps, the gap search (0.3..4 mV) holds 2 samples per side. A template
    # bank at that step is degenerate (zero-norm templates); it must not even be built.
    import warnings

    bias = np.linspace(-0.1, 0.1, 101)
    current = np.tile(1e-9 * bias / 0.1, (3, 1)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = analyse_spectra(
            bias, current=current, options=KernelOptions(dynes_width_eV=0.1e-3, fit_window_V=(10e-3, 60e-3))
        )
    assert np.all(res.gap_reason == ReasonCode.BIAS_STEP_TOO_COARSE) and np.isnan(res.delta_eV).all()
    assert np.isfinite(res.alpha).all()
