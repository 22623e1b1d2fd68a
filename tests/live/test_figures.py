"""Figures of ``stslive analyse`` and of the campaign: what each figure draws, checked on its artists.

Every figure is built as a matplotlib ``Figure`` and inspected (axes scales, line data, texts,
collections) rather than only written: a figure can be a valid PNG and still show the wrong thing.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from scipy.integrate import quad

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.nanonis3ds import write_3ds
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.drivers.errors import AnalysisError
from stslive.live.flag_kinds import FlagKind
from stslive.live.kernels import KernelOptions, ReasonCode
from stslive.live.offline.analyse import analyse_to_directory
from stslive.live.offline.analysis_figures import FigureInputs, collect_figure_inputs, write_analysis_figures
from stslive.live.offline.captions import format_quantity, run_caption
from stslive.live.offline.figure_campaign import draw_campaign, series_of
from stslive.live.offline.figure_correlations import cross_correlation_figure, profiles_figure
from stslive.live.offline.figure_linecut import linecut_figure
from stslive.live.offline.figure_maps import flags_figure, histograms_figure, maps_figure, scatter_figure
from stslive.live.offline.figure_spectra import spectra_figure
from stslive.live.offline.figures import RunCaption, RunMaps, robust_limits
from stslive.live.offline.spectrum_model import dynes_conductance, fit_background, gap_for_peaks
from stslive.live.pipeline import analyse_source, calibrate_source, open_input
from stslive.live.results import CorrelationSnapshot
from stslive.live.snapshots import correlation_snapshot
from stslive.live.theory import K_B_EV_PER_K, TheoryConstants
from stslive.mocks.film import FilmParams, make_film

NY, NX = 20, 24
CONDITIONS = {"temperature_K": "temperature (K)", "field_T": "magnetic field (T)"}
START_TIME = 1.7e9  # 2023-11-14 22:13:20 UTC


def _analysed(path: Path, examples: int = 3) -> FigureInputs:
    """The figure inputs of ``path`` as ``stslive analyse`` builds them (kernels, snapshot, spectra)."""
    options = KernelOptions()
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)
        model = analyse_source(source, options=options)
        if int(model.maps["valid"].sum()) >= 3:
            dx, dy = source.pixel_size_m
            model.set_snapshot(correlation_snapshot(model, pixel_size_m=(dy, dx)))
        return collect_figure_inputs(source, model, options=options, examples=examples)


def _restart(path: Path, start: dict) -> None:
    with ArchiveWriter.open_for_resume(path, swmr=False) as writer:
        writer.write_document("start", start)


@pytest.fixture(scope="module")
def film(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FigureInputs]:
    path = tmp_path_factory.mktemp("figures") / "film.h5"
    write_film_archive(make_film(FilmParams(ny=NY, nx=NX, seed=3)), path)
    _restart(path, {"time": START_TIME, "film_params": {"temperature_K": 0.3}})
    return path, _analysed(path)


def _title(fig: Figure) -> str:
    return fig.get_suptitle()


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _axes_titled(fig: Figure, part: str) -> list:
    return [ax for ax in fig.axes if part in ax.get_title()]


# -- titles --------------------------------------------------------------------------------
def test_caption_of_an_archive_names_file_temperature_setpoint_and_date(film: tuple[Path, FigureInputs]) -> None:
    path, inputs = film
    caption = run_caption(path)
    assert caption == RunCaption("film.h5", pytest.approx(0.3), "-10 mV, -150 pA", "2023-11-14 22:13 UTC")
    fig = maps_figure(inputs.maps)
    assert "film.h5" in _title(fig) and "T = 0.3 K" in _title(fig) and "-10 mV, -150 pA" in _title(fig)
    assert "2023-11-14 22:13 UTC" in _title(fig)


def test_every_figure_is_titled_with_the_run(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    m, caption = inputs.maps, inputs.maps.caption
    figures = [
        maps_figure(m),
        histograms_figure(m),
        scatter_figure(m),
        flags_figure(m),
        cross_correlation_figure(inputs.snapshot, caption=caption),
        profiles_figure(inputs.snapshot, {}, caption=caption),
        spectra_figure(inputs.examples, fit_window_V=(5e-3, 30e-3), gap_search_V=(0.3e-3, 4e-3), caption=caption),
    ]
    for fig in figures:
        title = _title(fig)
        for part in ("film.h5", "T = 0.3 K", "set-point -10 mV, -150 pA", "2023-11-14 22:13 UTC"):
            assert part in title, (part, title)
        # a caption wider than its figure is broken between parts, never inside one
        assert all(len(line) <= fig.get_figwidth() * 10.5 for line in title.splitlines()[1:]), title


def test_caption_of_a_3ds_from_its_header(tmp_path: Path) -> None:
    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=2e-9, nx=3, ny=2)
    header = {
        "Temperature 1>Temperature 1 (K)": "1.2E+0",
        "Bias>Bias (V)": "-20E-3",
        "Z-Controller>Setpoint": "100E-12",
        "Z-Controller>Setpoint unit": "A",
    }
    path = tmp_path / "grid.3ds"
    write_3ds(
        path,
        spectra=np.zeros((2, 3, 1, 16), np.float32),
        channel_names=["Current (A)"],
        geometry=geometry,
        sweep_start=-0.01,
        sweep_end=0.01,
        n_points=16,
        header=header,
        start_time=START_TIME,
    )
    c = run_caption(path)
    assert (c.file_name, c.temperature_K, c.setpoint) == ("grid.3ds", pytest.approx(1.2), "-20 mV, 100 pA")
    assert c.date is not None and c.date.startswith("2023-11-1")  # the controller's local time, as written


def test_caption_says_unknown_rather_than_guessing() -> None:
    line = RunCaption("x.3ds").line()
    assert line == "x.3ds | T unknown | set-point unknown | date unknown"
    assert format_quantity(-0.01, "V") == "-10 mV" and format_quantity(1.5e-10, "A") == "150 pA"
    assert format_quantity(2.0, "V") == "2 V" and format_quantity(-5.7, "Hz") == "-5.7 Hz"


# -- maps: scan coordinates, invalid pixels marked ------------------------------------------
def _damaged(maps: RunMaps, *, centre_nm: tuple[float, float], angle_deg: float = 0.0) -> RunMaps:
    m = {k: v.copy() for k, v in maps.maps.items()}
    assert m["valid_delta"].all() and m["valid_alpha"].all()  # the film: every pixel valid for both
    for valid, reason in (("valid", "reason"), ("valid_delta", "reason_delta"), ("valid_alpha", "reason_alpha")):
        m[valid][2:5, 3:9] = False  # refused by the kernels (both quantities)
        m[reason][2:5, 3:9] = 3
        m[valid][-2:, :] = False
    m["measured"][-2:, :] = False  # never measured
    g = maps.geometry
    geometry = GridGeometry(
        centre_x_m=centre_nm[0] * 1e-9,
        centre_y_m=centre_nm[1] * 1e-9,
        width_m=g.width_m,
        height_m=g.height_m,
        nx=g.nx,
        ny=g.ny,
        angle_deg=angle_deg,
    )
    return RunMaps(geometry=geometry, maps=m, caption=maps.caption, topography=maps.topography)


def test_maps_are_drawn_in_the_scan_frame_with_refused_and_unmeasured_pixels_marked(
    film: tuple[Path, FigureInputs],
) -> None:
    _, inputs = film
    maps = _damaged(inputs.maps, centre_nm=(120.0, -40.0))
    fig = maps_figure(maps)
    ax = _axes_titled(fig, "Gap")[0]
    half_w, half_h = NX / 2, NY / 2  # the film's pixels are 1 nm
    assert ax.get_xlim() == pytest.approx((120 - half_w, 120 + half_w))
    assert ax.get_ylim() == pytest.approx((-40 - half_h, -40 + half_h))
    hatched = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_hatch()]
    assert len(hatched) == 1 and len(hatched[0].get_paths()) == 3 * 6
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [
        "no $\\Delta$ (see flags.png) (18 px)",
        "no $\\alpha$ (see flags.png) (18 px)",
        f"not measured ({2 * NX} px)",
    ]
    # the colour scale comes from the valid pixels only
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    valid_meV = maps.values("delta_eV", "delta")[np.isfinite(maps.values("delta_eV", "delta"))] * 1e3
    assert mesh.get_clim() == pytest.approx(np.percentile(valid_meV, [1, 99]))


def test_rotated_frame_puts_pixels_where_the_scan_put_them(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    maps = _damaged(inputs.maps, centre_nm=(0.0, 0.0), angle_deg=90.0)
    ax = _axes_titled(maps_figure(maps), "Gap")[0]
    # rotated by 90 degrees: the frame's width now runs along y
    assert ax.get_xlim() == pytest.approx((-NY / 2, NY / 2)) and ax.get_ylim() == pytest.approx((-NX / 2, NX / 2))


def test_empty_input_says_no_valid_pixel_and_invents_no_scale(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    m = {k: v.copy() for k, v in inputs.maps.maps.items()}
    for valid, reason in (("valid", "reason"), ("valid_delta", "reason_delta"), ("valid_alpha", "reason_alpha")):
        m[valid][:] = False
        m[reason][:] = 1
    empty = RunMaps(geometry=inputs.maps.geometry, maps=m, caption=inputs.maps.caption)
    for fig in (maps_figure(empty), histograms_figure(empty), scatter_figure(empty)):
        assert "no valid pixel" in _texts(fig)
        assert "NAN_INPUT" in _texts(fig)
        assert not any(isinstance(c, QuadMesh) for ax in fig.axes for c in ax.collections)
        assert len(fig.axes) <= 2  # no colour bar: there is no scale to show
    for fig in (
        profiles_figure(None, {}, caption=None),
        cross_correlation_figure(None, caption=None),
    ):
        assert "no correlation" in _texts(fig)
        assert not any(ax.lines or ax.images for ax in fig.axes)


def test_each_quantity_is_drawn_over_its_own_valid_pixels_and_names_its_own_reason(
    film: tuple[Path, FigureInputs],
) -> None:
    """A gap-only sweep: Delta valid everywhere, alpha refused (WINDOW_NOT_COVERED), so none valid for both."""
    _, inputs = film
    m = {k: v.copy() for k, v in inputs.maps.maps.items()}
    m["valid"][:] = m["valid_alpha"][:] = False
    m["reason"][:] = m["reason_alpha"][:] = int(ReasonCode.WINDOW_NOT_COVERED)
    gap_only = RunMaps(geometry=inputs.maps.geometry, maps=m, caption=inputs.maps.caption)
    fig = maps_figure(gap_only)
    delta_ax, alpha_ax = _axes_titled(fig, "Gap")[0], _axes_titled(fig, "AA exponent")[0]
    mesh = next(c for c in delta_ax.collections if isinstance(c, QuadMesh))
    assert int(np.ma.count(mesh.get_array())) == NY * NX  # every Delta drawn
    assert not any(isinstance(c, QuadMesh) for c in alpha_ax.collections)
    assert "no valid pixel for $\\alpha$" in _texts(fig) and "WINDOW_NOT_COVERED" in _texts(fig)
    histograms = histograms_figure(gap_only)
    assert f"N = {NY * NX}" in histograms.axes[0].get_title() and "WINDOW_NOT_COVERED" in _texts(histograms)
    # both refused for different reasons: each panel names its own, not the combined (the gap's) one
    m["valid_delta"][:] = False
    m["reason"][:] = m["reason_delta"][:] = int(ReasonCode.BIAS_STEP_TOO_COARSE)
    fig = maps_figure(RunMaps(geometry=inputs.maps.geometry, maps=m))
    delta_text = "".join(t.get_text() for t in _axes_titled(fig, "Gap")[0].texts)
    alpha_text = "".join(t.get_text() for t in _axes_titled(fig, "AA exponent")[0].texts)
    assert "BIAS_STEP_TOO_COARSE" in delta_text and "WINDOW_NOT_COVERED" not in delta_text
    assert "WINDOW_NOT_COVERED" in alpha_text and "BIAS_STEP_TOO_COARSE" not in alpha_text


def test_robust_limits_of_nothing_is_nothing() -> None:
    assert robust_limits(np.full(4, np.nan)) is None
    lo, hi = robust_limits(np.full(4, 2.0))  # type: ignore[misc]
    assert lo < 2.0 < hi and hi - lo < 0.01


# -- spectra: model over the gap, log-log power law -----------------------------------------
def _without_dynes_fit(path: Path) -> FigureInputs:
    """The figure inputs of ``path`` as if the joint fit had run nowhere (no Dynes maps: the template is drawn)."""
    options = KernelOptions()
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)
        model = analyse_source(source, options=options)
        for name in ("delta_dynes_eV", "gamma_dynes_eV"):
            model.maps[name][:] = np.nan
        return collect_figure_inputs(source, model, options=options, examples=3)


@pytest.mark.parametrize("fit", ["Dynes fit", "template"])
def test_gap_panel_draws_the_model_with_its_peaks_at_the_fitted_ones(film: tuple[Path, FigureInputs], fit: str) -> None:
    path, inputs = film
    if fit == "template":
        inputs = _without_dynes_fit(path)
    else:  # the joint fit runs where the per-peak Delta is loose; on this film that is every example
        assert all(np.isfinite(inputs.maps.maps["delta_dynes_eV"][ex.iy, ex.ix]) for ex in inputs.examples)
    assert len(inputs.examples) == 3
    for ex in inputs.examples:
        assert ex.model is not None and ex.model_label.startswith(fit)
        zoom = np.isfinite(ex.model)
        assert zoom.sum() > 50
        v, model = ex.bias_V[zoom], ex.model[zoom]
        for peak in (ex.peak_neg_V, ex.peak_pos_V):
            near = np.abs(v - peak) < 0.4e-3
            assert abs(v[near][np.argmax(model[near])] - peak) <= 2 * np.diff(v).max()
        # the model follows the data: residual well below the gap's depth
        depth = np.nanmax(ex.gap_trace[zoom]) - np.nanmin(ex.gap_trace[zoom])
        assert np.sqrt(np.nanmean((ex.gap_trace[zoom] - model) ** 2)) < 0.25 * depth
    fig = spectra_figure(inputs.examples, fit_window_V=(5e-3, 30e-3), gap_search_V=(0.3e-3, 4e-3), caption=None)
    gap_axes = _axes_titled(fig, "gap:")
    assert len(gap_axes) == 3
    for ax in gap_axes:
        assert [ln.get_label() for ln in ax.lines if ln.get_label() == "model"] == ["model"]


def test_model_from_a_per_pixel_dynes_fit_when_the_maps_carry_one(tmp_path: Path) -> None:
    """With ``delta_dynes_eV``/``gamma_dynes_eV`` maps the drawn curve is that fit, not the template."""
    path = tmp_path / "f.h5"
    write_film_archive(make_film(FilmParams(ny=4, nx=5, seed=1)), path)
    options = KernelOptions()
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)
        model = analyse_source(source, options=options)
        model.maps["delta_dynes_eV"] = np.full((4, 5), 1.15e-3, np.float32)
        model.maps["gamma_dynes_eV"] = np.full((4, 5), 0.08e-3, np.float32)
        inputs = collect_figure_inputs(source, model, options=options, examples=1)
    (ex,) = inputs.examples
    assert ex.model_label.startswith("Dynes fit") and "1.150 meV" in ex.model_label


def test_power_law_panel_is_log_log_with_both_polarities_and_the_window_shaded(
    film: tuple[Path, FigureInputs],
) -> None:
    _, inputs = film
    fig = spectra_figure(inputs.examples, fit_window_V=(5e-3, 30e-3), gap_search_V=(0.3e-3, 4e-3), caption=None)
    log_axes = _axes_titled(fig, "log-log")
    assert len(log_axes) == 3
    for ax in log_axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        labels = [ln.get_label() for ln in ax.lines]
        assert "V > 0" in labels and "V < 0" in labels
        assert any(label.startswith("fit $\\alpha_{+}$") for label in labels)
        assert any(label.startswith("fit $\\alpha_{-}$") for label in labels)
        spans = [p for p in ax.patches if p.get_label() == "fit window"]
        assert len(spans) == 1
        box = spans[0].get_bbox()  # x in data units (mV), y in axes units
        assert (box.x0, box.x1) == pytest.approx((5.0, 30.0))


def test_failed_input_still_shows_its_spectra_with_the_reason(shared_data: Path, tmp_path: Path) -> None:
    # 128 points over 0.3 V: a 2.4 mV step cannot resolve a coherence peak, so Delta is refused
    # for that reason on every pixel; alpha (a reading of the power-law window) is measured
    inputs = _analysed(shared_data / "nanonis-grid-kpfm-20x20.3ds")
    assert len(inputs.examples) == 3 and all(ex.status == "Delta BIAS_STEP_TOO_COARSE" for ex in inputs.examples)
    fig = spectra_figure(inputs.examples, fit_window_V=(5e-3, 30e-3), gap_search_V=(0.3e-3, 4e-3), caption=None)
    titles = [ax.get_title() for ax in _axes_titled(fig, "pixel (")]
    assert len(titles) == 3 and all("not valid: Delta BIAS_STEP_TOO_COARSE" in t for t in titles)
    maps = maps_figure(inputs.maps)
    assert "nanonis-grid-kpfm-20x20.3ds | T unknown | set-point 200 mV, -5.7 Hz | 2017-03-09 21:19" in (
        maps.get_suptitle()
    )
    gap_text = "".join(t.get_text() for t in _axes_titled(maps, "Gap")[0].texts)
    assert "no valid pixel" in gap_text and "BIAS_STEP_TOO_COARSE 400" in gap_text
    assert any(isinstance(c, QuadMesh) for c in _axes_titled(maps, "AA exponent")[0].collections)
    # the examples span what was extracted: alpha's lowest, median and highest pixel
    alpha = inputs.maps.values("alpha", "alpha")
    picked = [alpha[ex.iy, ex.ix] for ex in inputs.examples]
    assert picked[0] == np.nanmin(alpha) and picked[-1] == np.nanmax(alpha) and picked[0] < picked[1] < picked[2]


def test_examples_of_a_gap_only_sweep_span_its_delta(tmp_path: Path) -> None:
    """+-15 mV: no pixel has alpha, every one has Delta; the examples are Delta's lowest, median and highest."""
    path = tmp_path / "narrow.h5"
    film = FilmParams(ny=6, nx=8, seed=1, bias_start_V=-0.015, bias_end_V=0.015, n_points=301)
    write_film_archive(make_film(film), path)
    inputs = _analysed(path)
    delta = inputs.maps.values("delta_eV", "delta")
    assert np.isfinite(delta).all() and not inputs.maps.valid("both").any()
    picked = [delta[ex.iy, ex.ix] for ex in inputs.examples]
    assert picked[0] == delta.min() and picked[-1] == delta.max() and picked[0] < picked[1] < picked[2]
    assert all(ex.status == "alpha WINDOW_NOT_COVERED" and ex.model is not None for ex in inputs.examples)


