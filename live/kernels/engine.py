"""The batch engine: :func:`analyse_spectra`, Delta, alpha and their quality for any batch of spectra.

Each chunk of rows passes the public steps (:func:`~stslive.live.kernels.sweep.conductance_sign`,
:func:`~stslive.live.kernels.noise.measure_noise`, the box derivative and running mean of
:mod:`~stslive.live.kernels.derivative`, :func:`~stslive.live.kernels.gap.gap_rows`,
:func:`~stslive.live.kernels.powerlaw.power_law_rows`)
on the columns the fits read. What depends only on the bias grid and the options is planned once
per grid (:func:`plan`); the map's calibration (:func:`~stslive.live.kernels.widths.calibrate`)
is measured once, on the first chunk, unless given. Every row is then computed on its own:
results are bit-identical whatever the batch size, chunk or thread count.
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
from stslive.live.kernels.combine import combine_gaps
from stslive.live.kernels.derivative import Columns, box_derivative_into, running_mean_into
from stslive.live.kernels.gap import GapModel, common_start, gap_model, gap_rows, gap_windows, step_too_coarse
from stslive.live.kernels.noise import measure_noise, noise_triples
from stslive.live.kernels.options import KernelOptions, SpectrumAnalysis
from stslive.live.kernels.powerlaw import SideDesign, Smoothing, log_designs
from stslive.live.kernels.powerlaw import power_law_rows as _power_law_rows
from stslive.live.kernels.stages import Clock
from stslive.live.kernels.sweep import bias_step, conductance_sign, grid_step, prepare_sweep
from stslive.live.kernels.widths import calibrate

__all__ = ["analyse_spectra", "plan"]


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
    """What one batch analysis reads, fixed per bias grid, options and calibration (cached, see :func:`plan`)."""

    bias: np.ndarray
    step: float
    #: the channels Delta is fitted on, the first primary (:meth:`KernelOptions.gap_channels`)
    gap_channels: tuple[str, ...]
    alpha_from_lockin: bool
    #: each gap channel's templates (None: the map shows no gap)
    models: tuple[GapModel | None, ...]
    #: each gap channel without a model because the step exceeds its peaks' width (BIAS_STEP_TOO_COARSE)
    too_coarse: tuple[bool, ...]
    #: columns the gap reads (the windows of both polarities)
    gap_columns: Columns
    #: how alpha's G is made from its channel, and the fit windows (None: a polarity not covered)
    alpha_smoothing: Smoothing
    law: tuple[SideDesign | None, SideDesign | None]
    #: columns of alpha's smoothed channel
    alpha_columns: Columns
    #: triples of the noise measurement
    noise: tuple[tuple[int, int, int], ...]


@lru_cache(maxsize=32)
def plan(
    bias_key: bytes,
    *,
    window_V: tuple[float, float],
    noise_from_V: float,
    alpha_from_lockin: bool,
    gap_channels: tuple[str, ...],
    dtype: str,
    smoothing_points: int,
    lockin_smoothing_points: int,
    models: tuple[GapModel | None, ...],
    too_coarse: tuple[bool, ...],
) -> Plan:
    """The :class:`Plan` of the ascending float64 grid ``bias_key`` (keyed by its values, not its id)."""
    bias = np.frombuffer(bias_key, dtype=np.float64)
    step = grid_step(bias_key)
    smoothing = Smoothing("mean", lockin_smoothing_points) if alpha_from_lockin else Smoothing("box", smoothing_points)
    law = log_designs(bias_key, window_V, dtype, smoothing)
    reads = [gap_windows(bias_key, m).read for m in models if m is not None]
    return Plan(
        bias=bias,
        step=step,
        gap_channels=gap_channels,
        alpha_from_lockin=alpha_from_lockin,
        models=models,
        too_coarse=too_coarse,
        gap_columns=_merge([(r.start, r.stop) for r in reads]),
        alpha_smoothing=smoothing,
        law=law,
        alpha_columns=tuple((d.columns.start, d.columns.stop) for d in law if d is not None),
        noise=noise_triples(bias_key, noise_from_V),
    )


def _analyse_chunk(
    plan: Plan,
    opts: KernelOptions,
    gap_opts: KernelOptions,
    cur: np.ndarray | None,
    lia: np.ndarray | None,
    clock: Clock,
) -> SpectrumAnalysis:
    """Analyse one chunk of rows (n_rows, n) of an ascending sweep; the work arrays are per-thread buffers.

    ``gap_opts`` are the options of the gap's fits (:func:`_gap_options`), ``opts`` everything else's.
    """
    n = plan.bias.size
    ref = cur if cur is not None else lia
    assert ref is not None
    rows = ref.shape[0]
    dtype = np.dtype(ref.dtype)
    g_alpha = None
    refit: dict[str, np.ndarray] = {}  # the signal each gap channel's templates are fitted to
    noise_cur = noise_lia = np.full(rows, np.nan)
    if cur is not None:
        sign = conductance_sign(plan.bias, cur)
        noise_cur = measure_noise(cur, plan.noise)
        if "current" in plan.gap_channels:  # the template fit reads the signed current in the gap's columns
            r_gap = refit["current"] = nan_buffer("current", rows, n, cur.dtype, plan.gap_columns)
            for lo, hi in plan.gap_columns:
                np.multiply(cur[:, lo:hi], sign.astype(cur.dtype)[:, None], out=r_gap[:, lo:hi])
        if not plan.alpha_from_lockin:
            g_alpha = nan_buffer("didv_alpha", rows, n, cur.dtype, plan.alpha_columns)
            box_derivative_into(
                g_alpha,
                cur,
                plan.alpha_columns,
                points=plan.alpha_smoothing.points,
                step=plan.step,
                sign=sign,
                stride=plan.alpha_smoothing.stride,
            )
    if lia is not None:
        noise_lia = measure_noise(lia, plan.noise)
        sign_l = conductance_sign(plan.bias, lia, kind="didv").astype(lia.dtype)[:, None]
        if "lockin" in plan.gap_channels:
            r_gap = refit["lockin"] = nan_buffer("lockin", rows, n, lia.dtype, plan.gap_columns)
            for lo, hi in plan.gap_columns:
                np.multiply(lia[:, lo:hi], sign_l, out=r_gap[:, lo:hi])
        if plan.alpha_from_lockin:
            g_alpha = nan_buffer("lockin_alpha", rows, n, lia.dtype, plan.alpha_columns)
            running_mean_into(
                g_alpha, lia, plan.alpha_columns, points=plan.alpha_smoothing.points, scale=sign_l, name="lockin_mean"
            )
    clock.lap("sign + derivative")
    noise = {"current": noise_cur, "lockin": noise_lia}
    coarse = any(m is not None and m.coarse for m in plan.models)
    start = None
    if coarse and len(plan.gap_channels) == 2 and all(m is not None for m in plan.models):
        # both channels' fits start from the edge they fit best together (common_start)
        start = common_start(
            plan.bias.tobytes(),
            [refit[c] for c in plan.gap_channels],
            [noise[c] for c in plan.gap_channels],
            plan.models,  # type: ignore[arg-type]
        )
    gaps = [
        gap_rows(
            plan.bias.tobytes(),
            refit[channel],
            noise[channel],
            model=model,
            options=gap_opts,
            dtype=dtype,
            clock=clock,
            too_coarse=too_coarse,
            start_edge_V=start,
        )
        for channel, model, too_coarse in zip(plan.gap_channels, plan.models, plan.too_coarse, strict=True)
    ]
    gap = gaps[0] if len(gaps) == 1 else combine_gaps(gaps[0], gaps[1], agreement_only=coarse)[0]
    law = _power_law_rows(
        g_alpha,  # type: ignore[arg-type]
        plan.law,
        noise_lia if plan.alpha_from_lockin else noise_cur,
        max_log_residual=opts.max_log_residual,
        max_chi2=opts.max_power_law_chi2,
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
        delta_sigma_eV=gap.delta_sigma_eV,
        alpha=law.alpha,
        alpha_pos=law.alpha_pos,
        alpha_neg=law.alpha_neg,
        b=law.b,
        b_pos=law.b_pos,
        b_neg=law.b_neg,
        rms_log_residual=law.rms_log_residual,
        alpha_sigma=law.alpha_sigma,
        delta_dynes_eV=gap.delta_dynes_eV,
        gamma_dynes_eV=gap.gamma_dynes_eV,
        gap_reason=gap.reason,
        alpha_reason=law.reason,
        valid_delta=gap_ok,
        valid_alpha=law_ok,
        valid=gap_ok & law_ok,
        reason=np.where(gap_ok, law.reason, gap.reason),
    )
    clock.lap("assemble")
    return result


def _gap_options(opts: KernelOptions, gap_channels: tuple[str, ...]) -> KernelOptions:
    """The options of the gap's fits: with two channels every pixel gets the joint fit on both,
    whose standard errors are the calibrated ones the combination weights by (the per-peak fit's
    are not, at every step)."""
    return opts if len(gap_channels) == 1 else dataclasses.replace(opts, joint_fit_above=0.0)


def _threads(opts: KernelOptions, chunks: int) -> int:
    """Worker threads: ``opts.threads``, or one per available core; never more than chunks."""
    wanted = opts.threads if opts.threads is not None else len(os.sched_getaffinity(0))
    return max(1, min(wanted, chunks))


def _chunk_size(total: int, opts: KernelOptions) -> int:
    """Spectra per chunk: at most ``opts.chunk``, and as many equal chunks as a multiple of the threads.

    A block of 2,400 spectra in chunks of 512 gives 5 chunks, 3 on one thread and 2 on the other;
    6 chunks of 400 keep both threads busy to the end. Each spectrum is analysed on its own, so the
    chunking changes no result.
    """
    chunks = max(1, -(-total // opts.chunk))
    threads = _threads(opts, chunks)  # 1 for a single chunk: it stays whole
    chunks = -(-chunks // threads) * threads
    return max(1, -(-total // chunks))


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
    """Delta, alpha, their standard errors and quality for a batch of spectra (the one entry point).

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
        refinement", "power-law fit", "Dynes fit", "assemble") are added to it, summed over
        chunks and threads.

    Returns
    -------
    SpectrumAnalysis
        Arrays shaped (...). Delta comes from the channels :meth:`KernelOptions.gap_channels`
        names (with both, the lock-in's combined with the current's,
        :func:`~stslive.live.kernels.combine.combine_gaps`); alpha from ``alpha_source``.
        Spectra are processed in chunks of ``options.chunk`` on ``options.threads`` threads; only
        the columns the fits read are derived and smoothed. The calibration (Dynes width,
        smoothing), unless given, is measured once on the first chunk so every chunk is
        analysed alike.
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
    gap_channels = opts.gap_channels(lockin_given=lia is not None, current_given=cur is not None)
    if "lockin" in gap_channels and lia is None:
        raise AnalysisError(
            f"gap_source={opts.gap_source!r} but no lock-in channel was given; use gap_source='current'"
        )
    if ("current" in gap_channels or opts.alpha_source == "current") and cur is None:
        raise AnalysisError("no current channel: set gap_source='lockin' and alpha_source='lockin'")
    if opts.alpha_source == "lockin" and lia is None:
        raise AnalysisError("alpha_source='lockin' but no lock-in channel was given; use alpha_source='current'")
    n = bias.size
    cur2 = None if cur is None else _float(np.asarray(cur).reshape(-1, n))
    lia2 = None if lia is None else _float(np.asarray(lia).reshape(-1, n))
    if opts.alpha_source == "current" and lia2 is not None and "lockin" not in gap_channels:
        lia2 = None  # the lock-in is read by neither fit
    total = math.prod(lead)
    if not opts.calibrated:  # from the first chunk, then fixed so every chunk is analysed alike
        first = slice(0, min(opts.chunk, total))
        opts = calibrate(
            bias,
            current=None if cur2 is None else cur2[first],
            lockin=None if lia2 is None else lia2[first],
            options=opts,
        )
    fitted = lia2 if opts.alpha_source == "lockin" else cur2
    assert opts.smoothing_points is not None and opts.lockin_smoothing_points is not None
    assert opts.gap_eV is not None and opts.dynes_width_eV is not None
    coarse = tuple(step_too_coarse(step, opts, integrated=c == "current") for c in gap_channels)
    # a step too coarse for the peaks: one channel is refused; two are fitted, and Delta stands
    # where they agree (combine_gaps)
    too_coarse = coarse if len(gap_channels) == 1 else (False,) * len(gap_channels)
    models = tuple(
        None
        if refused or not np.isfinite(opts.gap_eV)
        else gap_model(
            step=step,
            options=opts,
            integrated=c == "current",
            gap_eV=opts.gap_eV,
            width_eV=opts.dynes_width_eV,
            coarse=any(coarse),
        )
        for c, refused in zip(gap_channels, too_coarse, strict=True)
    )
    the_plan = plan(
        bias_key,
        window_V=tuple(opts.fit_window_V),
        noise_from_V=float(opts.gap_search_V[1]),
        alpha_from_lockin=opts.alpha_source == "lockin",
        gap_channels=gap_channels,
        dtype=fitted.dtype.str,  # type: ignore[union-attr]
        smoothing_points=opts.smoothing_points,
        lockin_smoothing_points=opts.lockin_smoothing_points,
        models=models,
        too_coarse=too_coarse,
    )
    gap_opts = _gap_options(opts, gap_channels)
    size = _chunk_size(total, opts)
    starts = range(0, total, size)

    def work(start: int) -> tuple[SpectrumAnalysis, dict[str, float]]:
        rows = slice(start, min(start + size, total))
        clock = Clock(stage_seconds is not None)
        part = _analyse_chunk(
            the_plan, opts, gap_opts, None if cur2 is None else cur2[rows], None if lia2 is None else lia2[rows], clock
        )
        return part, clock.seconds

    if len(starts) <= 1:  # the live analyser's small batches: no pool, no concatenation
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
