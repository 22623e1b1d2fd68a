"""Quality flags of pixels and set-point sets, computed live (issue 5 "Flags").

Each rule has a documented threshold in :class:`FlagConfig` (defaults here, overrides from a
TOML file with :func:`load_flag_config`). Per pixel the rules give :class:`FlagKind` bits; the
per-set aggregation (counts, fraction, first/last pixel, dominant reason, message) is
:meth:`stslive.live.results.ResultsModel.flag_summary`, fed by these bits.

The spectral features are pure functions over batches (``axis=-1`` = bias); only the tip-change
and thermal-band rules need history (the recent pixels of the run), kept by :class:`FlagEngine`.
The engine must see the pixels in acquisition order so that a live run, a restart with backfill
and an offline pass give the same flags.

Rules and their physics
-----------------------
modulation
    A bias modulation of ``V_rms`` (sine of amplitude sqrt(2) V_rms) averages dI/dV over
    +-sqrt(2) V_rms, so a coherence peak is broadened by ~sqrt(2) V_rms. Flag when
    sqrt(2) V_rms > ``modulation_max_fraction`` * Delta (Delta: the pixel's, else the run's
    median, else ``nominal_delta_eV``).
thermal
    The Fermi window smears the spectrum over ~3.5 k_B T (full width of -df/dE). Flag when
    T during the spectrum (max of before/after) exceeds the run's base temperature (median of
    the recent pixels) by more than ``temperature_band_K``, or exceeds ``temperature_max_K``, or
    when 3.5 k_B T > ``thermal_max_fraction`` * Delta.
setpoint
    The feedback parks the tip at |I(V_set)| = I_set; the recorded curve must pass through it.
    Flag when |I(V_set)| / I_set - 1 exceeds ``setpoint_rel_tol`` (I averaged over
    +-``setpoint_halfwidth_V`` around V_set).
tip_change
    A tip change alters the junction's normal-state conductance shape. Features: ln of the mean
    conductance G = dI/dV over ``tip_band_V`` on each polarity divided by the set-point
    conductance I(V_set)/V_set (so a pure rescaling, the set-point rule's business, cancels).
    Flag when a feature leaves median +- max(``tip_mad_k`` * 1.4826 MAD, ``tip_min_change``) of
    the last ``tip_window`` unflagged pixels (robust statistics: one bad pixel does not move it).
lockin_overload / lockin_sensitivity
    From the event: the overload flag or any of the ``overload_status_mask`` bits of the lock-in
    status byte (SR830 LIAS?: bit 0 input, 1 filter, 2 output overload). Sensitivity too coarse
    when the largest |X| (A, times ``preamp_gain_V_per_A``) uses less than
    ``sensitivity_min_fraction`` of the full scale: the output resolution then dominates.
sweep_coverage / no_peaks / poor_fit
    From the kernel's reason codes (:class:`stslive.live.kernels.ReasonCode`).
lockin_mismatch
    The first harmonic X = V_m G of the lock-in must be proportional to the numerical dI/dV of
    I(V) away from the gap. Fit X = k G over ``mismatch_window_V`` (|V|), flag when the rms of
    X - k G relative to the rms of X exceeds ``mismatch_rel_tol``.
"""

from __future__ import annotations

import math
import tomllib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d

from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.live.kernels import ReasonCode, SpectrumAnalysis, conductance_sign, derivative, pick_channels, prepare_sweep
from stslive.live.results import FlagKind

#: Boltzmann constant in eV/K.
K_B_EV = 8.617333262e-5


