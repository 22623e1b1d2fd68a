"""Per-pixel software overhead of the scan engine against the simulated lab (a benchmark, not a test).

``stslive bench-scan --grid 60x50`` (or ``python -m stslive.acquisition.bench_scan``) runs a scan in-process against the
mock lab's TCP servers at "as fast as possible" (speed 0) and prints the per-pixel overhead
at p50/p99 for the first and the last tenth of the run. Overhead is everything except the
controller's sweep call (``run_spectrum``: the simulated sweep itself plus its feedback
round trips): the other driver round trips (move, z, lock-in status, temperatures), the archive
write with its two flushes and the stream event. Goal (issue 4): p50 <= 2 ms, p99 <= 10 ms,
flat from first to last pixel.

:func:`mock_lab_config` builds a run config for a running :class:`~stslive.mocks.lab.MockLab`
(tests use it too).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.config import RunConfig
from stslive.drivers.errors import ConfigError


def mock_lab_config(resources: Mapping[str, str], *, nx: int, ny: int, pixel_m: float = 1e-9,
                    n_points: int = 1601, lockin: bool = True, thermometer: bool = True,
                    **sections: Mapping[str, Any]) -> RunConfig:
    """A run config covering the whole film of a mock lab (``lab.start_servers().resources``).

    The grid matches the film's pixels exactly (centre 0, pitch ``pixel_m``); set 0 is the
    film's default set-point and sweep. ``sections`` override keys per section (``run``,
    ``stream``, ``suspender``, ``grid``), e.g. ``stream={"pub": "tcp://127.0.0.1:0"}``.
    """
    doc: dict[str, Any] = {
        "run": {"name": "mock-lab run", "heartbeat_s": 0.05},
        "instruments": {"nanonis": {"resource": resources["nanonis"], "timeout_s": 5.0}},
        "grid": {"width_m": nx * pixel_m, "height_m": ny * pixel_m, "nx": nx, "ny": ny},
        "setpoint_set": [{"id": 0, "name": "spectroscopy", "bias_setpoint_V": -0.010, "current_setpoint_A": 150e-12,
                          "sweep_start_V": -0.04, "sweep_end_V": 0.04, "n_points": n_points}],
        "stream": {"pub": "tcp://127.0.0.1:0", "push": "", "control": "tcp://127.0.0.1:0"},
    }
    if lockin and "sr830" in resources:
        doc["instruments"]["lockin"] = {"resource": resources["sr830"]}
    if thermometer and "ls372" in resources:
        doc["instruments"]["thermometer"] = {"resource": resources["ls372"]}
    for name, table in sections.items():
        if name == "setpoint_set":
            doc[name] = list(table)  # type: ignore[arg-type]
        else:
            doc.setdefault(name, {}).update(table)
    return RunConfig.from_dict(doc)


def percentiles_ms(values: np.ndarray) -> tuple[float, float]:
    """(p50, p99) of ``values`` (s) in ms."""
    p50, p99 = np.percentile(values, [50, 99]) * 1e3
    return float(p50), float(p99)


def bench(*, nx: int, ny: int, n_points: int, seed: int = 0) -> dict[str, Any]:
    """Run one scan of ``ny x nx`` pixels against a fresh mock lab; returns the figures."""
    from stslive.acquisition.scan_cli import run_scan
    from stslive.mocks.lab import MockLab

    lab = MockLab.from_seed(seed=seed, ny=ny, nx=nx, speed=0)
    with lab.start_servers() as servers, tempfile.TemporaryDirectory() as tmp:
        config = mock_lab_config(servers.resources, nx=nx, ny=ny, pixel_m=float(lab.pixel_m), n_points=n_points)
        t0 = time.perf_counter()
        engine = run_scan(config, Path(tmp) / "bench.h5", announce=False)
        wall = time.perf_counter() - t0
    overhead = np.asarray(engine.stats.overhead_s)
    tenth = max(1, overhead.size // 10)
    return {"pixels": overhead.size, "wall_s": wall, "all": percentiles_ms(overhead),
            "first": percentiles_ms(overhead[:tenth]), "last": percentiles_ms(overhead[-tenth:]),
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"grid {text!r}: give NXxNY pixels, e.g. 100x80")
    return int(parts[0]), int(parts[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive bench-scan``."""
    parser.add_argument("--grid", type=_grid, default=(40, 30), help="NXxNY pixels (default 40x30)")
    parser.add_argument("--points", type=int, default=1601, help="points per sweep (default 1601)")
    parser.add_argument("--seed", type=int, default=0, help="film seed of the mock lab (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print p50/p99 overhead for the whole run, its first and last tenth."""
    if args.points < 2:
        raise ConfigError(f"--points must be >= 2, got {args.points}")
    nx, ny = args.grid
    r = bench(nx=nx, ny=ny, n_points=args.points, seed=args.seed)
    print(f"scan overhead, {r['pixels']} pixels x {args.points} points, mock lab at speed 0 "
          f"(wall {r['wall_s']:.1f} s, {r['pixels'] / r['wall_s']:.0f} pixels/s, peak RSS {r['peak_rss_MB']:.0f} MB)")
    for part in ("all", "first", "last"):
        p50, p99 = r[part]
        print(f"  {part:>5}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
