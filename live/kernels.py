"""Per-spectrum analysis kernels: dI/dV, the gap Delta and the AA exponent alpha (PHYSICS.md).

Batch first: every function takes arrays shaped (..., points) with the bias on the last axis and
returns arrays shaped (...); one spectrum is the batch call with one row. Failures never give a
silent 0: the value is NaN and a :class:`ReasonCode` says why.

Design decisions, each measured (1601 points over +-40 mV, T = 0.3 K, 0.5 pA rms current noise):

* Delta: coarse argmax of a smoothed derivative, then a matched-filter fit of physical peak
  templates to the *current* (``kernels_gap``); argmax-based refinements are biased by
  0.04-0.2 meV because the coherence peaks are a few samples wide and asymmetric.
* alpha: log-log least squares on a box-smoothed central-difference derivative (O(n) running
  means, ``scipy.ndimage.uniform_filter1d``); a Savitzky-Golay derivative gives the same accuracy
  here but costs ~10x more on 1601-point rows.
* Fixed cost per call: the live analyser calls with 1-10 spectra, where numpy's per-call overhead,
  not the arithmetic, is the cost. Everything that depends only on the bias grid and the options
  (columns, search geometry, fit-window designs) is cached, keyed by the grid's values; the two
  polarities' template fits run as one stacked batch; a one-chunk call skips the thread pool.
  Results stay bit-identical whatever the batch size (every row is computed on its own).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import savgol_filter

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels_gap import (
    BACKGROUND_DEGREE,
    COARSE_OUTWARD_SAMPLES,
    LOCKIN_COARSE_OUTWARD_SAMPLES,
    TemplateBank,
    estimate_width,
    locate_peaks,
    template_bank,
)

__all__ = [
    "ReasonCode",
    "KernelOptions",
    "GapResult",
    "PowerLawResult",
    "SpectrumAnalysis",
    "prepare_sweep",
    "conductance_sign",
    "pick_channels",
    "check_sweep_is_bias",
    "derivative",
    "extract_gap",
    "fit_power_law",
    "analyse_spectra",
    "estimate_dynes_width",
]


class ReasonCode(enum.IntEnum):
    """Why a quantity could not be extracted (0 = it could)."""

    OK = 0
    NAN_INPUT = 1  #: the spectrum holds NaN/inf (a pixel never measured, a truncated sweep)
    SEARCH_NOT_COVERED = 2  #: the sweep does not cover the gap search range
    NO_PEAKS = 3  #: coherence peaks not visible above the background
    PEAK_AT_EDGE = 4  #: a maximum sits on the edge of the search range (peak outside it)
    PEAK_NOT_BRACKETED = 5  #: the template fit did not converge inside its shift range
    POOR_PEAK_FIT = 6  #: the peak template explains too little of the window
    WINDOW_NOT_COVERED = 7  #: the sweep does not cover the power-law fit window
    NONPOSITIVE_CONDUCTANCE = 8  #: dI/dV <= 0 inside the fit window (log undefined)
    POOR_POWER_LAW_FIT = 9  #: rms log-residual of the power law above the limit


#: The codes as plain ints for the per-call paths: an Enum member lookup costs ~2 us on
#: Python 3.11, and the gap and power-law steps made a dozen per call.
_CODE = SimpleNamespace(**{c.name: int(c) for c in ReasonCode})


@dataclass(frozen=True)
class KernelOptions:
    """Options of :func:`analyse_spectra` (SI units).

    Attributes
    ----------
    current, lockin : str or None
        Channel names to use (None: pick by name, see :func:`pick_channels`).
    gap_source : {"auto", "current", "lockin"}
        Channel for Delta; "auto" takes the lock-in when one is given (measured more accurate).
    alpha_source : {"current", "lockin"}
        Channel for alpha; "current" (default) gives b in siemens.
    fit_window_V : (float, float)
        |V| range of the power-law fit, V (paper: 5..30 mV).
    gap_search_V : (float, float)
        |V| range searched for the coherence peaks, V.
    smoothing_points : int
        Width of the running mean of the derivative, samples (odd).
    temperature_K : float
        Sample temperature, sets the thermal width of the peak templates.
    modulation_Vrms : float
        Lock-in bias modulation, V rms (broadens the lock-in peak templates).
    dynes_width_eV : float or None
        Dynes broadening of the peak templates; None estimates it from the batch.
    min_visibility : float
        Minimum peak height over background minus 1; the background is the 41-point running
        mean of dI/dV around the peak. The default only demands a maximum (the simulated film's
        smoothed peaks stand ~0.1-0.2 above it).
    min_peak_score : float
        Minimum fraction of the window variance explained by the peak template.
    max_log_residual : float
        Maximum rms residual of ln(dI/dV) about the power law.
    chunk : int
        Spectra per processing chunk (cache-sized; ARCHITECTURE.md).
    threads : int or None
        Worker threads over the chunks (None: one per available core). numpy and scipy release
        the GIL in the heavy calls, so a second core nearly doubles the throughput.
    """

    current: str | None = None
    lockin: str | None = None
    gap_source: str = "auto"
    alpha_source: str = "current"
    fit_window_V: tuple[float, float] = (5e-3, 30e-3)
    gap_search_V: tuple[float, float] = (0.3e-3, 4e-3)
    smoothing_points: int = 11
    temperature_K: float = 0.3
    modulation_Vrms: float = 0.0
    dynes_width_eV: float | None = None
    min_visibility: float = 0.0
    min_peak_score: float = 0.2
    max_log_residual: float = 0.1
    chunk: int = 512
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.gap_source not in ("auto", "current", "lockin"):
            raise AnalysisError(f"gap_source={self.gap_source!r}: use 'auto', 'current' or 'lockin'")
        if self.alpha_source not in ("current", "lockin"):
            raise AnalysisError(f"alpha_source={self.alpha_source!r}: use 'current' or 'lockin'")
        for name in ("fit_window_V", "gap_search_V"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise AnalysisError(f"{name}={(lo, hi)}: give 0 <= low < high in volts, e.g. (5e-3, 30e-3)")
        if self.smoothing_points < 3 or self.smoothing_points % 2 == 0:
            raise AnalysisError(f"smoothing_points={self.smoothing_points}: give an odd number >= 3")
        if self.temperature_K <= 0 or self.modulation_Vrms < 0:
            raise AnalysisError("temperature_K must be > 0 and modulation_Vrms >= 0 (volts rms)")
        if self.dynes_width_eV is not None and self.dynes_width_eV <= 0:
            raise AnalysisError("dynes_width_eV must be > 0 eV, or None to estimate it from the data")
        if self.chunk < 1:
            raise AnalysisError(f"chunk={self.chunk}: give a positive number of spectra, e.g. 512")
        if self.threads is not None and self.threads < 1:
            raise AnalysisError(f"threads={self.threads}: give a positive number of threads, or None for one per core")

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> KernelOptions:
        """Options from a mapping; unknown keys are refused with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AnalysisError(f"unknown kernel option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]


class GapResult(NamedTuple):
    """Gap per spectrum, arrays shaped (...).

    delta_eV = (peak_pos_V - peak_neg_V) / 2 (e = 1); visibility = min over the two peaks of
    dI/dV(peak) / background - 1, background = 41-point running mean of dI/dV at the peak; score =
    fraction of the fit window explained by the peak template (per spectrum the smaller of the two peaks);
    reason: :class:`ReasonCode` values.
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    score: np.ndarray
    reason: np.ndarray


class PowerLawResult(NamedTuple):
    """dI/dV = b |V|^alpha per polarity; alpha = mean; rms_log_residual = fit quality."""

    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    reason: np.ndarray


class SpectrumAnalysis(NamedTuple):
    """Everything :func:`analyse_spectra` extracts, arrays shaped (...) of the input batch.

    ``valid`` is True where both Delta and alpha were extracted; ``reason`` is the gap reason
    where the gap failed, else the power-law reason (``gap_reason``/``alpha_reason`` keep both).
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    peak_score: np.ndarray
    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    gap_reason: np.ndarray
    alpha_reason: np.ndarray
    valid: np.ndarray
    reason: np.ndarray


class ChannelPick(NamedTuple):
    """Indices of the chosen channels (None: not present)."""

    current: int | None
    lockin: int | None


_CURRENT = re.compile(r"^current\b", re.IGNORECASE)
_INTERNAL_LOCKIN = re.compile(r"^LI Demod \d+ X\b", re.IGNORECASE)
_EXTERNAL_LOCKIN = re.compile(r"^Input \d+\b", re.IGNORECASE)
_BIAS = re.compile(r"^bias\b", re.IGNORECASE)
_BACKWARD = re.compile(r"\[bwd\]", re.IGNORECASE)


def pick_channels(names: list[str], *, current: str | None = None, lockin: str | None = None) -> ChannelPick:
    """Choose the current and lock-in channels by name.

    Parameters
    ----------
    names : list of str
        Channel names as stored (Nanonis style, e.g. ``"Current (A)"``, ``"LI Demod 1 X (A)"``).
    current, lockin : str, optional
        Exact names to use instead of the automatic choice.

    Returns
    -------
    ChannelPick
        The current is the first forward channel named "Current ..."; the lock-in is the first
        forward "LI Demod n X ..." (Nanonis internal lock-in), else the first "Input n ..."
        (external lock-in on an auxiliary input), else None.

    Raises
    ------
    AnalysisError
        An explicit name is not among ``names``, or no usable channel exists; the message lists
        the available channels.
    """
    return _pick_channels(tuple(names), current, lockin)


# Cached per channel list: the live analyser asks for every batch of 1-10 spectra (six regex
# searches each time). ChannelPick is immutable, so a cached one cannot be altered by a caller.
@lru_cache(maxsize=64)
def _pick_channels(names_key: tuple[str, ...], current: str | None, lockin: str | None) -> ChannelPick:
    """:func:`pick_channels` of the channel list ``names_key`` (an exception is not cached)."""
    names = list(names_key)

    def explicit(name: str, what: str) -> int:
        if name not in names:
            raise AnalysisError(f"{what} channel {name!r} not found; available channels: {names}")
        return names.index(name)

    def first(pattern: re.Pattern[str]) -> int | None:
        hits = [i for i, n in enumerate(names) if pattern.search(n) and not _BACKWARD.search(n)]
        return hits[0] if hits else None

    i_current = explicit(current, "current") if current is not None else first(_CURRENT)
    if lockin is not None:
        i_lockin: int | None = explicit(lockin, "lock-in")
    else:
        i_lockin = first(_INTERNAL_LOCKIN)
        if i_lockin is None:
            i_lockin = first(_EXTERNAL_LOCKIN)
    if i_current is None and i_lockin is None:
        raise AnalysisError(
            f"no current ('Current (A)') or lock-in ('LI Demod 1 X (A)', 'Input 2 (V)') channel found; "
            f"available channels: {names}; name one with --current/--lockin"
        )
    return ChannelPick(i_current, i_lockin)


def check_sweep_is_bias(sweep_signal_name: str) -> None:
    """Refuse a spectroscopy whose swept signal is not the bias (e.g. a Z spectroscopy)."""
    if not _BIAS.search(sweep_signal_name.strip()):
        raise AnalysisError(
            f"the sweep signal is {sweep_signal_name!r}, not the bias: Delta and alpha need I(V) "
            f"spectra (sweep signal 'Bias (V)'); this file cannot be analysed as STS"
        )


def _bias_step(bias_V: np.ndarray, *, key: bytes | None = None) -> float:
    """Step of an ascending uniform 1-D bias grid; AnalysisError otherwise.

    ``key``: the grid's float64 bytes if the caller has them (a bytes object hashes once, so
    the caches it keys share that cost).
    """
    if bias_V.ndim != 1 or bias_V.size < 8:
        raise AnalysisError(f"bias must be a 1-D sweep of at least 8 points (got shape {bias_V.shape})")
    return _grid_step(bias_V.astype(np.float64).tobytes() if key is None else key)


# Grid-only quantities are cached per bias grid (keyed by its bytes): the live analyser calls the
# kernels with 1-8 spectra at a time on the same grid, where recomputing them was a fixed per-call cost.
@lru_cache(maxsize=32)
def _grid_step(bias_key: bytes) -> float:
    """:func:`_bias_step` of the float64 grid ``bias_key`` (an exception is not cached)."""
    steps = np.diff(np.frombuffer(bias_key, dtype=np.float64))
    step = float(steps.mean())
    if step <= 0 or np.max(np.abs(steps - step)) > 1e-3 * step:
        raise AnalysisError(
            "the bias sweep must be uniform and ascending; call prepare_sweep() first, and "
            "resample non-uniform sweeps onto a uniform grid"
        )
    return step


def prepare_sweep(bias_V: np.ndarray, *channels: np.ndarray, axis: int = -1) -> tuple[np.ndarray, ...]:
    """Return the bias ascending and the channels reordered the same way along ``axis``.

    Sweeps may run from positive to negative bias (or be recorded backwards); every kernel expects
    ascending bias. The returned arrays are views (no copy).
    """
    bias = np.asarray(bias_V)
    if bias.ndim != 1:
        raise AnalysisError(f"bias must be 1-D (one sweep for all spectra), got shape {bias.shape}")
    arrays = [np.asarray(c) for c in channels]
    for c in arrays:
        if c.shape[axis] != bias.size:
            raise AnalysisError(f"a channel has {c.shape[axis]} points on axis {axis}, the bias {bias.size}")
    if bias.size > 1 and bias[0] > bias[-1]:
        bias = bias[::-1]
        arrays = [np.flip(c, axis=axis) for c in arrays]
    return (bias, *arrays)


def conductance_sign(bias_V: np.ndarray, signal: np.ndarray, *, kind: str = "current", axis: int = -1) -> np.ndarray:
    """Sign (+1/-1, int8, shape (...)) that makes the conductance positive.

    For ``kind="current"`` the sign of I(V_max) - I(V_min) (means of the outer 5 % of each end,
    so noise cannot flip it); for ``kind="didv"`` the sign of the median of the channel.
    """
    x = np.moveaxis(np.asarray(signal), axis, -1)
    if kind == "current":
        k = max(1, x.shape[-1] // 20)
        rise = x[..., -k:].mean(axis=-1, dtype=np.float64) - x[..., :k].mean(axis=-1, dtype=np.float64)
        direction = np.sign(np.asarray(bias_V)[-1] - np.asarray(bias_V)[0])
        s = np.sign(rise) * direction
    elif kind == "didv":
        s = _median_sign(x)
    else:
        raise AnalysisError(f"kind={kind!r}: use 'current' or 'didv'")
    return np.where(s < 0, -1, 1).astype(np.int8)


def _median_sign(x: np.ndarray) -> np.ndarray:
    """np.sign(np.median(x, axis=-1)) by counting signs (one pass instead of a partition).

    The median is negative exactly when more than half the samples are; only rows where that
    does not decide it (zeros, NaN, or an even count split evenly) take np.median itself.
    """
    n = x.shape[-1]
    neg = np.add.reduce(x < 0, axis=-1)  # not np.count_nonzero: its axis path costs ~10 us a call
    pos = np.add.reduce(x > 0, axis=-1)
    twice_neg = 2 * neg
    s = np.where(twice_neg > n, -1.0, 1.0)
    undecided = (neg + pos < n) | (twice_neg == n)
    if undecided.any():
        s[undecided] = np.sign(np.median(x[undecided], axis=-1))
    return s


def derivative(
    bias_V: np.ndarray, current_A: np.ndarray, *, points: int = 11, method: str = "box", polyorder: int = 3
) -> np.ndarray:
    """Numerical dI/dV (S) of I(V) (A) over a uniform ascending sweep, last axis.

    Parameters
    ----------
    points : int
        Smoothing width in samples (odd).
    method : {"box", "savgol"}
        "box": central difference of running means, D_i = (U_{i+s} - U_{i-s}) / (2 s h) with U the
        ``points``-wide running mean (``scipy.ndimage.uniform_filter1d``) and s = (points + 1) / 2;
        the two boxes abut, every sample is used once, and the cost does not grow with the width.
        The first and last s samples are NaN (no one-sided guesses).
        "savgol": ``scipy.signal.savgol_filter(deriv=1)`` over 2*points-1 samples, order
        ``polyorder`` (same noise, ~10x slower on 1601-point rows).

    Returns
    -------
    ndarray, same shape and float dtype as ``current_A``.
    """
    step = _bias_step(np.asarray(bias_V))
    current = np.asarray(current_A)
    dtype = np.dtype(current.dtype if current.dtype in (np.float32, np.float64) else np.float64)
    current = current.astype(dtype, copy=False)
    if points < 3 or points % 2 == 0:
        raise AnalysisError(f"points={points}: give an odd number >= 3")
    if method == "savgol":
        return savgol_filter(current, 2 * points - 1, polyorder, deriv=1, delta=step, axis=-1).astype(dtype, copy=False)
    if method != "box":
        raise AnalysisError(f"method={method!r}: use 'box' or 'savgol'")
    s = (points + 1) // 2
    smooth = uniform_filter1d(current, points, axis=-1, mode="nearest")
    out = np.full_like(smooth, np.nan)
    out[..., s:-s] = (smooth[..., 2 * s :] - smooth[..., : -2 * s]) * dtype.type(1.0 / (2 * s * step))
    return out


def _bank_args(temperature_K: float, modulation_Vrms: float, *, integrated: bool) -> dict[str, object]:
    """Template-bank settings for a current (integrated templates) or a lock-in channel."""
    return {
        "temperature_K": float(temperature_K),
        "modulation_Vrms": 0.0 if integrated else float(modulation_Vrms),
        "integrated": integrated,
        "background_degree": BACKGROUND_DEGREE["current" if integrated else "lockin"],
    }


def _mirror(bias: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The negative-bias side seen as a positive one: V -> -V, bias re-sorted ascending."""
    return (-bias[::-1], *(a[..., ::-1] for a in arrays))


#: Running-mean width (samples) of the background removed before the coarse argmax: wider than a
#: coherence peak (~0.2 mV), narrower than the AA background's curvature.
CONTRAST_POINTS = 41


def _peak_contrast(didv: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """dI/dV minus its CONTRAST_POINTS running mean over the search columns ``sel``.

    Why: on the simulated film the rising AA background at 3-4 mV exceeds the coherence peak of
    small-gap pixels, so a plain argmax lands on the search edge (17 % of one 40x40 film).
    """
    half = CONTRAST_POINTS // 2
    lo, hi = max(sel[0] - half, 0), min(sel[-1] + half + 1, didv.shape[1])
    part = didv[:, lo:hi]
    local = part - uniform_filter1d(part, CONTRAST_POINTS, axis=-1, mode="nearest")
    return local[:, sel[0] - lo : sel[-1] + 1 - lo]


class _Clock:
    """CPU seconds per analysis stage of one thread (for ``stslive bench``); a no-op when disabled.

    Thread CPU time, not wall time: on a shared machine it measures what a stage costs, not how
    long another process held the core.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = {}
        self._t = time.thread_time() if enabled else 0.0

    def lap(self, stage: str) -> None:
        """Charge the CPU time since the previous lap to ``stage``."""
        if self.enabled:
            now = time.thread_time()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._t
            self._t = now


_NO_CLOCK = _Clock(False)


@dataclass(frozen=True)
class _SearchSide:
    """One polarity of the coarse-peak search, in columns of the unmirrored (ascending) rows.

    The negative polarity is searched as the positive one of the mirrored sweep V -> -V
    (:func:`_mirror`): its contrast input is the reversed view of ``part``, so the running mean
    sees the samples in the same order (the running sum of ``uniform_filter1d`` depends on it).
    """

    mirrored: bool
    part: slice  #: columns of the contrast input: search columns +- CONTRAST_POINTS // 2
    searched: slice  #: the search columns within the (reversed, if mirrored) contrast input
    start: int  #: first search column in the side's own (mirrored) coordinates
    origin_V: float  #: bias of column 0 in the side's own coordinates, V


@dataclass(frozen=True)
class _GapGeometry:
    """What the gap search reads on one bias grid (cached per grid, see :func:`_gap_geometry`)."""

    columns: slice  #: columns the gap search reads: |V| <= search end + 48 samples (contrast and template reach)
    sides: tuple[_SearchSide | None, _SearchSide | None]  #: (+, -); None: the sweep does not cover it
    #: per covered side (in order): first search column, search column count, origin (V), +-1, column of coordinate 0
    start: np.ndarray
    count: np.ndarray
    origin_V: np.ndarray
    direction: np.ndarray
    base: np.ndarray

    @property
    def covered(self) -> bool:
        """Whether the sweep covers the search range on at least one polarity."""
        return self.start.size > 0


@lru_cache(maxsize=32)
def _gap_geometry(bias_key: bytes, search_V: tuple[float, float], step: float) -> _GapGeometry:
    """:class:`_GapGeometry` of the float64 grid ``bias_key``, keyed by its values (not its id).

    A polarity is searched if it holds at least 8 samples with search_V[0] <= |V| <= search_V[1]
    and the sweep reaches search_V[1] to within a step; the other gives SEARCH_NOT_COVERED.
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    used = np.flatnonzero(np.abs(bias) <= search_V[1] + 48 * step)
    columns = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0)
    half = CONTRAST_POINTS // 2
    sides: list[_SearchSide | None] = []
    for mirrored, side_bias in ((False, bias), (True, -bias[::-1])):
        sel = np.flatnonzero((side_bias >= search_V[0]) & (side_bias <= search_V[1]))
        if sel.size < 8 or side_bias[-1] < search_V[1] - step:
            sides.append(None)
            continue
        lo, hi = max(int(sel[0]) - half, 0), min(int(sel[-1]) + half + 1, n)
        sides.append(
            _SearchSide(
                mirrored=mirrored,
                part=slice(n - hi, n - lo) if mirrored else slice(lo, hi),
                searched=slice(int(sel[0]) - lo, int(sel[-1]) + 1 - lo),
                start=int(sel[0]),
                origin_V=float(side_bias[0]),
            )
        )
    covered = [s for s in sides if s is not None]

    def frozen(values: list[float] | list[int], dtype: type) -> np.ndarray:
        array = np.array(values, dtype)
        array.setflags(write=False)  # shared by every call and thread on this grid
        return array

    return _GapGeometry(
        columns=columns,
        sides=(sides[0], sides[1]),
        start=frozen([s.start for s in covered], np.intp),
        count=frozen([s.searched.stop - s.searched.start for s in covered], np.intp),
        origin_V=frozen([s.origin_V for s in covered], np.float64),
        direction=frozen([-1 if s.mirrored else 1 for s in covered], np.intp),
        base=frozen([n - 1 if s.mirrored else 0 for s in covered], np.intp),
    )


def _search_peaks(
    geometry: _GapGeometry,
    didv: np.ndarray,
    signal: np.ndarray,
    *,
    bank: TemplateBank,
    step: float,
    integrated: bool,
    clock: _Clock = _NO_CLOCK,
) -> tuple[np.ndarray, ...]:
    """Coherence peak of each row on each covered polarity: position (V), peak/background ratio, score, reason.

    Each returned array is (rows, k), k = covered polarities, positions in each polarity's own
    (mirrored) coordinates. The coarse peak is found per polarity (the search ranges of the two
    may differ by a sample); the template fits of both polarities then run as one stacked batch.
    ``integrated`` (a current) fits -signal on the mirrored side (the current changes sign with V);
    only the fit windows are negated, not the rows.
    """
    rows, n = didv.shape
    covered = [s for s in geometry.sides if s is not None]
    k = len(covered)
    j = np.empty((rows, k), np.intp)
    ratio = np.empty((rows, k))
    every = np.arange(rows)
    for i, side in enumerate(covered):
        part = didv[:, side.part][:, ::-1] if side.mirrored else didv[:, side.part]
        searched = part[:, side.searched]
        # scratch output: uniform_filter1d allocating its own costs twice the filter on these rows
        mean = uniform_filter1d(
            part, CONTRAST_POINTS, axis=-1, mode="nearest", output=_scratch("contrast", rows, part.shape[1], part.dtype)
        )
        contrast = searched - mean[:, side.searched]
        peak = contrast.argmax(axis=1)
        # Peak over its local background (the running mean the contrast removed), minus 1 later.
        peak_height = searched[every, peak].astype(np.float64)
        np.divide(peak_height, peak_height - contrast[every, peak], out=ratio[:, i])
        j[:, i] = peak
    at_edge = (j == 0) | (j == geometry.count - 1)
    clock.lap("coarse peaks")
    centre = geometry.start + j - (COARSE_OUTWARD_SAMPLES if integrated else LOCKIN_COARSE_OUTWARD_SAMPLES)
    idx = centre[:, :, None] + bank.offsets
    outside = (idx[:, :, 0] < 0) | (idx[:, :, -1] >= n)
    np.minimum(np.maximum(idx, 0, out=idx), n - 1, out=idx)
    # side coordinates -> columns of the unmirrored rows
    idx *= geometry.direction[:, None]
    idx += geometry.base[:, None]
    windows = signal[every[:, None, None], idx]
    if integrated:
        for i, side in enumerate(covered):
            if side.mirrored:
                np.negative(windows[:, i], out=windows[:, i])
    offset, score = locate_peaks(windows.reshape(rows * k, -1), bank)
    offset = offset.reshape(rows, k)
    position = geometry.origin_V + (centre + offset) * step
    reason = np.where(
        at_edge,
        np.int8(_CODE.PEAK_AT_EDGE),
        np.where(
            outside,
            np.int8(_CODE.SEARCH_NOT_COVERED),
            np.where(np.isfinite(offset), np.int8(0), np.int8(_CODE.PEAK_NOT_BRACKETED)),
        ),
    )
    clock.lap("template refinement")
    return position, ratio, score.reshape(rows, k), reason


def _gap_rows(
    geometry: _GapGeometry,
    g2: np.ndarray,
    refit: np.ndarray,
    *,
    integrated: bool,
    step: float,
    bank: TemplateBank | None,
    min_visibility: float,
    min_peak_score: float,
    dtype: np.dtype,
    clock: _Clock = _NO_CLOCK,
) -> GapResult:
    """:func:`extract_gap` on rows (n_rows, n) whose ``geometry.columns`` hold valid data.

    ``g2`` is the (smoothed) conductance for the coarse peaks, ``refit`` the signal the templates
    are fitted to; for ``integrated`` (a current) the mirrored side fits -I(-V).
    """
    cols = geometry.columns
    # Only the columns the fits read must be finite (a derivative is NaN at the sweep ends).
    bad = ~(
        np.logical_and.reduce(np.isfinite(g2[:, cols]), axis=1)
        & np.logical_and.reduce(np.isfinite(refit[:, cols]), axis=1)
    )
    if bad.any():  # zeros keep the arithmetic quiet; the rows are reported as NAN_INPUT
        g2 = np.where(bad[:, None], 0, g2)
        refit = np.where(bad[:, None], 0, refit)
    rows = g2.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if bank is not None and all(s is not None for s in geometry.sides):
            position, ratio, score2, side_reason = _search_peaks(
                geometry, g2, refit, bank=bank, step=step, integrated=integrated, clock=clock
            )
        else:  # a polarity the sweep does not cover stays NaN / SEARCH_NOT_COVERED
            position, ratio, score2 = (np.full((rows, 2), np.nan) for _ in range(3))
            side_reason = np.full((rows, 2), _CODE.SEARCH_NOT_COVERED, np.int8)
            searched = [i for i, s in enumerate(geometry.sides) if s is not None]
            if searched and bank is not None:
                found = _search_peaks(geometry, g2, refit, bank=bank, step=step, integrated=integrated, clock=clock)
                for whole, part in zip((position, ratio, score2, side_reason), found, strict=False):
                    whole[:, searched] = part
    pos, neg = position[:, 0], -position[:, 1]
    visibility = np.minimum(ratio[:, 0], ratio[:, 1]) - 1
    score = np.minimum(score2[:, 0], score2[:, 1])
    # The most basic failure wins: no data, then no sweep coverage, no peak, then fit trouble.
    reason = np.zeros(rows, np.int8)
    reason[~(score >= min_peak_score)] = _CODE.POOR_PEAK_FIT
    # A peak on the wrong side of zero bias is no bracketed peak either (Delta would be <= 0).
    not_bracketed = (side_reason == _CODE.PEAK_NOT_BRACKETED).any(axis=1) | ~((neg < 0) & (pos > 0))
    reason[not_bracketed] = _CODE.PEAK_NOT_BRACKETED
    reason[~(visibility >= min_visibility)] = _CODE.NO_PEAKS
    reason[(side_reason == _CODE.PEAK_AT_EDGE).any(axis=1)] = _CODE.PEAK_AT_EDGE
    reason[(side_reason == _CODE.SEARCH_NOT_COVERED).any(axis=1)] = _CODE.SEARCH_NOT_COVERED
    reason[bad] = _CODE.NAN_INPUT
    # one (5, rows) block, masked and cast once: the fields are its rows
    out = np.empty((5, rows))
    np.multiply(0.5, pos - neg, out=out[0])
    out[1], out[2], out[3], out[4] = neg, pos, visibility, score
    out[:3, reason != 0] = np.nan
    out[3:, bad] = np.nan
    out = out.astype(dtype, copy=False)
    return GapResult(*out, reason=reason)


def extract_gap(
    bias_V: np.ndarray,
    didv: np.ndarray,
    *,
    current_A: np.ndarray | None = None,
    search_V: tuple[float, float] = (0.3e-3, 4e-3),
    temperature_K: float = 0.3,
    modulation_Vrms: float = 0.0,
    dynes_width_eV: float | None = None,
    min_visibility: float = 0.0,
    min_peak_score: float = 0.2,
) -> GapResult:
    """Gap Delta = (V_peak+ - V_peak-) / 2 from the coherence peaks (PHYSICS.md "Delta(r)").

    Coarse peaks: argmax of ``didv`` over ``search_V`` on each polarity. Refinement: least-squares
    fit of thermally broadened Dynes peak templates plus a cubic background (``kernels_gap``) to
    ``current_A`` when given (I(V) domain, white current noise), else to ``didv`` itself (a lock-in
    channel: templates also broadened by the ``modulation_Vrms`` modulation).

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Uniform ascending bias, V.
    didv : ndarray, (..., n)
        Positive conductance (S, or lock-in units).
    current_A : ndarray, (..., n), optional
        The current the ``didv`` was derived from.
    search_V : (float, float)
        |V| range of the peak search, V.
    temperature_K, modulation_Vrms : float
        Thermal and modulation broadening of the templates.
    dynes_width_eV : float, optional
        Dynes width of the templates; None: the median best width of this batch.
    min_visibility, min_peak_score : float
        Quality limits (reasons NO_PEAKS, POOR_PEAK_FIT).

    Returns
    -------
    GapResult
    """
    bias = np.asarray(bias_V, dtype=np.float64)
    step = _bias_step(bias)
    g = np.asarray(didv)
    lead = g.shape[:-1]
    g2 = g.reshape(-1, bias.size)
    signal = None if current_A is None else np.asarray(current_A).reshape(-1, bias.size)
    bank_args = _bank_args(temperature_K, modulation_Vrms, integrated=signal is not None)
    refit = g2 if signal is None else signal  # a lock-in is fitted raw, only its argmax is smoothed
    if signal is None:  # raw lock-in: a 5-point running mean keeps noise spikes from the argmax
        g2 = uniform_filter1d(g2, 5, axis=-1, mode="nearest")
    geometry = _gap_geometry(bias.tobytes(), tuple(search_V), step)
    if dynes_width_eV is None:
        cols = geometry.columns
        bad = ~np.isfinite(g2[:, cols]).all(axis=1) | ~np.isfinite(refit[:, cols]).all(axis=1)
        g_w, r_w = (np.where(bad[:, None], 0, a) for a in (g2, refit)) if bad.any() else (g2, refit)
        bias_m, g_m, r_m = _mirror(bias, g_w, r_w)
        dynes_width_eV = estimate_width(
            [(bias, g_w, r_w), (bias_m, g_m, -r_m if signal is not None else r_m)],
            search_V=search_V,
            step=step,
            bank_args=bank_args,
            coarse=_peak_contrast,
        )
    bank = (
        None
        if not geometry.covered
        else template_bank(  # (see analyse_spectra)
            step, **bank_args, widths=(round(float(dynes_width_eV), 9),)
        )
    )  # type: ignore[arg-type]
    gap = _gap_rows(
        geometry,
        g2,
        refit,
        integrated=signal is not None,
        step=step,
        bank=bank,
        min_visibility=min_visibility,
        min_peak_score=min_peak_score,
        dtype=np.dtype(g.dtype if g.dtype == np.float32 else np.float64),
    )
    return GapResult(*(v.reshape(lead) for v in gap))


def _window_columns(bias: np.ndarray, window_V: tuple[float, float]) -> list[slice] | None:
    """Columns of the fit window per polarity (+, -), or None if the sweep does not cover it."""
    cols = _grid_window_columns(bias.dtype.str, bias.tobytes(), tuple(window_V))
    return None if cols is None else list(cols)


@lru_cache(maxsize=32)
def _grid_window_columns(dtype: str, bias_key: bytes, window_V: tuple[float, float]) -> tuple[slice, ...] | None:
    """:func:`_window_columns` of the grid ``bias_key`` (cached per grid; a tuple, so callers cannot alter it)."""
    bias = np.frombuffer(bias_key, dtype=dtype)
    step = abs(bias[1] - bias[0])
    out = []
    for sign in (1.0, -1.0):
        mag = sign * bias
        sel = np.flatnonzero((mag >= window_V[0]) & (mag <= window_V[1]))
        if sel.size < 3 or mag.max() < window_V[1] - step:
            return None
        out.append(slice(int(sel[0]), int(sel[-1]) + 1))
    return tuple(out)


class _LogDesign(NamedTuple):
    """Centred ln|V| of one fit window: columns, (x - <x>) in the data dtype, <x>, Sxx, points."""

    columns: slice
    xc: np.ndarray
    x_mean: float
    sxx: float
    points: int


@lru_cache(maxsize=32)
def _log_designs(bias_key: bytes, window_V: tuple[float, float], dtype: str) -> tuple[_LogDesign, ...] | None:
    """:class:`_LogDesign` of both fit windows (+, -) of the float64 grid ``bias_key`` (None: not covered)."""
    windows = _grid_window_columns("<f8", bias_key, window_V)
    if windows is None:
        return None
    bias = np.frombuffer(bias_key, dtype=np.float64)
    designs = []
    for cols in windows:
        x = np.log(np.abs(bias[cols]))
        xc = x - x.mean()
        xc_data = xc.astype(dtype)
        xc_data.setflags(write=False)
        designs.append(_LogDesign(cols, xc_data, float(x.mean()), float(xc @ xc), x.size))
    return tuple(designs)


def _power_law_rows(
    g2: np.ndarray,
    designs: tuple[_LogDesign, ...] | None,
    *,
    max_log_residual: float,
    dtype: np.dtype,
) -> PowerLawResult:
    """:func:`fit_power_law` on rows (n_rows, n) with the windows' ``designs``; reads only their columns."""
    n_rows = g2.shape[0]
    if designs is None:
        nan = np.full(n_rows, np.nan, dtype)
        return PowerLawResult(nan, nan, nan, nan, nan, nan, nan, np.full(n_rows, _CODE.WINDOW_NOT_COVERED, np.int8))
    reason = np.zeros(n_rows, np.int8)
    slope, log_b, rms, check = np.empty((4, 2, n_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        for side, (cols, xc, x_mean, sxx, m) in enumerate(designs):
            # ln of a non-positive or non-finite G is NaN/inf, and so is then the row's sum: the
            # (rare) failed rows are told apart afterwards instead of checking every sample twice.
            y = np.log(g2[:, cols], out=_scratch("log_g", n_rows, m, g2.dtype))
            total = np.add.reduce(y, axis=1)  # numpy's pairwise sum: float32 stays accurate over ~500 terms
            # einsum, not BLAS: a (rows x 501) GEMV goes multi-threaded in OpenBLAS (see kernels_gap)
            np.divide(np.einsum("ij,j->i", y, xc), sxx, out=slope[side], dtype=np.float64)
            ybar = np.divide(total, m, dtype=np.float64)
            np.add(total, slope[side], out=check[side])  # finite exactly when both are (|values| << 1e38)
            # residual = y - ybar - slope xc, formed in place in one buffer
            resid = np.multiply(slope[side].astype(y.dtype)[:, None], xc, out=_scratch("resid", n_rows, m, y.dtype))
            resid += ybar.astype(y.dtype)[:, None]
            np.subtract(y, resid, out=resid)
            np.sqrt(np.divide(np.einsum("ij,ij->i", resid, resid), m, dtype=np.float64), out=rms[side])
            np.subtract(ybar, slope[side] * x_mean, out=log_b[side])
    failed = ~np.isfinite(check)
    nan_in = np.zeros(n_rows, bool)
    if failed.any():
        for side, (cols, *_) in enumerate(designs):
            rows_failed = np.flatnonzero(failed[side])
            nonfinite = ~np.isfinite(g2[rows_failed, cols]).all(axis=1)
            nan_in[rows_failed[nonfinite]] = True
            reason[rows_failed[~nonfinite]] = _CODE.NONPOSITIVE_CONDUCTANCE
    worst = np.maximum(rms[0], rms[1])
    reason[(reason == 0) & ~(worst <= max_log_residual)] = _CODE.POOR_POWER_LAW_FIT
    reason[nan_in] = _CODE.NAN_INPUT
    # one (7, rows) block, masked and cast once: the fields are its rows
    out = np.empty((7, n_rows))
    np.multiply(0.5, slope[0] + slope[1], out=out[0])
    out[1:3] = slope
    np.exp(0.5 * (log_b[0] + log_b[1]), out=out[3])
    np.exp(log_b[0], out=out[4])  # one exp per array as before: libm and SIMD exp may differ in the last bit
    np.exp(log_b[1], out=out[5])
    out[:6, reason != 0] = np.nan
    out[6] = worst
    out[6, nan_in] = np.nan
    out = out.astype(dtype, copy=False)
    return PowerLawResult(*out, reason=reason)


def fit_power_law(
    bias_V: np.ndarray,
    didv: np.ndarray,
    *,
    window_V: tuple[float, float] = (5e-3, 30e-3),
    max_log_residual: float = 0.1,
) -> PowerLawResult:
    """AA power law dI/dV = b |V|^alpha, no offset, per polarity (PHYSICS.md "alpha(r)").

    ln G = ln b_s + alpha_s ln|V| by least squares on window_V[0] <= |V| <= window_V[1] for
    s = + and -; alpha = (alpha_+ + alpha_-) / 2, b = sqrt(b_+ b_-) (geometric mean). With a
    shared bias axis the slope is one weighted sum per row, alpha_s = sum (x - <x>) y / Sxx.

    Returns
    -------
    PowerLawResult
        rms_log_residual is the larger of the two polarities' rms residual of ln G (NaN where
        a window holds non-finite or non-positive dI/dV).
    """
    bias = np.asarray(bias_V, dtype=np.float64)
    g = np.asarray(didv)
    lead = g.shape[:-1]
    dtype = np.dtype(g.dtype if g.dtype == np.float32 else np.float64)
    g2 = g.reshape(-1, bias.size)
    if g2.dtype not in (np.float32, np.float64):
        g2 = g2.astype(np.float64)
    designs = _log_designs(bias.tobytes(), tuple(window_V), g2.dtype.str)
    law = _power_law_rows(g2, designs, max_log_residual=max_log_residual, dtype=dtype)
    return PowerLawResult(*(v.reshape(lead) for v in law))


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Union of half-open column ranges, sorted and merged."""
    merged: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


@dataclass(frozen=True)
class _Plan:
    """What one batch analysis reads, fixed per bias grid and options (cached, see :func:`_plan`)."""

    bias: np.ndarray
    step: float
    gap_from_lockin: bool
    alpha_from_lockin: bool
    #: columns of the current's derivative that are read (gap region and/or fit windows)
    derivative_columns: tuple[tuple[int, int], ...]
    #: columns of the lock-in (5-point smoothed for the gap, raw for alpha) that are read
    lockin_columns: tuple[tuple[int, int], ...]
    gap: _GapGeometry
    #: the power-law fit windows in the dtype of the fitted channel (None: not covered)
    law: tuple[_LogDesign, ...] | None
    #: samples averaged at each end by conductance_sign(kind="current")
    sign_samples: int


# Everything that does not depend on the spectra is computed once per grid and options: the live
# analyser calls the kernels with 1-10 spectra at a time, where it was most of the cost of a call.
@lru_cache(maxsize=32)
def _plan(
    bias_key: bytes,
    *,
    search_V: tuple[float, float],
    window_V: tuple[float, float],
    alpha_from_lockin: bool,
    gap_from_lockin: bool,
    dtype: str,
) -> _Plan:
    """The :class:`_Plan` of the float64 grid ``bias_key`` (keyed by the grid's values, not its id)."""
    bias = np.frombuffer(bias_key, dtype=np.float64)
    step = _grid_step(bias_key)
    geometry = _gap_geometry(bias_key, search_V, step)
    windows = _grid_window_columns("<f8", bias_key, window_V) or ()
    fit = [(w.start, w.stop) for w in windows]
    gap = [(geometry.columns.start, geometry.columns.stop)]
    return _Plan(
        bias=bias,
        step=step,
        gap_from_lockin=gap_from_lockin,
        alpha_from_lockin=alpha_from_lockin,
        derivative_columns=_merge((fit if not alpha_from_lockin else []) + (gap if not gap_from_lockin else [])),
        lockin_columns=_merge((fit if alpha_from_lockin else []) + (gap if gap_from_lockin else [])),
        gap=geometry,
        law=_log_designs(bias_key, window_V, dtype),
        sign_samples=max(1, bias.size // 20),
    )


def _derivative_into(
    out: np.ndarray,
    current: np.ndarray,
    columns: tuple[tuple[int, int], ...],
    *,
    points: int,
    step: float,
    row_scale: np.ndarray,
) -> None:
    """``out[:, lo:hi] = row_scale * derivative(current)[:, lo:hi]`` for each column range.

    The box derivative of :func:`derivative`, D_i = (U_{i+s} - U_{i-s}) / (2 s h), with the running
    mean U taken over the columns lo - p .. hi + p only (p = ``points``): inside that span no
    padding is involved, so the values equal :func:`derivative`'s; the mean goes into per-thread
    scratch, since fresh multi-MB temporaries are paged in anew on every chunk on this VM
    (measured: the larger part of the derivative's time). Ranges that reach within p of the
    sweep ends, where :func:`derivative` pads, use it directly for the same numbers.
    """
    p, n = points, current.shape[1]
    s = (p + 1) // 2
    scale = (row_scale * (1.0 / (2 * s * step))).astype(current.dtype)[:, None]
    for lo, hi in columns:
        if lo < p or hi > n - p:  # the padded ends: the reference implementation itself
            full = derivative(np.arange(n) * step, current, points=p)
            np.multiply(full[:, lo:hi], scale * (2 * s * step), out=out[:, lo:hi])
            continue
        span = hi - lo
        mean = _scratch("running_mean", current.shape[0], span + 2 * p, current.dtype)
        uniform_filter1d(current[:, lo - p : hi + p], p, axis=-1, mode="nearest", output=mean)
        # mean[:, k] is U at column lo - p + k
        np.subtract(mean[:, p + s : p + s + span], mean[:, p - s : p - s + span], out=out[:, lo:hi])
        out[:, lo:hi] *= scale


_BUFFERS = threading.local()


def _buffer(name: str, rows: int, n: int, dtype: np.dtype, columns: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A per-thread (rows, n) work array, NaN outside ``columns`` (reused: first touch is slow here).

    Only ``columns`` are ever written, so the NaN elsewhere survives reuse; a column read outside
    them shows up as NaN (NAN_INPUT), never as stale data.
    """
    cache: dict[tuple[object, ...], np.ndarray] = _BUFFERS.__dict__.setdefault("cache", {})
    key = (name, n, dtype, columns)  # a dtype hashes by value
    buf = cache.get(key)
    if buf is None or buf.shape[0] < rows:
        if len(cache) > 16:
            cache.clear()
        buf = cache[key] = np.full((rows, n), np.nan, dtype)
    return buf[:rows]


def _scratch(name: str, rows: int, cols: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread scratch array (rows, cols) of undefined content, reused between chunks."""
    cache: dict[tuple[object, ...], np.ndarray] = _BUFFERS.__dict__.setdefault("scratch", {})
    key = (name, dtype)
    buf = cache.get(key)
    if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
        old = (0, 0) if buf is None else buf.shape
        buf = cache[key] = np.empty((max(rows, old[0]), max(cols, old[1])), dtype)
    return buf[:rows, :cols]


def _float(a: np.ndarray) -> np.ndarray:
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _analyse_chunk(
    plan: _Plan,
    opts: KernelOptions,
    bank: TemplateBank | None,
    cur: np.ndarray | None,
    lia: np.ndarray | None,
    clock: _Clock,
) -> SpectrumAnalysis:
    """Analyse one chunk of rows (n_rows, n); the work arrays are per-thread buffers."""
    n = plan.bias.size
    rows = (cur if cur is not None else lia).shape[0]  # type: ignore[union-attr]
    g_cur = r_cur = g_lia = r_lia = None
    if cur is not None:
        # conductance_sign(kind="current") on an ascending sweep: the sign of I(V_max) - I(V_min)
        k = plan.sign_samples
        rise = (
            np.add.reduce(cur[:, -k:], axis=-1, dtype=np.float64) / k
            - np.add.reduce(cur[:, :k], axis=-1, dtype=np.float64) / k
        )
        sign = np.where(rise < 0, -1.0, 1.0)
        g_cur = _buffer("didv", rows, n, cur.dtype, plan.derivative_columns)
        _derivative_into(
            g_cur, cur, plan.derivative_columns, points=opts.smoothing_points, step=plan.step, row_scale=sign
        )
        if not plan.gap_from_lockin:  # the template fit reads the signed current in the gap columns
            cols = plan.gap.columns
            r_cur = _buffer("current", rows, n, cur.dtype, ((cols.start, cols.stop),))
            np.multiply(cur[:, cols], sign.astype(cur.dtype)[:, None], out=r_cur[:, cols])
    if lia is not None:
        sign_l = np.where(_median_sign(lia) < 0, -1.0, 1.0).astype(lia.dtype)[:, None]
        r_lia = _buffer("lockin", rows, n, lia.dtype, plan.lockin_columns)
        for lo, hi in plan.lockin_columns:
            np.multiply(lia[:, lo:hi], sign_l, out=r_lia[:, lo:hi])
        if plan.gap_from_lockin:  # a 5-point running mean keeps noise spikes from the argmax
            cols = plan.gap.columns
            g_lia = _buffer("lockin5", rows, n, lia.dtype, ((cols.start, cols.stop),))
            lo, hi = max(cols.start - 2, 0), min(cols.stop + 2, n)
            if lo == cols.start - 2 and hi == cols.stop + 2:
                smooth = uniform_filter1d(
                    lia[:, lo:hi], 5, axis=-1, mode="nearest", output=_scratch("lockin5", rows, hi - lo, lia.dtype)
                )
                np.multiply(smooth[:, 2:-2], sign_l, out=g_lia[:, cols])
            else:  # the sweep ends: the filter of the whole row pads exactly as extract_gap does
                g_lia[:, cols] = (uniform_filter1d(lia, 5, axis=-1, mode="nearest") * sign_l)[:, cols]
    clock.lap("sign + derivative")
    dtype = np.dtype((cur if cur is not None else lia).dtype)  # type: ignore[union-attr]
    g_gap, r_gap = (g_lia, r_lia) if plan.gap_from_lockin else (g_cur, r_cur)
    gap = _gap_rows(
        plan.gap,
        g_gap,
        r_gap,
        integrated=not plan.gap_from_lockin,
        step=plan.step,
        bank=bank,  # type: ignore[arg-type]
        min_visibility=opts.min_visibility,
        min_peak_score=opts.min_peak_score,
        dtype=dtype,
        clock=clock,
    )
    law = _power_law_rows(
        r_lia if plan.alpha_from_lockin else g_cur,
        plan.law,  # type: ignore[arg-type]
        max_log_residual=opts.max_log_residual,
        dtype=dtype,
    )
    clock.lap("power-law fit")
    gap_ok, law_ok = gap.reason == 0, law.reason == 0
    result = SpectrumAnalysis(
        delta_eV=gap.delta_eV,
        peak_neg_V=gap.peak_neg_V,
        peak_pos_V=gap.peak_pos_V,
        visibility=gap.visibility,
        peak_score=gap.score,
        alpha=law.alpha,
        alpha_pos=law.alpha_pos,
        alpha_neg=law.alpha_neg,
        b=law.b,
        b_pos=law.b_pos,
        b_neg=law.b_neg,
        rms_log_residual=law.rms_log_residual,
        gap_reason=gap.reason,
        alpha_reason=law.reason,
        valid=gap_ok & law_ok,
        reason=np.where(gap_ok, law.reason, gap.reason),
    )
    clock.lap("assemble")
    return result


def _threads(opts: KernelOptions, chunks: int) -> int:
    """Worker threads: ``opts.threads``, or one per available core; never more than chunks."""
    wanted = opts.threads if opts.threads is not None else len(os.sched_getaffinity(0))
    return max(1, min(wanted, chunks))


def analyse_spectra(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None = None,
    lockin: np.ndarray | None = None,
    options: KernelOptions | None = None,
    stage_seconds: dict[str, float] | None = None,
) -> SpectrumAnalysis:
    """Delta, alpha and their quality for a batch of spectra (the one entry point).

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Bias sweep, V, either direction (reordered with :func:`prepare_sweep`).
    current : ndarray, (..., n), optional
        I(V), A, either sign convention (normalised with :func:`conductance_sign`).
    lockin : ndarray, (..., n), optional
        Lock-in dI/dV channel (any units, either sign).
    options : KernelOptions
    stage_seconds : dict, optional
        If given, CPU seconds per stage ("sign + derivative", "coarse peaks", "template
        refinement", "power-law fit", "assemble") are added to it, summed over chunks and threads.

    Returns
    -------
    SpectrumAnalysis
        Arrays shaped (...). Delta comes from the lock-in when ``gap_source`` is "lockin", or
        "auto" with a lock-in given, else from the current; alpha from ``alpha_source``.
        Spectra are processed in chunks of ``options.chunk`` (cache-sized, ~3x faster than the
        whole array at once, ARCHITECTURE.md) on ``options.threads`` threads (numpy releases
        the GIL in the heavy calls); only the columns the fits read are derived and smoothed.
        The Dynes width of the peak templates, unless given, is estimated once from the first
        chunk so every chunk uses the same templates.
    """
    opts = options or KernelOptions()
    if current is None and lockin is None:
        raise AnalysisError("analyse_spectra needs a current or a lock-in channel (or both)")
    bias, *chans = prepare_sweep(np.asarray(bias_V, dtype=np.float64), *[c for c in (current, lockin) if c is not None])
    cur = chans.pop(0) if current is not None else None
    lia = chans.pop(0) if lockin is not None else None
    bias_key = bias.tobytes()  # the grid's values key every cached quantity (never the array's id)
    step = _bias_step(bias, key=bias_key)  # refuses a short, non-uniform or descending grid first
    lead = (cur if cur is not None else lia).shape[:-1]  # type: ignore[union-attr]
    if cur is not None and lia is not None and cur.shape != lia.shape:
        raise AnalysisError(f"current {cur.shape} and lock-in {lia.shape} must have the same shape")
    gap_from_lockin = opts.gap_source == "lockin" or (opts.gap_source == "auto" and lia is not None)
    if gap_from_lockin and lia is None:
        raise AnalysisError("gap_source='lockin' but no lock-in channel was given; use gap_source='current'")
    if (not gap_from_lockin or opts.alpha_source == "current") and cur is None:
        raise AnalysisError("no current channel: set gap_source='lockin' and alpha_source='lockin'")
    if opts.alpha_source == "lockin" and lia is None:
        raise AnalysisError("alpha_source='lockin' but no lock-in channel was given; use alpha_source='current'")
    n = bias.size
    cur2 = None if cur is None else _float(np.asarray(cur).reshape(-1, n))
    lia2 = None if lia is None else _float(np.asarray(lia).reshape(-1, n))
    if opts.alpha_source == "current" and lia2 is not None and not gap_from_lockin:
        lia2 = None  # the lock-in is read by neither fit
    total = math.prod(lead)
    fitted = lia2 if opts.alpha_source == "lockin" else cur2
    plan = _plan(
        bias_key,
        search_V=tuple(opts.gap_search_V),
        window_V=tuple(opts.fit_window_V),
        alpha_from_lockin=opts.alpha_source == "lockin",
        gap_from_lockin=gap_from_lockin,
        dtype=fitted.dtype.str,  # type: ignore[union-attr]
    )
    width = opts.dynes_width_eV
    if width is None:  # from the first chunk, then fixed so every chunk uses the same templates
        first = slice(0, min(opts.chunk, total))
        width = estimate_dynes_width(
            bias,
            current=None if cur2 is None else cur2[first],
            lockin=None if lia2 is None else lia2[first],
            options=dataclasses.replace(opts, gap_source="lockin" if gap_from_lockin else "current"),
        )
    # Only a sweep that covers the search range gets templates (on a coarse KPFM-like grid the
    # bank would be degenerate, and warn, for nothing).
    bank = (
        None
        if not plan.gap.covered
        else template_bank(
            step,
            **_bank_args(opts.temperature_K, opts.modulation_Vrms, integrated=not gap_from_lockin),  # type: ignore[arg-type]
            widths=(round(float(width), 9),),
        )
    )
    starts = range(0, total, opts.chunk)

    def work(start: int) -> tuple[SpectrumAnalysis, dict[str, float]]:
        rows = slice(start, min(start + opts.chunk, total))
        clock = _Clock(stage_seconds is not None)
        part = _analyse_chunk(
            plan, opts, bank, None if cur2 is None else cur2[rows], None if lia2 is None else lia2[rows], clock
        )
        return part, clock.seconds

    if len(starts) == 1:  # the live analyser's small batches: no pool, no concatenation
        part, seconds = work(0)
        done = [(part, seconds)]
        if stage_seconds is None:
            return SpectrumAnalysis(*(a.reshape(lead) for a in part))
    elif (threads := _threads(opts, len(starts))) == 1:
        done = [work(s) for s in starts]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="stslive-kernels") as pool:
            done = list(pool.map(work, starts))
    if stage_seconds is not None:
        for _, seconds in done:
            for stage, t in seconds.items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + t
    return SpectrumAnalysis(
        *(np.concatenate(parts).reshape(lead) for parts in zip(*(d[0] for d in done), strict=False))
    )


def estimate_dynes_width(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None = None,
    lockin: np.ndarray | None = None,
    options: KernelOptions | None = None,
) -> float:
    """Dynes width (eV) of the peak templates that :func:`analyse_spectra` would estimate.

    Uses the first ``options.chunk`` spectra. Callers that analyse a map in pieces (the live
    analyser, block-wise offline analysis) call this once and pass the result as
    ``KernelOptions(dynes_width_eV=...)`` so all pieces use the same templates.
    """
    opts = options or KernelOptions()
    gap_from_lockin = opts.gap_source == "lockin" or (opts.gap_source == "auto" and lockin is not None)
    chosen = lockin if gap_from_lockin else current
    if chosen is None:
        raise AnalysisError(
            f"gap_source={opts.gap_source!r} needs the {'lock-in' if gap_from_lockin else 'current'} channel"
        )
    bias, signal = prepare_sweep(np.asarray(bias_V, dtype=np.float64), chosen)
    rows = np.asarray(signal).reshape(-1, bias.size)[: opts.chunk]
    if gap_from_lockin:
        rows = rows * conductance_sign(bias, rows, kind="didv")[:, None].astype(rows.dtype)
        return _batch_width(bias, rows, None, opts=opts)
    rows = rows * conductance_sign(bias, rows)[:, None].astype(rows.dtype)
    return _batch_width(bias, derivative(bias, rows, points=opts.smoothing_points), rows, opts=opts)


def _batch_width(bias: np.ndarray, didv: np.ndarray, signal: np.ndarray | None, *, opts: KernelOptions) -> float:
    """Dynes width of the templates from one chunk (rows with NaN in the gap region left out)."""
    step = _bias_step(bias)
    refit = didv if signal is None else signal
    used = np.abs(bias) <= opts.gap_search_V[1] + 48 * step
    keep = np.isfinite(didv[:, used]).all(axis=1) & np.isfinite(refit[:, used]).all(axis=1)
    bank_args = _bank_args(opts.temperature_K, opts.modulation_Vrms, integrated=signal is not None)
    g, r = didv[keep], refit[keep]
    if signal is None:
        g = uniform_filter1d(g, 5, axis=-1, mode="nearest")
    bias_m, g_m, r_m = _mirror(bias, g, r)
    if signal is not None:
        r_m = -r_m
    return estimate_width(
        [(bias, g, r), (bias_m, g_m, r_m)],
        search_V=opts.gap_search_V,
        step=step,
        bank_args=bank_args,
        coarse=_peak_contrast,
    )
