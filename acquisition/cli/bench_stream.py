"""``stslive bench stream``: the run stream's throughput, latency and HWM losses beside raw pyzmq.

    stslive bench stream [--events N] [--latency-events N] [--rate HZ] [--points N] [--busy S]

The work is :func:`stslive.acquisition.jobs.bench_stream.run_benchmark`; this module only reads
the command line.
"""

from __future__ import annotations

import argparse

from stslive.acquisition.formats.codec import HEADER_FORMATS, HeaderFormat
from stslive.acquisition.jobs.bench_stream import run_benchmark


def _positive(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"need at least 2, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench stream``."""
    parser.add_argument("--events", type=_positive, default=20_000, help="events per burst (default 20000)")
    parser.add_argument(
        "--latency-events", type=int, default=5_000, help="events per latency run; 0 skips them (default 5000)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="latency runs' rate, msg/s (default 1000)")
    parser.add_argument("--channels", type=int, default=3, help="channels per event (default 3)")
    parser.add_argument("--points", type=int, default=1601, help="points per channel (default 1601)")
    parser.add_argument(
        "--formats", choices=["json", "msgpack", "both"], default="both", help="stslive header format (default both)"
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=5.0,
        help="consumer pause during the HWM bursts, s; 0 skips them (default 5)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its table; 1 if the no-drop PUSH/PULL path lost an event."""
    formats: tuple[HeaderFormat, ...] = HEADER_FORMATS if args.formats == "both" else (args.formats,)
    results = run_benchmark(
        events=args.events,
        latency_events=args.latency_events,
        rate_hz=args.rate,
        n_channels=args.channels,
        n_points=args.points,
        formats=formats,
        busy_s=args.busy,
    )
    lost = [r for r in results if r.case.sender == "stslive" and r.case.mode == "pull" and r.lost]
    return 1 if lost else 0