@dataclass(frozen=True, slots=True)
class FlagConfig:
    """Thresholds of every flag rule (SI units; see the module docstring for the physics)."""

    modulation_max_fraction: float = 0.2
    nominal_delta_eV: float = 1.2e-3
    temperature_band_K: float = 0.2
    temperature_max_K: float = math.inf
    thermal_max_fraction: float = 0.5
    setpoint_rel_tol: float = 0.1
    setpoint_halfwidth_V: float = 0.25e-3
    tip_band_V: tuple[float, float] = (20e-3, 35e-3)
    tip_window: int = 32
    tip_min_history: int = 8
    tip_mad_k: float = 8.0
    tip_min_change: float = 0.05
    overload_status_mask: int = 0b111
    preamp_gain_V_per_A: float = 1e9
    sensitivity_min_fraction: float = 0.01
    mismatch_window_V: tuple[float, float] = (5e-3, 30e-3)
    mismatch_rel_tol: float = 0.15
    smoothing_points: int = 11
    set_flag_fraction: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v) for v in values):
                raise ConfigError(f"flags.{f.name} = {value!r}: give a number (SI units)")
            if any(v < 0 for v in values):
                raise ConfigError(f"flags.{f.name} = {value!r} must be >= 0")
        for name in ("tip_band_V", "mismatch_window_V"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ConfigError(f"flags.{name} = {(lo, hi)}: give [low, high] in volts with low < high")
        if not 0 < self.set_flag_fraction <= 1:
            raise ConfigError(f"flags.set_flag_fraction = {self.set_flag_fraction}: give a fraction in (0, 1]")
        if self.smoothing_points < 3 or self.smoothing_points % 2 == 0:
            raise ConfigError(f"flags.smoothing_points = {self.smoothing_points}: give an odd number >= 3")
        if self.tip_window < self.tip_min_history or self.tip_min_history < 3:
            raise ConfigError("flags.tip_window must be >= flags.tip_min_history >= 3")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FlagConfig:
        """Config from a mapping (the ``[flags]`` table); unknown keys raise :class:`ConfigError`."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"flags: unknown key(s) {unknown}; known keys: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(cls(), key)
            if isinstance(default, tuple):
                if not isinstance(value, list | tuple) or len(value) != 2:
                    raise ConfigError(f"flags.{key} = {value!r}: give a pair [low, high]")
                value = tuple(float(v) for v in value)
            elif isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"flags.{key} = {value!r}: give an integer")
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[key] = value
        return cls(**values)


def load_flag_config(path: str | Path) -> FlagConfig:
    """Read a TOML file: a ``[flags]`` table (or the keys at top level); ConfigError on bad keys."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"flag config {path} not found; check the --config path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"flag config {path}: not valid TOML ({exc})") from None
    table = doc
    if "flags" in doc:
        if set(doc) - {"flags"}:
            raise ConfigError(f"flag config {path}: unknown top-level keys {sorted(set(doc) - {'flags'})}; use [flags]")
        table = doc["flags"]
    try:
        return FlagConfig.from_mapping(table)
    except ConfigError as exc:
        raise ConfigError(f"flag config {path}: {exc}") from None


# -- spectral features (pure, batched, axis=-1) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class SpectralFeatures:
    """Per-spectrum quantities the rules need, arrays shaped (...) or (..., 2) for the tip."""

    setpoint_rel_dev: np.ndarray
    tip_features: np.ndarray
    lockin_peak: np.ndarray
    lockin_rel_residual: np.ndarray


