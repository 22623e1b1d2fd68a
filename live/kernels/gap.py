"""The gap Delta from the two coherence peaks, per spectrum of a batch.

Delta = (V_peak+ - V_peak-) / 2 (e = 1): half the peak-to-peak distance of dI/dV, as the paper
defines it. The coarse peaks and fit windows come from :mod:`~stslive.live.kernels.peaks`, the
sub-sample position from the template fit of :mod:`~stslive.live.kernels.templates`.
:func:`gap_rows` is the step the batch engine runs on each chunk; :func:`extract_gap` is the
same step on any batch.
"""

from __future__ import annotations

import numpy as np

from stslive.live.kernels.derivative import running_mean_into
from stslive.live.kernels.options import CODE, GapResult
from stslive.live.kernels.peaks import GapGeometry, coarse_peaks, fit_windows, gap_geometry
from stslive.live.kernels.samples import LOCKIN_SMOOTHING_POINTS
from stslive.live.kernels.stages import NO_CLOCK, Clock
from stslive.live.kernels.sweep import bias_step
from stslive.live.kernels.templates import TemplateBank, bank_args, locate_peaks, template_bank
from stslive.live.kernels.widths import batch_width

__all__ = ["extract_gap", "gap_rows"]


def _search_peaks(
    geometry: GapGeometry,
    didv: np.ndarray,
    signal: np.ndarray,
    *,
    bank: TemplateBank,
    step: float,
    integrated: bool,
    clock: Clock,
) -> tuple[np.ndarray, ...]:
    """Coherence peak of each row on each polarity: position (V), peak/background ratio, score, reason.

    Each returned array is (rows, 2), positions in each polarity's own (mirrored) coordinates.
    The coarse peak is found per polarity (the search ranges of the two may differ by a sample);
    the template fits of both polarities then run as one stacked batch.
    """
    rows = didv.shape[0]
    j, ratio = coarse_peaks(geometry.searched, didv)
    at_edge = (j == 0) | (j == geometry.count - 1)
    clock.lap("coarse peaks")
    windows, outside, centre = fit_windows(geometry, signal, j, bank, integrated=integrated)
    offset, score = locate_peaks(windows.reshape(rows * j.shape[1], -1), bank)
    offset = offset.reshape(rows, -1)
    position = geometry.origin_V + (centre + offset) * step
    reason = np.where(
        at_edge,
        np.int8(CODE.PEAK_AT_EDGE),
        np.where(
            outside,
            np.int8(CODE.SEARCH_NOT_COVERED),
            np.where(np.isfinite(offset), np.int8(0), np.int8(CODE.PEAK_NOT_BRACKETED)),
        ),
    )
    clock.lap("template refinement")
    return position, ratio, score.reshape(rows, -1), reason


