"""The gap Delta from the two coherence peaks, per spectrum of a batch.

Delta = (V_peak+ - V_peak-) / 2 (e = 1): half the peak-to-peak distance of dI/dV at the sample
temperature, as the paper defines it. Every pixel of a map is fitted on the same window per
polarity, sized from the map's gap (``KernelOptions.gap_eV``), with templates drawn at that gap
(:mod:`~stslive.live.kernels.templates`) whose gap edge is searched within +-30 % of it: no
per-pixel coarse peak decides where to look, so a noisy spectrum cannot send its fit astray.
The per-peak fit places each peak between samples and gives its standard error; the joint fit
of both peaks refines it where needed (:mod:`~stslive.live.kernels.joint`). :func:`gap_rows` is
the step the batch engine runs on each chunk; :func:`extract_gap` is the same step on any batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.joint import (
    MAX_WIDTH_STEP,
    JointTables,
    joint_fit,
    joint_tables,
    search_profile,
    shift_index,
)
from stslive.live.kernels.noise import measure_noise, noise_triples
from stslive.live.kernels.options import CODE, GapResult, KernelOptions
from stslive.live.kernels.stages import NO_CLOCK, Clock
from stslive.live.kernels.sweep import bias_step
from stslive.live.kernels.templates import TemplateBank, bank_args, locate_peaks, template_bank
from stslive.live.theory import K_B_EV_PER_K

__all__ = [
    "BROAD_PEAK",
    "COARSE_ITERATIONS",
    "GapModel",
    "GapWindows",
    "extract_gap",
    "gap_model",
    "gap_rows",
    "coarse_profile",
    "common_start",
    "gap_windows",
    "model_tables",
    "peak_width_eV",
    "polarity_windows",
    "step_too_coarse",
]

#: The bias step resolves a coherence peak when it is at most this many times the peak's width
#: sqrt(Gamma^2 + (2 k_B T)^2 + 2 V_mod^2); beyond, every pixel is BIAS_STEP_TOO_COARSE (measured
#: on the film: at 2.7 widths the lock-in's Delta was biased by +0.024 meV and 4x off its error).
MAX_STEP_PER_WIDTH = 2.5
#: Gauss-Newton iterations of a coarse step's joint fit, each re-linearised at the grid shifts
#: nearest the last edges.
COARSE_ITERATIONS = 4

#: A map's peaks are broad when their width sqrt(Gamma^2 + (2 k_B T)^2 + 2 V_mod^2) exceeds this
#: fraction of the gap: the per-peak fit's additive background then biases Delta by more than
#: ~0.003 meV (measured on the film: +0.003 meV at 9 %, +0.0045 at 13 %, +0.005 at 18 %, +0.008 at
#: 23 %), and every pixel gets the joint fit.
BROAD_PEAK = 0.1


@dataclass(frozen=True)
class GapModel:
    """Everything that fixes a map's templates: channel, step, temperature, modulation, gap and width."""

    step_V: float
    temperature_K: float
    modulation_Vrms: float
    integrated: bool
    background_degree: int
    gap_eV: float
    width_eV: float
    #: the step exceeds MAX_STEP_PER_WIDTH peak widths: every pixel gets the joint fit, started
    #: from a search of the whole shift grid (a Delta stands where two channels agree, combine_gaps)
    coarse: bool = False

    @property
    def broad(self) -> bool:
        """Whether the peaks are broad for their gap (:data:`BROAD_PEAK`)."""
        kT = K_B_EV_PER_K * self.temperature_K
        width = math.sqrt(self.width_eV**2 + (2 * kT) ** 2 + 2 * self.modulation_Vrms**2)
        return width > BROAD_PEAK * self.gap_eV

    def bank(self, widths: tuple[float, ...] | None = None) -> TemplateBank:
        """The map's templates (cached by :func:`template_bank`); ``widths`` replaces the map's width."""
        return template_bank(
            self.step_V,
            gap_eV=self.gap_eV,
            widths=(self.width_eV,) if widths is None else widths,
            temperature_K=self.temperature_K,
            modulation_Vrms=self.modulation_Vrms,
            integrated=self.integrated,
            background_degree=self.background_degree,
        )


