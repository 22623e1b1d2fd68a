"""``stslive bench lab``: driver round trips against the simulated instruments, beside a socket baseline.

Contract: :func:`add_arguments` declares the options, :func:`run` measures
(:func:`stslive.acquisition.jobs.bench_lab.run_lab_benchmark`) and prints one row per call with
p50, p99 and p50 as a multiple of the plain-socket baseline measured in the same run.
"""

from __future__ import annotations

import argparse

from stslive.acquisition.jobs.bench_lab import INSTRUMENTS, format_rows, run_lab_benchmark
from stslive.drivers.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench lab``."""
    parser.add_argument(
        "--instruments",
        nargs="+",
        choices=INSTRUMENTS,
        default=list(INSTRUMENTS),
        help="which simulated instruments to time (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per query (default 500)")
    parser.add_argument("--sweeps", type=int, default=100, help="timed BiasSpectr.Start calls (default 100)")
    parser.add_argument("--points", type=int, default=1601, help="points per sweep (default 1601)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated film (default 0)")


def run(args: argparse.Namespace) -> int:
    """Measure and print the table; 0 on success."""
    if args.repeats < 1 or args.sweeps < 1 or args.points < 2:
        raise ConfigError("give --repeats >= 1, --sweeps >= 1 and --points >= 2")
    rows = run_lab_benchmark(
        instruments=tuple(args.instruments),
        repeats=args.repeats,
        sweeps=args.sweeps,
        points=args.points,
        seed=args.seed,
    )
    print(format_rows(rows), flush=True)
    return 0
