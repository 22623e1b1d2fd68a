"""``stslive bench scan``: per-pixel scan overhead (p50/p99) against the simulated lab.

``stslive bench scan --grid 100x80`` scans a mock lab in a child process at speed 0;
``--in-process`` runs the lab's servers in the scan's process instead; ``--compare`` runs both,
alternating, ``--repeat`` times each (:mod:`stslive.acquisition.jobs.bench_scan`).
"""

from __future__ import annotations

import argparse

from stslive.acquisition.cli.common import forward, parse_grid, require_film, say
from stslive.acquisition.jobs.bench_scan import bench_placements


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench scan``."""
    parser.add_argument("--grid", default="40x30", metavar="NXxNY", help="pixels (default 40x30)")
    parser.add_argument("--points", dest="n_points", type=int, default=1601, help="points per sweep (default 1601)")
    parser.add_argument("--seed", type=int, default=0, help="film seed of the mock lab (default 0)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--in-process",
        action="store_true",
        help="run the mock lab's servers in the scan's process (default: `stslive mock-lab` child)",
    )
    where.add_argument(
        "--compare", action="store_true", help="run both, alternating (separate process first), and report each"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per lab placement (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print p50/p99 overhead for the whole run, its first and last tenth."""
    nx, ny = parse_grid(args.grid, example="100x80")
    require_film(nx, ny, option="--grid")
    placements = (False, True) if args.compare else (bool(args.in_process),)
    bench_placements(nx=nx, ny=ny, placements=placements, log=say, **forward(args, "n_points", "seed", "repeat"))
    return 0
