"""``stslive simulate``: write a run archive of a simulated NbN film scan, ground truth inside.

``stslive simulate --grid 300x250 --out film.h5 [--seed N] [--set FIELD=VALUE ...]`` writes the
film of :mod:`stslive.mocks.film` through :mod:`stslive.acquisition.jobs.simulate`: complete, or
not at all (an existing ``--out`` is replaced only with ``--overwrite``, and only once the new
archive is whole). A grid whose film or archive cannot fit in memory or on the disk is refused
before anything is built.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stslive.acquisition.cli.common import parse_assignments, parse_grid, require_film
from stslive.acquisition.jobs.simulate import CHANNELS, film_params, write_film_archive
from stslive.drivers.errors import ConfigError
from stslive.mocks.film import make_film


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive simulate``."""
    parser.add_argument("--grid", default="300x250", help="columns x rows (default: 300x250, the paper's map)")
    parser.add_argument("--out", required=True, type=Path, help="archive file to write (HDF5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default: 0)")
    parser.add_argument("--points", type=int, default=1601, help="points per sweep, -40..+40 mV (default: 1601)")
    parser.add_argument("--noise-pA", type=float, default=0.5, help="rms current noise, pA (default: 0.5)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other FilmParams field, SI units (e.g. sigma_rho_ohm=900); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    """Simulate the film and write its archive; prints one summary line."""
    nx, ny = parse_grid(args.grid)
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out}: exists; choose another file, or pass --overwrite to replace it")
    if args.points < 2:
        raise ConfigError(f"--points {args.points}: give at least 2 points per sweep")
    require_film(nx, ny, option="--grid", channels=len(CHANNELS), points=args.points, out=args.out)
    film = make_film(
        film_params(
            ny, nx, seed=args.seed, points=args.points, noise_pA=args.noise_pA, extra=parse_assignments(args.set)
        )
    )
    stats = write_film_archive(film, args.out, overwrite=args.overwrite)
    print(
        f"wrote {args.out}: {nx} x {ny} pixels x {args.points} points in {stats['elapsed_s']:.1f} s "
        f"(channels {', '.join(CHANNELS)}; ground truth in entry/sample/ground_truth)"
    )
    return 0
