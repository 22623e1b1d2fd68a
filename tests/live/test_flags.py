"""Flag engine: the batched rules equal a pixel-by-pixel reference for any batch split; fast features."""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from stslive.live.flag_config import FlagConfig
from stslive.live.flag_kinds import FlagKind
from stslive.live.flags import K_B_EV, FlagEngine, PixelConditions, SpectralFeatures, spectral_features
from stslive.live.flags_history import SEQUENTIAL_MAX
from stslive.live.kernels import ReasonCode, SpectrumAnalysis, conductance_sign, derivative, prepare_sweep

NY, NX = 30, 50
N = NY * NX


def _reference_tip(cfg: FlagConfig, iy, ix, tip, eligible) -> tuple[np.ndarray, np.ndarray]:
    """The tip rule of FlagConfig's docstring, one pixel at a time, with dicts and np.median.

    Returns the TIP_CHANGE bit and the tip epoch of every pixel.
    """
    accepted: dict[tuple[int, int], np.ndarray] = {}
    recent: deque = deque(maxlen=cfg.tip_recent)
    residuals: deque = deque(maxlen=cfg.tip_window)
    offsets, epoch, run = [np.zeros(2)], 0, []  # run: the open outlier run, (i, features, resid, step, limit)
    r = cfg.tip_radius_px
    changed = np.zeros(tip.shape[0], dtype=bool)
    epochs = np.zeros(tip.shape[0], dtype=int)
    for i, (y, x) in enumerate(zip(iy.tolist(), ix.tolist(), strict=True)):
        epochs[i], changed[i] = epoch, epoch != 0
        if not eligible[i]:
            if run:
                run.append((i, None, None, None, None))
            continue
        g = tip[i] - offsets[epoch]
        near = [
            accepted[(a, b)] for a in range(y - r, y + r + 1) for b in range(x - r, x + r + 1) if (a, b) in accepted
        ]
        resid = g - np.median(near, axis=0) if near else None
        outlier = False
        if resid is not None and len(residuals) >= cfg.tip_min_history and recent:
            hist = np.array(residuals)
            med = np.median(hist, axis=0)
            limit = np.maximum(cfg.tip_mad_k * 1.4826 * np.median(np.abs(hist - med), axis=0), cfg.tip_min_change)
            step = resid - med
            outlier = (np.abs(step) > limit).any() and (np.abs(g - np.median(recent, axis=0)) > limit).any()
        if not outlier:
            run.clear()
            accepted[(y, x)] = g
            recent.append(g)
            if resid is not None:
                residuals.append(resid)
            continue
        changed[i] = True
        heads = [e for e in run if e[1] is not None]
        if heads and not (np.abs(step - heads[0][3]) <= limit).all():
            run.clear()
        run.append((i, tip[i], resid, step, limit))
        outliers = [e for e in run if e[1] is not None]
        if len(outliers) < cfg.tip_confirm:
            continue
        new = offsets[epoch] + np.median([e[3] for e in outliers], axis=0)
        last = outliers[-1][4]
        back = [
            (np.max(np.abs(o - new) / last), e)
            for e, o in enumerate(offsets)
            if e != epoch and (np.abs(o - new) <= last).all()
        ]
        to = min(back)[1] if back else len(offsets)
        if not back:
            offsets.append(new)
        for j, features, res, _, _ in run:
            epochs[j], changed[j] = to, to != 0
            if features is not None:
                accepted[(int(iy[j]), int(ix[j]))] = features - offsets[to]
                recent.append(features - offsets[to])
                residuals.append(res - (offsets[to] - offsets[epoch]))
        epoch = to
        run.clear()
    return changed, epochs


