"""A map's calibration: its gap, the Dynes width of its peak templates, and the smoothing its noise calls for.

Measured once per map on its first spectra (:func:`calibrate`) and then fixed, so every piece of
the map (a chunk, a live pixel) is analysed with the same templates and the same smoothing:

* the smoothing widths (:func:`~stslive.live.kernels.noise.choose_smoothing`) from the median
  noise of the current and the lock-in and their level at the alpha window's start;
* the gap: the median of the coarse gaps (argmax of the smoothed dI/dV above its background on
  each polarity), then the median gap edge of the template fit at it;
* the Dynes width: the geometric median, over both peaks of the spectra, of the best-fitting
  width among :data:`~stslive.live.kernels.templates.DYNES_WIDTHS_EV` (a free width per
  spectrum trades against the peak position, so one width serves the map); at a step too
  coarse for the peaks, the current's profile likelihood (:func:`profile_width`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.derivative import derivative, running_mean_into
from stslive.live.kernels.gap import (
    COARSE_ITERATIONS,
    GapModel,
    gap_model,
    gap_rows,
    gap_windows,
    model_tables,
    polarity_windows,
    step_too_coarse,
)
from stslive.live.kernels.joint import joint_fit
from stslive.live.kernels.noise import choose_smoothing, coarse_points, measure_noise, noise_triples
from stslive.live.kernels.options import KernelOptions
from stslive.live.kernels.peaks import coarse_peaks, gap_geometry
from stslive.live.kernels.scales import WIDTH_SAMPLE, odd_points
from stslive.live.kernels.sweep import bias_step, conductance_sign, prepare_sweep
from stslive.live.kernels.templates import DYNES_WIDTHS_EV, locate_peaks, rowwise_matmul

__all__ = ["NOMINAL_WIDTH_EV", "calibrate", "estimate_dynes_width", "estimate_width", "profile_width"]

#: The width the templates start from before a map's width is measured, and a map keeps when
#: none of its spectra shows a gap (no template is then used).
NOMINAL_WIDTH_EV = 0.1e-3
#: Most refinements of the map's gap (each with the width at the new gap).
GAP_ITERATIONS = 3
#: A map's gap is calibrated only if the Dynes fit converges on at least this fraction of its
#: first spectra; below, the noise hides the peaks and every pixel is NO_PEAKS (a gap calibrated
#: on noise gave confidently wrong Deltas: 0.9 meV off at 5 pA current noise, I(V) only).
MIN_USABLE = 0.2


def _map_windows(bias: np.ndarray, refit: np.ndarray, model: GapModel) -> np.ndarray | None:
    """(rows, 2, M) windows of ``model`` on NaN-free rows, None when the sweep cannot hold them."""
    win = gap_windows(bias.tobytes(), model)
    if not (win.covered and win.resolvable):
        return None
    return polarity_windows(refit, win, integrated=model.integrated)


def estimate_width(bias: np.ndarray, refit: np.ndarray, noise: np.ndarray, model: GapModel) -> float | None:
    """The one Dynes width (eV) that best fits both peaks of all NaN-free rows together (None: no fit).

    The likelihood of each width among :data:`~stslive.live.kernels.templates.DYNES_WIDTHS_EV`,
    each window's shift marginalised (summed over the shift grid; amplitude and background at
    their best), multiplied over the windows; the best width is refined by a parabola in
    ln(width). Why marginalised: the best shift of a noisy window is chosen by its noise, which a
    narrow template then fits best, so the width of the best shifts drifts narrow as the noise
    grows (a 0.08 meV film gave 0.002 meV at 2 pA); summing over the shifts does not.

    Parameters
    ----------
    noise : ndarray, (rows,)
        rms noise per sample of each row of ``refit``.
    """
    windows = _map_windows(bias, refit, model)
    if windows is None or windows.shape[0] == 0:
        return None
    rows = windows.shape[0]
    sigma = np.repeat(np.asarray(noise, np.float64), 2)
    if not np.isfinite(sigma).all() or np.any(sigma <= 0):
        return None
    bank = model.bank(DYNES_WIDTHS_EV)
    proj = rowwise_matmul(windows.reshape(rows * 2, -1), bank.vectors).astype(np.float64)
    loglike = (proj * proj / (2 * sigma[:, None] ** 2)).reshape(rows * 2, bank.n_widths, bank.n_shifts)
    top = loglike.max(axis=2, keepdims=True)
    marginal = (top[..., 0] + np.log(np.exp(loglike - top).sum(axis=2))).sum(axis=0)
    return _ladder_vertex(np.arange(marginal.size), marginal)


def profile_width(
    bias: np.ndarray, rows: np.ndarray, noise: np.ndarray, model_at: Callable[[float], GapModel]
) -> float | None:
    """The Dynes width (eV) whose joint fits leave the least chi^2 summed over ``rows`` (None: no fit).

    For a step too coarse for the peaks (:func:`~stslive.live.kernels.gap.step_too_coarse`): a
    window then holds one or two samples of a peak, and neither the per-peak templates'
    likelihood (:func:`estimate_width`) nor each spectrum's own Dynes width place the width (on
    the film at 0.4 mV steps the calibration gave 0.12 meV for 0.08). Each row's joint fit
    (:func:`~stslive.live.kernels.joint.joint_fit`, searched over the shift grid) profiles its
    gap, background and offset out; the widths tried are every third of
    :data:`~stslive.live.kernels.templates.DYNES_WIDTHS_EV`, then the neighbours of the best,
    refined by a parabola in ln(width). ``model_at(width)`` is the map's model at a width.
    """
    keep = np.isfinite(rows).all(axis=1) & np.isfinite(noise) & (noise > 0)
    if not keep.any():
        return None
    rows, sigma = rows[keep], noise[keep]
    key = bias.tobytes()
    ladder = np.log(np.asarray(DYNES_WIDTHS_EV))
    chi2: dict[int, np.ndarray] = {}

    def evaluate(k: int) -> None:
        if k in chi2 or not 0 <= k < ladder.size:
            return
        model = model_at(float(np.exp(ladder[k])))
        if not (gap_windows(key, model).covered and model.bank().resolvable):
            chi2[k] = np.full(rows.shape[0], np.nan)
            return
        chi2[k] = joint_fit(rows, None, sigma, model_tables(key, model), iterations=COARSE_ITERATIONS).chi2

    def best() -> tuple[np.ndarray, np.ndarray]:
        ks = np.array(sorted(chi2))
        table = np.stack([chi2[k] for k in ks])
        fitted = np.isfinite(table).all(axis=0)  # the rows fitted at every width tried
        return ks, table[:, fitted].sum(axis=1) if fitted.any() else np.full(ks.size, np.nan)

    for k in range(1, ladder.size, 3):
        evaluate(k)
    while True:  # until the least has both its neighbours on the ladder tried (or is at its end)
        ks, total = best()
        if not np.isfinite(total).any():
            return None
        k = int(ks[np.nanargmin(total)])
        missing = [j for j in (k - 1, k + 1) if 0 <= j < ladder.size and j not in chi2]
        if not missing:
            break
        for j in missing:
            evaluate(j)
    return _ladder_vertex(ks, -total)


def _ladder_vertex(ks: np.ndarray, score: np.ndarray) -> float:
    """The width (eV) of greatest ``score`` over :data:`~stslive.live.kernels.templates.DYNES_WIDTHS_EV`
    indices ``ks`` (ascending), refined by a parabola in ln(width) through it and its neighbours
    when both were scored (at most half a ladder step)."""
    ladder = np.log(np.asarray(DYNES_WIDTHS_EV))
    i = int(np.nanargmax(score))
    k = int(ks[i])
    if 0 < i < ks.size - 1 and ks[i + 1] - ks[i - 1] == 2:
        y0, y1, y2 = score[i - 1], score[i], score[i + 1]
        denom = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
        return float(np.exp(ladder[k] + np.clip(frac, -0.5, 0.5) * (ladder[k + 1] - ladder[k])))
    return float(np.exp(ladder[k]))


def _gap_edge(bias: np.ndarray, refit: np.ndarray, model: GapModel) -> float:
    """Median gap edge (eV) of ``model``'s fit over rows whose two peaks are inside the range (NaN: none)."""
    windows = _map_windows(bias, refit, model)
    if windows is None or windows.shape[0] == 0:
        return float("nan")
    bank = model.bank()
    rows = windows.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = locate_peaks(windows.reshape(rows * 2, -1), bank, np.full(rows * 2, np.nan))
    ok = (~fit.at_edge & (fit.amplitude > 0)).reshape(rows, 2).all(axis=1)
    if not ok.any():
        return float("nan")
    win = gap_windows(bias.tobytes(), model)
    edge = np.asarray(win.origin_V) + bank.shifts[fit.best.reshape(rows, 2) % bank.n_shifts] * model.step_V
    return float(np.median(edge[ok].mean(axis=1)))


