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

from stslive.acquisition.cli.stream_options import (
    add_setpoint_arguments,
    add_stream_arguments,
    parse_setpoint,
    stream_endpoints,
)
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.watch import watch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive watch``."""
    parser.add_argument("input", type=Path, metavar="FILE.3ds", help="the grid file the controller is writing")
    add_stream_arguments(parser)
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
    add_setpoint_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Watch until the grid is complete (0), or Ctrl-C / idle timeout (0, the run stopped with abort)."""
    bind, push, wait = stream_endpoints(args)
    setpoint = parse_setpoint(args.setpoint)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C ends the run cleanly
    try:
        with RunPublisher(bind, push_endpoint=push, header_format=args.header_format) as publisher:
            for name, endpoint in (("stream", publisher.pub_endpoint), ("push", publisher.push_endpoint)):
                if endpoint:
                    print(f"{name} {endpoint}", flush=True)
            if wait:
                publisher.wait_for_subscribers(wait, timeout_s=args.wait_timeout)
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
