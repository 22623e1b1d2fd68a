"""``stslive bench campaign``: a campaign of simulated maps analysed single-process vs a Dask LocalCluster.

``stslive bench campaign --workdir DIR --repeat 2`` simulates 4 maps of 300 x 250 into DIR (kept
for the next run) and alternates single/dask pairs (:mod:`stslive.acquisition.jobs.bench_campaign`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stslive.acquisition.cli.common import forward, parse_grid, require_film, say
from stslive.acquisition.jobs.bench_campaign import bench_campaign


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench campaign``."""
    parser.add_argument("--grid", default="300x250", help="columns x rows of each map (default: 300x250)")
    parser.add_argument("--maps", type=int, default=4, help="maps in the campaign (default: 4)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default: 2)")
    parser.add_argument("--block-mb", type=float, default=64.0, help="spectra per Dask task, MB (default: 64)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="single/dask pairs, alternated on one cluster so both see the same load (default: 1)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="folder for the simulated archives (kept and reused when the grid matches)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures."""
    nx, ny = parse_grid(args.grid)
    require_film(nx, ny, option="--grid")
    bench_campaign(nx=nx, ny=ny, log=say, **forward(args, "workdir", "maps", "workers", "block_mb", "repeat"))
    return 0