def gap_rows(
    geometry: GapGeometry,
    g2: np.ndarray,
    refit: np.ndarray,
    *,
    integrated: bool,
    step: float,
    bank: TemplateBank | None,
    min_visibility: float,
    min_peak_score: float,
    dtype: np.dtype,
    clock: Clock = NO_CLOCK,
) -> GapResult:
    """The gap of rows (n_rows, n) whose ``geometry.columns`` hold the data the search reads.

    Parameters
    ----------
    geometry : GapGeometry
    g2 : ndarray, (n_rows, n)
        Positive conductance for the coarse peaks (a lock-in smoothed over LOCKIN_SMOOTHING_POINTS).
    refit : ndarray, (n_rows, n)
        The signal the templates are fitted to: the current (``integrated``) or the raw lock-in.
    bank : TemplateBank or None
        None when the sweep does not cover the search range (every row SEARCH_NOT_COVERED).
    min_visibility, min_peak_score : float
        Quality limits (reasons NO_PEAKS, POOR_PEAK_FIT).
    dtype : dtype
        Float dtype of the returned values.
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
    if bank is not None and geometry.covered:
        with np.errstate(divide="ignore", invalid="ignore"):
            position, ratio, score2, side_reason = _search_peaks(
                geometry, g2, refit, bank=bank, step=step, integrated=integrated, clock=clock
            )
    else:  # one polarity alone gives no Delta: nothing is searched
        position, ratio, score2 = (np.full((rows, 2), np.nan) for _ in range(3))
        side_reason = np.full((rows, 2), CODE.SEARCH_NOT_COVERED, np.int8)
    pos, neg = position[:, 0], -position[:, 1]
    visibility = np.minimum(ratio[:, 0], ratio[:, 1]) - 1
    score = np.minimum(score2[:, 0], score2[:, 1])
    # The most basic failure wins: no data, then no sweep coverage, no peak, then fit trouble.
    reason = np.zeros(rows, np.int8)
    reason[~(score >= min_peak_score)] = CODE.POOR_PEAK_FIT
    # A peak on the wrong side of zero bias is no bracketed peak either (Delta would be <= 0).
    not_bracketed = (side_reason == CODE.PEAK_NOT_BRACKETED).any(axis=1) | ~((neg < 0) & (pos > 0))
    reason[not_bracketed] = CODE.PEAK_NOT_BRACKETED
    reason[~(visibility >= min_visibility)] = CODE.NO_PEAKS
    reason[(side_reason == CODE.PEAK_AT_EDGE).any(axis=1)] = CODE.PEAK_AT_EDGE
    reason[(side_reason == CODE.SEARCH_NOT_COVERED).any(axis=1)] = CODE.SEARCH_NOT_COVERED
    reason[bad] = CODE.NAN_INPUT
    # one (5, rows) block, masked and cast once: the fields are its rows
    out = np.empty((5, rows))
    np.multiply(0.5, pos - neg, out=out[0])
    out[1], out[2], out[3], out[4] = neg, pos, visibility, score
    out[:3, reason != 0] = np.nan
    out[3:, bad] = np.nan
    out = out.astype(dtype, copy=False)
    return GapResult(out[0], out[1], out[2], out[3], out[4], reason)


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
    """Gap Delta = (V_peak+ - V_peak-) / 2 from the coherence peaks of a batch of spectra.

    Coarse peaks: argmax of ``didv`` over ``search_V`` on each polarity, above its running-mean
    background. Refinement: least-squares fit of thermally broadened Dynes peak templates plus a
    polynomial background to ``current_A`` when given (I(V) domain, white current noise), else
    to ``didv`` itself (a lock-in channel: its coarse peak is taken on a LOCKIN_SMOOTHING_POINTS
    running mean; templates also broadened by the ``modulation_Vrms`` modulation).

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Uniform ascending bias, V.
    didv : ndarray, (..., n)
        Positive conductance (S, or lock-in units).
    current_A : ndarray, (..., n), optional
        The positive-conductance current the ``didv`` was derived from, A.
    search_V : (float, float)
        |V| range of the peak search, V.
    temperature_K, modulation_Vrms : float
        Thermal (K) and modulation (V rms) broadening of the templates.
    dynes_width_eV : float, optional
        Dynes width of the templates, eV; None: estimated from this batch
        (:func:`~stslive.live.kernels.widths.batch_width`).
    min_visibility, min_peak_score : float
        Quality limits (reasons NO_PEAKS, POOR_PEAK_FIT).

    Returns
    -------
    GapResult
        Arrays shaped (...), float32 for float32 input, else float64.
    """
    bias = np.asarray(bias_V, dtype=np.float64)
    step = bias_step(bias)
    g = np.asarray(didv)
    lead = g.shape[:-1]
    raw = g.reshape(-1, bias.size)
    signal = None if current_A is None else np.asarray(current_A).reshape(-1, bias.size)
    refit = raw if signal is None else signal  # a lock-in is fitted raw, only its argmax is smoothed
    geometry = gap_geometry(bias.tobytes(), tuple(search_V), step)
    g2 = raw
    if signal is None:  # smoothed on the columns the search reads, as the batch engine does
        g2 = np.full_like(raw, np.nan)
        cols = geometry.columns
        running_mean_into(g2, raw, ((cols.start, cols.stop),), points=LOCKIN_SMOOTHING_POINTS)
    bank = None
    if geometry.covered:
        if dynes_width_eV is None:
            dynes_width_eV = batch_width(
                bias, raw, signal, search_V=search_V, temperature_K=temperature_K, modulation_Vrms=modulation_Vrms
            )
        args = bank_args(temperature_K, modulation_Vrms, integrated=signal is not None)
        bank = template_bank(step, **args, widths=(round(float(dynes_width_eV), 9),))
    gap = gap_rows(
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