# -- dynes model against an independent integral --------------------------------------------
def _dynes_quad(v: float, delta: float, gamma: float, temperature: float) -> float:
    """G(V) = integral of N(E) (-f')(E - V) dE, by adaptive quadrature (no shared code)."""
    kT = K_B_EV_PER_K * temperature

    def integrand(e: float) -> float:
        z = complex(e, gamma)
        dos = abs((z / (z * z - delta * delta) ** 0.5).real)
        return dos / (4 * kT * math.cosh((e - v) / (2 * kT)) ** 2)

    points = [p for p in (-delta, delta) if abs(p - v) < 40 * kT]
    value, _ = quad(integrand, v - 40 * kT, v + 40 * kT, points=points or None, limit=400)
    return value


@pytest.mark.parametrize("temperature", [0.3, 1.5])
def test_dynes_conductance_matches_a_direct_integral(temperature: float) -> None:
    delta, gamma = 1.2e-3, 0.08e-3
    v = np.array([0.0, 0.6e-3, 1.1e-3, 1.25e-3, 1.4e-3, 2.5e-3])
    ours = dynes_conductance(v, delta_eV=delta, gamma_eV=gamma, temperature_K=temperature)
    truth = np.array([_dynes_quad(x, delta, gamma, temperature) for x in v])
    assert ours == pytest.approx(truth, rel=3e-3, abs=3e-3)


