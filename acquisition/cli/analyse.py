"""``stslive analyse INPUT [INPUT ...] --out DIR [--dask [ADDRESS]]``: offline analysis of archives and ``.3ds``.

An INPUT is an stslive archive, a Nanonis ``.3ds`` or a folder (every archive and ``.3ds``
directly inside it; other HDF5 files such as an earlier ``maps.h5`` are skipped with a note).
One input file writes into DIR itself; several write into ``DIR/<input stem>/`` each (the file
name with ``_<suffix>`` when two inputs share a stem) and a campaign summary into DIR
(:mod:`stslive.live.offline.campaign`). ``--dask`` runs the kernels on a Dask cluster
(:mod:`stslive.live.offline.dask`): a LocalCluster here, or the scheduler at ADDRESS.

Writes ``DIR/maps.h5`` (:meth:`ResultsModel.save_maps_h5`, the issue-2 layout plus the
correlation snapshot), ``DIR/report.json`` (:mod:`stslive.live.offline.report`) and the PNG figures of
:mod:`stslive.live.offline.figures`. Everything goes through :mod:`stslive.live.pipeline`, the code path
the live analyser uses too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from stslive.acquisition.formats.archive import VERSION_ATTR
from stslive.acquisition.formats.recording import SpectraSource
from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.live.kernels import KernelOptions, conductance_sign, derivative, prepare_sweep
from stslive.live.offline import figures
from stslive.live.offline.campaign import write_campaign
from stslive.live.offline.report import build_report, write_report
from stslive.live.pipeline import analyse_source, calibrate_source, open_input, uses_lockin
from stslive.live.results import ResultsModel
from stslive.live.snapshots import correlation_snapshot
from stslive.live.theory import TheoryConstants

#: ``--dask`` given without an address: start a LocalCluster.
LOCAL_CLUSTER = "local"
#: File suffixes a folder input is searched for (HDF5 ones must also be stslive archives).
INPUT_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".3ds")


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
        current=args.current,
        lockin=args.lockin,
        gap_source="auto" if args.use_lockin else "current",
        fit_window_V=parse_mV_pair(args.fit_window, "fit-window"),
        gap_search_V=parse_mV_pair(args.gap_search, "gap-search"),
        smoothing_points=args.smoothing,
        temperature_K=args.temperature_K,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="stslive run archive (.h5), Nanonis grid (.3ds) or a folder of them; several "
        "inputs write OUT/<stem>/ each and a campaign summary in OUT",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument(
        "--dask",
        nargs="?",
        const=LOCAL_CLUSTER,
        default=None,
        metavar="SCHEDULER_ADDRESS",
        help="run the kernels on Dask: a LocalCluster of worker processes, or the cluster "
        "at SCHEDULER_ADDRESS (tcp://HOST:PORT); needs pip install 'stslive[dask]'",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="LocalCluster worker processes for --dask (default: one per core)"
    )
    parser.add_argument(
        "--block-mb",
        type=float,
        default=64.0,
        help="spectra per Dask task, MB of whole grid rows (default: 64, the row blocks of the "
        "single-process path, which makes both give bit-identical maps)",
    )
    parser.add_argument("--current", help="current channel name (default: first 'Current ...' channel)")
    parser.add_argument("--lockin", help="lock-in channel name (default: 'LI Demod n X ...', else 'Input n ...')")
    lockin = parser.add_mutually_exclusive_group()
    lockin.add_argument(
        "--use-lockin",
        dest="use_lockin",
        action="store_true",
        default=True,
        help="take Delta from the lock-in channel when there is one (default)",
    )
    lockin.add_argument(
        "--no-lockin",
        dest="use_lockin",
        action="store_false",
        help="Delta and alpha from I(V) only; the lock-in channel is ignored",
    )
    parser.add_argument(
        "--fit-window",
        default="5,30",
        metavar="LOW,HIGH",
        help="|V| range of the power-law fit, mV (default: 5,30, the paper's)",
    )
    parser.add_argument(
        "--gap-search",
        default="0.3,4",
        metavar="LOW,HIGH",
        help="|V| range searched for the coherence peaks, mV (default: 0.3,4)",
    )
    parser.add_argument(
        "--smoothing",
        type=int,
        default=KernelOptions.smoothing_points,
        metavar="POINTS",
        help="running-mean width of the numerical dI/dV, samples, odd (default: 11)",
    )
    parser.add_argument(
        "--temperature-K",
        type=float,
        default=KernelOptions.temperature_K,
        help="sample temperature for the peak templates, K (default: 0.3)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="theory constant for Eqs. (2), (3): bias_V (0.01), diffusion_m2_s (5e-5), "
        "hbar_omega_D_K (300); repeatable",
    )
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


def _examples(
    source: SpectraSource, model: ResultsModel, options: KernelOptions, count: int
) -> list[figures.ExampleSpectrum]:
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
        out.append(
            figures.ExampleSpectrum(
                iy=iy,
                ix=ix,
                bias_V=bias,
                didv=didv,
                unit="nS",
                gap_trace=gap_trace,
                gap_label=gap_label,
                delta_eV=float(m["delta_eV"][iy, ix]),
                peak_neg_V=float(m["peak_neg_V"][iy, ix]),
                peak_pos_V=float(m["peak_pos_V"][iy, ix]),
                alpha_pos=float(m["alpha_pos"][iy, ix]),
                alpha_neg=float(m["alpha_neg"][iy, ix]),
                b_pos=float(m["b_pos"][iy, ix]) * 1e9,
                b_neg=float(m["b_neg"][iy, ix]) * 1e9,
            )
        )
    return out


def prepare_out(out: Path) -> None:
    """Create ``out`` (a directory); ConfigError when it is a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)


