"""Throughput of the batch kernels against the per-spectrum approach (``stslive bench analysis``).

:func:`bench_analysis` generates a simulated film block by block and times only the analysis of
each block (every block is analysed ``repeat`` times; the median full pass counts, the spread is
shown), with the CPU time per analysis stage; on a sample of the same spectra it times the
straightforward per-spectrum analysis (:func:`per_spectrum`) in the same run. It reports
spectra/s of both, their ratio, the accuracy against the film's definition truth and the peak
memory (ru_maxrss).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Callable

import numpy as np
from scipy.optimize import curve_fit
from scipy.signal import find_peaks

from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions, analyse_spectra, estimate_dynes_width
from stslive.mocks.film import FilmParams, make_film


def _power(v: np.ndarray, b: float, a: float) -> np.ndarray:
    return b * v**a


def per_spectrum(
    bias_V: np.ndarray,
    current_A: np.ndarray,
    *,
    fit_window_V: tuple[float, float] = (5e-3, 30e-3),
    search_V: tuple[float, float] = (0.3e-3, 4e-3),
) -> tuple[float, float]:
    """The straightforward analysis of one spectrum (the baseline): returns (Delta eV, alpha).

    dI/dV by np.gradient; the highest find_peaks maximum in the search range on each polarity;
    curve_fit of b |V|^alpha on each polarity of the fit window; alpha = mean.
    """
    g = np.gradient(current_A.astype(np.float64), bias_V)
    g *= np.sign(np.median(g))
    peaks = []
    for sign in (1.0, -1.0):
        sel = np.flatnonzero((sign * bias_V >= search_V[0]) & (sign * bias_V <= search_V[1]))
        found, props = find_peaks(g[sel], height=0)
        peaks.append(bias_V[sel[found[np.argmax(props["peak_heights"])]]] if found.size else np.nan)
    alphas = []
    for sign in (1.0, -1.0):
        window = (sign * bias_V >= fit_window_V[0]) & (sign * bias_V <= fit_window_V[1])
        v = sign * bias_V[window]
        (_b, a), _ = curve_fit(_power, v / fit_window_V[1], g[window], p0=(float(g[window].max()), 0.3))
        alphas.append(a)
    return 0.5 * (peaks[0] - peaks[1]), 0.5 * (alphas[0] + alphas[1])


def bench_analysis(
    *,
    nx: int,
    ny: int,
    sample: int = 300,
    seed: int = 0,
    lockin: bool = False,
    threads: int | None = None,
    repeat: int = 3,
    log: Callable[[str], None] = print,
) -> None:
    """Time the batch analysis of an ``nx`` x ``ny`` film against the per-spectrum loop; log the figures.

    Parameters
    ----------
    nx, ny
        Film size (pixels).
    sample
        Spectra analysed one by one for the baseline.
    seed
        Film seed.
    lockin
        Take Delta from the lock-in channel (default: from I(V)).
    threads
        Kernel threads (None: one per core).
    repeat
        Passes over every block; the median pass counts.
    log
        Receives each line of the report.

    Raises
    ------
    ConfigError
        ``sample``, ``repeat`` or ``threads`` below 1.
    """
    if sample < 1:
        raise ConfigError("--sample must be >= 1 spectra")
    if repeat < 1 or (threads is not None and threads < 1):
        raise ConfigError("--repeat and --threads must be >= 1")
    film = make_film(FilmParams(ny=ny, nx=nx, seed=seed))
    bias = film.bias_V
    options = KernelOptions(
        modulation_Vrms=film.params.modulation_Vrms,
        gap_source="lockin" if lockin else "current",
        threads=threads,
    )
    stages: dict[str, float] = {}
    passes = np.zeros(repeat)  # wall seconds of each full pass over the map
    cpu = 0.0
    delta = np.full((ny, nx), np.nan, np.float32)
    alpha = np.full((ny, nx), np.nan, np.float32)
    picked: list[np.ndarray] = []
    t_gen = t_ana = 0.0
    width_eV: float | None = None
    t0 = time.perf_counter()
    for rows, spectra in film.iter_blocks():
        t1 = time.perf_counter()
        t_gen += t1 - t0
        lockin_A = spectra.lockin_x_A if lockin else None
        if width_eV is None:  # once, on the first block, timed as analysis
            width_eV = estimate_dynes_width(bias, current=spectra.current_A, lockin=lockin_A, options=options)
            options = dataclasses.replace(options, dynes_width_eV=width_eV)
            passes += time.perf_counter() - t1
        for k in range(repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            result = analyse_spectra(
                bias,
                current=spectra.current_A,
                lockin=lockin_A,
                options=options,
                stage_seconds=stages if k == 0 else None,
            )
            passes[k] += time.perf_counter() - w0
            cpu += (time.process_time() - c0) / repeat
        t0 = time.perf_counter()
        delta[rows], alpha[rows] = result.delta_eV, result.alpha
        have = sum(len(s) for s in picked)
        if have < sample:
            flat = spectra.current_A.reshape(-1, bias.size)
            step = max(1, flat.shape[0] // sample)
            picked.append(flat[::step][: sample - have].copy())
    n = nx * ny
    baseline_spectra = np.concatenate(picked)
    t1 = time.perf_counter()
    for row in baseline_spectra:
        per_spectrum(bias, row)
    t_loop = time.perf_counter() - t1
    truth_delta, truth_alpha = film.definition_truth()
    t_ana = float(np.median(passes))
    batch_rate = n / t_ana
    loop_rate = len(baseline_spectra) / t_loop
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    log(
        f"grid {nx}x{ny} = {n} spectra x {bias.size} points, Delta from {options.gap_source}, "
        f"Dynes width of the templates {(width_eV or math.nan) * 1e3:.4f} meV"
    )
    log(f"generation (not timed as analysis): {t_gen:.2f} s")
    log(
        f"batch analysis (threads: {options.threads or 'one per core'}, median of {repeat} passes): "
        f"{t_ana:.3f} s = {batch_rate:,.0f} spectra/s (passes {n / passes.max():,.0f}..{n / passes.min():,.0f}/s; "
        f"CPU {cpu:.3f} s = {cpu / n * 1e6:.2f} us/spectrum; valid {np.isfinite(delta).mean():.4f})"
    )
    log("  per stage, CPU us/spectrum: " + ", ".join(f"{k} {v / n * 1e6:.2f}" for k, v in stages.items()))
    log(
        f"per-spectrum (np.gradient + find_peaks + curve_fit), {len(baseline_spectra)} spectra: "
        f"{loop_rate:,.0f} spectra/s"
    )
    log(f"ratio: {batch_rate / loop_rate:.1f}x")
    log(
        f"Delta rms error {np.sqrt(np.nanmean((delta - truth_delta) ** 2)) * 1e3:.4f} meV, "
        f"alpha rms error {np.sqrt(np.nanmean((alpha - truth_alpha) ** 2)):.5f}"
    )
    log(f"peak memory (ru_maxrss): {rss_mb:.0f} MB")
