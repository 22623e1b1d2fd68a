"""``stslive soak``: a long simulated run under scheduled faults and killed processes, checked end to end.

The full soak: ``stslive soak --grid 300x250 --out DIR --duration-hint 2400``; the test suite's
short one: ``stslive soak --grid 24x16 --points 401 --kills 1 --out DIR``. Prints the JSON summary
(also in ``DIR/soak.json``; progress goes to stderr); exit status 0 when every check passed, 1
otherwise (:mod:`stslive.acquisition.jobs.soak`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stslive.acquisition.cli.common import forward, parse_grid, require_film
from stslive.acquisition.jobs.soak import Soak, SoakSettings
from stslive.drivers.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive soak``."""
    parser.add_argument("--grid", default="300x250", metavar="NXxNY", help="pixels (default 300x250)")
    parser.add_argument("--points", type=int, default=1601, help="points per sweep (default 1601)")
    parser.add_argument("--seed", type=int, default=0, help="film and fault schedule seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the archive, analyses, logs, soak.json")
    parser.add_argument("--kills", type=int, default=2, help="scan SIGKILLs, each followed by --resume (default 2)")
    parser.add_argument("--analyser-kills", type=int, default=1, help="analyser SIGKILLs + restarts (default 1)")
    parser.add_argument("--viewer-kills", type=int, default=1, help="viewer SIGKILLs + new viewer (default 1)")
    parser.add_argument("--no-viewer", action="store_true", help="run no viewer (machines without Qt)")
    parser.add_argument("--no-remeasure", action="store_true", help="skip the control remeasure of two pixels")
    first = "start the analyser before the scan (shows the analyser missing the start document)"
    parser.add_argument("--analyser-first", action="store_true", help=first)
    parser.add_argument(
        "--duration-hint",
        dest="duration_hint_s",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="expected scan wall time; the soak gives up after 3x this + 300 s (default 600)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the soak, print its JSON summary; 0 if every check passed, 1 otherwise."""
    nx, ny = parse_grid(args.grid)
    require_film(nx, ny, option="--grid")
    for name in ("kills", "analyser_kills", "viewer_kills"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} = {getattr(args, name)} is too small")
    if args.points < 101:
        raise ConfigError(f"--points {args.points}: the fit window needs sweeps of at least 101 points")
    try:
        import psutil  # noqa: F401  (the soak reads the child processes' memory with it)
    except ImportError:
        raise ConfigError("stslive soak reads process memory with psutil: pip install 'stslive[test]'") from None
    options = forward(args, "out", "seed", "points", "kills", "analyser_kills", "viewer_kills", "duration_hint_s")
    options.update(analyser_first=args.analyser_first, viewer=not args.no_viewer, remeasure=not args.no_remeasure)
    settings = SoakSettings(nx=nx, ny=ny, **options)
    summary = Soak(settings, log=lambda line: print(line, file=sys.stderr, flush=True)).run()
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1
