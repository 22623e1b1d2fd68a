"""``stslive bench viewer``: frame rate of the control-room screen fed a stream of results.

``stslive bench viewer --grid 300x250 --rate 1000 --seconds 10`` redraws offscreen unless
``QT_QPA_PLATFORM`` names another platform (:mod:`stslive.acquisition.jobs.bench_viewer`).
"""

from __future__ import annotations

import argparse
import os

from stslive.acquisition.cli.common import parse_grid, require_film, say
from stslive.acquisition.jobs.bench_viewer import bench_viewer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench viewer``."""
    parser.add_argument("--grid", default="300x250", metavar="NXxNY", help="pixels (default 300x250)")
    parser.add_argument("--rate", type=float, default=1000.0, help="pixel results per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration (default 10)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures."""
    nx, ny = parse_grid(args.grid)
    require_film(nx, ny, option="--grid")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts
    bench_viewer(nx=nx, ny=ny, rate=args.rate, seconds=args.seconds, log=say)
    return 0