def test_gap_for_peaks_places_the_broadened_peak_and_refuses_nonsense() -> None:
    delta = gap_for_peaks(1.3e-3, gamma_eV=0.1e-3, temperature_K=0.3, modulation_Vrms=50e-6)
    v = np.linspace(1.0e-3, 1.6e-3, 6001)
    g = dynes_conductance(v, delta_eV=delta, gamma_eV=0.1e-3, temperature_K=0.3, modulation_Vrms=50e-6)
    assert v[np.argmax(g)] == pytest.approx(1.3e-3, abs=2e-6)
    assert delta < 1.3e-3  # the broadened peak sits outside Delta
    with pytest.raises(AnalysisError):
        gap_for_peaks(-1e-3, gamma_eV=1e-4, temperature_K=0.3)
    with pytest.raises(AnalysisError):
        dynes_conductance(v, delta_eV=1e-3, gamma_eV=0.0, temperature_K=0.3)
    flat = fit_background(v, np.full(v.size, np.nan), g)
    assert np.isnan(flat).all()  # no data: nothing drawn, nothing invented


# -- correlations: signed cross profile, noise band, lengths, intervals ---------------------
def _snapshot() -> CorrelationSnapshot:
    r = np.arange(0.0, 20.0)
    cross = -0.6 * np.cos(r / 8.0) * np.exp(-r / 12.0)  # negative at 0, positive beyond ~12.6 nm
    return CorrelationSnapshot(
        r_nm=r,
        rho_delta=np.exp(-r / 5.0),
        rho_alpha=np.exp(-r / 6.0),
        rho_cross=cross,
        cross_map=np.zeros((8, 8)),
        pixel_nm=1.0,
        l_delta_nm=5.0,
        l_alpha_nm=6.0,
        l_cross_nm=7.0,
        rho_cross_0=-0.6,
        n_pixels=400,
    )


