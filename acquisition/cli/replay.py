"""``stslive replay``: publish an archive or a Nanonis ``.3ds`` as a run stream (see ``replay``).

``stslive replay RUN.h5 --rate 200 --wait-subscribers 1`` waits for one consumer (the analyser
or the viewer), then sends the run at 200 pixels/s. On start the bound endpoints are printed,
one ``name endpoint`` line each (``stream``, ``push``), as ``stslive scan`` does; at the end one
summary line per run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stslive.acquisition.cli.stream_options import add_setpoint_arguments, add_stream_arguments, parse_setpoint
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.replay import open_replay, replay
from stslive.drivers.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive replay``."""
    parser.add_argument(
        "input", type=Path, metavar="INPUT", help="stslive archive (.h5), Nanonis grid (.3ds), .dat or folder of .dat"
    )
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="N", help="pixels per second (default: as fast as possible)")
    pace.add_argument(
        "--as-recorded",
        action="store_true",
        help="reproduce the recorded timing (archives only: a .3ds has no per-pixel times)",
    )
    add_stream_arguments(parser)
    parser.add_argument(
        "--loop", action="store_true", help="replay again and again (a new run uid each time) until Ctrl-C"
    )
    add_setpoint_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Replay once (or until interrupted with ``--loop``); returns 0, or 3 if the recorded run ended in abort/fail."""
    if args.wait_subscribers < 0:
        raise ConfigError(f"--wait-subscribers must be >= 0, got {args.wait_subscribers}")
    with open_replay(
        args.input, setpoint=parse_setpoint(args.setpoint), amplitude_convention=args.lockin_amplitude
    ) as source:
        publisher = RunPublisher(args.bind, push_endpoint=args.push, header_format=args.header_format)
        try:
            for name, endpoint in (("stream", publisher.pub_endpoint), ("push", publisher.push_endpoint)):
                if endpoint:
                    print(f"{name} {endpoint}", flush=True)
            while True:
                if args.wait_subscribers:
                    publisher.wait_for_subscribers(args.wait_subscribers, timeout_s=args.wait_timeout)
                t0 = time.monotonic()
                stop = replay(source, publisher, rate=args.rate, as_recorded=args.as_recorded)
                print(
                    f"replayed {stop.counts.get('event', 0)} events, {stop.counts.get('failed', 0)} failed pixels "
                    f"of {source.path} in {time.monotonic() - t0:.2f} s (run {stop.run_uid}, {stop.exit_status})",
                    flush=True,
                )
                if not args.loop:
                    return 0 if stop.exit_status == "success" else 3
        finally:
            publisher.close()