def _level(bias: np.ndarray, signal: np.ndarray, window_V: tuple[float, float], *, derive: bool) -> float:
    """Median level of a positive-conductance channel at the alpha window's start (or near the sweep's end)."""
    step = bias_step(bias)
    target = window_V[0] if np.abs(bias).max() >= window_V[0] + 1e-3 else 0.8 * np.abs(bias).max()
    wide = odd_points(1e-3 / step, minimum=3)
    if derive:
        if bias.size < 2 * wide + 2:
            return float("nan")
        values = derivative(bias, signal, points=wide)
    else:
        values = np.empty_like(signal)
        running_mean_into(values, signal, ((0, bias.size),), points=wide)
    levels = []
    for sign in (1.0, -1.0):
        if (sign * bias).max() >= target:
            levels.append(np.nanmedian(values[:, int(np.argmin(np.abs(bias - sign * target)))]))
    return float(min(levels)) if levels else float("nan")


def calibrate(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None = None,
    lockin: np.ndarray | None = None,
    options: KernelOptions | None = None,
) -> KernelOptions:
    """``options`` with every unset calibration field measured on the first ``options.chunk`` spectra.

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Bias sweep, V, either direction.
    current, lockin : ndarray, (..., n), optional
        I(V) (A) and the lock-in channel, either sign.
    options : KernelOptions

    Returns
    -------
    KernelOptions
        With ``smoothing_points``, ``lockin_smoothing_points`` and ``dynes_width_eV`` set (the
        given ones kept). A channel not given leaves its smoothing at the narrowest width; a map
        whose spectra show no searchable gap gets :data:`NOMINAL_WIDTH_EV`.
    """
    opts = options or KernelOptions()
    if opts.calibrated:
        return opts
    if current is None and lockin is None:
        raise AnalysisError("calibration needs a current or a lock-in channel")
    chans = [c for c in (current, lockin) if c is not None]
    bias, *rows = prepare_sweep(np.asarray(bias_V, dtype=np.float64), *chans)
    n = bias.size
    take = min(opts.chunk, WIDTH_SAMPLE)
    cur = np.asarray(rows.pop(0)).reshape(-1, n)[:take] if current is not None else None
    lia = np.asarray(rows.pop(0)).reshape(-1, n)[:take] if lockin is not None else None
    if cur is not None and cur.dtype not in (np.float32, np.float64):
        cur = cur.astype(np.float64)
    if lia is not None and lia.dtype not in (np.float32, np.float64):
        lia = lia.astype(np.float64)
    step = bias_step(bias)
    key = bias.tobytes()
    triples = noise_triples(key, float(opts.gap_search_V[1]))
    if cur is not None:
        cur = cur[np.isfinite(cur).all(axis=1)] * conductance_sign(bias, cur[np.isfinite(cur).all(axis=1)])[:, None]
    if lia is not None:
        keep = np.isfinite(lia).all(axis=1)
        lia = lia[keep] * conductance_sign(bias, lia[keep], kind="didv")[:, None]
    current_noise = float(np.median(measure_noise(cur, triples))) if cur is not None and cur.size else np.nan
    lockin_noise = float(np.median(measure_noise(lia, triples))) if lia is not None and lia.size else np.nan
    conductance = _level(bias, cur, opts.fit_window_V, derive=True) if cur is not None and cur.size else np.nan
    lockin_level = _level(bias, lia, opts.fit_window_V, derive=False) if lia is not None and lia.size else np.nan
    p_current, p_lockin = choose_smoothing(
        step_V=step,
        current_noise=current_noise,
        conductance=conductance,
        lockin_noise=lockin_noise,
        lockin_level=lockin_level,
    )
    opts = dataclasses.replace(
        opts,
        smoothing_points=opts.smoothing_points or p_current,
        lockin_smoothing_points=opts.lockin_smoothing_points or p_lockin,
    )
    if opts.gap_eV is None or opts.dynes_width_eV is None:
        from_lockin = opts.gap_from_lockin(lockin_given=lia is not None)
        gap, width = _gap_and_width(bias, cur, lia, opts, from_lockin=from_lockin)
        opts = dataclasses.replace(
            opts,
            gap_eV=gap if opts.gap_eV is None else opts.gap_eV,
            dynes_width_eV=width if opts.dynes_width_eV is None else opts.dynes_width_eV,
        )
    return opts


