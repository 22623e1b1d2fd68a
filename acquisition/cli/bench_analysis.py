"""``stslive bench analysis``: batch kernels against a per-spectrum loop on a simulated film.

``stslive bench analysis --grid 300x250 --sample 300`` prints spectra/s of both, their ratio, the
CPU time per stage, the accuracy and the peak memory (:mod:`stslive.acquisition.jobs.bench_analysis`).
"""

from __future__ import annotations

import argparse

from stslive.acquisition.cli.common import forward, parse_grid, require_film, say
from stslive.acquisition.jobs.bench_analysis import bench_analysis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench analysis``."""
    parser.add_argument("--grid", default="300x250", metavar="NXxNY", help="pixels (default 300x250)")
    parser.add_argument("--sample", type=int, default=300, help="spectra for the per-spectrum approach (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="film seed (default 0)")
    parser.add_argument("--lockin", action="store_true", help="take Delta from the lock-in channel")
    parser.add_argument("--threads", type=int, default=None, help="analysis threads (default: one per core)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="analyse every block this many times; the median pass counts (default 3)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures."""
    nx, ny = parse_grid(args.grid)
    require_film(nx, ny, option="--grid")
    bench_analysis(nx=nx, ny=ny, log=say, **forward(args, "sample", "seed", "lockin", "threads", "repeat"))
    return 0