def _reference_bits(cfg: FlagConfig, delta, reason, sp_dev, tip, temp, modulation, iy, ix) -> np.ndarray:
    """The rules of the flags module docstring, one pixel at a time (the specification)."""
    temps: deque = deque(maxlen=max(cfg.tip_window, 16))
    deltas: deque = deque(maxlen=256)
    out = []
    for i in range(delta.size):
        bits = 0
        if reason[i] in (ReasonCode.SEARCH_NOT_COVERED, ReasonCode.WINDOW_NOT_COVERED):
            bits |= FlagKind.SWEEP_COVERAGE
        elif reason[i] in (
            ReasonCode.NO_PEAKS,
            ReasonCode.PEAK_AT_EDGE,
            ReasonCode.PEAK_NOT_BRACKETED,
            ReasonCode.POOR_PEAK_FIT,
        ):
            bits |= FlagKind.NO_PEAKS
        elif reason[i] in (ReasonCode.POOR_POWER_LAW_FIT, ReasonCode.NONPOSITIVE_CONDUCTANCE):
            bits |= FlagKind.POOR_FIT
        d = delta[i] if math.isfinite(delta[i]) else (np.median(deltas) if deltas else cfg.nominal_delta_eV)
        if math.sqrt(2) * modulation[i] > cfg.modulation_max_fraction * d:
            bits |= FlagKind.MODULATION
        t = temp[i]
        if math.isfinite(t):
            hot = t > cfg.temperature_max_K or 3.5 * K_B_EV * t > cfg.thermal_max_fraction * d
            if len(temps) >= 3:
                hot |= t > np.median(temps) + cfg.temperature_band_K
            if hot:
                bits |= FlagKind.THERMAL
            else:
                temps.append(t)
        if abs(sp_dev[i]) > cfg.setpoint_rel_tol:  # NaN: V_set outside the sweep, not judged
            bits |= FlagKind.SETPOINT
        if (
            reason[i] == ReasonCode.OK
            and math.isfinite(delta[i])
            and not bits & (FlagKind.THERMAL | FlagKind.MODULATION)
        ):
            deltas.append(delta[i])
        out.append(int(bits))
    out = np.array(out, dtype=np.uint32)
    eligible = np.isfinite(tip).all(axis=1) & ~(out & FlagKind.SETPOINT).astype(bool)
    changed, epochs = _reference_tip(cfg, iy, ix, tip, eligible)
    out[changed] |= np.uint32(FlagKind.TIP_CHANGE)
    return out, epochs


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(5)
    delta = rng.normal(1.2e-3, 0.1e-3, N)
    delta[rng.random(N) < 0.05] = np.nan
    delta[100:140] = np.nan  # a stretch without gaps: the reference gap of the pixels before decides
    reason = np.where(np.isnan(delta), ReasonCode.NO_PEAKS, ReasonCode.OK)
    reason[rng.random(N) < 0.03] = ReasonCode.POOR_POWER_LAW_FIT
    reason[rng.random(N) < 0.01] = ReasonCode.WINDOW_NOT_COVERED
    # serpentine scan; its last 40 spectra re-measure earlier pixels (some twice)
    iy, ix = np.divmod(np.arange(N), NX)
    ix = np.where(iy % 2 == 1, NX - 1 - ix, ix)
    again = rng.integers(0, N - 40, 40)
    again[5] = again[2]
    iy[-40:], ix[-40:] = iy[again], ix[again]
    field = 0.1 * np.sin(2 * np.pi * ix / 40) + 0.05 * np.cos(2 * np.pi * iy / 25)  # smooth film variation
    tip = field[:, None] + rng.normal(0, 0.01, (N, 2))
    tip[rng.random(N) < 0.03] += 0.3
    tip[600:660] += 0.5  # a tip change lasting 60 pixels, then the tip goes back
    tip[1100:] += (0.2, -0.15)  # a permanent tip change
    tip[rng.random(N) < 0.02] = np.nan
    sp_dev = rng.normal(0, 0.04, N)
    sp_dev[rng.random(N) < 0.05] = 0.5
    sp_dev[rng.random(N) < 0.01] = np.nan
    temp = 0.3 + rng.normal(0, 0.01, N)
    temp[900:950] = 1.4  # a temperature excursion
    temp[rng.random(N) < 0.03] = np.nan
    modulation = np.where(rng.random(N) < 0.8, 50e-6, 0.3e-3)
    return delta, reason, sp_dev, tip, temp, modulation, iy, ix