def step_too_coarse(step: float, options: KernelOptions, *, integrated: bool) -> bool:
    """Whether the bias step is too coarse for the peaks (:data:`MAX_STEP_PER_WIDTH`)."""
    return step > MAX_STEP_PER_WIDTH * peak_width_eV(options, integrated=integrated)


def peak_width_eV(options: KernelOptions, *, integrated: bool) -> float:
    """A coherence peak's width, eV: sqrt(Gamma^2 + (2 k_B T)^2 + 2 V_mod^2) (the modulation for a lock-in)."""
    kT = K_B_EV_PER_K * options.sample_temperature_K
    modulation = 0.0 if integrated else options.lockin_modulation_Vrms
    return math.sqrt((options.dynes_width_eV or 0.0) ** 2 + (2 * kT) ** 2 + 2 * modulation**2)


def gap_model(
    *, step: float, options: KernelOptions, integrated: bool, gap_eV: float, width_eV: float, coarse: bool = False
) -> GapModel:
    """The :class:`GapModel` of a channel with the options' temperature and modulation."""
    args = bank_args(options.sample_temperature_K, options.lockin_modulation_Vrms, integrated=integrated)
    return GapModel(
        step_V=step,
        temperature_K=args["temperature_K"],
        modulation_Vrms=args["modulation_Vrms"],
        integrated=integrated,
        background_degree=args["background_degree"],
        gap_eV=round(float(gap_eV), 10),
        width_eV=round(float(width_eV), 12),
        coarse=coarse,
    )


@dataclass(frozen=True)
class GapWindows:
    """The map's fit window on each polarity of one grid: ascending column ranges and offset 0's bias."""

    columns: tuple[slice, slice]  #: (+, -) columns of the unmirrored rows, ascending
    origin_V: tuple[float, float]  #: |V| of each window's offset 0
    read: slice  #: every column the gap reads
    covered: bool  #: both windows lie inside the sweep
    resolvable: bool  #: the step resolves the gap (else BIAS_STEP_TOO_COARSE)


@lru_cache(maxsize=64)
def gap_windows(bias_key: bytes, model: GapModel) -> GapWindows:
    """The window of ``model``'s bank on each polarity of the ascending float64 grid ``bias_key``.

    Offset 0 is the sample nearest |V| = gap on each polarity; the negative polarity is read
    mirrored (V -> -V). THE coverage rule of the gap: both windows inside the sweep.
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    bank = model.bank()
    cols: list[slice] = []
    origins: list[float] = []
    covered = True
    for sign in (1.0, -1.0):
        zero = int(np.argmin(np.abs(bias - sign * model.gap_eV)))
        origins.append(abs(float(bias[zero])))
        lo, hi = (
            (zero + bank.offsets[0], zero + bank.offsets[-1])
            if sign > 0
            else (zero - bank.offsets[-1], zero - bank.offsets[0])
        )
        covered &= lo >= 0 and hi < n and abs(abs(bias[zero]) - model.gap_eV) <= model.step_V
        cols.append(slice(max(lo, 0), min(hi + 1, n)))
    read = slice(min(c.start for c in cols), max(c.stop for c in cols))
    return GapWindows((cols[0], cols[1]), (origins[0], origins[1]), read, covered, bank.resolvable)


def model_tables(bias_key: bytes, model: GapModel) -> JointTables:
    """The joint fit's tables of ``model`` on the ascending float64 grid ``bias_key`` (cached)."""
    bias = np.frombuffer(bias_key, dtype=np.float64)
    win = gap_windows(bias_key, model)
    zero = int(np.searchsorted(bias, 0.0))  # the first column of the positive half
    halves = ((max(win.read.start, zero), win.read.stop), (win.read.start, min(win.read.stop, zero)))
    return joint_tables(
        bias_key,
        model.bank(),
        (slice(*halves[0]), slice(*halves[1])),
        win.origin_V,
        width_eV=model.width_eV,
        temperature_K=model.temperature_K,
        modulation_Vrms=model.modulation_Vrms,
        integrated=model.integrated,
    )


