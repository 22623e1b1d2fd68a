"""Per-pixel software overhead of the scan engine against the simulated lab (a benchmark, not a test).

``stslive bench-scan --grid 100x80`` (or ``python -m stslive.acquisition.jobs.bench_scan``) runs a scan
against the mock lab at "as fast as possible" (speed 0) and prints the per-pixel overhead at
p50/p99 for the whole run and for its first and last tenth. Overhead is the wall time of a
pixel's engine step minus the controller's sweep call (``run_spectrum``: the simulated sweep
itself plus its feedback round trips): the other driver round trips (move, z, lock-in status,
temperatures) and whatever part of the archive write (two flushes) and the stream event did not
fit beside the sweep (:class:`~stslive.acquisition.engine.RunStats`). ``work`` is the sum of all
that software work per pixel, hidden or not. Goal (issue 4): p50 <= 2 ms, p99 <= 10 ms, flat
from first to last pixel.

Where the lab runs matters. By default it runs as ``stslive mock-lab`` in a separate process on
free ports, as in a lab where the instruments are other machines. ``--in-process`` runs its
servers in the scan's own process instead (as the tests do): the simulated sweeps (~2 ms of film
computation each) then compete with the scan for the GIL, which inflates the figures. ``--compare``
runs both, alternating, ``--repeat`` times each, so both sets of figures share the same load.

:func:`mock_lab_config` builds a run config for a running :class:`~stslive.mocks.lab.MockLab`
(tests use it too).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.config import RunConfig
from stslive.drivers.errors import ConfigError, InstrumentConnectionError

#: How long ``stslive mock-lab`` may take to build its film and print its resources (s).
LAB_START_TIMEOUT_S = 120.0


def mock_lab_config(
    resources: Mapping[str, str],
    *,
    nx: int,
    ny: int,
    pixel_m: float = 1e-9,
    n_points: int = 1601,
    lockin: bool = True,
    thermometer: bool = True,
    **sections: Mapping[str, Any],
) -> RunConfig:
    """A run config covering the whole film of a mock lab (``LabServers.start(lab).resources``).

    The grid matches the film's pixels exactly (centre 0, pitch ``pixel_m``); set 0 is the
    film's default set-point and sweep. ``sections`` override keys per section (``run``,
    ``stream``, ``suspender``, ``grid``), e.g. ``stream={"pub": "tcp://127.0.0.1:0"}``.
    """
    doc: dict[str, Any] = {
        "run": {"name": "mock-lab run", "heartbeat_s": 0.05},
        "instruments": {"nanonis": {"resource": resources["nanonis"], "timeout_s": 5.0}},
        "grid": {"width_m": nx * pixel_m, "height_m": ny * pixel_m, "nx": nx, "ny": ny},
        "setpoint_set": [
            {
                "id": 0,
                "name": "spectroscopy",
                "bias_setpoint_V": -0.010,
                "current_setpoint_A": 150e-12,
                "sweep_start_V": -0.04,
                "sweep_end_V": 0.04,
                "n_points": n_points,
            }
        ],
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


@contextlib.contextmanager
def lab_in_process(*, nx: int, ny: int, seed: int) -> Iterator[tuple[dict[str, str], float]]:
    """The mock lab's servers in this process; yields (resources, pixel pitch in m)."""
    from stslive.mocks.lab import MockLab
    from stslive.mocks.lab_servers import LabServers

    lab = MockLab.from_seed(seed=seed, ny=ny, nx=nx, speed=0)
    with LabServers.start(lab) as servers:
        yield servers.resources, float(lab.pixel_m)


@contextlib.contextmanager
def lab_subprocess(
    *, nx: int, ny: int, seed: int, timeout_s: float = LAB_START_TIMEOUT_S
) -> Iterator[tuple[dict[str, str], float]]:
    """``stslive mock-lab`` in a child process on free ports; yields (resources, pixel pitch in m).

    The child prints one ``name resource`` line per instrument once it serves; it is stopped
    with SIGTERM (its clean shutdown) on exit, and killed if it does not stop within 10 s.
    """
    from stslive.mocks.film import FilmParams

    cmd = [
        sys.executable,
        "-m",
        "stslive.acquisition.cli",
        "mock-lab",
        "--grid",
        f"{nx}x{ny}",
        "--seed",
        str(seed),
        "--speed",
        "0",
        "--nanonis-port",
        "0",
        "--sr830-port",
        "0",
        "--thermometer-port",
        "0",
    ]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        resources = _read_resources(child, timeout_s)
        # the child's film is make_film(FilmParams(ny, nx, seed)), as MockLab.from_seed's
        yield resources, float(FilmParams(ny=ny, nx=nx, seed=seed).pixel_m)
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()
        child.stderr.close()