REPORT = {
    "l_delta_nm": 5.0,
    "l_alpha_nm": 6.0,
    "l_cross_nm": 7.0,
    "l_delta_noise_nm": 9.0,
    "l_alpha_noise_nm": 10.0,
    "l_cross_noise_nm": 8.0,
    "noise_band_delta": 0.15,
    "noise_band_alpha": 0.16,
    "noise_band_cross": 0.12,
    "rho_cross_0": -0.6,
}


def test_cross_profile_is_drawn_signed_with_its_noise_band_and_lengths() -> None:
    snap = _snapshot()
    fig = profiles_figure(snap, REPORT, caption=None)
    ax = _axes_titled(fig, "signed")[0]
    curve = next(ln for ln in ax.lines if ln.get_label().startswith("$\\Delta$-$\\alpha$: $l_{1/e}$"))
    y = np.asarray(curve.get_ydata())
    assert y == pytest.approx(snap.rho_cross)  # signed: negative where rho is negative, not |rho|
    assert (y < 0).any() and (y > 0).any()
    band = next(p for p in ax.patches if "noise band" in p.get_label())
    box = band.get_bbox()
    assert (box.y0, box.y1) == pytest.approx((-0.12, 0.12))
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert [float(np.asarray(ln.get_xdata())[0]) for ln in dashed] == [7.0]  # l_cross
    noise = next(ln for ln in ax.lines if "into the noise" in ln.get_label())
    assert float(np.asarray(noise.get_xdata())[0]) == 8.0 and float(np.asarray(noise.get_ydata())[0]) == -0.12
    auto = _axes_titled(fig, "autocorrelations")[0]
    assert {ln.get_label() for ln in auto.lines} >= {
        "$\\Delta$ noise band $\\pm$0.150",
        "$\\alpha$ noise band $\\pm$0.160",
        "$\\Delta$ into the noise: 9.0 nm",
    }


