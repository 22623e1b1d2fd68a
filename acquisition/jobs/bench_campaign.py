"""``stslive bench-campaign``: one 4-map campaign analysed single-process and on a Dask LocalCluster.

Simulates ``--maps`` archives (default 4 maps of 300 x 250 x 1601, the paper's size; temperatures
0.3, 0.6, 0.9, 1.2 K) into ``--workdir``, then times the kernels over every map both ways:

* single: :func:`stslive.live.pipeline.analyse_source` map after map, in this process (kernel
  thread pool: one thread per core);
* dask: :func:`stslive.live.offline.dask.analyse_inputs_dask` on a LocalCluster of ``--workers``
  processes x 1 thread (kernels single-threaded per task), cluster start-up timed separately.

Both include reading the files and building the ResultsModel; neither writes figures (those are
the same client-side code in both). It prints wall times, spectra/s, the ratio, and checks that
the maps agree. Figures depend on the machine's load; state it when quoting them.

``--repeat N`` alternates N single/dask pairs on one cluster, so a change of the machine's load
hits both paths alike, and prints median (min-max) and each pair's ratio.

Measured on 2 cores shared with ~7 other jobs (load average 7-8), 4 x 300x250x1601 archives with
lock-in: the load makes any one run vary by up to 4x, so only alternated figures mean anything.

* ``stslive bench-campaign --workdir DIR --repeat 2`` (fused tasks): single 55.1 / 12.4 s, dask
  67.2 / 8.6 s (ratio single/dask 0.82, 1.44); the same with the former separate read and
  analyse tasks: single 13.7 / 25.0 s, dask 23.2 / 13.5 s (ratios 0.59, 1.85). Maps identical.
* Former vs fused Dask graph alternated 3 times on one LocalCluster (2 x 1 thread, same files):
  former 55.3, 36.7, 64.1 s (199 tasks, 19-23 transfers of 64 MB blocks between workers);
  fused 28.0, 48.6, 42.1 s (64 tasks, 0 transfers) - median 55 -> 42 s.
* On two cores the cluster can at best match the single path (which already uses both cores
  for the kernels); reading the pixel-chunked HDF5 is the larger part of either path's time
  (per 16-row block of 4,800 spectra: read 0.2-1.1 s, kernels 0.24 s on one thread).

The scaling argument for a real cluster (threads, memory per worker, bytes moved per block) is
in :mod:`stslive.live.offline.dask`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions
from stslive.live.pipeline import analyse_source, calibrate_source, open_input
from stslive.live.results import ResultsModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="300x250", help="columns x rows of each map (default: 300x250)")
    parser.add_argument("--maps", type=int, default=4, help="maps in the campaign (default: 4)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default: 2)")
    parser.add_argument("--block-mb", type=float, default=64.0, help="spectra per Dask task, MB (default: 64)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="single/dask pairs, alternated on one cluster so both see the same load (default: 1)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="folder for the simulated archives (kept and reused when the grid matches)",
    )


def _simulate(workdir: Path, grid: str, maps: int) -> list[Path]:
    """The campaign's archives (a temperature series), simulated only when missing."""
    from stslive.acquisition.cli.simulate import parse_grid, write_film_archive
    from stslive.mocks.film import FilmParams, make_film

    ny, nx = parse_grid(grid)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(maps):
        temperature = 0.3 * (k + 1)
        path = workdir / f"campaign_{nx}x{ny}_T{temperature:.1f}K.h5"
        if not path.is_file():
            write_film_archive(make_film(FilmParams(ny=ny, nx=nx, seed=100 + k, temperature_K=temperature)), path)
        paths.append(path)
    return paths


def _single(paths: list[Path], options: KernelOptions) -> tuple[float, list[ResultsModel]]:
    t0 = time.perf_counter()
    models = []
    for path in paths:
        with open_input(path, options=options) as source:
            models.append(analyse_source(source, options=calibrate_source(source, options=options)))
    return time.perf_counter() - t0, models


def _spread(times: list[float]) -> str:
    """``median (min-max)`` of wall times, s."""
    return f"{np.median(times):8.2f} s  ({min(times):.2f}-{max(times):.2f} s over {len(times)})"


def run(args: argparse.Namespace) -> int:
    from stslive.live.offline.dask import analyse_inputs_dask, dask_client

    if args.maps < 1 or args.workers < 1 or args.block_mb <= 0 or args.repeat < 1:
        raise ConfigError("--maps, --workers and --repeat must be >= 1 and --block-mb > 0")
    paths = _simulate(args.workdir, args.grid, args.maps)
    options = KernelOptions()
    spectra = 0
    for path in paths:
        with open_input(path, options=options) as source:
            spectra += int(source.measured.sum())
    single_s: list[float] = []
    dask_s: list[float] = []
    t0 = time.perf_counter()
    with dask_client(None, workers=args.workers) as client:
        startup_s = time.perf_counter() - t0
        # alternated, so that a change of the machine's load hits both paths alike
        for _ in range(args.repeat):
            seconds, single_models = _single(paths, options)
            single_s.append(seconds)
            t1 = time.perf_counter()
            runs = {
                r.path: r.model
                for r in analyse_inputs_dask(
                    paths, client=client, options=options, max_block_bytes=int(args.block_mb * 2**20)
                )
            }
            dask_s.append(time.perf_counter() - t1)
    identical = all(
        np.array_equal(m.maps[k], runs[p].maps[k], equal_nan=True)
        for p, m in zip(paths, single_models, strict=False)
        for k in ("delta_eV", "alpha", "valid", "reason")
    )
    delta_rel = max(
        float(np.nanmax(np.abs(runs[p].maps["delta_eV"] / m.maps["delta_eV"] - 1.0)))
        for p, m in zip(paths, single_models, strict=False)
    )
    print(
        f"campaign: {len(paths)} maps, {args.grid}, {spectra} spectra ({spectra // len(paths)} per map), "
        f"{paths[0].stat().st_size / 2**20:.0f} MB per archive"
    )
    print(f"single process : {_spread(single_s)}  {spectra / np.median(single_s):10,.0f} spectra/s")
    print(
        f"dask {args.workers} workers : {_spread(dask_s)}  {spectra / np.median(dask_s):10,.0f} spectra/s "
        f"(+ {startup_s:.1f} s cluster start-up, blocks of {args.block_mb:g} MB)"
    )
    print("ratio single/dask per pair: " + ", ".join(f"{a / b:.2f}" for a, b in zip(single_s, dask_s, strict=False)))
    print(f"maps identical: {identical}; largest relative Delta difference: {delta_rel:.2e}")
    print(
        f"kernel threads: {options.threads or 'one per core'} single-process, 1 per dask task; "
        f"{len(os.sched_getaffinity(0))} cores available; figures taken on a shared machine are upper bounds"
    )
    return 0
