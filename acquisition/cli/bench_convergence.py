"""``stslive bench convergence``: correlation figures and their 90 % intervals while a map fills.

    stslive bench convergence [--seeds N] [--fractions F,F,...] [--replicates N] [--out DIR]

Raster against progressive order on the simulated film at the paper's geometry; prints the table
and the goals, writes ``convergence.json`` and ``convergence.png`` to ``--out``. The work is
:mod:`stslive.acquisition.jobs.bench_convergence`; this module only reads the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from stslive.acquisition.formats.codec import json_safe
from stslive.acquisition.jobs import bench_convergence as bench
from stslive.drivers.errors import ConfigError


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) / 100.0 for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"fractions are percentages separated by commas, got {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"each fraction must lie in (0, 100] %, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench convergence``."""
    parser.add_argument("--seeds", type=int, default=12, help="film seeds 0..N-1 (default 12)")
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=bench.FRACTIONS,
        help="percentages of the pixels (default 1,2,5,10,20,50,100)",
    )
    parser.add_argument("--ny", type=int, default=250, help="rows of the film (default 250, the paper's)")
    parser.add_argument("--nx", type=int, default=300, help="columns of the film (default 300, the paper's)")
    parser.add_argument("--replicates", type=int, default=60, help="simulated maps per length scale (default 60)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of convergence.json/.png (default .)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and the goals; 1 if a goal is missed."""
    if min(args.seeds, args.ny, args.nx) < 1 or args.replicates < 20:
        raise ConfigError("bench convergence needs --seeds, --ny, --nx >= 1 and --replicates >= 20")
    estimates = bench.run_benchmark(
        seeds=range(args.seeds), fractions=args.fractions, ny=args.ny, nx=args.nx, replicates=args.replicates
    )
    rows = bench.summary_rows(estimates)
    for line in bench.format_table(rows):
        print(line)
    goals = bench.goal_lines(estimates)
    for text, met in goals:
        print(("met:    " if met else "MISSED: ") + text)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"summary": rows, "goals": goals, "estimates": [dataclasses.asdict(e) for e in estimates]}
    (args.out / "convergence.json").write_text(json.dumps(json_safe(document), indent=1) + "\n")
    figure = bench.convergence_figure(args.out / "convergence.png", estimates)
    print(f"wrote {args.out / 'convergence.json'} and {figure}")
    return 0 if all(met for _, met in goals) else 1
