"""The correlation snapshot mid-run: intervals and warnings computed on the pixels so far, and kept on the way."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stslive.acquisition.plans import progressive_order
from stslive.live import results_io as rio
from stslive.live.correlations import correlation_report
from stslive.live.results import CorrelationSnapshot, ResultsModel
from stslive.live.snapshots import correlation_snapshot
from stslive.mocks.film import FilmParams, make_film

NY, NX, PIXEL_NM = 48, 64, 2.0
FIGURES = ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")


def model_after(fraction: float) -> ResultsModel:
    """A model of a progressive scan of a film stopped after ``fraction`` of the pixels."""
    film = make_film(FilmParams(ny=NY, nx=NX, pixel_m=PIXEL_NM * 1e-9, seed=4))
    order = progressive_order(NX, NY)[: round(fraction * NY * NX)]
    model = ResultsModel(NY, NX, pixel_nm=PIXEL_NM)
    iy, ix = order[:, 0], order[:, 1]
    model.update_block(iy, ix, delta_eV=film.delta_eV[iy, ix], alpha=film.alpha[iy, ix], valid=True)
    return model


def test_a_run_stopped_at_a_third_warns_and_still_bounds_the_figures() -> None:
    model = model_after(1 / 3)
    snap = correlation_snapshot(model)
    assert snap.n_pixels == round(NY * NX / 3)
    assert snap.warnings[0].startswith("few-pixels: correlations from 1024 of 3072 pixels (33 %")
    delta = np.where(model.maps["valid"], model.maps["delta_eV"], np.nan)
    alpha = np.where(model.maps["valid"], model.maps["alpha"], np.nan)
    report = correlation_report(delta, alpha, pixel_size_m=PIXEL_NM * 1e-9)
    assert list(snap.warnings) == report["warnings"]
    for key in FIGURES:
        low, high = getattr(snap, f"{key}_ci90")
        assert (low, high) == pytest.approx(tuple(report[f"{key}_ci90"]))
        assert low <= getattr(snap, f"{key}_corrected") <= high


def test_a_full_map_has_no_few_pixels_warning() -> None:
    snap = correlation_snapshot(model_after(1.0), intervals=False)
    assert not any(w.startswith("few-pixels") for w in snap.warnings)
    assert math.isnan(snap.l_delta_nm_corrected) and math.isnan(snap.l_delta_nm_ci90[0])  # not asked for


def unbounded(snap: CorrelationSnapshot) -> CorrelationSnapshot:
    """The snapshot with an unbounded l_delta interval, as a small map gives."""
    return dataclasses.replace(snap, l_delta_nm_ci90=(snap.l_delta_nm_ci90[0], math.inf))


def assert_same_figures(got: CorrelationSnapshot, sent: CorrelationSnapshot) -> None:
    assert got.warnings == sent.warnings and len(got.warnings) >= 1
    for key in FIGURES:
        assert getattr(got, f"{key}_corrected") == getattr(sent, f"{key}_corrected")
    for key in FIGURES[1:]:
        assert getattr(got, f"{key}_ci90") == getattr(sent, f"{key}_ci90")
    # no upper bound: inf in the file, NaN on the stream (strict JSON), beside its finite low bound
    assert got.l_delta_nm_ci90[0] == sent.l_delta_nm_ci90[0] and not math.isfinite(got.l_delta_nm_ci90[1])


def test_intervals_and_warnings_survive_the_maps_file_and_the_stream(tmp_path) -> None:
    model = model_after(1 / 3)
    sent = unbounded(correlation_snapshot(model))
    model.set_snapshot(sent)
    rio.save_maps_h5(model, tmp_path / "maps.h5")
    assert_same_figures(rio.load_maps_h5(tmp_path / "maps.h5").snapshot, sent)
    rebuilt = ResultsModel(NY, NX, pixel_nm=PIXEL_NM)
    rio.apply_message(rebuilt, *rio.decode_message(rio.encode_message(*rio.snapshot_message(sent))))
    assert_same_figures(rebuilt.snapshot, sent)