def test_profiles_draw_the_90_percent_intervals_when_the_report_has_them() -> None:
    report = {**REPORT, "l_delta_nm_ci90": [4.0, 6.5], "l_cross_nm_ci90": [5.0, 9.0], "rho_cross_0_ci90": [-0.7, -0.5]}
    fig = profiles_figure(_snapshot(), report, caption=None)
    auto, cross = _axes_titled(fig, "autocorrelations")[0], _axes_titled(fig, "signed")[0]
    assert "$\\Delta$: $l_{1/e}$ = 5.0 nm [4.0, 6.5]" in [ln.get_label() for ln in auto.lines]
    labels = [c.get_label() for c in cross.containers]
    assert "$\\rho(0)$ = -0.600, 90 % [-0.70, -0.50]" in labels
    assert "$\\Delta$-$\\alpha$ 90 % interval of $l$" in labels
    # intervals nested in a report section are found too
    nested = {"correlations": {"rho_cross_0_ci90": [-0.7, -0.5]}}
    labels = [
        c.get_label() for c in _axes_titled(profiles_figure(_snapshot(), nested, caption=None), "signed")[0].containers
    ]
    assert any(label.startswith("$\\rho(0)$ = -0.600, 90 %") for label in labels)
    without = profiles_figure(_snapshot(), REPORT, caption=None)
    assert not any(ax.containers for ax in without.axes)
    assert without.get_supxlabel() == ""  # no warning in the report: none printed


