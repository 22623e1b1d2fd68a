"""``stslive watch FILE.3ds``: follow a grid the Nanonis controller is writing and publish it live.

Labs that run the map with Nanonis' own Grid Spectroscopy point this at the file the controller
writes; the analyser and the screen then follow it as they follow a scan
(:func:`stslive.acquisition.watch.watch`). On start the bound endpoints are printed, one
``name endpoint`` line each (``stream``, ``push``), as ``stslive replay`` does; the watch ends
when the grid is complete, on Ctrl-C, or after ``--idle-timeout`` without a new point, with one
summary line.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from stslive.acquisition.formats.conditions import AMPLITUDE_CONVENTIONS
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.watch import watch
from stslive.drivers.errors import ConfigError


def parse_setpoint(text: str | None) -> tuple[float, float] | None:
    """``"0.01,1e-10"`` -> (0.01, 1e-10): bias (V) and current (A) of the set-point."""
    if text is None:
        return None
    try:
        bias, current = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--setpoint {text!r}: give BIAS_V,CURRENT_A in volts and amperes, e.g. 0.01,1e-10") from None
    return bias, current


def add_setpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--setpoint`` and ``--lockin-amplitude`` for Nanonis files (shared with ``stslive replay``)."""
    parser.add_argument(
        "--setpoint",
        metavar="BIAS_V,CURRENT_A",
        help="tunnelling set-point of a Nanonis file whose header does not record it (volts, amperes)",
    )
    parser.add_argument(
        "--lockin-amplitude",
        choices=AMPLITUDE_CONVENTIONS,
        default=None,
        help="how the Nanonis header's Lock-in>Amplitude is meant (zero-to-peak or rms); "
        "Nanonis does not say, so without this the modulation is unknown",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive watch``."""
    parser.add_argument("input", type=Path, metavar="FILE.3ds", help="the grid file the controller is writing")
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5556",
        metavar="ENDPOINT",
        help="PUB endpoint (default tcp://127.0.0.1:5556; port 0 picks a free one)",
    )
    parser.add_argument(
        "--push", default=None, metavar="ENDPOINT", help="also a PUSH endpoint for one lossless consumer"
    )
    parser.add_argument("--poll", type=float, default=0.5, metavar="S", help="seconds between looks (default 0.5)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="end the run when no point was appended for S seconds (default: wait until complete or Ctrl-C)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up when the header and first point are not written within S seconds (default: wait)",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="wait for N subscribers before following the file (a SUB that joins late misses the start)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up waiting for subscribers after S seconds (default 60)",
    )
    add_setpoint_arguments(parser)
    parser.add_argument("--header-format", choices=("json", "msgpack"), default="json", help="stream header encoding")


def run(args: argparse.Namespace) -> int:
    """Watch until the grid is complete (0), or Ctrl-C / idle timeout (0, the run stopped with abort)."""
    if args.wait_subscribers < 0:
        raise ConfigError(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    setpoint = parse_setpoint(args.setpoint)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C ends the run cleanly
    try:
        with RunPublisher(args.bind, push_endpoint=args.push, header_format=args.header_format) as publisher:
            for name, endpoint in (("stream", publisher.pub_endpoint), ("push", publisher.push_endpoint)):
                if endpoint:
                    print(f"{name} {endpoint}", flush=True)
            if args.wait_subscribers:
                publisher.wait_for_subscribers(args.wait_subscribers, timeout_s=args.wait_timeout)
            done = watch(
                args.input,
                publisher,
                poll_s=args.poll,
                idle_timeout_s=args.idle_timeout,
                start_timeout_s=args.start_timeout,
                setpoint=setpoint,
                amplitude_convention=args.lockin_amplitude,
                stop=stop,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if done is None:
        print(f"stopped before {args.input} had a point to publish", flush=True)
        return 0
    print(
        f"watched {done.counts.get('event', 0)} points of {args.input} (run {done.run_uid}, {done.exit_status}: "
        f"{done.reason})",
        flush=True,
    )
    return 0