def _batched(cfg: FlagConfig, data, cuts) -> tuple[np.ndarray, np.ndarray]:
    """Bits and epochs of the pixels evaluated in batches cut at ``cuts``, with the revisions applied."""
    delta, reason, sp_dev, tip, temp, modulation, iy, ix = data
    engine = FlagEngine(cfg)
    bits, epochs = np.zeros(N, np.uint32), np.zeros(N, int)
    seen: dict[tuple[int, int], int] = {}  # last index of each pixel so far (revisions name pixels)
    for lo, hi in itertools.pairwise(cuts):
        n = hi - lo
        features = SpectralFeatures(
            setpoint_rel_dev=sp_dev[lo:hi],
            tip_features=tip[lo:hi],
            lockin_peak=np.full(n, np.nan),
            lockin_rel_residual=np.full(n, np.nan),
        )
        conditions = PixelConditions(
            temperature_K=temp[lo:hi],
            lockin_overload=np.zeros(n, bool),
            lockin_status=np.zeros(n, int),
            modulation_Vrms=modulation[lo:hi],
            sensitivity_V=np.full(n, 5e-3),
        )
        result = engine.evaluate(
            delta_eV=delta[lo:hi],
            reason=reason[lo:hi],
            features=features,
            conditions=conditions,
            iy=iy[lo:hi],
            ix=ix[lo:hi],
        )
        rev = result.revised
        for y, x, e, changed in zip(
            rev.iy.tolist(), rev.ix.tolist(), rev.epoch.tolist(), rev.changed.tolist(), strict=True
        ):
            k = seen[(y, x)]  # revisions name measurements of earlier batches
            epochs[k] = e
            bits[k] = (bits[k] & ~np.uint32(FlagKind.TIP_CHANGE)) | (np.uint32(FlagKind.TIP_CHANGE) * changed)
        bits[lo:hi], epochs[lo:hi] = result.bits, result.tip_epoch
        seen.update(
            {(y, x): lo + k for k, (y, x) in enumerate(zip(iy[lo:hi].tolist(), ix[lo:hi].tolist(), strict=True))}
        )
    return bits, epochs


@pytest.mark.parametrize("split", ["whole", "random", "single", "limit"])
def test_batched_flags_equal_the_pixel_by_pixel_rules(pixels, split) -> None:
    cfg = FlagConfig()
    expected, expected_epochs = _reference_bits(cfg, *pixels)
    for bit in (FlagKind.TIP_CHANGE, FlagKind.THERMAL, FlagKind.MODULATION, FlagKind.SETPOINT, FlagKind.NO_PEAKS):
        assert (expected & int(bit)).any(), bit  # every history rule is exercised
    # the tip went back (epoch 0 again after 660) and changed for good (epoch 2 from 1100)
    assert expected_epochs[610] == 1 and expected_epochs[700] == 0 and expected_epochs[1200] == 2
    rng = np.random.default_rng(1)
    cuts = {
        "whole": [0, N],
        "single": list(range(N + 1)),
        "random": sorted({0, N, *rng.integers(1, N, 120).tolist()}),
        # batch sizes at the one-by-one limit and just above it (numpy passes), alternating
        "limit": [*np.cumsum([0, *[SEQUENTIAL_MAX, SEQUENTIAL_MAX + 1, 1, 300] * 4]).tolist(), N],
    }[split]
    bits, epochs = _batched(cfg, pixels, cuts)
    np.testing.assert_array_equal(bits, expected)
    np.testing.assert_array_equal(epochs, expected_epochs)


