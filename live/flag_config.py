"""Thresholds of the quality-flag rules (:class:`FlagConfig`) and their TOML loader.

Every rule of :mod:`stslive.live.flags` reads its limits from one frozen :class:`FlagConfig`
(SI units); :func:`load_flag_config` reads overrides from a ``[flags]`` table. Bad values and
unknown keys raise :class:`~stslive.drivers.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from stslive.drivers.errors import ConfigError
from stslive.drivers.tomlfile import check_keys, read_toml


@dataclass(frozen=True, slots=True)
class FlagConfig:
    """Thresholds of every flag rule, SI units.

    The rules and their physics:

    modulation
        A bias modulation of V_rms (a sine of amplitude sqrt(2) V_rms) averages dI/dV over
        +-sqrt(2) V_rms, so a coherence peak broadens by ~sqrt(2) V_rms. Flagged when
        sqrt(2) V_rms > ``modulation_max_fraction`` * Delta (Delta: the pixel's, else the median of
        the run's recent valid gaps, else ``nominal_delta_eV``).
    thermal
        The Fermi window smears the spectrum over ~3.5 k_B T (full width of -df/dE). Flagged when
        T during the spectrum (max of before/after) exceeds the run's base temperature (median of
        the recent pixels) by more than ``temperature_band_K``, or exceeds ``temperature_max_K``,
        or when 3.5 k_B T > ``thermal_max_fraction`` * Delta.
    setpoint
        The feedback parks the tip at |I(V_set)| = I_set, so the recorded curve must pass through
        it: flagged when |I(V_set)| / I_set - 1 exceeds ``setpoint_rel_tol`` (I averaged over
        +-``setpoint_halfwidth_V`` around V_set; not judged where the sweep misses V_set).
    tip_change
        A tip change alters the junction's normal-state conductance shape. Features
        f = ln(G_band / G_set) on each polarity: the mean conductance over ``tip_band_V`` over the
        set-point conductance I(V_set) / V_set (a pure rescaling cancels). The film moves f too
        (G_band / G_set ~ (V_band / V_set)^alpha), but smoothly on the scale of a pixel, while a
        tip change is an event in *time* that shifts every later pixel by the same step. Each tip
        epoch has an offset (its step from the first tip) that is removed from the features of its
        pixels before they are compared. A pixel is an outlier when its normalised f differs by
        more than limit = max(``tip_mad_k`` * 1.4826 MAD, ``tip_min_change``) both from its
        *spatial* neighbours (median of the accepted pixels within ``tip_radius_px``, Chebyshev;
        the MAD is that of these residuals over the last ``tip_window`` accepted pixels, minus their
        median) and from the *recent pixels in time* (median of the last ``tip_recent`` accepted
        ones): a step in space only (a raster fly-back, a film boundary) is not a step of the
        junction. ``tip_confirm`` consecutive outliers (pixels not judged may lie between them)
        with one step (within the limit) are a tip-change event: its first pixel and every later
        one belong to a new epoch, or to an earlier epoch whose offset lies within the limit of the
        new one (the tip went back). Fewer are a momentary junction change. The TIP_CHANGE flag
        marks every pixel not measured with the first tip (epoch > 0) and every momentary change.
        Nothing is judged before ``tip_min_history`` accepted residuals, nor are NaN features (no
        conductance in the band or at V_set) or pixels with a set-point flag; they take the epoch.
        ``tip_min_change`` = 0.05 (a 5 % step of G_band / G_set) lies well above the clean demo
        film's pixel-to-pixel scatter of f (~0.005 rms) and below the injected tip fault's steps
        (0.16 and 0.28).
    lockin_overload, lockin_sensitivity
        The event's overload flag or any ``overload_status_mask`` bit of the lock-in status byte
        (SR830 LIAS?: bit 0 input, 1 filter, 2 output overload). Sensitivity too coarse when the
        largest |X| (A, times ``preamp_gain_V_per_A``) uses less than ``sensitivity_min_fraction``
        of the full scale. A channel archived as dI/dV (A/V) gives X = dI/dV times the set's
        modulation; a channel in another unit is not judged.
    lockin_mismatch
        The lock-in's first harmonic X = V_m G must be proportional to the numerical dI/dV of
        I(V) away from the gap: X = k G is fitted over |V| in ``mismatch_window_V``, flagged when
        rms(X - k G) / rms(X) exceeds ``mismatch_rel_tol``. Both channels are smoothed with a
        running mean of ``smoothing_points`` samples. Judged only where the set's modulation is
        known and not 0: without one the channel carries no dI/dV.
    sweep_coverage, no_peaks, poor_fit
        From the kernel's reason codes; no threshold here.

    A rule whose input is unknown (no thermometer reading, a lock-in amplitude, sensitivity or
    status the recording does not hold, NaN features) does not fire: an unknown is never replaced
    by a default that would flag every pixel; the run says which rules it could not judge.

    ``set_flag_fraction`` is the flagged fraction of its pixels above which a whole set-point set
    is reported as flagged.
    """

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
    tip_radius_px: int = 2
    tip_recent: int = 4
    tip_confirm: int = 3
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
        if self.tip_radius_px < 1 or self.tip_recent < 1 or self.tip_confirm < 1:
            raise ConfigError("flags.tip_radius_px, flags.tip_recent and flags.tip_confirm must be integers >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FlagConfig:
        """Config from a mapping (the ``[flags]`` table); unknown keys raise :class:`ConfigError`.

        TOML gives pairs as lists and may give a float threshold as an integer: both are converted
        here; an integer threshold must be an integer.
        """
        defaults = cls()
        check_keys(data, (f.name for f in fields(cls)), what="flags")
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(defaults, key)
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
    doc = read_toml(path, what="flag config", option="--config")
    table = doc
    if "flags" in doc:
        if set(doc) - {"flags"}:
            raise ConfigError(f"flag config {path}: unknown top-level keys {sorted(set(doc) - {'flags'})}; use [flags]")
        table = doc["flags"]
    try:
        return FlagConfig.from_mapping(table)
    except ConfigError as exc:
        raise ConfigError(f"flag config {path}: {exc}") from None
