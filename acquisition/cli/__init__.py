"""The ``stslive`` console script: one entry point, one subcommand per module of this package.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; :data:`COMMANDS` names it and is the only thing this module knows of it.
Modules are imported only when their subcommand runs, so ``stslive view`` on a viewing machine
never imports the instrument drivers, and ``stslive --help`` starts at once. An error stslive
raises on purpose (:class:`~stslive.drivers.errors.StsliveError`) ends the command with one line
on stderr and exit status 1. This package is the only place argparse is used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from stslive.acquisition.formats.version import software_version
from stslive.drivers.errors import StsliveError

# name -> (module, one-line help). Keep sorted by the order a user meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    "instruments": (
        "stslive.acquisition.cli.instruments",
        "connect to the STM, lock-in and thermometer; print identity and settings",
    ),
    "mock-lab": ("stslive.acquisition.cli.mocklab", "run the simulated Nanonis, SR830 and LakeShore 372 on TCP ports"),
    "scan": (
        "stslive.acquisition.cli.scan",
        "run a grid/line/point scan from a TOML config (--config RUN.toml --out RUN.h5) or --resume RUN.h5",
    ),
    "control": (
        "stslive.acquisition.cli.control",
        "send pause/resume/abort/remeasure/set/status to a running scan's control socket",
    ),
    "keys": (
        "stslive.acquisition.cli.keys",
        "create ZeroMQ CURVE key pairs (server, viewer/control clients) for binding beyond loopback",
    ),
    "simulate": (
        "stslive.acquisition.cli.simulate",
        "write a run archive of a simulated NbN film scan (ground truth inside)",
    ),
    "analyse": ("stslive.acquisition.cli.analyse", "analyse an archive or .3ds: maps.h5, report.json and figures"),
    "theory": (
        "stslive.acquisition.cli.theory",
        "theory quantities of the paper from its inputs or yours, beside its quoted values",
    ),
    "bench": (
        "stslive.acquisition.cli.bench",
        "run a benchmark: stslive bench --help lists them, stslive bench NAME --help their options",
    ),
    "view": (
        "stslive.acquisition.cli.view",
        "control-room screen: Delta/alpha maps, spectra, status, flags (file or live stream)",
    ),
    "analyser": (
        "stslive.acquisition.cli.analyser",
        "follow a run stream: per-pixel Delta, alpha, flags, correlations; publish and save them",
    ),
    "replay": (
        "stslive.acquisition.cli.replay",
        "publish an archive or a Nanonis .3ds/.dat as a run stream (--rate N/s or --as-recorded)",
    ),
    "watch": (
        "stslive.acquisition.cli.watch",
        "follow a Nanonis .3ds grid while the controller writes it and publish each point as a run stream",
    ),
    "soak": (
        "stslive.acquisition.cli.soak",
        "fault soak: a long simulated run with instrument faults and killed processes, checked end to end",
    ),
    "demo": (
        "stslive.acquisition.cli.demo",
        "the main job in mock mode: simulated lab, scan, live analyser and screen (--headless: files in --out)",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``selected`` gets its full set of arguments (lazy import)."""
    parser = argparse.ArgumentParser(
        prog="stslive",
        description="Instrument software for low-temperature STM spectroscopy maps.",
    )
    parser.add_argument("--version", action="version", version=f"stslive {software_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except StsliveError as exc:  # a clear message, not a traceback, for every error we raise on purpose
        print(f"stslive {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stslive {args.command}: interrupted", file=sys.stderr)
        return 130
