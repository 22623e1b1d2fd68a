"""``stslive replay``: publish an archive or a Nanonis ``.3ds`` as a run stream (see ``replay``).

``stslive replay RUN.h5 --rate 200`` waits (up to ``--wait-timeout``) for one consumer (the
analyser or the viewer), then sends the run at 200 pixels/s. On start the bound endpoints are
printed, one ``name endpoint`` line each (``stream``, ``push``), as ``stslive scan`` does; at the
end one summary line per run. A run that nobody received (no subscriber left at its end, no PUSH
peer) is an error, not a success: with ``--loop`` a warning, and the replay goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from stslive.acquisition.cli import EXIT_ABORTED
from stslive.acquisition.cli.stream_options import (
    add_setpoint_arguments,
    add_stream_arguments,
    parse_setpoint,
    stream_endpoints,
)
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.replay import open_replay, replay
from stslive.drivers.errors import StreamError


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
    """Replay once (or until interrupted with ``--loop``); returns 0, or 3 if the recorded run ended in abort/fail.

    Raises
    ------
    StreamError
        Nobody subscribed within ``--wait-timeout``, or nobody received the run.
    """
    bind, push, wait = stream_endpoints(args)
    with open_replay(
        args.input, setpoint=parse_setpoint(args.setpoint), amplitude_convention=args.lockin_amplitude
    ) as source:
        publisher = RunPublisher(bind, push_endpoint=push, header_format=args.header_format)
        try:
            for name, endpoint in (("stream", publisher.pub_endpoint), ("push", publisher.push_endpoint)):
                if endpoint:
                    print(f"{name} {endpoint}", flush=True)
            while True:
                if wait:
                    publisher.wait_for_subscribers(wait, timeout_s=args.wait_timeout)
                t0 = time.monotonic()
                stop = replay(source, publisher, rate=args.rate, as_recorded=args.as_recorded)
                print(
                    f"replayed {stop.counts.get('event', 0)} events, {stop.counts.get('failed', 0)} failed pixels "
                    f"of {source.path} in {time.monotonic() - t0:.2f} s (run {stop.run_uid}, {stop.exit_status})",
                    flush=True,
                )
                unheard = _nobody_received(publisher)
                if unheard and args.loop:
                    print(f"stslive replay: warning: {unheard}", file=sys.stderr, flush=True)
                elif unheard:
                    raise StreamError(unheard)
                if not args.loop:
                    return 0 if stop.exit_status == "success" else EXIT_ABORTED
        finally:
            publisher.close()


def _nobody_received(publisher: RunPublisher) -> str:
    """Why nobody received the run just sent ('' when someone did): no subscriber, no PUSH peer."""
    if publisher.push_endpoint is not None and publisher.flush(timeout_s=1.0):
        return ""  # the PUSH peer took every message
    if publisher.pub_endpoint is not None:
        try:
            publisher.wait_for_subscribers(1, timeout_s=0.0)
            return ""
        except StreamError:
            pass
    return (
        f"nobody received the run: no subscriber on {publisher.pub_endpoint}"
        + (f" and no PUSH peer on {publisher.push_endpoint}" if publisher.push_endpoint else "")
        + "; start the analyser or the viewer first (replay waits --wait-timeout for it)"
    )