def coarse_profile(
    bias_key: bytes, refit: np.ndarray, noise: np.ndarray, model: GapModel
) -> tuple[np.ndarray, np.ndarray]:
    """(edges (n_shifts,), V; (n_rows, n_shifts) drop in chi^2) of each row's fit at each gap edge of ``model``'s grid.

    :func:`~stslive.live.kernels.joint.search_profile` over the noise variance: one gap on both
    sides, the background profiled out. A row with a non-finite sample or noise gains 0 everywhere.
    """
    tables = model_tables(bias_key, model)
    edges = tables.origin_V[0] + tables.shifts * tables.step_V
    read = np.r_[
        np.arange(tables.columns[0].start, tables.columns[0].stop),
        np.arange(tables.columns[1].start, tables.columns[1].stop),
    ]
    ok = np.isfinite(refit[:, read]).all(axis=1) & np.isfinite(noise) & (noise > 0)
    gain = np.zeros((refit.shape[0], edges.size))
    if ok.any():
        gain[ok] = search_profile(refit[ok], tables) / np.asarray(noise[ok], np.float64)[:, None] ** 2
    return edges, gain


def common_start(
    bias_key: bytes, signals: Sequence[np.ndarray], noises: Sequence[np.ndarray], models: Sequence[GapModel]
) -> np.ndarray:
    """(n_rows,) the gap edge, V, that the channels of a coarse step fit best together.

    Each channel's :func:`coarse_profile`, the others' interpolated onto the first's edges,
    summed: the edge of greatest total drop in chi^2, the joint likelihood's best, where one
    channel alone can pick the wrong one of two minima about a step apart.
    """
    edges, total = coarse_profile(bias_key, signals[0], noises[0], models[0])
    for signal, noise, model in zip(signals[1:], noises[1:], models[1:], strict=True):
        theirs, gain = coarse_profile(bias_key, signal, noise, model)
        at = np.clip((edges - theirs[0]) / (theirs[1] - theirs[0]), 0, theirs.size - 1)
        lo = np.minimum(np.floor(at).astype(np.intp), theirs.size - 2)
        frac = at - lo
        total = total + gain[:, lo] * (1 - frac) + gain[:, lo + 1] * frac
    return np.asarray(edges[np.argmax(total, axis=1)])


def polarity_windows(signal: np.ndarray, windows: GapWindows, *, integrated: bool) -> np.ndarray:
    """Each polarity's window of ``signal`` in its own coordinates, the negative one mirrored.

    Parameters
    ----------
    signal : ndarray, (rows, n)
        Current (A) or lock-in rows on the ascending grid ``windows`` was cut from.
    windows : GapWindows
        The map's windows on that grid (:func:`gap_windows`).
    integrated : bool
        ``signal`` is a current: the mirrored side is -I(-V) (it changes sign with V).

    Returns
    -------
    ndarray, (rows, 2, M)
        [:, 0] the positive window, [:, 1] the mirrored negative one, in ``signal``'s unit and dtype.
    """
    pos, neg = windows.columns
    out = np.empty((signal.shape[0], 2, pos.stop - pos.start), signal.dtype)
    out[:, 0] = signal[:, pos]
    # -I(-V) on the mirrored side of a current (it changes sign with V); a lock-in as it is
    np.multiply(signal[:, neg][:, ::-1], -1 if integrated else 1, out=out[:, 1])
    return out


