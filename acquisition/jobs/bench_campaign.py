"""A campaign of simulated maps analysed single-process and on a Dask LocalCluster (``stslive bench campaign``).

:func:`bench_campaign` simulates ``maps`` archives (a temperature series: 0.3, 0.6, 0.9, 1.2 K,
...) into a work folder, then times the kernels over every map both ways:

* single: :func:`stslive.live.pipeline.analyse_source` map after map, in this process (kernel
  thread pool: one thread per core);
* dask: :func:`stslive.live.offline.dask.analyse_inputs_dask` on a LocalCluster of ``workers``
  processes x 1 thread (kernels single-threaded per task), cluster start-up timed separately.

Both include reading the files and building the ResultsModel; neither writes figures. The pairs
alternate on one cluster, so a change of the machine's load hits both paths alike; the report
gives wall times, spectra/s, each pair's ratio and whether the maps agree. The scaling argument
for a real cluster is in :mod:`stslive.live.offline.dask`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.drivers.errors import ConfigError
from stslive.live.kernels import KernelOptions
from stslive.live.offline.dask import analyse_inputs_dask, dask_client
from stslive.live.pipeline import analyse_source, calibrate_source, open_input
from stslive.live.results import ResultsModel
from stslive.mocks.film import FilmParams, make_film


def _simulate(workdir: Path, nx: int, ny: int, maps: int) -> list[Path]:
    """The campaign's archives (a temperature series), simulated only when missing."""
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


def bench_campaign(
    *,
    workdir: Path,
    nx: int,
    ny: int,
    maps: int = 4,
    workers: int = 2,
    block_mb: float = 64.0,
    repeat: int = 1,
    log: Callable[[str], None] = print,
) -> None:
    """Time ``repeat`` single/dask pairs over ``maps`` simulated ``nx`` x ``ny`` archives; log the figures.

    Parameters
    ----------
    workdir
        Folder of the simulated archives (kept, and reused when the grid matches).
    nx, ny
        Size of each map (pixels).
    maps
        Archives in the campaign.
    workers
        LocalCluster worker processes.
    block_mb
        Spectra per Dask task (MB).
    repeat
        Single/dask pairs, alternated on one cluster.
    log
        Receives each line of the report.

    Raises
    ------
    ConfigError
        ``maps``, ``workers`` or ``repeat`` below 1, or ``block_mb`` not > 0.
    """
    if maps < 1 or workers < 1 or block_mb <= 0 or repeat < 1:
        raise ConfigError("--maps, --workers and --repeat must be >= 1 and --block-mb > 0")
    paths = _simulate(workdir, nx, ny, maps)
    options = KernelOptions()
    spectra = 0
    for path in paths:
        with open_input(path, options=options) as source:
            spectra += int(source.measured.sum())
    single_s: list[float] = []
    dask_s: list[float] = []
    t0 = time.perf_counter()
    with dask_client(None, workers=workers) as client:
        startup_s = time.perf_counter() - t0
        # alternated, so that a change of the machine's load hits both paths alike
        for _ in range(repeat):
            seconds, single_models = _single(paths, options)
            single_s.append(seconds)
            t1 = time.perf_counter()
            runs = {
                r.path: r.model
                for r in analyse_inputs_dask(
                    paths, client=client, options=options, max_block_bytes=int(block_mb * 2**20)
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
    log(
        f"campaign: {len(paths)} maps, {nx}x{ny}, {spectra} spectra ({spectra // len(paths)} per map), "
        f"{paths[0].stat().st_size / 2**20:.0f} MB per archive"
    )
    log(f"single process : {_spread(single_s)}  {spectra / np.median(single_s):10,.0f} spectra/s")
    log(
        f"dask {workers} workers : {_spread(dask_s)}  {spectra / np.median(dask_s):10,.0f} spectra/s "
        f"(+ {startup_s:.1f} s cluster start-up, blocks of {block_mb:g} MB)"
    )
    log("ratio single/dask per pair: " + ", ".join(f"{a / b:.2f}" for a, b in zip(single_s, dask_s, strict=False)))
    log(f"maps identical: {identical}; largest relative Delta difference: {delta_rel:.2e}")
    log(
        f"kernel threads: {options.threads or 'one per core'} single-process, 1 per dask task; "
        f"{len(os.sched_getaffinity(0))} cores available; figures taken on a shared machine are upper bounds"
    )
