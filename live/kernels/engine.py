"""The batch engine: :func:`analyse_spectra`, Delta, alpha and their quality for any batch of spectra.

Each chunk of rows passes the public steps (:func:`~stslive.live.kernels.sweep.conductance_sign`,
the box derivative and running mean of :mod:`~stslive.live.kernels.derivative`,
:func:`~stslive.live.kernels.gap.gap_rows`, :func:`~stslive.live.kernels.powerlaw.power_law_rows`)
on the columns the fits read. What depends only on the bias grid and the options is planned once
per grid (:func:`plan`). Every row is computed on its own: results are bit-identical whatever the
batch size, chunk or thread count.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.buffers import nan_buffer
from stslive.live.kernels.derivative import Columns, box_derivative_into, running_mean_into
from stslive.live.kernels.gap import gap_rows
from stslive.live.kernels.options import KernelOptions, SpectrumAnalysis
from stslive.live.kernels.peaks import GapGeometry, gap_geometry
from stslive.live.kernels.powerlaw import LogDesign, log_designs, power_law_rows, window_columns
from stslive.live.kernels.samples import LOCKIN_SMOOTHING_POINTS
from stslive.live.kernels.stages import Clock
from stslive.live.kernels.sweep import bias_step, conductance_sign, grid_step, prepare_sweep
from stslive.live.kernels.templates import TemplateBank, bank_args, template_bank
from stslive.live.kernels.widths import estimate_dynes_width

__all__ = ["analyse_spectra"]


def _merge(ranges: list[tuple[int, int]]) -> Columns:
    """Union of half-open column ranges, sorted and merged."""
    merged: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


@dataclass(frozen=True)
class Plan:
    """What one batch analysis reads, fixed per bias grid and options (cached, see :func:`plan`)."""

    bias: np.ndarray
    step: float
    gap_from_lockin: bool
    alpha_from_lockin: bool
    #: columns of the current's derivative that are read (gap region and/or fit windows)
    derivative_columns: Columns
    #: columns of the lock-in (smoothed for the gap, raw for alpha) that are read
    lockin_columns: Columns
    gap: GapGeometry
    #: the power-law fit windows in the dtype of the fitted channel (None: not covered)
    law: tuple[LogDesign, ...] | None


@lru_cache(maxsize=32)
def plan(
    bias_key: bytes,
    *,
    search_V: tuple[float, float],
    window_V: tuple[float, float],
    alpha_from_lockin: bool,
    gap_from_lockin: bool,
    dtype: str,
) -> Plan:
    """The :class:`Plan` of the ascending float64 grid ``bias_key`` (keyed by its values, not its id)."""
    bias = np.frombuffer(bias_key, dtype=np.float64)
    step = grid_step(bias_key)
    geometry = gap_geometry(bias_key, search_V, step)
    windows = window_columns(bias_key, window_V) or ()
    fit = [(w.start, w.stop) for w in windows]
    gap = [(geometry.columns.start, geometry.columns.stop)]
    return Plan(
        bias=bias,
        step=step,
        gap_from_lockin=gap_from_lockin,
        alpha_from_lockin=alpha_from_lockin,
        derivative_columns=_merge((fit if not alpha_from_lockin else []) + (gap if not gap_from_lockin else [])),
        lockin_columns=_merge((fit if alpha_from_lockin else []) + (gap if gap_from_lockin else [])),
        gap=geometry,
        law=log_designs(bias_key, window_V, dtype),
    )


def _analyse_chunk(
    plan: Plan,
    opts: KernelOptions,
    bank: TemplateBank | None,
    cur: np.ndarray | None,
    lia: np.ndarray | None,
    clock: Clock,
) -> SpectrumAnalysis:
    """Analyse one chunk of rows (n_rows, n) of an ascending sweep; the work arrays are per-thread buffers."""
    n = plan.bias.size
    rows = (cur if cur is not None else lia).shape[0]  # type: ignore[union-attr]
    g_cur = r_cur = g_lia = r_lia = None
    if cur is not None:
        sign = conductance_sign(plan.bias, cur)
        g_cur = nan_buffer("didv", rows, n, cur.dtype, plan.derivative_columns)
        box_derivative_into(
            g_cur, cur, plan.derivative_columns, points=opts.smoothing_points, step=plan.step, sign=sign
        )
        if not plan.gap_from_lockin:  # the template fit reads the signed current in the gap columns
            cols = plan.gap.columns
            r_cur = nan_buffer("current", rows, n, cur.dtype, ((cols.start, cols.stop),))
            np.multiply(cur[:, cols], sign.astype(cur.dtype)[:, None], out=r_cur[:, cols])
    if lia is not None:
        sign_l = conductance_sign(plan.bias, lia, kind="didv").astype(lia.dtype)[:, None]
        r_lia = nan_buffer("lockin", rows, n, lia.dtype, plan.lockin_columns)
        for lo, hi in plan.lockin_columns:
            np.multiply(lia[:, lo:hi], sign_l, out=r_lia[:, lo:hi])
        if plan.gap_from_lockin:  # a running mean keeps noise spikes from the coarse argmax
            gap_cols = ((plan.gap.columns.start, plan.gap.columns.stop),)
            g_lia = nan_buffer("lockin_smooth", rows, n, lia.dtype, gap_cols)
            running_mean_into(g_lia, lia, gap_cols, points=LOCKIN_SMOOTHING_POINTS, scale=sign_l, name="lockin_mean")
    clock.lap("sign + derivative")
    dtype = np.dtype((cur if cur is not None else lia).dtype)  # type: ignore[union-attr]
    g_gap, r_gap = (g_lia, r_lia) if plan.gap_from_lockin else (g_cur, r_cur)
    gap = gap_rows(
        plan.gap,
        g_gap,  # type: ignore[arg-type]
        r_gap,  # type: ignore[arg-type]
        integrated=not plan.gap_from_lockin,
        step=plan.step,
        bank=bank,
        min_visibility=opts.min_visibility,
        min_peak_score=opts.min_peak_score,
        dtype=dtype,
        clock=clock,
    )
    law = power_law_rows(
        r_lia if plan.alpha_from_lockin else g_cur,  # type: ignore[arg-type]
        plan.law,
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


def _float(a: np.ndarray) -> np.ndarray:
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


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
        Spectra are processed in chunks of ``options.chunk`` on ``options.threads`` threads; only
        the columns the fits read are derived and smoothed. The Dynes width of the peak
        templates, unless given, is estimated once from the first chunk so every chunk uses the
        same templates; a sweep that does not cover the gap search range on both polarities
        needs none (every spectrum is SEARCH_NOT_COVERED).
    """
    opts = options or KernelOptions()
    if current is None and lockin is None:
        raise AnalysisError("analyse_spectra needs a current or a lock-in channel (or both)")
    bias, *chans = prepare_sweep(np.asarray(bias_V, dtype=np.float64), *[c for c in (current, lockin) if c is not None])
    cur = chans.pop(0) if current is not None else None
    lia = chans.pop(0) if lockin is not None else None
    bias_key = bias.tobytes()  # the grid's values key every cached quantity (never the array's id)
    step = bias_step(bias, key=bias_key)  # refuses a short, non-uniform or descending grid first
    lead = (cur if cur is not None else lia).shape[:-1]  # type: ignore[union-attr]
    if cur is not None and lia is not None and cur.shape != lia.shape:
        raise AnalysisError(f"current {cur.shape} and lock-in {lia.shape} must have the same shape")
    gap_from_lockin = opts.gap_from_lockin(lockin_given=lia is not None)
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
    the_plan = plan(
        bias_key,
        search_V=tuple(opts.gap_search_V),
        window_V=tuple(opts.fit_window_V),
        alpha_from_lockin=opts.alpha_source == "lockin",
        gap_from_lockin=gap_from_lockin,
        dtype=fitted.dtype.str,  # type: ignore[union-attr]
    )
    bank = None
    if the_plan.gap.covered:  # else no spectrum can use templates: none are built, no width estimated
        width = opts.dynes_width_eV
        if width is None:  # from the first chunk, then fixed so every chunk uses the same templates
            first = slice(0, min(opts.chunk, total))
            width = estimate_dynes_width(
                bias,
                current=None if cur2 is None else cur2[first],
                lockin=None if lia2 is None else lia2[first],
                options=dataclasses.replace(opts, gap_source="lockin" if gap_from_lockin else "current"),
            )
        args = bank_args(opts.temperature_K, opts.modulation_Vrms, integrated=not gap_from_lockin)
        bank = template_bank(step, **args, widths=(round(float(width), 9),))
    starts = range(0, total, opts.chunk)

    def work(start: int) -> tuple[SpectrumAnalysis, dict[str, float]]:
        rows = slice(start, min(start + opts.chunk, total))
        clock = Clock(stage_seconds is not None)
        part = _analyse_chunk(
            the_plan, opts, bank, None if cur2 is None else cur2[rows], None if lia2 is None else lia2[rows], clock
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