def test_single_pixel_conditions_still_accepted(pixels) -> None:
    delta, reason, sp_dev, tip, temp, modulation, iy, ix = pixels
    n = 50
    fields = {k: np.zeros(n) for k in SpectrumAnalysis._fields}
    fields.update(delta_eV=delta[:n], reason=reason[:n])
    features = SpectralFeatures(
        setpoint_rel_dev=sp_dev[:n],
        tip_features=tip[:n],
        lockin_peak=np.full(n, 1e-15),  # 1 uV at 1e9 V/A: < 1 % of 5 mV
        lockin_rel_residual=np.full(n, 0.5),
    )
    conds = [
        PixelConditions(
            temperature_K=float(temp[i]),
            lockin_overload=i == 3,
            lockin_status=4 if i == 7 else 0,
            modulation_Vrms=float(modulation[i]),
            sensitivity_V=5e-3,
        )
        for i in range(n)
    ]
    bits = (
        FlagEngine()
        .evaluate(delta_eV=delta[:n], reason=reason[:n], features=features, conditions=conds, iy=iy[:n], ix=ix[:n])
        .bits
    )
    assert bits[3] & FlagKind.LOCKIN_OVERLOAD and bits[7] & FlagKind.LOCKIN_OVERLOAD
    assert not bits[4] & FlagKind.LOCKIN_OVERLOAD
    assert (bits & FlagKind.LOCKIN_SENSITIVITY).all() and (bits & FlagKind.LOCKIN_MISMATCH).all()


def _features_by_definition(bias, current, lockin, *, v_set_V, i_set_A, cfg=None):
    """The features exactly as the module docstring defines them, on the whole sweep."""
    cfg = FlagConfig() if cfg is None else cfg
    bias, cur, x = prepare_sweep(bias, current, lockin)
    cur = cur * conductance_sign(bias, cur)[:, None]
    x = x * conductance_sign(bias, x, kind="didv")[:, None]
    band = (bias >= v_set_V - cfg.setpoint_halfwidth_V) & (bias <= v_set_V + cfg.setpoint_halfwidth_V)
    i_at = np.abs(cur[:, band]).mean(axis=1, dtype=np.float64)
    g = derivative(bias, cur, points=cfg.smoothing_points)
    lo, hi = cfg.tip_band_V
    neg, pos = (bias >= -hi) & (bias <= -lo), (bias >= lo) & (bias <= hi)
    tip = np.log(
        np.stack([g[:, neg].mean(axis=1, dtype=np.float64), g[:, pos].mean(axis=1, dtype=np.float64)], axis=1)
        / (i_at / abs(v_set_V))[:, None]
    )
    from scipy.ndimage import uniform_filter1d

    xs = uniform_filter1d(x, cfg.smoothing_points, axis=-1, mode="nearest")
    sel = (np.abs(bias) >= cfg.mismatch_window_V[0]) & (np.abs(bias) <= cfg.mismatch_window_V[1])
    xs, gs = xs[:, sel].astype(float), g[:, sel].astype(float)
    k = (xs * gs).sum(axis=1) / (gs * gs).sum(axis=1)
    rel = np.sqrt(((xs - k[:, None] * gs) ** 2).mean(axis=1) / (xs**2).mean(axis=1))
    return i_at / i_set_A - 1, tip, np.abs(x).max(axis=1), rel


