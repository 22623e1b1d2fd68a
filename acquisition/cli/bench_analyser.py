"""``stslive bench analyser``: live analyser throughput and publish-to-result latency p50/p99.

``stslive bench analyser`` replays 10,000 simulated spectra at full speed and 3,000 at 1,000/s;
``-n 20000 --rate 2000 --latency-n 5000`` changes that (:mod:`stslive.acquisition.jobs.bench_analyser`).
Exit status 1 when a replay lost results.
"""

from __future__ import annotations

import argparse

from stslive.acquisition.cli.common import forward, say
from stslive.acquisition.jobs.bench_analyser import bench_analyser
from stslive.live.analyser import AnalyserSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench analyser``."""
    parser.add_argument("-n", type=int, default=10000, help="spectra replayed at full speed (default 10000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="rate of the latency run, spectra/s (default 1000)")
    parser.add_argument("--latency-n", type=int, default=3000, help="spectra of the latency run (default 3000)")
    batch = AnalyserSettings.batch
    parser.add_argument("--batch", type=int, default=batch, help=f"largest batch the analyser drains (default {batch})")
    parser.add_argument("--in-process", action="store_true", help="publish from this process (shares its GIL)")
    width = "fixed Dynes width; default: the analyser's rule (estimated from the first spectra)"
    parser.add_argument("--dynes-width-meV", type=float, help=width)
    parser.add_argument(
        "--calibrated",
        action="store_true",
        help="calibrate on the film's first spectra before the replays (a run given its calibration: "
        "no provisional results and no re-analysis)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the replays and print the figures; 1 if a replay lost results."""
    options = forward(args, "n", "latency_n", "rate", "batch", "in_process", "dynes_width_meV", "calibrated")
    complete = bench_analyser(log=say, **options)
    return 0 if complete else 1
