"""``stslive control``: send one command to a running scan's control socket and print the reply.

Examples::

    stslive control --connect tcp://127.0.0.1:5557 pause
    stslive control --connect tcp://127.0.0.1:5557 remeasure --pixels 3,4 3,5
    stslive control --connect tcp://127.0.0.1:5557 set --setpoint-set 1
    stslive control --connect tcp://127.0.0.1:5557 stop_rule --rule max_relative_width=0.05 --rule action=pause
    stslive control --connect tcp://scanpc:5557 --keys KEYDIR --client alice pause

The reply is printed as one line to read (``status``: state, pixels, failures, rate, time left,
pause reasons; the others: the state they left) or, with ``--json``, as the JSON reply. A refused
command is an error: one line on stderr, exit status 1.

With ``--keys KEYDIR --client NAME`` the command goes over ZeroMQ CURVE with the key pair
``KEYDIR/clients/NAME.key_secret`` to the server whose public key is ``KEYDIR/server.key``
(the layout of ``stslive keys``). The scan answers only keys listed in its ``controllers/``
folder: any other key (a viewer's) gets no reply, reported as a timeout naming authentication.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

from stslive.acquisition.cli.common import client_security, parse_assignments, parse_endpoint
from stslive.acquisition.control import send_command
from stslive.acquisition.progress import RunProgress, progress_line
from stslive.acquisition.state import COMMANDS, CommandRefused
from stslive.acquisition.stop_rule import DEFAULTS
from stslive.drivers.errors import ConfigError, InstrumentTimeout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive control``."""
    parser.add_argument("--connect", default="tcp://127.0.0.1:5557", help="the scan's control endpoint")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    parser.add_argument(
        "--keys",
        metavar="KEYDIR",
        help="CURVE key directory (server.key, clients/NAME.key_secret) for a control socket bound with keys",
    )
    parser.add_argument("--client", metavar="NAME", help="with --keys: this controller's key pair name")
    parser.add_argument(
        "name",
        choices=sorted(COMMANDS),
        metavar="COMMAND",
        help="; ".join(f"{n}: {c.doc}" for n, c in COMMANDS.items()),
    )
    parser.add_argument("--pixels", nargs="+", metavar="IY,IX", help="remeasure: pixels as IY,IX")
    parser.add_argument("--setpoint-set", type=int, metavar="ID", help="set: the set-point set id")
    parser.add_argument("--reason", help="remeasure, abort: why (stored in the archive's run log)")
    parser.add_argument(
        "--rule",
        action="append",
        metavar="KEY=VALUE",
        help="stop_rule: a key of the [stop] table (results, figures as a,b, max_relative_width, action, "
        "min_pixels); repeatable; results= turns the rule off",
    )
    parser.add_argument("--json", action="store_true", help="print the scan's JSON reply instead of a line to read")


def run(args: argparse.Namespace) -> int:
    """Send the command; prints the JSON reply, returns 0 if it was accepted, 1 otherwise."""
    extra: dict[str, Any] = {}
    if args.pixels:
        try:
            extra["pixels"] = [[int(v) for v in p.split(",")] for p in args.pixels]
        except ValueError:
            raise ConfigError(f"--pixels {args.pixels}: give each pixel as IY,IX (integers)") from None
    if args.setpoint_set is not None:
        extra["setpoint_set"] = args.setpoint_set
    if args.reason is not None:
        extra["reason"] = args.reason
    extra.update(rule_values(parse_assignments(args.rule, option="--rule", known=DEFAULTS)))
    endpoint = parse_endpoint(args.connect, example="tcp://127.0.0.1:5557")
    security = client_security(args.keys, args.client)
    try:
        reply = send_command(endpoint, args.name, timeout_s=args.timeout, security=security, **extra)
    except InstrumentTimeout as exc:
        if security is None:
            raise
        # a CURVE server drops a refused handshake silently: the client only sees the silence
        raise InstrumentTimeout(
            "control",
            f"{exc.detail} With keys, no reply also means authentication failed: "
            f"is {args.client!r} a controller key (in {args.keys}/controllers/ on the scan "
            "machine, made with 'stslive keys --role control'), and is server.key the "
            "scan's?",
        ) from None
    if args.json:
        print(json.dumps(reply))
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        raise CommandRefused(f"{args.name} refused by the scan ({reply.get('state')}): {reply.get('error')}")
    print(reply_text(args.name, reply))
    return 0


def rule_values(table: dict[str, str]) -> dict[str, Any]:
    """``--rule`` strings as the [stop] table's types (the scan checks the values)."""
    out: dict[str, Any] = {}
    for key, text in table.items():
        kind = type(DEFAULTS[key])
        try:
            out[key] = [f.strip() for f in text.split(",") if f.strip()] if kind is list else kind(text)
        except ValueError:
            raise ConfigError(f"--rule {key}={text!r}: give a {kind.__name__}") from None
    return out


def reply_text(command: str, reply: dict[str, Any]) -> str:
    """One line to read for a scan's reply: the state it is in, and for ``status`` its progress."""
    reasons = reply.get("pause_reasons") or []
    state = f"{reply.get('state', '?')}" + (f" ({', '.join(reasons)})" if reasons else "")
    ended = f"; it ends: {reply['reason']}" if reply.get("reason") else ""
    progress = reply.get("progress")
    if command != "status" or not isinstance(progress, dict):
        return f"{command} accepted; the scan is {state}{ended}"
    known = {f.name for f in dataclasses.fields(RunProgress) if f.init}
    figures = {k: v for k, v in progress.items() if k in known}
    figures["rate_px_s"] = math.nan if figures.get("rate_px_s") is None else figures["rate_px_s"]
    figures["pause_reasons"] = tuple(figures.get("pause_reasons") or ())
    queued = reply.get("remeasure_queued") or 0
    more = f", {queued} re-measures queued" if queued else ""
    rule = reply.get("stop_rule") or {}
    if rule.get("results"):
        verdict = (rule.get("verdict") or {}).get("reason") or f"following {rule['results']}, no snapshot yet"
        more += f"; {verdict}"
    return f"scan: {progress_line(RunProgress(**figures))}; active set {reply.get('active_set')}{more}{ended}"
