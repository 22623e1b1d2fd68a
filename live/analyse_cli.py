"""``stslive analyse INPUT --out DIR``: offline analysis of an archive or a Nanonis ``.3ds``.

Writes ``DIR/maps.h5`` (:meth:`ResultsModel.save_maps_h5`, the issue-2 layout plus the
correlation snapshot), ``DIR/report.json`` (:mod:`stslive.live.report`) and the PNG figures of
:mod:`stslive.live.figures`. Everything goes through :mod:`stslive.live.pipeline`, the code path
the live analyser uses too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stslive.acquisition.inputs import SpectraSource
from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.live import figures
from stslive.live.kernels import KernelOptions, conductance_sign, derivative, prepare_sweep
from stslive.live.pipeline import (
    TheoryConstants, analyse_source, calibrate_source, correlation_snapshot, open_input, uses_lockin,
)
from stslive.live.report import build_report, write_report
from stslive.live.results import ResultsModel


def parse_mV_pair(text: str, what: str) -> tuple[float, float]:
    """``"5,30"`` (mV) -> (0.005, 0.030) V."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) * 1e-3 for p in parts)
    except ValueError:
        raise AnalysisError(f"--{what} {text!r}: give LOW,HIGH in mV, e.g. 5,30") from None
    return lo, hi


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` items -> dict."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise AnalysisError(f"--set {item!r}: give KEY=VALUE, e.g. --set diffusion_m2_s=4e-5")
        out[key.strip()] = value.strip()
    return out


def kernel_options(args: argparse.Namespace) -> KernelOptions:
    """KernelOptions from the command line (``--no-lockin``: Delta and alpha from I(V) only)."""
    return KernelOptions(
        current=args.current, lockin=args.lockin,
        gap_source="auto" if args.use_lockin else "current",
        fit_window_V=parse_mV_pair(args.fit_window, "fit-window"),
        gap_search_V=parse_mV_pair(args.gap_search, "gap-search"),
        smoothing_points=args.smoothing, temperature_K=args.temperature_K,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="stslive run archive (.h5) or Nanonis grid (.3ds)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--current", help="current channel name (default: first 'Current ...' channel)")
    parser.add_argument("--lockin", help="lock-in channel name (default: 'LI Demod n X ...', else 'Input n ...')")
    lockin = parser.add_mutually_exclusive_group()
    lockin.add_argument("--use-lockin", dest="use_lockin", action="store_true", default=True,
                        help="take Delta from the lock-in channel when there is one (default)")
    lockin.add_argument("--no-lockin", dest="use_lockin", action="store_false",
                        help="Delta and alpha from I(V) only; the lock-in channel is ignored")
    parser.add_argument("--fit-window", default="5,30", metavar="LOW,HIGH",
                        help="|V| range of the power-law fit, mV (default: 5,30, the paper's)")
    parser.add_argument("--gap-search", default="0.3,4", metavar="LOW,HIGH",
                        help="|V| range searched for the coherence peaks, mV (default: 0.3,4)")
    parser.add_argument("--smoothing", type=int, default=KernelOptions.smoothing_points, metavar="POINTS",
                        help="running-mean width of the numerical dI/dV, samples, odd (default: 11)")
    parser.add_argument("--temperature-K", type=float, default=KernelOptions.temperature_K,
                        help="sample temperature for the peak templates, K (default: 0.3)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="theory constant for Eqs. (2), (3): bias_V (0.01), diffusion_m2_s (5e-5), "
                             "hbar_omega_D_K (300); repeatable")
    parser.add_argument("--examples", type=int, default=3, help="example spectra in spectra.png (default: 3)")


def _example_pixels(model: ResultsModel, count: int) -> list[tuple[int, int]]:
    """Valid pixels at evenly spaced quantiles of Delta (smallest, median, largest gap for 3)."""
    valid = model.maps["valid"]
    iy, ix = np.nonzero(valid)
    if iy.size == 0 or count < 1:
        return []
    order = np.argsort(model.maps["delta_eV"][iy, ix], kind="stable")
    picks = order[np.unique(np.linspace(0, order.size - 1, min(count, order.size)).round().astype(int))]
    return [(int(iy[k]), int(ix[k])) for k in picks]


def _examples(source: SpectraSource, model: ResultsModel, options: KernelOptions,
              count: int) -> list[figures.ExampleSpectrum]:
    """dI/dV (numerical derivative of I(V), S) of a few pixels with their results."""
    out = []
    for iy, ix in _example_pixels(model, count):
        block = source.read_block(slice(iy, iy + 1))
        bias_raw = block.bias if block.bias.ndim == 1 else block.bias[0, ix]
        channels = [block.current[0, ix]] + ([] if block.lockin is None else [block.lockin[0, ix]])
        bias, current, *lockin = prepare_sweep(bias_raw, *channels)
        current = current * conductance_sign(bias, current)
        didv = derivative(bias, current, points=options.smoothing_points) * 1e9
        if lockin and uses_lockin(options):
            in_amperes = str(source.lockin_channel).endswith("(A)")
            gap_trace = lockin[0] * conductance_sign(bias, lockin[0], kind="didv") * (1e12 if in_amperes else 1.0)
            gap_label = "lock-in X (pA)" if in_amperes else str(source.lockin_channel)
        else:
            gap_trace, gap_label = derivative(bias, current, points=3) * 1e9, "dI/dV, 3-point (nS)"
        m = model.maps
        out.append(figures.ExampleSpectrum(
            iy=iy, ix=ix, bias_V=bias, didv=didv, unit="nS", gap_trace=gap_trace, gap_label=gap_label,
            delta_eV=float(m["delta_eV"][iy, ix]),
            peak_neg_V=float(m["peak_neg_V"][iy, ix]), peak_pos_V=float(m["peak_pos_V"][iy, ix]),
            alpha_pos=float(m["alpha_pos"][iy, ix]), alpha_neg=float(m["alpha_neg"][iy, ix]),
            b_pos=float(m["b_pos"][iy, ix]) * 1e9, b_neg=float(m["b_neg"][iy, ix]) * 1e9,
        ))
    return out


def analyse_to_directory(path: Path, out: Path, *, options: KernelOptions, constants: TheoryConstants,
                         examples: int = 3, show_progress: bool = False) -> dict[str, Any]:
    """The whole ``analyse`` command for one input; returns the report dictionary."""
    t0 = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)  # one template width, recorded in the report
        bar = tqdm(total=int(source.measured.sum()), unit="px", desc=path.name, disable=not show_progress,
                   file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        with bar:
            model = analyse_source(source, options=options, progress=progress)
        dy_dx = (source.pixel_size_m[1], source.pixel_size_m[0])  # geometry gives (dx, dy)
        if int(model.maps["valid"].sum()) >= 3:
            model.set_snapshot(correlation_snapshot(model, pixel_size_m=dy_dx, constants=constants))
        inputs = {
            "file": str(path.resolve()), "format": source.kind, "sweep_signal": source.sweep_signal,
            # the lock-in the analysis used (open_spectra may read one that --no-lockin leaves unused)
            "channels": {"current": source.current_channel,
                         "lockin": source.lockin_channel if uses_lockin(options) else None},
            "available_channels": source.channel_names, "grid": list(source.shape),
            "pixel_size_nm": [dy_dx[0] * 1e9, dy_dx[1] * 1e9], "n_points": source.n_points,
        }
        truth = source.ground_truth
        example_spectra = _examples(source, model, options, examples)
    model.save_maps_h5(out / "maps.h5")
    report = build_report(model, pixel_size_m=dy_dx, inputs=inputs, options=options, constants=constants,
                          elapsed_s=time.perf_counter() - t0, ground_truth=truth)
    _write_figures(out, model, example_spectra, options)
    report["elapsed_s"] = time.perf_counter() - t0  # now including the figures
    write_report(report, out / "report.json")
    return report


def _write_figures(out: Path, model: ResultsModel, examples: list[figures.ExampleSpectrum],
                   options: KernelOptions) -> None:
    valid = model.maps["valid"]
    delta = np.where(valid, model.maps["delta_eV"], np.nan)
    alpha = np.where(valid, model.maps["alpha"], np.nan)
    figures.maps_figure(out / "maps.png", delta_eV=delta, alpha=alpha, pixel_nm=model.pixel_nm,
                        topography_m=model.topography)
    figures.histograms_figure(out / "histograms.png", delta_eV=delta, alpha=alpha)
    if model.snapshot is not None:
        figures.cross_correlation_figure(out / "cross_correlation.png", model.snapshot)
        figures.profiles_figure(out / "correlation_profiles.png", model.snapshot)
    if examples:
        figures.spectra_figure(out / "spectra.png", examples, fit_window_V=options.fit_window_V)


def run(args: argparse.Namespace) -> int:
    options = kernel_options(args)
    constants = TheoryConstants.from_assignments(parse_assignments(args.set))
    report = analyse_to_directory(args.input, args.out, options=options, constants=constants,
                                  examples=args.examples, show_progress=sys.stderr.isatty())

    def fmt(key: str, scale: str = "") -> str:
        value = report.get(key)
        return "n/a" if value is None else f"{value:.4g}{scale}"

    print(f"{report['valid_pixels']} of {report['pixels']} pixels valid; "
          f"Delta {fmt('delta_mean_meV')} +- {fmt('delta_std_meV')} meV, alpha {fmt('alpha_mean')} "
          f"+- {fmt('alpha_std')}; l_Delta {fmt('l_delta_nm')} nm, l_alpha {fmt('l_alpha_nm')} nm, "
          f"rho_cross(0) {fmt('rho_cross_0')}")
    print(f"wrote {args.out / 'maps.h5'}, {args.out / 'report.json'} and figures")
    return 0