def _gap_and_width(
    bias: np.ndarray, cur: np.ndarray | None, lia: np.ndarray | None, opts: KernelOptions, *, from_lockin: bool
) -> tuple[float, float]:
    """The map's gap (eV, NaN: none seen) and Dynes width (eV), on the channel Delta comes from."""
    step = bias_step(bias)
    nothing = (float("nan"), opts.dynes_width_eV or NOMINAL_WIDTH_EV)
    if from_lockin:
        if lia is None or not lia.size:
            return nothing
        points = coarse_points(opts.lockin_smoothing_points or 1, step, minimum=1)
        g2 = np.empty_like(lia)
        running_mean_into(g2, lia, ((0, bias.size),), points=points)
        refit, edge = lia, 0
    else:
        if cur is None or not cur.size:
            return nothing
        points = coarse_points(opts.smoothing_points or 3, step, minimum=3)
        edge = (points + 1) // 2
        g2 = derivative(bias, cur, points=points)
        refit = cur
    geometry = gap_geometry(bias.tobytes(), tuple(opts.gap_search_V), step, edge)
    noise = measure_noise(refit, noise_triples(bias.tobytes(), float(opts.gap_search_V[1])))
    gap = opts.gap_eV
    if gap is None:
        if not geometry.covered:
            return nothing
        j, _ = coarse_peaks(geometry, g2)
        position = geometry.origin_V + (geometry.start + j) * step
        gap = float(np.median(0.5 * (position[:, 0] + position[:, 1])))
    if not np.isfinite(gap):
        return nothing
    if step_too_coarse(step, opts, integrated=not from_lockin) and cur is not None and cur.size:
        return _coarse_gap_and_width(bias, refit, noise, cur, opts, gap, from_lockin=from_lockin)

    def model(gap_eV: float, width_eV: float) -> GapModel:
        return gap_model(step=step, options=opts, integrated=not from_lockin, gap_eV=gap_eV, width_eV=width_eV)

    if not model(gap, opts.dynes_width_eV or NOMINAL_WIDTH_EV).bank().resolvable:
        return gap, opts.dynes_width_eV or NOMINAL_WIDTH_EV  # every pixel BIAS_STEP_TOO_COARSE
    width: float = opts.dynes_width_eV or 0.0
    if opts.dynes_width_eV is None:
        width = estimate_width(bias, refit, noise, model(gap, NOMINAL_WIDTH_EV)) or NOMINAL_WIDTH_EV
    if opts.gap_eV is None:  # the coarse gap sits outside the gap edge: the fit's median edge is the map's
        fitted_edge = _gap_edge(bias, refit, model(gap, width))
        gap = fitted_edge if np.isfinite(fitted_edge) else gap
    # then the Dynes fit of every spectrum (the joint fit of both peaks, width free): its medians
    usable = 0.0
    for _ in range(GAP_ITERATIONS):
        every = dataclasses.replace(opts, joint_fit_above=0.0)  # the Dynes fit of every calibration spectrum
        fitted = gap_rows(
            bias.tobytes(), refit, noise, model=model(gap, width), options=every, dtype=np.dtype(np.float64)
        )
        ok = np.isfinite(fitted.delta_dynes_eV) & np.isfinite(fitted.gamma_dynes_eV)
        usable = float(ok.mean())
        if not ok.any():
            break
        new_gap = float(np.median(fitted.delta_dynes_eV[ok])) if opts.gap_eV is None else gap
        new_width = (
            float(np.exp(np.median(np.log(fitted.gamma_dynes_eV[ok])))) if opts.dynes_width_eV is None else width
        )
        converged = abs(new_gap - gap) < 0.002 * gap and abs(new_width - width) < 0.01 * width
        gap, width = new_gap, new_width
        if converged:
            break
    if opts.gap_eV is None and usable < MIN_USABLE:  # the noise (or the step) hides the peaks: no gap to fit
        return float("nan"), opts.dynes_width_eV or NOMINAL_WIDTH_EV
    return gap, width


