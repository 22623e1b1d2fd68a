"""``stslive mock-lab``: run the simulated Nanonis, SR830 and LakeShore 372 on TCP ports.

Prints one line per instrument with its VISA resource string, then serves until Ctrl-C or
SIGTERM and stops every server cleanly. Port 0 picks a free port.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from stslive.acquisition.cli.common import parse_grid
from stslive.drivers.tomlfile import read_toml
from stslive.mocks.faults import FaultPlan
from stslive.mocks.film import Film, FilmParams, make_film
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive mock-lab``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--nanonis-port", type=int, default=6501, help="Nanonis TCP port (0 = free port)")
    parser.add_argument("--sr830-port", type=int, default=1234, help="SR830 port, as behind a GPIB-Ethernet bridge")
    parser.add_argument("--thermometer-port", type=int, default=7777, help="LakeShore 372 port")
    film = parser.add_mutually_exclusive_group()
    film.add_argument("--film", type=Path, help="film parameters (TOML table of FilmParams fields)")
    film.add_argument("--seed", type=int, default=0, help="seed of a generated film (default 0)")
    parser.add_argument("--grid", default="64x64", metavar="NXxNY", help="film size in pixels (default 64x64)")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale: 1 real time, 0 as fast as possible")
    parser.add_argument("--faults", type=Path, help="fault file ([[fault]] tables, see stslive.mocks.faults)")


def _film(args: argparse.Namespace) -> Film:
    nx, ny = parse_grid(args.grid, example="64x48")
    if args.film is None:
        return make_film(FilmParams(ny=ny, nx=nx, seed=args.seed))
    table = read_toml(args.film, what="film parameters", option="--film")
    return make_film(FilmParams.from_dict({"ny": ny, "nx": nx, **table}))


def run(args: argparse.Namespace) -> int:
    """Start the lab, print the resources, serve until interrupted."""
    faults = FaultPlan.from_toml(args.faults) if args.faults else FaultPlan()
    lab = MockLab(_film(args), speed=args.speed, faults=faults, seed=args.seed)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with LabServers.start(
            lab,
            host=args.host,
            nanonis_port=args.nanonis_port,
            sr830_port=args.sr830_port,
            thermometer_port=args.thermometer_port,
        ) as servers:
            for name, resource in servers.resources.items():
                print(f"{name:8s} {resource}", flush=True)
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
        print("mock-lab stopped", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