def test_a_finite_size_corrected_interval_is_drawn_at_the_corrected_length() -> None:
    """The interval of the film's length need not hold this map's 1/e crossing: its bar sits at the corrected value."""
    report = {**REPORT, "l_delta_nm_ci90": [16.9, 56.8], "l_delta_nm_corrected": 22.9}
    auto = _axes_titled(profiles_figure(_snapshot(), report, caption=None), "autocorrelations")[0]
    assert "$\\Delta$: $l_{1/e}$ = 5.0 nm (this map)" in [ln.get_label() for ln in auto.lines]
    bar = next(c for c in auto.containers if "finite-size corrected" in c.get_label())
    assert bar.get_label() == "$\\Delta$ film's $l$ 22.9 nm, 90 % [16.9, 56.8] (finite-size corrected)"
    assert float(np.asarray(bar.lines[0].get_xdata())[0]) == 22.9


def test_profiles_print_the_reports_warnings() -> None:
    warned = {**REPORT, "warnings": ["correlations from 4 of 3072 pixels", "map side < 10 correlation lengths"]}
    fig = profiles_figure(_snapshot(), warned, caption=None)
    assert fig.get_supxlabel() == (
        "warning: correlations from 4 of 3072 pixels\nwarning: map side < 10 correlation lengths"
    )


