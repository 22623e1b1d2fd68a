"""``stslive bench analysis``: throughput of the batch kernels against the per-spectrum approach.

Generates a simulated film (``stslive.mocks.film``) block by block, times only the analysis of
each block (generation is reported separately; every block is analysed ``--repeat`` times and the
median full pass counts, the spread is printed), reports the CPU time per analysis stage, and on a
sample of the same spectra times the straightforward per-spectrum analysis (np.gradient +
scipy.signal.find_peaks + scipy.optimize
.curve_fit per polarity) in the same run. Prints spectra/s of both, their ratio, the accuracy of
the batch result against the film's definition truth, and the peak memory (ru_maxrss).

The benchmark imports the simulated film, so it is the one place in ``live`` that needs
``stslive.mocks``; it does so inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import sys
import time

import numpy as np
from scipy.optimize import curve_fit
from scipy.signal import find_peaks

from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions, analyse_spectra, calibrate


def _grid(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"grid {text!r}: give NXxNY, e.g. 300x250")
    return int(match[1]), int(match[2])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stslive bench``."""
    parser.add_argument("what", choices=["analysis"], help="what to benchmark")
    parser.add_argument("--grid", type=_grid, default=(300, 250), help="NXxNY pixels (default 300x250)")
    parser.add_argument("--sample", type=int, default=300, help="spectra for the per-spectrum approach (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="film seed (default 0)")
    parser.add_argument("--lockin", action="store_true", help="take Delta from the lock-in channel")
    parser.add_argument("--threads", type=int, default=None, help="analysis threads (default: one per core)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="analyse every block this many times; the median pass counts (default 3)"
    )


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
        sel = (sign * bias_V >= fit_window_V[0]) & (sign * bias_V <= fit_window_V[1])
        v = sign * bias_V[sel]
        (_b, a), _ = curve_fit(_power, v / fit_window_V[1], g[sel], p0=(float(g[sel].max()), 0.3))
        alphas.append(a)
    return 0.5 * (peaks[0] - peaks[1]), 0.5 * (alphas[0] + alphas[1])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures."""
    from stslive.mocks.film import FilmParams, make_film  # the benchmark's only use of mocks

    if args.sample < 1:
        raise ConfigError("--sample must be >= 1 spectra")
    if args.repeat < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--repeat and --threads must be >= 1")
    nx, ny = args.grid
    film = make_film(FilmParams(ny=ny, nx=nx, seed=args.seed))
    bias = film.bias_V
    options = KernelOptions(
        modulation_Vrms=film.params.modulation_Vrms,
        gap_source="lockin" if args.lockin else "current",
        threads=args.threads,
    )
    stages: dict[str, float] = {}
    passes = np.zeros(args.repeat)  # wall seconds of each full pass over the map
    cpu = 0.0
    delta = np.full((ny, nx), np.nan, np.float32)
    alpha = np.full((ny, nx), np.nan, np.float32)
    sample_I: list[np.ndarray] = []
    t_gen = t_ana = 0.0
    t0 = time.perf_counter()
    for rows, spectra in film.iter_blocks():
        t1 = time.perf_counter()
        t_gen += t1 - t0
        lockin = spectra.lockin_x_A if args.lockin else None
        if not options.calibrated:  # once, on the first block, timed as analysis
            options = calibrate(bias, current=spectra.current_A, lockin=lockin, options=options)
            passes += time.perf_counter() - t1
        for k in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            result = analyse_spectra(
                bias,
                current=spectra.current_A,
                lockin=lockin,
                options=options,
                stage_seconds=stages if k == 0 else None,
            )
            passes[k] += time.perf_counter() - w0
            cpu += (time.process_time() - c0) / args.repeat
        t0 = time.perf_counter()
        delta[rows], alpha[rows] = result.delta_eV, result.alpha
        have = sum(len(s) for s in sample_I)
        if have < args.sample:
            flat = spectra.current_A.reshape(-1, bias.size)
            step = max(1, flat.shape[0] // args.sample)
            sample_I.append(flat[::step][: args.sample - have].copy())
    n = nx * ny
    sample = np.concatenate(sample_I)
    t1 = time.perf_counter()
    for row in sample:
        per_spectrum(bias, row)
    t_loop = time.perf_counter() - t1
    truth_delta, truth_alpha = film.definition_truth()
    t_ana = float(np.median(passes))
    batch_rate = n / t_ana
    loop_rate = len(sample) / t_loop
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    print(
        f"grid {nx}x{ny} = {n} spectra x {bias.size} points, Delta from {options.gap_source}, "
        f"Dynes width of the templates {(options.dynes_width_eV or math.nan) * 1e3:.4f} meV"
    )
    print(f"generation (not timed as analysis): {t_gen:.2f} s")
    print(
        f"batch analysis (threads: {options.threads or 'one per core'}, median of {args.repeat} passes): "
        f"{t_ana:.3f} s = {batch_rate:,.0f} spectra/s (passes {n / passes.max():,.0f}..{n / passes.min():,.0f}/s; "
        f"CPU {cpu:.3f} s = {cpu / n * 1e6:.2f} us/spectrum; valid {np.isfinite(delta).mean():.4f})"
    )
    print("  per stage, CPU us/spectrum: " + ", ".join(f"{k} {v / n * 1e6:.2f}" for k, v in stages.items()))
    print(f"per-spectrum (np.gradient + find_peaks + curve_fit), {len(sample)} spectra: {loop_rate:,.0f} spectra/s")
    print(f"ratio: {batch_rate / loop_rate:.1f}x")
    print(
        f"Delta rms error {np.sqrt(np.nanmean((delta - truth_delta) ** 2)) * 1e3:.4f} meV, "
        f"alpha rms error {np.sqrt(np.nanmean((alpha - truth_alpha) ** 2)):.5f}"
    )
    print(f"peak memory (ru_maxrss): {rss_mb:.0f} MB")
    sys.stdout.flush()
    return 0