@pytest.mark.parametrize("reverse", [False, True])
def test_fast_features_equal_their_definition(reverse: bool) -> None:
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=6, nx=8, seed=3))
    iy, ix = np.divmod(np.arange(48), 8)
    s = film.spectra(iy, ix)
    cur, li = s.current_A.astype(np.float32), s.lockin_x_A.astype(np.float32)
    cur[3] *= -1  # the other current sign convention
    li[5] *= -1  # a lock-in phase of 180 deg
    bias = np.linspace(-0.04, 0.04, cur.shape[-1])
    if reverse:
        bias, cur, li = bias[::-1], cur[:, ::-1], li[:, ::-1]
    got = spectral_features(bias, cur, v_set_V=-0.01, i_set_A=150e-12, lockin=li)
    want = _features_by_definition(bias, cur, li, v_set_V=-0.01, i_set_A=150e-12)
    np.testing.assert_allclose(got.setpoint_rel_dev, want[0], rtol=1e-6)
    np.testing.assert_allclose(got.tip_features, want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.lockin_peak, want[2], rtol=1e-6)
    np.testing.assert_allclose(got.lockin_rel_residual, want[3], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("with_lockin", [True, False])
def test_features_do_not_depend_on_the_batch(with_lockin: bool) -> None:
    # small batches smooth both channels in one filter call on a stacked copy, large ones each
    # channel from its rows; a live run (1-10 spectra per call) must equal the offline pass
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=5, nx=8, seed=4))
    iy, ix = np.divmod(np.arange(40), 8)
    s = film.spectra(iy, ix)
    spectra = np.stack([s.current_A, s.lockin_x_A], axis=1).astype(np.float32)  # (n, channel, point) as streamed
    bias = np.linspace(-0.04, 0.04, spectra.shape[-1])

    def features(lo: int, hi: int) -> SpectralFeatures:
        return spectral_features(
            bias, spectra[lo:hi, 0], v_set_V=-0.01, i_set_A=150e-12, lockin=spectra[lo:hi, 1] if with_lockin else None
        )

    whole = features(0, 40)
    for size in (1, 7, SEQUENTIAL_MAX):
        parts = [features(lo, min(40, lo + size)) for lo in range(0, 40, size)]
        for name in SpectralFeatures.__slots__:
            np.testing.assert_array_equal(
                np.concatenate([getattr(p, name) for p in parts]),
                getattr(whole, name),
                err_msg=f"{name}, batches of {size}",
            )


def test_unknown_reason_codes_raise_no_reason_flag() -> None:
    n = 4
    fields = {k: np.zeros(n) for k in SpectrumAnalysis._fields}
    fields.update(delta_eV=np.full(n, 1.2e-3), reason=np.array([-1, 999, ReasonCode.NO_PEAKS, ReasonCode.OK]))
    features = SpectralFeatures(
        setpoint_rel_dev=np.zeros(n),
        tip_features=np.zeros((n, 2)),
        lockin_peak=np.full(n, np.nan),
        lockin_rel_residual=np.full(n, np.nan),
    )
    conds = PixelConditions(
        temperature_K=np.full(n, 0.3),
        lockin_overload=np.zeros(n, bool),
        lockin_status=np.zeros(n, int),
        modulation_Vrms=np.full(n, 50e-6),
        sensitivity_V=np.zeros(n),
    )
    bits = (
        FlagEngine()
        .evaluate(
            delta_eV=fields["delta_eV"],
            reason=fields["reason"],
            features=features,
            conditions=conds,
            iy=np.zeros(n, int),
            ix=np.arange(n),
        )
        .bits
    )
    np.testing.assert_array_equal(bits, [0, 0, int(FlagKind.NO_PEAKS), 0])


def test_flag_modules_import_without_a_cycle() -> None:
    """Thresholds, bits and history sit below the engine: none of them imports flags or the results model."""
    import ast
    import importlib

    for low in ("flag_config", "flag_kinds", "flags_history"):
        module = importlib.import_module(f"stslive.live.{low}")
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"stslive.live.flags", "stslive.live.results"}, (low, imported)


