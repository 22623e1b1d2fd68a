"""``stslive demo``: the main job in mock mode - simulated lab, scan, live analyser, screen.

    stslive demo                                # watch the maps fill in on the control-room screen
    stslive demo --headless --grid 64x48 --out demo-out

Each part runs as its own supervised process (:mod:`stslive.acquisition.jobs.demo`); if one dies
the others are stopped and the demo exits non-zero naming it; Ctrl-C (or SIGTERM) stops all
cleanly. ``--headless`` waits for the run and its analysis and leaves the files and a snapshot
of the screen in ``--out``: a new folder, or one holding no earlier demo's files, which
``--overwrite`` removes first.
"""

from __future__ import annotations

import argparse
import math
import signal
from pathlib import Path
from types import FrameType

from stslive.acquisition.cli.common import forward, fresh_folder, parse_grid, require_film, say
from stslive.acquisition.jobs.demo import SCREEN_SPEED, DemoPaths, DemoSettings, demo
from stslive.drivers.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive demo``."""
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no screen: wait for the run and its analysis, leave files and a snapshot PNG in --out",
    )
    parser.add_argument("--grid", default="64x48", metavar="NXxNY", help="film and scan size (default 64x48)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="output folder, new or without an earlier demo's files (default ./demo-out)",
    )
    parser.add_argument("--overwrite", action="store_true", help="remove an earlier demo's files from --out first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated film (default 0)")
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help=f"sweep time scale: 1 real time (1.6 s per spectrum), 0 as fast as possible "
        f"(default {SCREEN_SPEED:g} with the screen, 0 with --headless)",
    )
    parser.add_argument("--faults", type=Path, help="fault file for the simulated lab (see stslive.mocks.faults)")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the run keep the lab (and the screen) up until Ctrl-C; scan it again with "
        "`stslive scan --config DIR/run.toml --out other.h5`",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every part finished cleanly."""
    nx, ny = parse_grid(args.grid, example="64x48")
    if nx * ny < 4:
        raise ConfigError(f"--grid {args.grid!r}: at least 4 pixels are needed for the correlation maps")
    speed = (0.0 if args.headless else SCREEN_SPEED) if args.speed is None else args.speed
    if not speed >= 0 or math.isinf(speed):
        raise ConfigError(f"--speed {args.speed}: give a finite factor >= 0 (0: as fast as possible)")
    if args.faults is not None and not args.faults.is_file():
        raise ConfigError(f"--faults {args.faults}: file not found")
    require_film(nx, ny, option="--grid", out=args.out)
    fresh_folder(args.out, option="--out", overwrite=args.overwrite, writes=DemoPaths.OUTPUTS)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the demo as Ctrl-C does
    try:
        options = forward(args, "seed", "faults", "headless", "keep_running")
        demo(DemoPaths.in_folder(args.out), DemoSettings(nx=nx, ny=ny, speed=speed, **options), log=say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
