"""``stslive analyse INPUT [INPUT ...] --out DIR [--overwrite] [--dask [ADDRESS]]``: offline analysis.

The command line only: the analysis is :func:`stslive.live.offline.analyse.analyse_inputs` (an
INPUT is an archive, a ``.3ds`` or a folder of them; one input writes into DIR, several into
``DIR/<stem>/`` each plus a campaign summary; DIR holds no earlier analysis unless
``--overwrite`` replaces it). ``--dask`` runs the kernels on a Dask cluster: a LocalCluster here,
or the scheduler at ADDRESS.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stslive.acquisition.cli.common import parse_assignments
from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.live.flag_config import load_flag_config
from stslive.live.kernels import GAP_SOURCES, KernelOptions
from stslive.live.offline.analyse import DEFAULT_BLOCK_BYTES, analyse_inputs, expand_inputs
from stslive.live.offline.report import summary_line
from stslive.live.theory import TheoryConstants

#: ``--dask`` given without an address: start a LocalCluster.
LOCAL_CLUSTER = "local"


def parse_mV_pair(text: str, what: str) -> tuple[float, float]:
    """``"5,30"`` (mV) -> (0.005, 0.030) V."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) * 1e-3 for p in parts)
    except ValueError:
        raise AnalysisError(f"--{what} {text!r}: give LOW,HIGH in mV, e.g. 5,30") from None
    return lo, hi


def _mV_pair(volts: tuple[float, float]) -> str:
    """(0.005, 0.030) V -> ``"5,30"`` (mV), the form :func:`parse_mV_pair` reads."""
    return ",".join(f"{v * 1e3:g}" for v in volts)


def gap_source(args: argparse.Namespace) -> str:
    """``--gap-source``, "current" with ``--no-lockin``; a lock-in asked for and refused is an error."""
    if args.use_lockin:
        return str(args.gap_source)
    if args.gap_source not in ("auto", "current"):
        raise AnalysisError(f"--gap-source {args.gap_source} needs the lock-in that --no-lockin leaves out")
    return "current"


def kernel_options(args: argparse.Namespace) -> KernelOptions:
    """KernelOptions from the command line (``--no-lockin``: Delta and alpha from I(V) only)."""
    return KernelOptions(
        current=args.current,
        lockin=args.lockin,
        gap_source=gap_source(args),
        fit_window_V=parse_mV_pair(args.fit_window, "fit-window"),
        gap_search_V=parse_mV_pair(args.gap_search, "gap-search"),
        smoothing_points=args.smoothing,
        temperature_K=args.temperature_K,
        modulation_Vrms=args.modulation_Vrms,
        alpha_source=args.alpha_source,
        joint_fit_above=0.0 if args.dynes_fit else KernelOptions.joint_fit_above,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="stslive run archive (.h5), Nanonis grid (.3ds) or point spectrum (.dat), or a folder of them "
        "(its .dat files make one input); several inputs write OUT/<stem>/ each and a campaign summary in OUT",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory: new or empty (created if missing); it receives the results only once all succeeded",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier `stslive analyse` in --out (its files only; a folder with other files is refused)",
    )
    parser.add_argument("--config", help="TOML file with a [flags] table of flag thresholds (as `stslive analyser`)")
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
        default=DEFAULT_BLOCK_BYTES / 2**20,
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
        help="take Delta from the lock-in channel when there is one, combined with the current's (default)",
    )
    lockin.add_argument(
        "--no-lockin",
        dest="use_lockin",
        action="store_false",
        help="Delta and alpha from I(V) only; the lock-in channel is ignored",
    )
    # the defaults are the kernels' own, so `stslive analyse` and the live analyser analyse alike
    parser.add_argument(
        "--fit-window",
        default=_mV_pair(KernelOptions.fit_window_V),
        metavar="LOW,HIGH",
        help=f"|V| range of the power-law fit, mV (default: {_mV_pair(KernelOptions.fit_window_V)}, the paper's)",
    )
    parser.add_argument(
        "--gap-search",
        default=_mV_pair(KernelOptions.gap_search_V),
        metavar="LOW,HIGH",
        help="|V| range searched for the map's coherence peaks, mV; its upper end also bounds the in-gap "
        f"samples the noise is measured on (default: {_mV_pair(KernelOptions.gap_search_V)})",
    )
    parser.add_argument(
        "--smoothing",
        type=int,
        default=None,
        metavar="POINTS",
        help="running-mean width of the numerical dI/dV, samples, odd (default: chosen from the current's noise)",
    )
    parser.add_argument(
        "--temperature-K",
        type=float,
        default=None,
        help="sample temperature, K: the peak templates' thermal width (default: the recording's, else 0.3)",
    )
    parser.add_argument(
        "--modulation-Vrms",
        type=float,
        default=None,
        help="lock-in bias modulation, V rms: removed from Delta (default: the recording's, else 0)",
    )
    parser.add_argument(
        "--gap-source",
        choices=GAP_SOURCES,
        default="auto",
        help="channel Delta is fitted on: 'both' combines the lock-in's Delta with the current's by their "
        "standard errors where they agree; 'auto' (default) is 'both' when both channels are there, else the one "
        "there; 'lockin' or 'current' alone",
    )
    parser.add_argument(
        "--alpha-source",
        choices=("current", "lockin"),
        default="current",
        help="channel alpha is fitted on: the current's derivative (default) or the lock-in",
    )
    parser.add_argument(
        "--dynes-fit",
        action="store_true",
        help="fit both peaks jointly (and a Dynes DOS) at every pixel: Dynes maps everywhere, ~6 us more per "
        "spectrum (default: where the per-peak fit needs it)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="theory constant for Eqs. (2), (3): bias_V (0.01), diffusion_m2_s (5e-5), "
        "hbar_omega_D_K (300); repeatable",
    )
    parser.add_argument("--examples", type=int, default=3, help="example spectra in spectra.png (default: 3)")


def run(args: argparse.Namespace) -> int:
    options = kernel_options(args)
    constants = TheoryConstants.from_assignments(parse_assignments(args.set))
    if args.block_mb <= 0 or (args.workers is not None and args.workers < 1):
        raise ConfigError("--block-mb must be > 0 and --workers >= 1")

    def skipped(path: Path) -> None:
        print(f"skipping {path}: an HDF5 file but not an stslive run archive", file=sys.stderr)

    def unsuitable(path: Path, reason: str) -> None:
        print(f"skipping {path}: {reason}", file=sys.stderr)

    analysis = analyse_inputs(
        expand_inputs(args.inputs, on_skip=skipped),
        args.out,
        options=options,
        constants=constants,
        examples=args.examples,
        dask=args.dask is not None,
        address=None if args.dask in (None, LOCAL_CLUSTER) else args.dask,
        workers=args.workers,
        max_block_bytes=int(args.block_mb * 2**20),
        show_progress=sys.stderr.isatty(),
        flag_config=load_flag_config(args.config) if args.config else None,
        overwrite=args.overwrite,
        on_unsuitable=unsuitable,
    )
    for analysed in analysis.runs:
        if damage := analysed.report.get("inputs", {}).get("damage"):
            print(f"warning: {analysed.path}: {damage}; only those pixels were analysed", file=sys.stderr)
        print(f"{analysed.path.name}: {summary_line(analysed.report)}")
        print(f"wrote {analysed.out / 'maps.h5'}, {analysed.out / 'report.json'} and figures")
    if analysis.campaign:
        print("campaign summary: " + ", ".join(os.fspath(p) for p in analysis.campaign))
    return 0
