"""The Dynes width of the peak templates, estimated once per batch (or per map).

One width serves a whole batch: the geometric median of the best-fitting width of the full bank
(:data:`~stslive.live.kernels.templates.DYNES_WIDTHS_EV`) over both peaks of the first spectra.
Callers that analyse a map in pieces estimate it once (:func:`estimate_dynes_width`) and pass it
as ``KernelOptions(dynes_width_eV=...)`` so every piece uses the same templates.
"""

from __future__ import annotations

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.kernels.derivative import derivative, running_mean_into
from stslive.live.kernels.options import KernelOptions
from stslive.live.kernels.peaks import GapGeometry, coarse_peaks, fit_windows, gap_geometry
from stslive.live.kernels.samples import LOCKIN_SMOOTHING_POINTS, WIDTH_SAMPLE
from stslive.live.kernels.sweep import bias_step, conductance_sign, prepare_sweep
from stslive.live.kernels.templates import DYNES_WIDTHS_EV, BankArgs, bank_args, rowwise_matmul, template_bank

__all__ = ["batch_width", "estimate_dynes_width", "estimate_width"]


def estimate_width(
    geometry: GapGeometry, didv: np.ndarray, signal: np.ndarray, *, step: float, bank_args: BankArgs
) -> float:
    """Batch Dynes width, eV: geometric median of the best-fitting width over the searched peaks.

    Parameters
    ----------
    geometry : GapGeometry
        Search geometry of the grid; every searched polarity votes.
    didv : ndarray, (rows, n)
        NaN-free positive conductance for the coarse peaks (a lock-in already smoothed).
    signal : ndarray, (rows, n)
        The signal the templates are fitted to (the current, or the raw lock-in).
    step : float
        Bias step, V.
    bank_args : dict
        :func:`~stslive.live.kernels.templates.bank_args` of the channel.

    Raises
    ------
    AnalysisError
        No polarity covered, or no fit window inside the sweep.
    """
    bank = template_bank(step, **bank_args, widths=DYNES_WIDTHS_EV)
    rows = slice(0, min(WIDTH_SAMPLE, didv.shape[0]))
    windows = np.empty((0, bank.offsets.size), signal.dtype)
    if geometry.searched:
        j, _ = coarse_peaks(geometry.searched, didv[rows])
        every, outside, _ = fit_windows(geometry, signal[rows], j, bank, integrated=bank_args["integrated"])
        windows = every[~outside]
    if windows.shape[0] == 0:
        raise AnalysisError(
            "cannot estimate the Dynes width: no spectrum covers the gap search range; "
            "give KernelOptions(dynes_width_eV=...) or widen the sweep"
        )
    best = np.argmax(rowwise_matmul(windows, bank.vectors), axis=1) // bank.n_shifts
    return float(np.exp(np.median(np.log(np.asarray(DYNES_WIDTHS_EV)[best]))))


def batch_width(
    bias: np.ndarray,
    didv: np.ndarray,
    signal: np.ndarray | None,
    *,
    search_V: tuple[float, float],
    temperature_K: float,
    modulation_Vrms: float,
) -> float:
    """Dynes width (eV) of the templates from rows (n_rows, n) on an ascending float64 grid.

    ``signal`` None: ``didv`` is a lock-in channel (smoothed here for the coarse peaks, fitted
    raw); else ``signal`` is the current ``didv`` was derived from. Rows with a non-finite value
    in the columns the gap search reads are left out.
    """
    step = bias_step(bias)
    geometry = gap_geometry(bias.tobytes(), tuple(search_V), step)
    refit = didv if signal is None else signal
    cols = geometry.columns
    keep = np.isfinite(didv[:, cols]).all(axis=1) & np.isfinite(refit[:, cols]).all(axis=1)
    g, r = didv[keep], refit[keep]
    if signal is None:
        smooth = np.empty_like(g)
        running_mean_into(smooth, g, ((0, g.shape[-1]),), points=LOCKIN_SMOOTHING_POINTS)
        g = smooth
    args = bank_args(temperature_K, modulation_Vrms, integrated=signal is not None)
    return estimate_width(geometry, g, r, step=step, bank_args=args)


def estimate_dynes_width(
    bias_V: np.ndarray,
    *,
    current: np.ndarray | None = None,
    lockin: np.ndarray | None = None,
    options: KernelOptions | None = None,
) -> float:
    """Dynes width (eV) of the peak templates that :func:`~stslive.live.kernels.analyse_spectra` would estimate.

    Uses the first ``options.chunk`` spectra of the channel Delta comes from. Callers that
    analyse a map in pieces (the live analyser, block-wise offline analysis) call this once and
    pass the result as ``KernelOptions(dynes_width_eV=...)`` so all pieces use the same templates.

    Parameters
    ----------
    bias_V : ndarray, (n,)
        Bias sweep, V, either direction.
    current, lockin : ndarray, (..., n), optional
        I(V) (A) and the lock-in channel, either sign.
    options : KernelOptions
    """
    opts = options or KernelOptions()
    from_lockin = opts.gap_from_lockin(lockin_given=lockin is not None)
    chosen = lockin if from_lockin else current
    if chosen is None:
        raise AnalysisError(
            f"gap_source={opts.gap_source!r} needs the {'lock-in' if from_lockin else 'current'} channel"
        )
    bias, signal = prepare_sweep(np.asarray(bias_V, dtype=np.float64), chosen)
    rows = np.asarray(signal).reshape(-1, bias.size)[: opts.chunk]
    common = {
        "search_V": opts.gap_search_V,
        "temperature_K": opts.temperature_K,
        "modulation_Vrms": opts.modulation_Vrms,
    }
    if from_lockin:
        rows = rows * conductance_sign(bias, rows, kind="didv")[:, None].astype(rows.dtype)
        return batch_width(bias, rows, None, **common)  # type: ignore[arg-type]
    rows = rows * conductance_sign(bias, rows)[:, None].astype(rows.dtype)
    return batch_width(bias, derivative(bias, rows, points=opts.smoothing_points), rows, **common)  # type: ignore[arg-type]
