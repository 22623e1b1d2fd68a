"""Per-pixel software overhead of the scan engine against the simulated lab (``stslive bench scan``).

:func:`bench` scans a fresh mock lab at "as fast as possible" (speed 0) and returns the per-pixel
overhead at p50/p99 for the whole run and for its first and last tenth. Overhead is the wall
time of a pixel's engine step minus the controller's sweep call (the simulated sweep and its
feedback round trips): the other driver round trips and whatever part of the archive write and
the stream event did not fit beside the sweep (:class:`~stslive.acquisition.engine.RunStats`).
``work`` is all of that software work per pixel, hidden or not. Goal: p50 <= 2 ms, p99 <= 10 ms,
flat from first to last pixel.

The lab runs as ``stslive mock-lab`` in a child process (as in a lab, where the instruments are
other machines) or, ``in_process``, in the scan's own process, where the simulated sweeps
(~2 ms of film computation each) compete with the scan for the GIL and inflate the figures.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.jobs.mocklab import lab_in_process, lab_subprocess, mock_lab_config
from stslive.acquisition.scan import run_scan
from stslive.drivers.errors import ConfigError


def percentiles_ms(values: np.ndarray) -> tuple[float, float]:
    """(p50, p99) of ``values`` (s) in ms."""
    p50, p99 = np.percentile(values, [50, 99]) * 1e3
    return float(p50), float(p99)


def bench(*, nx: int, ny: int, n_points: int, seed: int = 0, in_process: bool = False) -> dict[str, Any]:
    """Run one scan of ``ny x nx`` pixels against a fresh mock lab; returns the figures.

    Keys: ``pixels``, ``wall_s``, ``all``/``first``/``last`` (p50, p99 in ms of the whole run and
    of its first/last tenth), ``work`` (p50, p99 ms of the software work, hidden or not), ``phases``
    (name -> p50 ms, see :class:`~stslive.acquisition.engine.RunStats`),
    ``peak_rss_MB`` (of this process), ``lab`` (``"process"`` or ``"in-process"``).
    """
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


def bench_placements(
    *,
    nx: int,
    ny: int,
    n_points: int,
    seed: int,
    placements: tuple[bool, ...],
    repeat: int,
    log: Callable[[str], None],
) -> None:
    """Run :func:`bench` ``repeat`` times for each lab placement (``in_process`` flags, alternated,
    so that every placement sees the same load), logging each :func:`report`.

    Raises
    ------
    ConfigError
        ``n_points`` < 2 or ``repeat`` < 1.
    """
    if n_points < 2:
        raise ConfigError(f"--points must be >= 2, got {n_points}")
    if repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {repeat}")
    for _ in range(repeat):
        for in_process in placements:
            log(report(bench(nx=nx, ny=ny, n_points=n_points, seed=seed, in_process=in_process), n_points=n_points))
