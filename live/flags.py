"""Quality flags of pixels, computed live: spectral features, the rules, and the engine that applies them.

:func:`spectral_features` reduces a batch of spectra (``axis=-1`` = bias) to the few numbers the
rules read; :class:`FlagEngine` turns features, kernel results and measurement conditions into
:class:`~stslive.live.flag_kinds.FlagKind` bits, with thresholds from
:class:`~stslive.live.flag_config.FlagConfig` (where each rule and its physics is described).
The rules with history (thermal band, tip change and its epochs) judge a pixel against those
measured before it (:mod:`stslive.live.flags_history`, :mod:`stslive.live.flags_tip`), so the
engine must see pixels in acquisition order: a live run, a restart with backfill and an offline
pass then give the same bits. Small batches (the
live analyser's 1-10 spectra) take those rules one pixel at a time on Python floats, large ones
in numpy passes; both give the same bits. The per-set aggregation of the bits is
:func:`stslive.live.flag_kinds.summarise_sets`.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import median
from typing import NamedTuple

import numpy as np
from scipy.ndimage import uniform_filter1d

from stslive.drivers.errors import AnalysisError
from stslive.live.flag_config import FlagConfig

# re-exported: ``stslive analyser`` imports the loader from here
from stslive.live.flag_config import load_flag_config as load_flag_config
from stslive.live.flag_kinds import FlagKind
from stslive.live.flags_history import SEQUENTIAL_MAX, judge, windowed_outliers
from stslive.live.flags_tip import TipEvent, TipRevision, TipTracker
from stslive.live.kernels import ReasonCode, pick_channels
from stslive.live.kernels.buffers import scratch as _scratch
from stslive.live.theory import K_B_EV_PER_K as K_B_EV

#: The default thresholds (one frozen instance: the feature plans are cached per config).
DEFAULT_CONFIG = FlagConfig()


# -- spectral features (pure, batched, axis=-1) -------------------------------------------------
@dataclass(frozen=True, slots=True)
class SpectralFeatures:
    """Per-spectrum quantities the rules need, arrays shaped (...) or (..., 2) for the tip."""

    setpoint_rel_dev: np.ndarray
    tip_features: np.ndarray
    lockin_peak: np.ndarray
    lockin_rel_residual: np.ndarray


def _columns(bias: np.ndarray, lo: float, hi: float) -> slice:
    """Columns with lo <= bias <= hi of an ascending sweep (a slice: no boolean-mask copies)."""
    return slice(int(np.searchsorted(bias, lo, "left")), int(np.searchsorted(bias, hi, "right")))


@dataclass(frozen=True, slots=True)
class _FeaturePlan:
    """What :func:`spectral_features` reads of a bias grid: columns and constants, spectra-free.

    Column slices index the ascending sweep (``flip``: the given one descends); ``tip`` and
    ``window`` index the derivative's columns ``sub``.
    """

    flip: bool
    edge: int  # samples at each end for the sign of I(V_max) - I(V_min) (conductance_sign's 5 %)
    at_set: slice
    sub: slice
    half: int  # s of the box derivative (kernels.derivative)
    scale: float  # 1 / (2 s h), h the step of the grid ``sub``, V
    tip: tuple[slice, slice]
    window: tuple[slice, slice]


# The live analyser calls spectral_features with 1-10 spectra at a time on one grid: these searches
# and checks were a fixed cost of every call, so they are kept per (grid, V_set, config).
@lru_cache(maxsize=32)
def _feature_plan(bias_key: bytes, v_set_V: float, cfg: FlagConfig) -> _FeaturePlan:
    given = np.frombuffer(bias_key, dtype=np.float64)
    flip = given.size > 1 and given[0] > given[-1]
    bias = given[::-1] if flip else given  # prepare_sweep's rule
    hw = cfg.setpoint_halfwidth_V
    lo, hi = cfg.tip_band_V
    wlo, whi = cfg.mismatch_window_V
    # columns the features read, widened by the reach of the box derivative (s + points // 2)
    reach = cfg.smoothing_points + 1
    top = max(hi, whi)
    sub = _columns(bias, -top, top)
    sub = slice(max(0, sub.start - reach), min(bias.size, sub.stop + reach))
    b = bias[sub]
    steps = np.diff(b)  # kernels.derivative's check of its grid, here once per grid
    step = float(steps.mean()) if b.size >= 8 else math.nan
    if not step > 0 or np.max(np.abs(steps - step)) > 1e-3 * step:
        raise AnalysisError(
            f"flags: the bias sweep must be uniform with at least 8 points within +-{top} V; "
            "resample it onto a uniform grid"
        )
    half = (cfg.smoothing_points + 1) // 2
    return _FeaturePlan(
        flip=flip,
        edge=max(1, bias.size // 20),
        at_set=_columns(bias, v_set_V - hw, v_set_V + hw),
        sub=sub,
        half=half,
        scale=1.0 / (2 * half * step),
        tip=(_columns(b, -hi, -lo), _columns(b, lo, hi)),
        window=(_columns(b, -whi, -wlo), _columns(b, wlo, whi)),
    )


def _mean(values: np.ndarray, cols: slice) -> np.ndarray:
    """np.mean over ``cols`` of the last axis in float64 (NaN below 2 columns), without its wrapper."""
    width = cols.stop - cols.start
    if width < 2:
        return np.full(values.shape[:-1], np.nan)
    return np.add.reduce(values[..., cols], axis=-1, dtype=np.float64) / width  # = np.mean: sum, then divide


#: Spectra up to which both channels are smoothed in one call on a stacked copy (see _running_means)
_FUSE_MAX_SPECTRA = 16


def _running_means(
    cur: np.ndarray, x: np.ndarray | None, sub: slice, points: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    """Running means (``points`` wide, edges 'nearest') of I and X over the columns ``sub``.

    X is smoothed with the same running mean as I (whose differences are G), so both compare at
    equal resolution and the lock-in noise (~10 % of X at 50 uV modulation) does not dominate
    the residual. The filter works line by line, so one call on the two channels stacked gives
    the same values as two: that saves a call's fixed cost on small batches, where it
    dominates; on large ones the stacking copy costs more, and each channel is filtered straight
    from its rows.
    """
    shape = (*cur.shape[:-1], sub.stop - sub.start)
    if x is not None and x.dtype == dtype and math.prod(cur.shape[:-1]) <= _FUSE_MAX_SPECTRA:
        lines = _scratch("lines", (2, *shape), dtype)
        lines[0], lines[1] = cur[..., sub], x[..., sub]
        smooth = uniform_filter1d(lines, points, axis=-1, mode="nearest", output=_scratch("smooth", lines.shape, dtype))
        return smooth[0], smooth[1]
    u = uniform_filter1d(cur[..., sub], points, axis=-1, mode="nearest", output=_scratch("smooth", shape, dtype))
    if x is None:
        return u, None
    return u, uniform_filter1d(x[..., sub], points, axis=-1, mode="nearest", output=_scratch("xs", shape, x.dtype))


def _product_sums(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sums over the last axis of g*g, x*g, x*x, (3, ...) float64 (float32 products, float64 sums)."""
    products = _scratch("products", (3, *g.shape), np.result_type(g, x))
    np.multiply(g, g, out=products[0])
    np.multiply(x, g, out=products[1])
    np.multiply(x, x, out=products[2])
    return np.add.reduce(products, axis=-1, dtype=np.float64)


