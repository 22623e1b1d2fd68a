"""The ``stslive`` console script: one entry point, one subcommand per module of this package.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; :data:`COMMANDS` names it and is the only thing this module knows of it.
Modules are imported only when their subcommand runs, so ``stslive view`` on a viewing machine
never imports the instrument drivers, and ``stslive --help`` starts at once. This package is the
only place argparse is used.

:func:`main` is the one error boundary of every command: an error is one line on stderr,
``stslive COMMAND: error: ...``, and an exit status from :data:`EXIT_CODES`, never a traceback
(``--debug``, anywhere on the command line, prints it as well).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

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


#: Exit status of every command -> what it means (``stslive --help`` and the README list them).
EXIT_CODES: dict[int, str] = {
    0: "done (a scan: every pixel of the plan visited, or its stop rule met)",
    1: "error: bad input, an instrument or a service failed, a scan failed (the message says which)",
    2: "the command line itself is wrong (usage)",
    3: "a scan (or a replayed run) was aborted: control abort, Ctrl-C or SIGTERM",
    70: "internal error: a bug in stslive (rerun with --debug and report the traceback)",
    130: "interrupted (Ctrl-C)",
    141: "the output pipe closed early (e.g. piped into head); nothing is printed",
}
EXIT_ERROR, EXIT_ABORTED, EXIT_BUG, EXIT_INTERRUPTED, EXIT_PIPE = 1, 3, 70, 130, 141


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``selected`` gets its full set of arguments (lazy import)."""
    parser = argparse.ArgumentParser(
        prog="stslive",
        description="Instrument software for low-temperature STM spectroscopy maps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"stslive {software_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error as well (may follow the command)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the console script; returns the process exit code (:data:`EXIT_CODES`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted after the command too, where a user types it
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
    except BrokenPipeError:
        # the reader went away (`stslive theory --json | head -3`): not an error of the user's, so
        # silent, as the shell's own tools are; stdout goes to /dev/null so the interpreter's final
        # flush cannot raise the same error again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", EXIT_INTERRUPTED, debug=debug)
    except (StsliveError, OSError) as exc:  # ours on purpose, or what the system said (file, port, disk)
        return _fail(args.command, f"error: {_one_line(exc)}", EXIT_ERROR, debug=debug)
    except MemoryError:
        text = "error: not enough memory (is the grid or --size far larger than intended?)"
        return _fail(args.command, text, EXIT_ERROR, debug=debug)
    except Exception as exc:  # noqa: BLE001  the boundary: whatever escaped becomes one line, not a traceback
        if _is_zmq_error(exc):  # a socket ZeroMQ refused: an endpoint in use or malformed
            return _fail(args.command, f"error: ZeroMQ: {_one_line(exc)}", EXIT_ERROR, debug=debug)
        text = f"internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: rerun with --debug and report it)"
        return _fail(args.command, text, EXIT_BUG, debug=debug)


def _is_zmq_error(exc: BaseException) -> bool:
    zmq = sys.modules.get("zmq")  # only a command that loaded ZeroMQ can have raised its error
    return zmq is not None and isinstance(exc, zmq.ZMQBaseError)


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (an OSError as its reason and the file it names)."""
    if isinstance(exc, OSError) and not isinstance(exc, StsliveError) and exc.strerror:
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        text = exc.strerror + (f": {' -> '.join(map(str, names))}" if names else "")
    else:
        text = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", ())
    return " ".join(" ".join([text, *notes]).split())


def _fail(command: str, text: str, code: int, *, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"stslive {command}: {text}", file=sys.stderr)
    return code
