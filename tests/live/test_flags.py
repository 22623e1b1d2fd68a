"""Flag engine: the batched rules equal a pixel-by-pixel reference for any batch split; fast features."""

from __future__ import annotations

import itertools
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


def _reference_tip(cfg: FlagConfig, iy, ix, tip, eligible) -> np.ndarray:
    """The tip rule of the module docstring, one pixel at a time, with dicts and np.median."""
    accepted: dict[tuple[int, int], np.ndarray] = {}
    recent: deque = deque(maxlen=cfg.tip_recent)
    residuals: deque = deque(maxlen=cfg.tip_window)
    r = cfg.tip_radius_px
    out = np.zeros(tip.shape[0], dtype=bool)
    for i, (y, x) in enumerate(zip(iy.tolist(), ix.tolist(), strict=True)):
        near = [
            accepted[(a, b)] for a in range(y - r, y + r + 1) for b in range(x - r, x + r + 1) if (a, b) in accepted
        ]
        resid = tip[i] - np.median(near, axis=0) if near and np.isfinite(tip[i]).all() else None
        if resid is not None and len(residuals) >= cfg.tip_min_history and recent:
            hist = np.array(residuals)
            med = np.median(hist, axis=0)
            limit = np.maximum(cfg.tip_mad_k * 1.4826 * np.median(np.abs(hist - med), axis=0), cfg.tip_min_change)
            out[i] = (np.abs(resid - med) > limit).any() and (np.abs(tip[i] - np.median(recent, axis=0)) > limit).any()
        if eligible[i] and not out[i]:
            accepted[(y, x)] = tip[i]
            recent.append(tip[i])
            if resid is not None:
                residuals.append(resid)
    return out


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
        if not abs(sp_dev[i]) <= cfg.setpoint_rel_tol:
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
    out[_reference_tip(cfg, iy, ix, tip, eligible)] |= np.uint32(FlagKind.TIP_CHANGE)
    return out


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
    tip[600:660] += 0.5  # a tip change lasting 60 pixels
    tip[rng.random(N) < 0.02] = np.nan
    sp_dev = rng.normal(0, 0.04, N)
    sp_dev[rng.random(N) < 0.05] = 0.5
    sp_dev[rng.random(N) < 0.01] = np.nan
    temp = 0.3 + rng.normal(0, 0.01, N)
    temp[900:950] = 1.4  # a temperature excursion
    temp[rng.random(N) < 0.03] = np.nan
    modulation = np.where(rng.random(N) < 0.8, 50e-6, 0.3e-3)
    return delta, reason, sp_dev, tip, temp, modulation, iy, ix


def _batched(cfg: FlagConfig, data, cuts) -> np.ndarray:
    delta, reason, sp_dev, tip, temp, modulation, iy, ix = data
    engine = FlagEngine(cfg)
    out = []
    for lo, hi in itertools.pairwise(cuts):
        n = hi - lo
        fields = {k: np.zeros(n) for k in SpectrumAnalysis._fields}
        fields.update(delta_eV=delta[lo:hi], reason=reason[lo:hi])
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
        out.append(engine.evaluate(SpectrumAnalysis(**fields), features, conditions, iy=iy[lo:hi], ix=ix[lo:hi]))
    return np.concatenate(out)


@pytest.mark.parametrize("split", ["whole", "random", "single", "limit"])
def test_batched_flags_equal_the_pixel_by_pixel_rules(pixels, split) -> None:
    cfg = FlagConfig()
    expected = _reference_bits(cfg, *pixels)
    for bit in (FlagKind.TIP_CHANGE, FlagKind.THERMAL, FlagKind.MODULATION, FlagKind.SETPOINT, FlagKind.NO_PEAKS):
        assert (expected & int(bit)).any(), bit  # every history rule is exercised
    rng = np.random.default_rng(1)
    cuts = {
        "whole": [0, N],
        "single": list(range(N + 1)),
        "random": sorted({0, N, *rng.integers(1, N, 120).tolist()}),
        # batch sizes at the one-by-one limit and just above it (numpy passes), alternating
        "limit": [*np.cumsum([0, *[SEQUENTIAL_MAX, SEQUENTIAL_MAX + 1, 1, 300] * 4]).tolist(), N],
    }[split]
    np.testing.assert_array_equal(_batched(cfg, pixels, cuts), expected)


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
    bits = FlagEngine().evaluate(SpectrumAnalysis(**fields), features, conds, iy=iy[:n], ix=ix[:n])
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
    bits = FlagEngine().evaluate(SpectrumAnalysis(**fields), features, conds, iy=np.zeros(n, int), ix=np.arange(n))
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