def _read_resources(child: subprocess.Popen[str], timeout_s: float) -> dict[str, str]:
    # A reader thread, because readline() on a pipe cannot time out by itself.
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if len(lines) == 3:  # nanonis, sr830, ls372
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout_s) or len(lines) < 3:
        child.kill()
        _, err = child.communicate()
        raise InstrumentConnectionError(
            "mock-lab",
            f"stslive mock-lab did not report its three instruments within {timeout_s:g} s "
            f"(got {lines!r}; stderr: {err.strip()[-500:]!r}); run it by hand to see why",
        )
    return dict(line.split(None, 1) for line in (s.strip() for s in lines))


def bench(*, nx: int, ny: int, n_points: int, seed: int = 0, in_process: bool = False) -> dict[str, Any]:
    """Run one scan of ``ny x nx`` pixels against a fresh mock lab; returns the figures.

    Keys: ``pixels``, ``wall_s``, ``all``/``first``/``last`` (p50, p99 in ms of the whole run and
    of its first/last tenth), ``work`` (p50, p99 ms of the software work, hidden or not), ``phases``
    (name -> p50 ms, see :class:`~stslive.acquisition.engine.RunStats`),
    ``peak_rss_MB`` (of this process), ``lab`` (``"process"`` or ``"in-process"``).
    """
    from stslive.acquisition.cli.scan import run_scan

    lab = lab_in_process if in_process else lab_subprocess
    with lab(nx=nx, ny=ny, seed=seed) as (resources, pixel_m), tempfile.TemporaryDirectory() as tmp:
        config = mock_lab_config(resources, nx=nx, ny=ny, pixel_m=pixel_m, n_points=n_points)
        t0 = time.perf_counter()
        engine = run_scan(config, Path(tmp) / "bench.h5", announce=False)
        wall = time.perf_counter() - t0
    overhead = np.asarray(engine.stats.overhead_s)
    tenth = max(1, overhead.size // 10)
    work = np.asarray(engine.stats.work_s)
    phases = {name: float(np.median(v)) * 1e3 for name, v in engine.stats.phase_s.items() if v}
    return {
        "pixels": overhead.size,
        "wall_s": wall,
        "all": percentiles_ms(overhead),
        "first": percentiles_ms(overhead[:tenth]),
        "last": percentiles_ms(overhead[-tenth:]),
        "work": percentiles_ms(work) if work.size else (float("nan"), float("nan")),
        "phases": phases,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "lab": "in-process" if in_process else "process",
    }


def report(r: Mapping[str, Any], *, n_points: int) -> str:
    """The figures of one :func:`bench` result as text."""
    lines = [
        f"scan overhead, {r['pixels']} pixels x {n_points} points, mock lab {r['lab']} at speed 0 "
        f"(wall {r['wall_s']:.1f} s, {r['pixels'] / r['wall_s']:.0f} pixels/s, peak RSS {r['peak_rss_MB']:.0f} MB)"
    ]
    for part in ("all", "first", "last", "work"):
        p50, p99 = r[part]
        lines.append(f"  {part:>5}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    lines.append("  phases p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
    return "\n".join(lines)


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
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--in-process",
        action="store_true",
        help="run the mock lab's servers in the scan's process (default: `stslive mock-lab` child)",
    )
    where.add_argument(
        "--compare", action="store_true", help="run both, alternating (separate process first), and report each"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per lab placement (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print p50/p99 overhead for the whole run, its first and last tenth."""
    if args.points < 2:
        raise ConfigError(f"--points must be >= 2, got {args.points}")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {args.repeat}")
    nx, ny = args.grid
    placements = (False, True) if args.compare else (bool(args.in_process),)
    for _ in range(args.repeat):
        for in_process in placements:
            print(
                report(
                    bench(nx=nx, ny=ny, n_points=args.points, seed=args.seed, in_process=in_process),
                    n_points=args.points,
                ),
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