def gap_rows(
    bias_key: bytes,
    refit: np.ndarray,
    noise: np.ndarray,
    *,
    model: GapModel | None,
    options: KernelOptions,
    dtype: np.dtype,
    clock: Clock = NO_CLOCK,
    too_coarse: bool = False,
    start_edge_V: np.ndarray | None = None,
) -> GapResult:
    """The gap of rows (n_rows, n) of a positive-conductance signal on the ascending grid ``bias_key``.

    Parameters
    ----------
    refit : ndarray, (n_rows, n)
        The signal the templates are fitted to: the current (``model.integrated``) or a lock-in;
        only the windows' columns are read.
    noise : ndarray, (n_rows,)
        rms noise per sample of ``refit`` (NaN: unknown).
    model : GapModel or None
        None when the map shows no gap to fit (every row NO_PEAKS).
    options : KernelOptions
        Quality limits.
    dtype : dtype
        Float dtype of the returned values.
    start_edge_V : ndarray, (n_rows,), optional
        For a coarse model, the gap edge each row's joint fit starts from (:func:`common_start`:
        the one two channels fit best together); None: each row's own best (a search).
    """
    rows = refit.shape[0]
    nan2 = np.full((rows, 2), np.nan)
    position, sigma, score, snr, chi2, edge_V, visibility = (nan2.copy() for _ in range(7))
    log_width = np.full(rows, np.nan)
    reason = np.zeros(rows, np.int8)
    bad = np.zeros(rows, bool)
    if model is None:
        reason[:] = CODE.BIAS_STEP_TOO_COARSE if too_coarse else CODE.NO_PEAKS
    else:
        win = gap_windows(bias_key, model)
        bad = ~np.logical_and.reduce(np.isfinite(refit[:, win.read]), axis=1)
        if not win.covered:
            reason[:] = CODE.SEARCH_NOT_COVERED
        elif not win.resolvable:
            reason[:] = CODE.BIAS_STEP_TOO_COARSE
        else:
            bank = model.bank()
            if bad.any():  # zeros keep the arithmetic quiet; the rows are reported as NAN_INPUT
                refit = np.where(bad[:, None], 0, refit)
            signal = refit[:, win.read]
            shifted = GapWindows(
                tuple(slice(c.start - win.read.start, c.stop - win.read.start) for c in win.columns),  # type: ignore[arg-type]
                win.origin_V,
                win.read,
                True,
                True,
            )
            windows = polarity_windows(signal, shifted, integrated=model.integrated)
            with np.errstate(divide="ignore", invalid="ignore"):
                fit = locate_peaks(windows.reshape(rows * 2, -1), bank, np.repeat(noise, 2))
                clock.lap("template refinement")
                origin = np.asarray(win.origin_V)
                score = fit.score.reshape(rows, 2)
                snr = fit.snr.reshape(rows, 2)
                visibility = fit.visibility.reshape(rows, 2)
                position = origin + fit.offset.reshape(rows, 2) * model.step_V
                chi2 = fit.chi2.reshape(rows, 2)
                delta_sigma = 0.5 * np.hypot(*(fit.sigma.reshape(rows, 2) * model.step_V).T)
                converged = np.isfinite(position).all(axis=1)
                # the joint fit where the per-peak fit leaves Delta too loose
                loose = ~(delta_sigma <= options.joint_fit_above * model.gap_eV)
                if (model.broad or model.coarse) and np.isfinite(options.joint_fit_above):
                    loose[:] = True
                refine = np.flatnonzero(loose & ~bad)
                if refine.size:
                    tables = model_tables(bias_key, model)
                    if model.coarse:  # from the searched (or given) grid shift, iterated
                        begin = None if start_edge_V is None else shift_index(tables, start_edge_V[refine])
                        joint = joint_fit(refit[refine], begin, noise[refine], tables, iterations=COARSE_ITERATIONS)
                    else:  # from the per-peak fit's best grid shift
                        start = (fit.best % bank.n_shifts).reshape(rows, 2)[refine]
                        joint = joint_fit(refit[refine], start, noise[refine], tables)
                    position[refine] = np.stack([joint.peak_pos_V, joint.peak_neg_V], axis=1)
                    chi2[refine] = joint.chi2[:, None]
                    delta_sigma[refine] = joint.delta_sigma_eV
                    converged[refine] = joint.converged
                    dynes_ok = np.abs(joint.log_width) <= MAX_WIDTH_STEP
                    edge_V[refine] = np.where(dynes_ok, joint.delta_dynes_eV, np.nan)[:, None]
                    log_width[refine] = np.where(dynes_ok, joint.log_width, np.nan)
                clock.lap("joint fit")
                reach = bank.shifts[-1] * model.step_V
                outside = np.abs(position - bank.peak_offset[0] * model.step_V - model.gap_eV) > reach + model.step_V
            at_edge = fit.at_edge.reshape(rows, 2).any(axis=1) | outside.any(axis=1)
            delta = 0.5 * (position[:, 0] + position[:, 1])
            # The most basic failure wins: no peak, a peak outside the searched range, fit trouble.
            with np.errstate(invalid="ignore"):
                misfit = ((chi2 > options.max_peak_chi2) & (score < options.min_peak_score)).any(axis=1)
                reason[misfit | ~(delta_sigma <= options.max_delta_sigma * delta)] = CODE.POOR_PEAK_FIT
                reason[~converged] = CODE.PEAK_NOT_BRACKETED
                reason[at_edge] = CODE.PEAK_AT_EDGE
                weak = ~(snr >= options.min_peak_snr).all(axis=1) | ~(visibility >= options.min_visibility).all(axis=1)
                reason[weak] = CODE.NO_PEAKS
            sigma = np.repeat(np.sqrt(2.0) * delta_sigma[:, None], 2, axis=1)
    reason[bad] = CODE.NAN_INPUT
    out = np.empty((8, rows))
    out[0] = 0.5 * (position[:, 0] + position[:, 1])
    out[1], out[2] = -position[:, 1], position[:, 0]
    out[3] = np.minimum(visibility[:, 0], visibility[:, 1])
    out[4] = np.minimum(score[:, 0], score[:, 1])
    out[5] = 0.5 * np.hypot(sigma[:, 0], sigma[:, 1])
    out[6] = edge_V[:, 0]  # the Dynes fit's gap: half the distance between its two gap edges
    out[7] = (model.width_eV if model is not None else np.nan) * np.exp(log_width)
    failed = reason != 0
    for i in (0, 1, 2, 5, 6, 7):
        out[i, failed] = np.nan
    out[3:5, bad] = np.nan
    out = out.astype(dtype, copy=False)
    return GapResult(out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], reason)