def _coarse_gap_and_width(
    bias: np.ndarray,
    refit: np.ndarray,
    noise: np.ndarray,
    cur: np.ndarray,
    opts: KernelOptions,
    gap: float,
    *,
    from_lockin: bool,
) -> tuple[float, float]:
    """:func:`_gap_and_width` at a step too coarse for the peaks, a current given.

    The width is the current's (:func:`profile_width`): I(V) integrates every peak whole, wherever
    it falls between the samples, and its profile over the width is sharp where the lock-in's
    is flat and jagged (films of width 0.08 meV at 0.4 mV steps: the current's gave 0.075-0.077
    on four films, the lock-in's 0.019-0.072 on three). The gap is the median edge of
    the Delta channel's joint fits at that width (each Delta less the drawn peak's offset from
    its edge); the map's gap only centres the shift grid and the window.
    """
    step = bias_step(bias)
    key = bias.tobytes()
    cur_noise = measure_noise(cur, noise_triples(key, float(opts.gap_search_V[1])))

    def model(gap_eV: float, width_eV: float, *, integrated: bool) -> GapModel:
        return gap_model(step=step, options=opts, integrated=integrated, gap_eV=gap_eV, width_eV=width_eV, coarse=True)

    width = opts.dynes_width_eV or NOMINAL_WIDTH_EV
    every = dataclasses.replace(opts, joint_fit_above=0.0)
    usable = 0.0
    for _ in range(GAP_ITERATIONS):
        if opts.dynes_width_eV is None:

            def current_at(w: float, g: float = gap) -> GapModel:
                return model(g, w, integrated=True)

            width = profile_width(bias, cur, cur_noise, current_at) or width
        fit_model = model(gap, width, integrated=not from_lockin)
        if not (gap_windows(key, fit_model).covered and fit_model.bank().resolvable):
            break
        fitted = gap_rows(key, refit, noise, model=fit_model, options=every, dtype=np.dtype(np.float64))
        ok = fitted.reason == 0
        usable = float(ok.mean())
        if not ok.any() or opts.gap_eV is not None:
            break
        tables = model_tables(key, fit_model)
        new_gap = float(np.median(fitted.delta_eV[ok])) - float(tables.x_peak[0, tables.shifts.size // 2])
        converged = abs(new_gap - gap) < 0.002 * gap
        gap = new_gap
        if converged:
            break
    if opts.gap_eV is None and usable < MIN_USABLE:
        return float("nan"), width
    return gap, width


def estimate_dynes_width(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None = None,
    lockin: np.ndarray | None = None,
    options: KernelOptions | None = None,
) -> float:
    """Dynes width (eV) of the peak templates that :func:`~stslive.live.kernels.analyse_spectra` would use.

    :func:`calibrate`'s width (the options' own when set).
    """
    width = calibrate(bias_V, current=current, lockin=lockin, options=options).dynes_width_eV
    assert width is not None
    return float(width)
