"""``stslive mock-lab``: run the simulated Nanonis, SR830 and LakeShore 372 on TCP ports.

Prints one line per instrument with its VISA resource string, then serves until Ctrl-C or
SIGTERM and stops every server cleanly. Port 0 picks a free port; a port already in use (another
mock lab runs) is refused with one line naming it.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

from stslive.acquisition.cli.common import parse_grid, require_film
from stslive.drivers.errors import ConfigError
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
    require_film(nx, ny, option="--grid")
    if args.film is None:
        return make_film(FilmParams(ny=ny, nx=nx, seed=args.seed))
    table = read_toml(args.film, what="film parameters", option="--film")
    return make_film(FilmParams.from_dict({"ny": ny, "nx": nx, **table}))


def _ports(args: argparse.Namespace) -> dict[str, int]:
    """The requested ports by option, each checked free on ``--host`` (0 is always free)."""
    ports = {"--nanonis-port": args.nanonis_port, "--sr830-port": args.sr830_port}
    ports["--thermometer-port"] = args.thermometer_port
    for option, port in ports.items():
        if not 0 <= port <= 65535:
            raise ConfigError(f"{option} {port}: give a TCP port 1-65535, or 0 for a free one")
        if port:
            _check_free(args.host, port, option)
    return ports


def _check_free(host: str, port: int, option: str) -> None:
    # a trial bind names the busy port in the message; the servers' own bind below still decides
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _busy(exc, f"{option} {port} on {host}") from None


def _busy(exc: OSError, what: str) -> ConfigError | OSError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"{what}: the port is in use (is another stslive mock-lab running?); stop that one, "
            "or give other ports (0 picks a free one)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{what}: not an address of this machine; give --host 127.0.0.1 or one of its own")
    return exc


def run(args: argparse.Namespace) -> int:
    """Start the lab, print the resources, serve until interrupted."""
    _ports(args)
    faults = FaultPlan.from_toml(args.faults) if args.faults else FaultPlan()
    lab = MockLab(_film(args), speed=args.speed, faults=faults, seed=args.seed)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            servers = LabServers.start(
                lab,
                host=args.host,
                nanonis_port=args.nanonis_port,
                sr830_port=args.sr830_port,
                thermometer_port=args.thermometer_port,
            )
        except OSError as exc:  # taken between the check and the bind
            raise _busy(exc, f"a port of the mock lab on {args.host}") from exc
        with servers:
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