def extract_gap(
    bias_V: np.ndarray,
    signal: np.ndarray,
    *,
    integrated: bool,
    options: KernelOptions,
    noise: np.ndarray | None = None,
) -> GapResult:
    """Gap Delta = (V_peak+ - V_peak-) / 2 from the coherence peaks of a batch of spectra.

    A least-squares fit of thermally broadened Dynes peak templates at the map's gap plus a
    polynomial background to ``signal``: the current I(V) (``integrated``, white current noise)
    or a lock-in channel (templates also broadened by the modulation).

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Uniform ascending bias, V.
    signal : ndarray, (..., n)
        Positive-conductance current (A) or lock-in channel (any unit).
    integrated : bool
        Whether ``signal`` is a current.
    options : KernelOptions
        Temperature, modulation, quality limits and the calibration (``gap_eV``,
        ``dynes_width_eV``; see :func:`~stslive.live.kernels.calibrate`). A ``gap_eV`` that is
        NaN (a map without a gap) gives NO_PEAKS everywhere.
    noise : ndarray, (...), optional
        rms noise per sample of ``signal`` (default: measured on it).

    Returns
    -------
    GapResult
        Arrays shaped (...), float32 for float32 input, else float64.
    """
    if options.gap_eV is None or options.dynes_width_eV is None:
        raise AnalysisError("extract_gap needs calibrated options (gap_eV, dynes_width_eV): call kernels.calibrate()")
    bias = np.asarray(bias_V, dtype=np.float64)
    step = bias_step(bias)
    g = np.asarray(signal)
    lead = g.shape[:-1]
    rows = g.reshape(-1, bias.size)
    key = bias.tobytes()
    if noise is None:
        noise_rows = measure_noise(rows, noise_triples(key, float(options.gap_search_V[1])))
    else:
        noise_rows = np.asarray(noise, dtype=np.float64).reshape(-1)
    model = None
    too_coarse = step_too_coarse(step, options, integrated=integrated)
    if np.isfinite(options.gap_eV) and not too_coarse:
        model = gap_model(
            step=step, options=options, integrated=integrated, gap_eV=options.gap_eV, width_eV=options.dynes_width_eV
        )
    gap = gap_rows(
        key,
        rows,
        noise_rows,
        model=model,
        options=options,
        dtype=np.dtype(g.dtype if g.dtype == np.float32 else np.float64),
        too_coarse=too_coarse,
    )
    return GapResult(*(v.reshape(lead) for v in gap))