# -- tip epochs and unknown settings on simulated runs ------------------------------------------
def _simulated_run(ny: int, nx: int, faults: list[dict]):
    """A run measured through the simulated lab (faults act as in the instruments), analysed live."""
    from test_analyser_sim import geometry, make_lab, make_sets, measure_run, pixel_inputs, start_fields

    from stslive.live.kernels import KernelOptions
    from stslive.live.run_context import RunContext
    from stslive.mocks.faults import FaultPlan

    plan = FaultPlan.from_list(faults)
    sets = make_sets()
    pixels = list(measure_run(make_lab(ny, nx, plan), sets, lambda iy, ix: 0))
    ctx = RunContext(
        "tip",
        start_fields(geometry(ny, nx), sets),
        options=KernelOptions(dynes_width_eV=0.1e-3),
        flag_config=FlagConfig(),
    )
    inputs = pixel_inputs(pixels)
    for lo in range(0, len(inputs), 7):  # batches as the live service drains them
        ctx.process(inputs[lo : lo + 7])
    changed = np.zeros((ny, nx), bool)
    for p in pixels:
        changed[p.iy, p.ix] = p.spectrum in plan.fired_spectra("tip_change")
    return ctx, changed


@pytest.mark.parametrize(
    ("window", "slope"),
    [((500, None), 8.0), ((200, 400), 8.0), ((500, None), -3.0)],
    ids=["permanent", "reverts", "permanent-small"],
)
def test_tip_change_labels_every_pixel_measured_with_the_changed_tip(window, slope) -> None:
    # a tip whose DOS tilts (factor 1: the set-point still holds) from spectrum window[0] on
    start, stop = window
    fault = {"kind": "tip_change", "from_spectrum": start, "params": {"factor": 1.0, "extra_slope_per_eV": slope}}
    if stop is not None:
        fault["to_spectrum"] = stop
    ctx, truth = _simulated_run(24, 32, [fault])
    maps = ctx.model.maps
    for found in ((maps["flags"] & int(FlagKind.TIP_CHANGE)) != 0, maps["tip_epoch"] != 0):
        hit = int((found & truth).sum())
        recall, precision = hit / truth.sum(), hit / max(1, found.sum())
        assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    events = ctx.flags.tip_events
    # one change (and its return): a tip that goes back returns to epoch 0, with its pixels
    assert [e.to_epoch for e in events] == ([1] if stop is None else [1, 0])
    assert set(np.unique(maps["tip_epoch"])) == {0, 1}


def test_unknown_lockin_settings_of_a_replayed_3ds_flag_nothing(tmp_path: Path) -> None:
    """A .3ds records no lock-in sensitivity nor status, nor whether its amplitude is rms or peak:
    those rules are not judged, live or offline."""
    from stslive.acquisition.cli import main
    from stslive.acquisition.formats.nanonis3ds import write_3ds
    from stslive.acquisition.formats.runmodel import GridGeometry
    from stslive.acquisition.replay import open_replay
    from stslive.live.kernels import KernelOptions
    from stslive.live.results_io import load_maps_h5
    from stslive.live.run_context import PixelInput, RunContext
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=12, nx=16, seed=5, n_points=801))
    path = tmp_path / "grid.3ds"
    write_3ds(
        path,
        spectra=np.stack(
            [film.spectra(*np.indices((12, 16))).current_A, film.spectra(*np.indices((12, 16))).lockin_x_A], 2
        ),
        channel_names=["Current (A)", "LI Demod 1 X (A)"],
        geometry=GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=16e-9, height_m=12e-9, nx=16, ny=12),
        sweep_start=-0.04,
        sweep_end=0.04,
        n_points=801,
        header={
            "Bias>Bias (V)": "-1.000000E-2",
            "Current>Current (A)": "1.500000E-10",
            "Bias Spectroscopy>Lock-In run": "TRUE",
            "Lock-in>Amplitude": f"{50e-6 * np.sqrt(2):.6E}",  # zero-to-peak, as Nanonis writes it
        },
    )
    with open_replay(path) as source:  # what `stslive replay` publishes
        ctx = RunContext("3ds", source.start_fields, options=KernelOptions(), flag_config=FlagConfig())
        for event in source.events():
            ctx.process([PixelInput.from_event(event)])
        ctx.finish()
    flags = ctx.model.maps["flags"]
    assert not (flags & int(FlagKind.LOCKIN_SENSITIVITY)).any() and not (flags & int(FlagKind.MODULATION)).any()
    unjudged = ctx.flags.unjudged()
    assert {"lockin_sensitivity", "lockin_overload", "thermal"} <= set(unjudged)
    assert unjudged["lockin_sensitivity"]["pixels"] == 12 * 16 and "not recorded" in unjudged["lockin_overload"]["why"]
    # the header gives the amplitude but not its convention (docs/formats.md): the modulation is unknown
    assert "modulation" in unjudged and "not recorded" in unjudged["modulation"]["why"]
    assert main(["analyse", str(path), "--out", str(tmp_path / "out"), "--examples", "0"]) == 0
    np.testing.assert_array_equal(load_maps_h5(tmp_path / "out" / "maps.h5").maps["flags"], flags)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["flags"]["not_judged"]) == set(unjudged)
    assert any(w["code"] == "flags_not_judged" for w in report["warnings"])