def _band_mean(bias: np.ndarray, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    sel = (bias >= lo) & (bias <= hi)
    if np.count_nonzero(sel) < 2:
        return np.full(values.shape[:-1], np.nan)
    return np.mean(values[..., sel], axis=-1, dtype=np.float64)  # NaN inside the band stays NaN


def spectral_features(
    bias_V: np.ndarray,
    current_A: np.ndarray,
    *,
    v_set_V: float,
    i_set_A: float,
    lockin: np.ndarray | None = None,
    config: FlagConfig = FlagConfig(),
) -> SpectralFeatures:
    """Compute the set-point, tip and lock-in features of a batch of spectra.

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Bias sweep, V, either direction.
    current_A : ndarray, (..., n)
        I(V), A, either sign convention.
    v_set_V, i_set_A : float
        Set-point bias (V) and current magnitude (A) of the spectra's set.
    lockin : ndarray, (..., n), optional
        Lock-in X channel (A); None gives NaN lock-in features.

    Returns
    -------
    SpectralFeatures
        ``setpoint_rel_dev`` = |I(V_set)| / I_set - 1; ``tip_features`` = ln(G_band / G_set) for
        (V < 0, V > 0) with G_set = |I(V_set) / V_set|; ``lockin_peak`` = max |X|;
        ``lockin_rel_residual`` = rms(X - k G) / rms(X) over the mismatch window (least-squares k).
    """
    if not i_set_A > 0 or v_set_V == 0:
        raise AnalysisError(f"set-point must have V_set != 0 and I_set > 0, got {v_set_V} V, {i_set_A} A")
    arrays = [current_A] if lockin is None else [current_A, lockin]
    bias, cur, *rest = prepare_sweep(np.asarray(bias_V, dtype=np.float64), *[np.asarray(a) for a in arrays])
    cur = cur * conductance_sign(bias, cur)[..., None].astype(cur.dtype)
    cfg = config
    i_at_set = _band_mean(bias, np.abs(cur), v_set_V - cfg.setpoint_halfwidth_V, v_set_V + cfg.setpoint_halfwidth_V)
    g = derivative(bias, cur, points=cfg.smoothing_points)
    g_set = i_at_set / abs(v_set_V)
    lo, hi = cfg.tip_band_V
    with np.errstate(divide="ignore", invalid="ignore"):
        tip = np.stack([np.log(_band_mean(bias, g, -hi, -lo) / g_set), np.log(_band_mean(bias, g, lo, hi) / g_set)], axis=-1)
    lead = cur.shape[:-1]
    if rest:
        x = rest[0]
        x = x * conductance_sign(bias, x, kind="didv")[..., None].astype(x.dtype)
        peak = np.max(np.abs(x), axis=-1)
        # the same running mean as the derivative, so both channels compare at equal resolution
        # and the lock-in noise (~10 % of X at 50 uV modulation) does not dominate the residual
        x = uniform_filter1d(x, cfg.smoothing_points, axis=-1, mode="nearest")
        wlo, whi = cfg.mismatch_window_V
        sel = (np.abs(bias) >= wlo) & (np.abs(bias) <= whi)
        xs, gs = x[..., sel].astype(np.float64), g[..., sel].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.einsum("...i,...i->...", xs, gs) / np.einsum("...i,...i->...", gs, gs)
            resid = xs - k[..., None] * gs
            rel = np.sqrt(np.mean(resid**2, axis=-1) / np.mean(xs**2, axis=-1))
    else:
        peak = np.full(lead, np.nan)
        rel = np.full(lead, np.nan)
    return SpectralFeatures(
        setpoint_rel_dev=i_at_set / i_set_A - 1.0, tip_features=tip, lockin_peak=peak, lockin_rel_residual=rel
    )


_COVERAGE = (ReasonCode.SEARCH_NOT_COVERED, ReasonCode.WINDOW_NOT_COVERED)
_NO_PEAKS = (ReasonCode.NO_PEAKS, ReasonCode.PEAK_AT_EDGE, ReasonCode.PEAK_NOT_BRACKETED, ReasonCode.POOR_PEAK_FIT)
_POOR_FIT = (ReasonCode.POOR_POWER_LAW_FIT, ReasonCode.NONPOSITIVE_CONDUCTANCE)


@dataclass(frozen=True, slots=True)
class PixelConditions:
    """What the event and its set say about one pixel's measurement (SI units)."""

    temperature_K: float
    lockin_overload: bool
    lockin_status: int
    modulation_Vrms: float
    sensitivity_V: float


class FlagEngine:
    """Applies every rule to pixels in acquisition order, keeping the history the rules need.

    Parameters
    ----------
    config
        Thresholds.
    """

    def __init__(self, config: FlagConfig = FlagConfig()) -> None:
        self.config = config
        self._tip_history: deque[np.ndarray] = deque(maxlen=config.tip_window)
        self._temperatures: deque[float] = deque(maxlen=max(config.tip_window, 16))
        self._deltas: deque[float] = deque(maxlen=256)

    def reference_delta_eV(self) -> float:
        """Median of the recent valid gaps, else the configured nominal gap (eV)."""
        if self._deltas:
            return float(np.median(np.fromiter(self._deltas, float)))
        return self.config.nominal_delta_eV

    def evaluate(
        self,
        analysis: SpectrumAnalysis,
        features: SpectralFeatures,
        conditions: Sequence[PixelConditions],
    ) -> np.ndarray:
        """FlagKind bits (uint32, shape (n,)) of n pixels given in acquisition order.

        ``analysis`` and ``features`` are flat batches of the same n pixels; ``conditions`` one
        entry per pixel. The engine's history advances by these pixels.
        """
        cfg = self.config
        n = len(conditions)
        reason = np.asarray(analysis.reason).reshape(n)
        delta = np.asarray(analysis.delta_eV, dtype=np.float64).reshape(n)
        sp_dev = np.asarray(features.setpoint_rel_dev, dtype=np.float64).reshape(n)
        tip = np.asarray(features.tip_features, dtype=np.float64).reshape(n, 2)
        peak = np.asarray(features.lockin_peak, dtype=np.float64).reshape(n)
        mismatch = np.asarray(features.lockin_rel_residual, dtype=np.float64).reshape(n)
        out = np.zeros(n, dtype=np.uint32)
        for i, cond in enumerate(conditions):
            bits = 0
            r = int(reason[i])
            if r in _COVERAGE:
                bits |= FlagKind.SWEEP_COVERAGE
            elif r in _NO_PEAKS:
                bits |= FlagKind.NO_PEAKS
            elif r in _POOR_FIT:
                bits |= FlagKind.POOR_FIT
            d = delta[i] if math.isfinite(delta[i]) else self.reference_delta_eV()
            if math.sqrt(2.0) * cond.modulation_Vrms > cfg.modulation_max_fraction * d:
                bits |= FlagKind.MODULATION
            bits |= self._thermal(cond.temperature_K, d)
            if not abs(sp_dev[i]) <= cfg.setpoint_rel_tol:  # NaN (no curve at V_set) is flagged too
                bits |= FlagKind.SETPOINT
            if cond.lockin_overload or cond.lockin_status & cfg.overload_status_mask:
                bits |= FlagKind.LOCKIN_OVERLOAD
            if math.isfinite(peak[i]) and peak[i] * cfg.preamp_gain_V_per_A < cfg.sensitivity_min_fraction * cond.sensitivity_V:
                bits |= FlagKind.LOCKIN_SENSITIVITY
            if math.isfinite(mismatch[i]) and mismatch[i] > cfg.mismatch_rel_tol:
                bits |= FlagKind.LOCKIN_MISMATCH
            if self._tip_changed(tip[i]):
                bits |= FlagKind.TIP_CHANGE
            elif np.isfinite(tip[i]).all() and not bits & FlagKind.SETPOINT:
                self._tip_history.append(tip[i])
            if r == ReasonCode.OK and math.isfinite(delta[i]) and not bits & (FlagKind.THERMAL | FlagKind.MODULATION):
                self._deltas.append(float(delta[i]))
            out[i] = bits
        return out

    def _thermal(self, temperature_K: float, delta_eV: float) -> int:
        cfg = self.config
        if not math.isfinite(temperature_K):
            return 0  # no thermometer reading: nothing to judge (not a fault of the pixel)
        hot = temperature_K > cfg.temperature_max_K or 3.5 * K_B_EV * temperature_K > cfg.thermal_max_fraction * delta_eV
        if len(self._temperatures) >= 3:
            base = float(np.median(np.fromiter(self._temperatures, float)))
            hot |= temperature_K > base + cfg.temperature_band_K
        if not hot:
            self._temperatures.append(temperature_K)
        return int(FlagKind.THERMAL) if hot else 0

    def _tip_changed(self, features: np.ndarray) -> bool:
        cfg = self.config
        if len(self._tip_history) < cfg.tip_min_history:
            return False
        if not np.isfinite(features).all():
            return True
        hist = np.stack(self._tip_history)
        med = np.median(hist, axis=0)
        mad = 1.4826 * np.median(np.abs(hist - med), axis=0)
        limit = np.maximum(cfg.tip_mad_k * mad, cfg.tip_min_change)
        return bool((np.abs(features - med) > limit).any())


def conditions_for(
    *,
    temperatures_K: Sequence[float | None],
    lockin_overload: bool,
    lockin_status: int,
    setpoint_set: Mapping[str, Any] | None,
) -> PixelConditions:
    """Pixel conditions from an event's fields and its set-point set (a dict of SetpointSet fields)."""
    temps = [t for t in temperatures_K if t is not None and math.isfinite(t)]
    sset = setpoint_set or {}
    return PixelConditions(
        temperature_K=max(temps) if temps else math.nan,
        lockin_overload=bool(lockin_overload),
        lockin_status=int(lockin_status),
        modulation_Vrms=float(sset.get("lockin_amplitude_Vrms", 0.0)),
        sensitivity_V=float(sset.get("lockin_sensitivity_V", math.inf)) if sset.get("lockin_amplitude_Vrms") else 0.0,
    )


def channel_arrays(spectra: np.ndarray, channel_names: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The current and (if any) lock-in channels of ``spectra`` (..., channel, n)."""
    pick = pick_channels(list(channel_names))
    if pick.current is None:
        raise AnalysisError(f"flags need a current channel; channels are {channel_names}")
    lockin = None if pick.lockin is None else spectra[..., pick.lockin, :]
    return spectra[..., pick.current, :], lockin