def analyse_to_directory(
    path: Path,
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int = 3,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The whole ``analyse`` command for one input, in this process; returns the report dictionary."""
    t0 = time.perf_counter()
    prepare_out(out)
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)  # one template width, recorded in the report
        bar = tqdm(
            total=int(source.measured.sum()), unit="px", desc=path.name, disable=not show_progress, file=sys.stderr
        )

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        with bar:
            model = analyse_source(source, options=options, progress=progress)
        return write_outputs(source, model, out, options=options, constants=constants, examples=examples, t0=t0)


def write_outputs(
    source: SpectraSource,
    model: ResultsModel,
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int,
    t0: float,
) -> dict[str, Any]:
    """Correlations, ``maps.h5``, ``report.json`` and figures of an analysed ``source`` into ``out``.

    Shared by the single-process path and the Dask path (:mod:`stslive.live.offline.dask`), so
    both write the same files; ``t0`` is the ``time.perf_counter()`` the analysis started at.
    """
    prepare_out(out)
    dy_dx = (source.pixel_size_m[1], source.pixel_size_m[0])  # geometry gives (dx, dy)
    if int(model.maps["valid"].sum()) >= 3:
        model.set_snapshot(correlation_snapshot(model, pixel_size_m=dy_dx, constants=constants))
    inputs = {
        "file": str(source.path.resolve()),
        "format": source.kind,
        "sweep_signal": source.sweep_signal,
        # the lock-in the analysis used (open_spectra may read one that --no-lockin leaves unused)
        "channels": {
            "current": source.current_channel,
            "lockin": source.lockin_channel if uses_lockin(options) else None,
        },
        "available_channels": source.channel_names,
        "grid": list(source.shape),
        "pixel_size_nm": [dy_dx[0] * 1e9, dy_dx[1] * 1e9],
        "n_points": source.n_points,
    }
    example_spectra = _examples(source, model, options, examples)
    model.save_maps_h5(out / "maps.h5")
    report = build_report(
        model,
        pixel_size_m=dy_dx,
        inputs=inputs,
        options=options,
        constants=constants,
        elapsed_s=time.perf_counter() - t0,
        ground_truth=source.ground_truth,
    )
    _write_figures(out, model, example_spectra, options)
    report["elapsed_s"] = time.perf_counter() - t0  # now including the figures
    write_report(report, out / "report.json")
    return report


def _write_figures(
    out: Path, model: ResultsModel, examples: list[figures.ExampleSpectrum], options: KernelOptions
) -> None:
    valid = model.maps["valid"]
    delta = np.where(valid, model.maps["delta_eV"], np.nan)
    alpha = np.where(valid, model.maps["alpha"], np.nan)
    figures.maps_figure(
        out / "maps.png", delta_eV=delta, alpha=alpha, pixel_nm=model.pixel_nm, topography_m=model.topography
    )
    figures.histograms_figure(out / "histograms.png", delta_eV=delta, alpha=alpha)
    if model.snapshot is not None:
        figures.cross_correlation_figure(out / "cross_correlation.png", model.snapshot)
        figures.profiles_figure(out / "correlation_profiles.png", model.snapshot)
    if examples:
        figures.spectra_figure(out / "spectra.png", examples, fit_window_V=options.fit_window_V)


def _is_archive(path: Path) -> bool:
    """An HDF5 file carrying the stslive archive version attribute (maps.h5 and others do not)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return VERSION_ATTR in f.attrs
    except OSError:
        return True  # a damaged archive is still an input: its analysis reports the damage clearly


def expand_inputs(items: list[Path]) -> list[Path]:
    """Input files from files and folders (a folder: its archives and ``.3ds`` files, sorted by name).

    Raises
    ------
    ConfigError
        A folder holds no input, or a path is given twice.
    """
    files: list[Path] = []
    for item in items:
        if not item.is_dir():
            files.append(item)
            continue
        found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        for skipped in (p for p in found if p.suffix.lower() != ".3ds" and not _is_archive(p)):
            print(f"skipping {skipped}: an HDF5 file but not an stslive run archive", file=sys.stderr)
        picked = [p for p in found if p.suffix.lower() == ".3ds" or _is_archive(p)]
        if not picked:
            raise ConfigError(f"{item} holds no stslive archive or .3ds file; give the files or another folder")
        files.extend(picked)
    seen: set[Path] = set()
    for f in files:
        if f.resolve() in seen:
            raise ConfigError(f"{f} is given twice (directly or through its folder); give each run once")
        seen.add(f.resolve())
    return files


def output_dirs(inputs: list[Path], out: Path) -> list[Path]:
    """``out`` for one input; ``out/<stem>`` per input for several (``<stem>_<suffix>`` when stems repeat)."""
    if len(inputs) == 1:
        return [out]
    stems = [p.stem for p in inputs]
    names = [f"{p.stem}_{p.suffix.lstrip('.')}" if stems.count(p.stem) > 1 else p.stem for p in inputs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"several inputs would write to {out}/{clash[0]}; rename them or analyse them separately")
    return [out / n for n in names]


def _summary(report: dict[str, Any]) -> str:
    def fmt(key: str, scale: str = "") -> str:
        value = report.get(key)
        return "n/a" if value is None else f"{value:.4g}{scale}"

    return (
        f"{report['valid_pixels']} of {report['pixels']} pixels valid; "
        f"Delta {fmt('delta_mean_meV')} +- {fmt('delta_std_meV')} meV, alpha {fmt('alpha_mean')} "
        f"+- {fmt('alpha_std')}; l_Delta {fmt('l_delta_nm')} nm, l_alpha {fmt('l_alpha_nm')} nm, "
        f"rho_cross(0) {fmt('rho_cross_0')}"
    )


def analyse_many_dask(
    inputs: list[Path],
    outs: list[Path],
    *,
    address: str | None,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int,
    workers: int | None = None,
    max_block_bytes: int = 64 * 2**20,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Every input through :func:`stslive.live.offline.dask.analyse_inputs_dask`; reports in input order."""
    from stslive.live.offline.dask import analyse_inputs_dask, dask_client

    for out in outs:
        prepare_out(out)
    t0 = time.perf_counter()
    target = dict(zip(inputs, outs, strict=False))
    reports: dict[Path, dict[str, Any]] = {}
    with dask_client(address, workers=workers) as client:
        bar = tqdm(unit="px", desc="dask", disable=not show_progress, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bar:
            for run in analyse_inputs_dask(
                inputs, client=client, options=options, progress=progress, max_block_bytes=max_block_bytes
            ):
                with open_input(run.path, options=run.options) as source:
                    # elapsed_s of a dask run: from the start of the whole campaign to this run's files
                    reports[run.path] = write_outputs(
                        source,
                        run.model,
                        target[run.path],
                        options=run.options,
                        constants=constants,
                        examples=examples,
                        t0=t0,
                    )
    return [reports[p] for p in inputs]


def run(args: argparse.Namespace) -> int:
    options = kernel_options(args)
    constants = TheoryConstants.from_assignments(parse_assignments(args.set))
    if args.block_mb <= 0 or (args.workers is not None and args.workers < 1):
        raise ConfigError("--block-mb must be > 0 and --workers >= 1")
    inputs = expand_inputs(args.inputs)
    outs = output_dirs(inputs, args.out)
    show = sys.stderr.isatty()
    if args.dask is not None:
        address = None if args.dask == LOCAL_CLUSTER else args.dask
        reports = analyse_many_dask(
            inputs,
            outs,
            address=address,
            options=options,
            constants=constants,
            examples=args.examples,
            workers=args.workers,
            show_progress=show,
            max_block_bytes=int(args.block_mb * 2**20),
        )
    else:
        reports = [
            analyse_to_directory(
                path, out, options=options, constants=constants, examples=args.examples, show_progress=show
            )
            for path, out in zip(inputs, outs, strict=False)
        ]
    for path, out, report in zip(inputs, outs, reports, strict=False):
        print(f"{path.name}: {_summary(report)}")
        print(f"wrote {out / 'maps.h5'}, {out / 'report.json'} and figures")
    if len(inputs) > 1:
        written = write_campaign(
            args.out, [(out.name, path, report) for path, out, report in zip(inputs, outs, reports, strict=False)]
        )
        print("campaign summary: " + ", ".join(os.fspath(p) for p in written))
    return 0