def _judge_20(flags, features):
    """RunFlags.evaluate of 20 pixels of a 4 x 5 map in raster order, gap 1.2 meV, 0.3 K, no overload."""
    iy, ix = np.divmod(np.arange(20), 5)
    return flags.evaluate(
        iy=iy,
        ix=ix,
        set_ids=np.zeros(20, int),
        time=np.arange(20.0),
        delta_eV=np.full(20, 1.2e-3),
        reason=np.zeros(20, int),
        features=features,
        temperature_K=np.full(20, 0.3),
        lockin_status=np.zeros(20, int),
        lockin_overload=np.zeros(20, bool),
    )


def test_a_sweep_that_misses_the_setpoint_bias_is_not_flagged() -> None:
    """+-5 mV sweep, V_set = -10 mV: |I(V_set)| cannot be checked, so SETPOINT does not fire."""
    from stslive.acquisition.formats.runmodel import SetpointSet
    from stslive.live.flags_run import RunFlags
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=4, nx=5, seed=2, bias_start_V=-0.005, bias_end_V=0.005, n_points=201))
    s = film.spectra(*np.indices((4, 5)))
    spectra = np.stack([s.current_A, s.lockin_x_A], axis=-2).reshape(20, 2, 201)
    sset = SetpointSet(
        id=0,
        name="gap only",
        bias_setpoint_V=-0.01,
        current_setpoint_A=150e-12,
        sweep_start_V=-0.005,
        sweep_end_V=0.005,
        n_points=201,
        lockin_amplitude_Vrms=50e-6,
        lockin_sensitivity_V=5e-3,
    )
    flags = RunFlags(["Current (A)", "LI Demod 1 X (A)"], {0: sset}, config=FlagConfig())
    result = _judge_20(flags, flags.features(0, spectra))
    assert not (result.bits & int(FlagKind.SETPOINT)).any()
    assert flags.unjudged()["setpoint"] == {"pixels": 20, "why": "the sweep does not reach V_set"}


def test_flag_log_keeps_time_order_and_knows_the_latest_measurement() -> None:
    from stslive.live.flags_log import FlagLog

    log = FlagLog()

    def add(times: list[float], pixels: list[tuple[int, int]]) -> int:
        m = len(times)
        start = log.n
        log.append(
            iy=np.array([p[0] for p in pixels]),
            ix=np.array([p[1] for p in pixels]),
            set_id=np.zeros(m, int),
            time=np.array(times),
            delta_eV=np.zeros(m),
            reason=np.zeros(m, int),
            setpoint_rel_dev=np.zeros(m),
            tip_features=np.zeros((m, 2)),
            lockin_peak=np.zeros(m),
            lockin_rel_residual=np.zeros(m),
            temperature_K=np.zeros(m),
            lockin_status=np.zeros(m, int),
            lockin_overload=np.zeros(m, bool),
        )
        return start

    assert log.in_time_order(add([np.nan, np.nan], [(0, 0), (0, 1)]))  # no times (a .3ds): record order
    assert log.in_time_order(add([np.nan] * 20, [(1, k) for k in range(20)]))  # the log grows past 16 rows
    log = FlagLog()
    assert log.in_time_order(add([1.0, 2.0, 2.0], [(0, 0), (0, 1), (0, 2)]))
    assert not log.in_time_order(add([1.5, 3.0], [(0, 3), (0, 0)]))  # 1.5 arrives after 2.0: late
    log.sort_by_time()
    assert log.col("time").tolist() == [1.0, 1.5, 2.0, 2.0, 3.0] and log.col("ix").tolist() == [0, 3, 1, 2, 0]
    assert log.latest().tolist() == [False, True, True, True, True]  # (0, 0) measured again at 3.0