# -- line cut -------------------------------------------------------------------------------
def test_line_cut_is_drawn_as_profiles_and_a_waterfall(tmp_path: Path) -> None:
    path = tmp_path / "line.h5"
    write_film_archive(make_film(FilmParams(ny=1, nx=30, seed=2)), path)
    inputs = _analysed(path)
    assert inputs.maps.is_line and len(inputs.line) == 24  # evenly spaced, at most MAX_LINE_SPECTRA
    fig = linecut_figure(inputs.maps, inputs.line, gap_search_V=(0.3e-3, 4e-3))
    assert not any(isinstance(c, QuadMesh) for ax in fig.axes for c in ax.collections)
    assert not any(isinstance(a, AxesImage) for ax in fig.axes for a in ax.images)
    delta_ax = next(ax for ax in fig.axes if "gap $\\Delta$" in ax.get_ylabel())
    curve = next(ln for ln in delta_ax.lines if ln.get_linestyle() == "-")
    x = np.asarray(curve.get_xdata())
    assert x.size == 30 and x == pytest.approx(np.arange(30) - 14.5)  # scan-frame x of the pixel centres, nm
    assert np.asarray(curve.get_ydata()) == pytest.approx(inputs.maps.values("delta_eV", "delta").ravel() * 1e3)
    alpha_ax = next(ax for ax in fig.axes if "AA exponent" in ax.get_ylabel())
    # the maps carry standard errors: Delta and mean alpha are drawn with 1-sigma bars, alpha_+- without
    bars = "$\\alpha$ (mean) (error bars: 1 sigma)"
    assert {bars, "$\\alpha_+$ (V > 0)", "$\\alpha_-$ (V < 0)"} <= {c.get_label() for c in alpha_ax.containers}
    for ax, label, sigma, scale in ((alpha_ax, bars, "alpha_sigma", 1.0),
                                    (delta_ax, "$\\Delta$ (error bars: 1 sigma)", "delta_sigma_eV", 1e3)):  # fmt: skip
        container = next(c for c in ax.containers if c.get_label() == label)
        assert container.has_yerr
        (segments,) = [np.asarray(bar.get_segments()) for bar in container.lines[2]]
        valid = inputs.maps.valid("alpha" if sigma == "alpha_sigma" else "delta").ravel()
        half = 0.5 * np.abs(segments[:, 1, 1] - segments[:, 0, 1])
        assert valid.sum() > 20 and half == pytest.approx(inputs.maps.maps[sigma].ravel()[valid] * scale, rel=1e-5)
    plain = RunMaps(
        geometry=inputs.maps.geometry,
        maps={k: v for k, v in inputs.maps.maps.items() if k not in ("alpha_sigma", "delta_sigma_eV")},
    )
    plain_alpha = next(
        ax for ax in linecut_figure(plain, [], gap_search_V=(0.3e-3, 4e-3)).axes if "AA" in ax.get_ylabel()
    )
    assert {"$\\alpha$ (mean)", "$\\alpha_+$ (V > 0)", "$\\alpha_-$ (V < 0)"} <= {
        c.get_label() for c in plain_alpha.containers
    }
    assert not any(c.has_yerr for c in plain_alpha.containers)
    waterfall = _axes_titled(fig, "gap spectra along the line")[0]
    assert len([ln for ln in waterfall.lines if ln.get_marker() in ("None", "")]) == 24
    # a one-pixel-wide map has no radial ring beyond r = 0: said, not drawn as empty axes
    profiles = profiles_figure(inputs.snapshot, {}, caption=None)
    assert "the map is too narrow" in _texts(profiles) and not any(ax.lines for ax in profiles.axes)
    out = tmp_path / "out"
    analyse_to_directory(path, out, options=KernelOptions(), constants=TheoryConstants(), examples=1)
    assert (out / "linecut.png").is_file() and not (out / "maps.png").exists()


