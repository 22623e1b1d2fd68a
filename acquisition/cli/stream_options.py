"""Options shared by the commands that publish a run stream from a file (``stslive replay``, ``stslive watch``).

``add_stream_arguments`` adds the endpoints and the wait for subscribers (read back, checked, with
``stream_endpoints``); ``add_setpoint_arguments``
what a Nanonis file may lack (its set-point) or leave open (how ``Lock-in>Amplitude`` is meant),
read back with ``parse_setpoint`` and ``args.lockin_amplitude``.
"""

from __future__ import annotations

import argparse

from stslive.acquisition.cli.common import parse_endpoint
from stslive.acquisition.formats.conditions import AMPLITUDE_CONVENTIONS
from stslive.drivers.errors import ConfigError


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bind``, ``--push``, ``--wait-subscribers``, ``--wait-timeout``, ``--header-format``."""
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5556",
        metavar="ENDPOINT",
        help="PUB endpoint (default tcp://127.0.0.1:5556; port 0 picks a free one)",
    )
    parser.add_argument(
        "--push", default=None, metavar="ENDPOINT", help="also a PUSH endpoint for one lossless consumer"
    )
    parser.add_argument(
        "--wait-subscribers",
        type=int,
        default=None,
        metavar="N",
        help="wait for N subscribers before each run (default 1, or 0 with --push; a SUB that joins late "
        "misses the start; 0 sends at once)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="give up waiting for subscribers after S seconds (default 60)",
    )
    parser.add_argument("--header-format", choices=("json", "msgpack"), default="json", help="stream header encoding")


def stream_endpoints(args: argparse.Namespace) -> tuple[str, str | None, int]:
    """The checked ``--bind`` and ``--push`` endpoints and the subscribers to wait for.

    Raises
    ------
    ConfigError
        An endpoint that is not one, or a negative ``--wait-subscribers``.
    """
    wait = (0 if args.push else 1) if args.wait_subscribers is None else args.wait_subscribers
    if wait < 0:
        raise ConfigError(f"--wait-subscribers must be >= 0, got {wait}")
    bind = parse_endpoint(args.bind, option="--bind", example="tcp://127.0.0.1:5556")
    push = None if args.push is None else parse_endpoint(args.push, option="--push", example="tcp://127.0.0.1:5558")
    return bind, push, wait


def add_setpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--setpoint`` and ``--lockin-amplitude`` for Nanonis files."""
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


def parse_setpoint(text: str | None) -> tuple[float, float] | None:
    """``"0.01,1e-10"`` -> (0.01, 1e-10): bias (V) and current (A) of the set-point."""
    if text is None:
        return None
    try:
        bias, current = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--setpoint {text!r}: give BIAS_V,CURRENT_A in volts and amperes, e.g. 0.01,1e-10") from None
    return bias, current