def spectral_features(
    bias_V: np.ndarray,
    current_A: np.ndarray,
    *,
    v_set_V: float,
    i_set_A: float,
    lockin: np.ndarray | None = None,
    config: FlagConfig = DEFAULT_CONFIG,
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
        ``lockin_rel_residual`` = rms(X - k G) / rms(X) over the mismatch window (least-squares k),
        computed as sqrt(1 - S_xg^2 / (S_xx S_gg)) with S the sums over the window (the same value).

    Notes
    -----
    Speed (the live analyser runs this on every batch of 1-256 spectra): the sign conventions are
    applied to the few reduced numbers, not to the spectra - the band means of G are linear in
    the sign of I and the residual ratio does not depend on the signs of X or G at all -, the
    derivative and smoothing are computed only over the columns the features read (plus the
    filters' reach, so the values equal those over the whole sweep), in one running-mean call for
    both channels, and the grid's columns are computed once per grid (:func:`_feature_plan`).
    G is :func:`stslive.live.kernels.derivative` (box method) written out here so that its
    running mean is shared with the lock-in channel's.
    """
    if not i_set_A > 0 or v_set_V == 0:
        raise AnalysisError(f"set-point must have V_set != 0 and I_set > 0, got {v_set_V} V, {i_set_A} A")
    bias = np.asarray(bias_V, dtype=np.float64)
    if bias.ndim != 1:
        raise AnalysisError(f"bias must be 1-D (one sweep for all spectra), got shape {bias.shape}")
    cur = np.asarray(current_A)
    x = None if lockin is None else np.asarray(lockin)
    for c in (cur,) if x is None else (cur, x):
        if c.shape[-1:] != bias.shape:
            raise AnalysisError(f"a channel has {c.shape[-1:]} points on its last axis, the bias {bias.size}")
    plan = _feature_plan(bias.tobytes(), float(v_set_V), config)
    if plan.flip:
        cur = cur[..., ::-1]
        x = None if x is None else x[..., ::-1]
    k = plan.edge  # conductance_sign(kind="current") of the ascending sweep: sign of I(V_max) - I(V_min)
    rise = (
        np.add.reduce(cur[..., -k:], axis=-1, dtype=np.float64) / k
        - np.add.reduce(cur[..., :k], axis=-1, dtype=np.float64) / k
    )
    sign = np.where(rise < 0, -1.0, 1.0)
    i_at_set = _mean(np.abs(cur[..., plan.at_set]), slice(0, plan.at_set.stop - plan.at_set.start))
    dtype = np.dtype(cur.dtype if cur.dtype in (np.float32, np.float64) else np.float64)
    sub, s = plan.sub, plan.half
    lead = cur.shape[:-1]
    u, xs = _running_means(cur, x, sub, config.smoothing_points, dtype)
    g = _scratch("g", u.shape, dtype)  # G = (U_{i+s} - U_{i-s}) / (2 s h), NaN within s of the ends
    np.subtract(u[..., 2 * s :], u[..., : -2 * s], out=g[..., s:-s])
    g[..., s:-s] *= dtype.type(plan.scale)
    g[..., :s] = g[..., -s:] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        bands = np.stack([_mean(g, plan.tip[0]), _mean(g, plan.tip[1])], axis=-1)
        tip = np.log(sign[..., None] * bands / (i_at_set / abs(v_set_V))[..., None])
        if x is None:
            peak = rel = np.full(lead, np.nan)
        else:
            peak = np.max(np.abs(x), axis=-1)
            assert xs is not None  # smoothed with the current whenever there is a lock-in channel
            lo, hi = plan.window
            sgg, sxg, sxx = _product_sums(g[..., lo], xs[..., lo]) + _product_sums(g[..., hi], xs[..., hi])
            rel = np.sqrt(np.maximum(1.0 - sxg * sxg / (sxx * sgg), 0.0))
    return SpectralFeatures(
        setpoint_rel_dev=i_at_set / i_set_A - 1.0, tip_features=tip, lockin_peak=peak, lockin_rel_residual=rel
    )


_COVERAGE = (ReasonCode.SEARCH_NOT_COVERED, ReasonCode.WINDOW_NOT_COVERED)
_NO_PEAKS = (ReasonCode.NO_PEAKS, ReasonCode.PEAK_AT_EDGE, ReasonCode.PEAK_NOT_BRACKETED, ReasonCode.POOR_PEAK_FIT)
_POOR_FIT = (ReasonCode.POOR_POWER_LAW_FIT, ReasonCode.NONPOSITIVE_CONDUCTANCE)
#: FlagKind bit of each kernel reason code (index = code): one lookup per batch instead of three isin
#: and a last 0 entry, where take(mode="clip") puts codes beyond the table (code 0 = OK, where negative
#: ones go, is 0 too)
_REASON_BITS = np.zeros(max(ReasonCode) + 2, dtype=np.uint32)
for _codes, _bit in (
    (_COVERAGE, FlagKind.SWEEP_COVERAGE),
    (_NO_PEAKS, FlagKind.NO_PEAKS),
    (_POOR_FIT, FlagKind.POOR_FIT),
):
    _REASON_BITS[list(_codes)] = _bit
# the bits as numpy scalars, looked up once: FlagKind.X is an enum lookup (~2 us each in 3.11)
_BIT_SETPOINT, _BIT_OVERLOAD, _BIT_SENSITIVITY, _BIT_MISMATCH, _BIT_TIP = (
    np.uint32(b)
    for b in (
        FlagKind.SETPOINT,
        FlagKind.LOCKIN_OVERLOAD,
        FlagKind.LOCKIN_SENSITIVITY,
        FlagKind.LOCKIN_MISMATCH,
        FlagKind.TIP_CHANGE,
    )
)
_MODULATION, _THERMAL, _OK = int(FlagKind.MODULATION), int(FlagKind.THERMAL), int(ReasonCode.OK)


@dataclass(frozen=True, slots=True)
class PixelConditions:
    """What the event and its set say about one pixel's measurement (SI units).

    NaN (a float) or a negative ``lockin_status`` means unknown: the rule that reads it does not
    fire. The same class carries a batch: every field an array of shape (n,) (:meth:`stack`).
    """

    temperature_K: float | np.ndarray
    lockin_overload: bool | np.ndarray
    lockin_status: int | np.ndarray
    modulation_Vrms: float | np.ndarray
    sensitivity_V: float | np.ndarray

    @classmethod
    def stack(cls, conditions: Sequence[PixelConditions]) -> PixelConditions:
        """One PixelConditions of (n,) arrays from n single-pixel conditions."""
        return cls(
            temperature_K=np.array([c.temperature_K for c in conditions], dtype=np.float64),
            lockin_overload=np.array([c.lockin_overload for c in conditions], dtype=bool),
            lockin_status=np.array([c.lockin_status for c in conditions], dtype=np.int64),
            modulation_Vrms=np.array([c.modulation_Vrms for c in conditions], dtype=np.float64),
            sensitivity_V=np.array([c.sensitivity_V for c in conditions], dtype=np.float64),
        )


class FlagResult(NamedTuple):
    """What :meth:`FlagEngine.evaluate` concludes about a batch.

    ``bits`` (n,) uint32 FlagKind bits and ``tip_epoch`` (n,) int16 of the batch's pixels;
    ``revised``: pixels of earlier batches whose tip epoch (and TIP_CHANGE bit) a tip-change event
    confirmed in this batch changed (:class:`~stslive.live.flags_tip.TipRevision`).
    """

    bits: np.ndarray
    tip_epoch: np.ndarray
    revised: TipRevision


class FlagEngine:
    """Applies every rule to pixels in acquisition order, keeping the history the rules need.

    Every rule is evaluated on the whole batch at once (numpy); the rules with history
    (thermal band, tip change, the reference gap for pixels without one) give the same bits as
    stepping through the pixels one by one in acquisition order (:mod:`stslive.live.flags_history`).

    Parameters
    ----------
    config
        Thresholds.
    """

    def __init__(self, config: FlagConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._tip = TipTracker(config)
        self._temperatures: deque[float] = deque(maxlen=max(config.tip_window, 16))
        self._deltas: deque[float] = deque(maxlen=256)

    @property
    def tip_events(self) -> list[TipEvent]:
        """The tip-change events so far, in acquisition order."""
        return self._tip.events

    def reference_delta_eV(self) -> float:
        """Median of the recent valid gaps, else the configured nominal gap (eV)."""
        if self._deltas:
            return median(self._deltas)
        return self.config.nominal_delta_eV

    def evaluate(
        self,
        *,
        delta_eV: np.ndarray,
        reason: np.ndarray,
        features: SpectralFeatures,
        conditions: Sequence[PixelConditions] | PixelConditions,
        iy: np.ndarray,
        ix: np.ndarray,
    ) -> FlagResult:
        """FlagKind bits and tip epochs of n pixels given in acquisition order (:class:`FlagResult`).

        ``delta_eV`` (the gap, NaN where not extracted), ``reason`` (the kernels' ReasonCode) and
        ``features`` are flat batches of the same n pixels; ``conditions`` one
        entry per pixel, or one :meth:`PixelConditions.stack` of (n,) arrays; ``iy``, ``ix`` the
        pixels' map row and column (the tip rule compares a pixel with its spatial neighbours).
        The engine's history advances by these pixels.
        """
        cfg = self.config
        cond = conditions if isinstance(conditions, PixelConditions) else PixelConditions.stack(conditions)
        temp = np.asarray(cond.temperature_K, dtype=np.float64).reshape(-1)
        n = temp.size
        reason = np.asarray(reason).reshape(n)
        delta = np.asarray(delta_eV, dtype=np.float64).reshape(n)
        sp_dev = np.asarray(features.setpoint_rel_dev, dtype=np.float64).reshape(n)
        tip = np.asarray(features.tip_features, dtype=np.float64).reshape(n, 2)
        peak = np.asarray(features.lockin_peak, dtype=np.float64).reshape(n)
        mismatch = np.asarray(features.lockin_rel_residual, dtype=np.float64).reshape(n)
        modulation = np.asarray(cond.modulation_Vrms, dtype=np.float64).reshape(n)
        sensitivity = np.asarray(cond.sensitivity_V, dtype=np.float64).reshape(n)
        status = np.asarray(cond.lockin_status, dtype=np.int64).reshape(n)
        overload = np.asarray(cond.lockin_overload, dtype=bool).reshape(n)
        rows, cols = np.asarray(iy, dtype=np.int64).reshape(-1), np.asarray(ix, dtype=np.int64).reshape(-1)
        if rows.size != n or cols.size != n:
            raise AnalysisError(f"flags: {rows.size} rows and {cols.size} columns for {n} pixels; give one per pixel")
        # history-free rules, whole batch at once; a bool array times a bit is the bit where the rule holds
        out = _REASON_BITS.take(reason, mode="clip")  # a new array; OK and unknown codes: no bit
        with np.errstate(invalid="ignore"):  # NaN: the sweep misses V_set, nothing to judge
            out |= (np.abs(sp_dev) > cfg.setpoint_rel_tol) * _BIT_SETPOINT
        out |= (overload | ((status > 0) & (status & cfg.overload_status_mask).astype(bool))) * _BIT_OVERLOAD
        with np.errstate(invalid="ignore"):
            coarse = np.isfinite(peak) & (peak * cfg.preamp_gain_V_per_A < cfg.sensitivity_min_fraction * sensitivity)
        out |= coarse * _BIT_SENSITIVITY
        with np.errstate(invalid="ignore"):  # a lock-in that did not modulate (or unknown) carries no dI/dV
            out |= ((modulation > 0) & np.isfinite(mismatch) & (mismatch > cfg.mismatch_rel_tol)) * _BIT_MISMATCH
        # rules with history, in acquisition order. A pixel without a gap of its own judges the
        # modulation and 3.5 k_B T rules against the median of the gaps before it.
        broad = math.sqrt(2.0) * modulation
        ok = reason == _OK
        if n <= SEQUENTIAL_MAX:
            out |= self._one_by_one(delta, temp, broad, ok=ok)
        else:
            # the batch is cut before each pixel without a gap; within a segment every rule is
            # then a windowed statistic
            finite_delta = np.isfinite(delta)
            cuts = [0, *np.flatnonzero(~finite_delta[1:]) + 1, n] if n else [0]
            for lo, hi in itertools.pairwise(cuts):
                out[lo:hi] |= self._segment(delta[lo:hi], temp[lo:hi], broad[lo:hi], ok=ok[lo:hi] & finite_delta[lo:hi])
        setpoint = (out & _BIT_SETPOINT).astype(bool)
        verdict = self._tip.judge(rows, cols, tip, eligible=np.isfinite(tip).all(axis=1) & ~setpoint)
        out |= verdict.changed * _BIT_TIP
        return FlagResult(bits=out, tip_epoch=verdict.epoch, revised=verdict.revised)

    def _one_by_one(self, delta: np.ndarray, temp: np.ndarray, broad: np.ndarray, *, ok: np.ndarray) -> np.ndarray:
        """Modulation and thermal bits pixel by pixel: :meth:`_segment`'s rules on Python floats.

        For small batches (the live analyser's 1-10 pixels), where numpy's per-call cost dominates.
        """
        cfg = self.config
        temps, band = self._temperatures, cfg.temperature_band_K

        def above_band(t: float, median: float) -> bool:
            return t > median + band

        bits = []
        for d, t, b, good in zip(delta.tolist(), temp.tolist(), broad.tolist(), ok.tolist(), strict=True):
            gap = d if math.isfinite(d) else self.reference_delta_eV()
            modulation = b > cfg.modulation_max_fraction * gap
            finite_t = math.isfinite(t)  # no thermometer reading: nothing to judge
            static_hot = finite_t and (t > cfg.temperature_max_K or 3.5 * K_B_EV * t > cfg.thermal_max_fraction * gap)
            above = judge(temps, t, finite_t and not static_hot, min_history=3, outside=above_band)
            thermal = finite_t and (static_hot or above)
            bits.append(_MODULATION * modulation | _THERMAL * thermal)
            if good and math.isfinite(d) and not thermal and not modulation:
                self._deltas.append(d)
        return np.array(bits, dtype=np.uint32)

    def _segment(self, delta: np.ndarray, temp: np.ndarray, broad: np.ndarray, *, ok: np.ndarray) -> np.ndarray:
        """Modulation and thermal bits of pixels whose gap is known (all but maybe the first)."""
        cfg = self.config
        d = delta.copy()
        if d.size and not math.isfinite(d[0]):
            d[0] = self.reference_delta_eV()
        bits = np.zeros(d.size, dtype=np.uint32)
        modulation = broad > cfg.modulation_max_fraction * d
        bits[modulation] |= np.uint32(FlagKind.MODULATION)
        finite_t = np.isfinite(temp)  # no thermometer reading: nothing to judge (not a fault of the pixel)
        static_hot = finite_t & ((temp > cfg.temperature_max_K) | (3.5 * K_B_EV * temp > cfg.thermal_max_fraction * d))
        band = cfg.temperature_band_K
        above = windowed_outliers(
            self._temperatures, temp, finite_t & ~static_hot, min_history=3, outside=lambda v, med: v > med + band
        )
        thermal = finite_t & (static_hot | above)
        bits[thermal] |= np.uint32(FlagKind.THERMAL)
        self._deltas.extend(delta[ok & ~thermal & ~modulation].tolist())
        return bits


def lockin_settings(amplitude_Vrms: float | None, sensitivity_V: float | None) -> tuple[float, float]:
    """Modulation (V rms) and sensitivity (V) of a set as the rules read them (NaN = unknown).

    Without a modulation the set records no lock-in signal: sensitivity 0 (never too coarse).
    Unknown settings (None in a document, NaN in a SetpointSet) read as NaN: the rules that
    need them are not judged.
    """
    amplitude = math.nan if amplitude_Vrms is None else float(amplitude_Vrms)
    sensitivity = math.nan if sensitivity_V is None else float(sensitivity_V)
    return amplitude, 0.0 if amplitude == 0 else sensitivity


def channel_arrays(
    spectra: np.ndarray, channel_names: list[str], *, current: str | None = None, lockin: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The current and (if any) lock-in channels of ``spectra`` (..., channel, n); names as ``pick_channels``."""
    pick = pick_channels(list(channel_names), current=current, lockin=lockin)
    if pick.current is None:
        raise AnalysisError(f"flags need a current channel; channels are {channel_names}")
    return spectra[..., pick.current, :], None if pick.lockin is None else spectra[..., pick.lockin, :]