def test_a_lockin_that_did_not_modulate_is_not_compared_with_dI_dV() -> None:
    """Lock-in off (amplitude 0, as a .3ds says when it did not run): its channel is no dI/dV, nothing to match."""
    from stslive.acquisition.formats.runmodel import SetpointSet
    from stslive.live.flags_run import RunFlags
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=4, nx=5, seed=2, n_points=801))
    s = film.spectra(*np.indices((4, 5)))
    noise = np.random.default_rng(0).normal(0, 1e-13, s.lockin_x_A.shape)  # the channel holds noise only
    spectra = np.stack([s.current_A, noise], axis=-2).reshape(20, 2, 801).astype(np.float32)
    off = SetpointSet(
        id=0, name="no lock-in", bias_setpoint_V=-0.01, current_setpoint_A=150e-12, sweep_start_V=-0.04,
        sweep_end_V=0.04, n_points=801,
    )  # fmt: skip
    flags = RunFlags(["Current (A)", "LI Demod 1 X (A)"], {0: off}, config=FlagConfig())
    features = flags.features(0, spectra)
    assert (features.lockin_rel_residual > FlagConfig().mismatch_rel_tol).all()  # the rule would fire
    result = _judge_20(flags, features)
    assert not (result.bits & int(FlagKind.LOCKIN_MISMATCH)).any()
    assert flags.unjudged()["lockin_mismatch"]["pixels"] == 20


@pytest.mark.parametrize(
    ("channel", "flagged"), [("LI Demod 1 X (A)", True), ("Input 2 (A/V)", True), ("Input 2 (V)", None)]
)
def test_the_sensitivity_rule_reads_the_lockin_signal_in_amperes(channel: str, flagged: bool | None) -> None:
    """X in A as recorded, dI/dV (A/V) times the modulation, anything else not judged."""
    from stslive.acquisition.formats.runmodel import SetpointSet
    from stslive.live.flags_run import RunFlags
    from stslive.mocks.film import FilmParams, make_film

    film = make_film(FilmParams(ny=4, nx=5, seed=2, n_points=801))
    s = film.spectra(*np.indices((4, 5)))
    lockin = s.lockin_x_A / 50e-6 if channel.endswith("(A/V)") else s.lockin_x_A  # X = V_m dI/dV
    spectra = np.stack([s.current_A, lockin], axis=-2).reshape(20, 2, 801).astype(np.float32)
    coarse = SetpointSet(
        id=0, name="0.5 V range", bias_setpoint_V=-0.01, current_setpoint_A=150e-12, sweep_start_V=-0.04,
        sweep_end_V=0.04, n_points=801, lockin_frequency_Hz=1e3, lockin_amplitude_Vrms=50e-6, lockin_sensitivity_V=0.5,
    )  # fmt: skip
    flags = RunFlags(["Current (A)", channel], {0: coarse}, config=FlagConfig())  # X ~ 0.75 mV on a 0.5 V range
    bits = _judge_20(flags, flags.features(0, spectra)).bits
    if flagged is None:
        assert not (bits & int(FlagKind.LOCKIN_SENSITIVITY)).any() and "lockin_sensitivity" in flags.unjudged()
    else:
        assert (bits & int(FlagKind.LOCKIN_SENSITIVITY)).all() and "lockin_sensitivity" not in flags.unjudged()