# -- scatter, flags -------------------------------------------------------------------------
def test_delta_alpha_scatter_names_the_correlation(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    fig = scatter_figure(inputs.maps)
    valid = inputs.maps.valid("both")
    d = inputs.maps.maps["delta_eV"][valid].astype(np.float64)
    a = inputs.maps.maps["alpha"][valid].astype(np.float64)
    r = np.corrcoef(a, d)[0, 1]
    assert f"Pearson r = {r:.3f}" in _title(fig) and f"N = {valid.sum()}" in _title(fig)
    ax = fig.axes[0]
    points = next(ln for ln in ax.lines if ln.get_marker() == "o")
    assert np.asarray(points.get_xdata()) == pytest.approx(a)


def test_many_points_become_a_density(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    reps = 6  # 6 x 480 = 2880 pixels > SCATTER_DENSITY_FROM
    m = {k: np.tile(v, (reps, 1)) for k, v in inputs.maps.maps.items()}
    g = inputs.maps.geometry
    geometry = GridGeometry(
        centre_x_m=0, centre_y_m=0, width_m=g.width_m, height_m=g.height_m * reps, nx=g.nx, ny=g.ny * reps
    )
    fig = scatter_figure(RunMaps(geometry=geometry, maps=m))
    ax = fig.axes[0]
    hexes = [c for c in ax.collections if c.get_array() is not None]
    assert len(hexes) == 1 and int(np.asarray(hexes[0].get_array()).sum()) == NY * NX * reps
    assert not any(ln.get_marker() == "o" for ln in ax.lines)


def test_flag_map_names_each_flag_combination_with_its_pixels(film: tuple[Path, FigureInputs]) -> None:
    _, inputs = film
    m = {k: v.copy() for k, v in inputs.maps.maps.items()}
    m["flags"][:] = 0
    m["flags"][0, :5] = int(FlagKind.TIP_CHANGE)
    m["flags"][1, :3] = int(FlagKind.THERMAL | FlagKind.SETPOINT)
    m["measured"][-1, :] = False
    m["reason"][2, :4] = 3
    fig = flags_figure(RunMaps(geometry=inputs.maps.geometry, maps=m))
    flags_legend, reason_legend = fig.legends
    assert (flags_legend.get_title().get_text(), reason_legend.get_title().get_text()) == (
        "quality flags",
        "kernel result",
    )
    legend = [t.get_text() for t in flags_legend.get_texts()]
    assert legend == [
        f"no flag ({NY * NX - NX - 8} px)",
        "tip_change (5 px)",
        "thermal + setpoint (3 px)",
        f"not measured ({NX} px)",
    ]
    reasons = [t.get_text() for t in reason_legend.get_texts()]
    assert "NO_PEAKS (4 px)" in reasons and f"not measured ({NX} px)" in reasons


# -- the files written ----------------------------------------------------------------------
def test_analyse_writes_every_figure_and_empty_ones_say_so(film: tuple[Path, FigureInputs], tmp_path: Path) -> None:
    _, inputs = film
    written = write_analysis_figures(tmp_path, inputs, REPORT)
    assert [p.name for p in written] == [
        "maps.png",
        "cross_correlation.png",
        "histograms.png",
        "delta_alpha.png",
        "flags.png",
        "correlation_profiles.png",
        "spectra.png",
    ]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_drawing_every_figure_leaves_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    """Figures are drawn on their own Agg canvas: drawing and saving switch no global backend."""
    code = f"""
import sys, matplotlib
before = matplotlib.get_backend()
from stslive.live.offline.figure_correlations import profiles_figure
from stslive.live.offline.figures import save_figure
save_figure(profiles_figure(None, {{}}, caption=None), {str(tmp_path / "p.png")!r})
assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())
assert "matplotlib.pyplot" not in sys.modules
"""
    env = {**os.environ, "MPLBACKEND": "svg"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- campaign -------------------------------------------------------------------------------
ROWS = [
    {"run": "a", "temperature_K": 0.3, "field_T": 0.0, "delta_mean_meV": 1.25, "alpha_mean": 0.35, "l_delta_nm": 10},
    {"run": "b", "temperature_K": 1.5, "field_T": 0.0, "delta_mean_meV": 1.45, "alpha_mean": 0.30, "l_delta_nm": 9},
    {"run": "c", "temperature_K": 0.3, "field_T": 1.0, "delta_mean_meV": 1.10, "alpha_mean": 0.36, "l_delta_nm": 12},
    {"run": "d", "temperature_K": 0.8, "field_T": 1.0, "delta_mean_meV": 1.05, "alpha_mean": 0.37, "l_delta_nm": 12},
    {"run": "e", "temperature_K": None, "field_T": 1.0, "delta_mean_meV": 1.0, "alpha_mean": 0.37, "l_delta_nm": 11},
]


def _joined(ax) -> list[tuple[float, ...]]:
    """x values of every drawn line that joins two or more points."""
    return [
        tuple(np.asarray(ln.get_xdata(), dtype=float))
        for ln in ax.lines
        if ln.get_linestyle() == "-" and np.asarray(ln.get_xdata()).size >= 2
    ]


def test_campaign_joins_only_runs_of_one_series() -> None:
    assert series_of(ROWS, "temperature_K", CONDITIONS) == [
        ("magnetic field = 0 T", [0, 1]),
        ("magnetic field = 1 T", [2, 3, 4]),
    ]
    fig = draw_campaign(ROWS, x_key="temperature_K", conditions=CONDITIONS)
    delta_ax = fig.axes[0]
    assert delta_ax.get_xlabel() == "temperature (K)"
    assert sorted(_joined(delta_ax)) == [(0.3, 0.8), (0.3, 1.5)]  # B = 0: a-b; B = 1: c-d; e has no T
    assert "not placed (no temperature recorded): e" in _title(fig)
    by_field = draw_campaign(ROWS, x_key="field_T", conditions=CONDITIONS)
    assert by_field.axes[0].get_xlabel() == "magnetic field (T)"
    assert _joined(by_field.axes[0]) == [(0.0, 1.0)]  # a-c at 0.3 K; b, d, e alone in their series


def test_campaign_against_the_run_index_joins_nothing() -> None:
    fig = draw_campaign(ROWS, x_key=None, conditions=CONDITIONS)
    for ax in fig.axes:
        assert _joined(ax) == []
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c", "d", "e"]
    with pytest.raises(AnalysisError, match="choose one of"):
        draw_campaign(ROWS, x_key="pressure_Pa", conditions=CONDITIONS)
