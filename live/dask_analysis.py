"""Reanalysis of many runs on a Dask cluster with the same kernels as ``stslive analyse`` (issue 7).

Dask is an optional extra (``pip install 'stslive[dask]'``); nothing else in stslive imports it.

The graph per input file, built on the client from the file's metadata only:

* **read** - one task per block of whole grid rows opens the file itself (h5py datasets and
  open files are not picklable, and an HDF5 handle shared across threads needs a global lock)
  and returns the block's picked channels, ``(rows, nx, n_channels, n_points)`` float32, the
  exact arrays :meth:`SpectraSource.read_block` gives the single-process path. The blocks are
  assembled into one dask array with ``da.from_delayed`` (and, for Nanonis grids whose sweep
  differs per pixel, a second one of per-pixel sweeps, float64 as the single path uses them).
* **analyse** - ``da.blockwise`` over the row blocks runs :func:`~stslive.live.pipeline.analyse_arrays`
  (the kernels) on the measured pixels of each block and returns one ``(rows, nx, F)`` float64
  stack of the :class:`~stslive.live.kernels.SpectrumAnalysis` fields (float32, int8 and bool
  values all convert to float64 and back exactly). The scheduler runs it where the block was
  read, so only the stack (F * 8 bytes per pixel instead of 4 * n_points * channels) travels.
  With the same block size as the single path (64 MB, the default) the kernels see the same
  batches, so the maps are bit-identical; other block sizes change Delta by float32 rounding
  only (~1e-6 relative, measured): the gap kernel's template products run through BLAS, whose
  summation order depends on the batch shape.
* **calibrate** - the peak-template Dynes width is fixed per map before the blocks run, by
  :func:`~stslive.live.pipeline.calibrate_source` in a task (the same rule and the same first
  block as the single-process path), so both paths use the same templates.
* **gather** - the stacks come back to the client, which fills a
  :class:`~stslive.live.results.ResultsModel` with :func:`~stslive.live.pipeline.apply_to_model`;
  the correlations (FFT over the whole map) then run on the client exactly as in the single
  path (:func:`stslive.live.analyse_cli.write_outputs`).

Workers and client must see the files under the same path (a shared file system). Kernel
thread pools are set to one thread per task (``KernelOptions.threads = 1``): Dask's workers
provide the parallelism, and a pool per task would oversubscribe the cores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stslive.drivers.errors import ConfigError, FileFormatError
from stslive.live.kernels import KernelOptions, SpectrumAnalysis
from stslive.live.pipeline import analyse_arrays, apply_to_model, calibrate_source, open_input
from stslive.live.results import ResultsModel

if TYPE_CHECKING:  # dask is optional: imported at run time by require_dask()
    import dask.array as da
    from distributed import Client

__all__ = [
    "FIELDS", "require_dask", "dask_client", "is_scheduler_address", "rows_per_block", "spectra_array",
    "analysis_array", "calibrate_remote", "model_from_stack", "DaskRun", "analyse_inputs_dask",
]

#: Fields of SpectrumAnalysis, in the order of the last axis of the gathered stacks.
FIELDS: tuple[str, ...] = SpectrumAnalysis._fields
_INT_FIELDS = {"gap_reason": np.int8, "alpha_reason": np.int8, "reason": np.int8, "valid": np.bool_}
#: ``tcp://host:port``, ``tls://...``, ``inproc://...`` or a bare ``host:port``.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|inproc|ucx|ws|wss)://\S+|[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


def require_dask() -> None:
    """ConfigError with the install command unless dask.array and distributed import."""
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--dask needs the optional Dask extra ({exc.name} is missing): "
                          "pip install 'stslive[dask]'") from None


def is_scheduler_address(text: str) -> bool:
    """Whether ``text`` looks like a dask.distributed scheduler address (not an input path)."""
    return bool(_ADDRESS.match(text)) and not Path(text).exists()


@contextmanager
def dask_client(address: str | None, *, workers: int | None = None,
                threads_per_worker: int = 1) -> Iterator[Client]:
    """A distributed Client: to ``address``, or to a LocalCluster of processes made here.

    Parameters
    ----------
    address : str or None
        Scheduler address of an existing cluster (``tcp://host:8786``); None starts a
        LocalCluster with ``workers`` worker processes (default: one per core) of
        ``threads_per_worker`` threads, closed on exit.
    """
    require_dask()
    from distributed import Client, LocalCluster

    if address is not None:
        if not is_scheduler_address(address):
            raise ConfigError(f"--dask {address!r} is not a scheduler address (tcp://HOST:PORT); put --dask "
                              "after the inputs, or write --dask=tcp://HOST:PORT")
        try:
            client = Client(address, timeout="10s")
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                              "(dask scheduler) or drop the address to use a local cluster") from exc
        with client:
            yield client
        return
    n = workers if workers is not None else max(1, os.cpu_count() or 1)
    # dashboard on a free port: a second analysis on the same machine would fight over 8787
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield client


def rows_per_block(nx: int, n_points: int, n_channels: int, *, max_block_bytes: int) -> int:
    """Whole grid rows per task so that a block of float32 spectra stays under ``max_block_bytes``."""
    return max(1, int(max_block_bytes // (nx * n_points * n_channels * 4)))


def _read_rows(path: str, rows: slice, options: KernelOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Task: the picked channels of grid rows ``rows`` (file opened and closed in the task).

    Returns ``(rows, nx, n_channels, n_points)`` float32 (current, then the lock-in when the
    options use one) and the per-pixel sweeps ``(rows, nx, n_points)`` float64 when the file
    has them, else None.
    """
    with open_input(path, options=options) as source:
        try:
            block = source.read_block(rows)
        except OSError as exc:  # the same message the single path gives for a damaged file
            raise FileFormatError(source.path, f"cannot read the spectra ({exc}); the file is truncated "
                                               "or corrupt, re-copy it or export it again") from exc
    channels = [block.current] + ([] if block.lockin is None else [block.lockin])
    spectra = np.stack(channels, axis=2)
    return spectra, (block.bias if block.bias.ndim == 3 else None)


def _analyse_block(spectra: np.ndarray, measured: np.ndarray, bias_block: np.ndarray | None = None, *,
                   bias: np.ndarray, options: KernelOptions) -> np.ndarray:
    """Task: :func:`analyse_arrays` on the measured pixels of a block -> ``(rows, nx, len(FIELDS))`` float64.

    Unmeasured pixels are NaN (they are never copied into the model).
    """
    out = np.full((*measured.shape, len(FIELDS)), np.nan)
    rows, cols = np.nonzero(measured)
    if rows.size:
        sweep = bias if bias_block is None else bias_block[rows, cols]
        picked = spectra[rows, cols]
        analysis = analyse_arrays(sweep, current=picked[:, 0], options=options,
                                  lockin=picked[:, 1] if picked.shape[1] > 1 else None)
        out[rows, cols] = np.stack([np.asarray(v, dtype=np.float64) for v in analysis], axis=-1)
    return out


@dataclass(frozen=True)
class _FileInfo:
    """What the client learns from a file before building its graph."""

    path: Path
    shape: tuple[int, int]
    n_points: int
    n_channels: int
    measured: np.ndarray
    bias: np.ndarray
    bias_per_pixel: bool


def _file_info(path: Path, options: KernelOptions) -> _FileInfo:
    with open_input(path, options=options) as source:
        source.require_bias_sweep()
        # the read task stacks what read_block gives (the lock-in whenever the file has one, as in
        # analyse_source; analyse_arrays drops it when the options do not use it)
        n_channels = 1 + int(source.lockin_channel is not None)
        return _FileInfo(path=path, shape=source.shape, n_points=source.n_points, n_channels=n_channels,
                         measured=source.measured, bias=np.asarray(source.bias, dtype=np.float64),
                         bias_per_pixel=source.bias_per_pixel)


def spectra_array(info: _FileInfo, *, options: KernelOptions,
                  max_block_bytes: int = 64 * 2**20) -> tuple[da.Array, da.Array | None]:
    """The picked spectra of a file as a dask array ``(ny, nx, n_channels, n_points)`` float32.

    Chunked per block of whole rows (:func:`rows_per_block`); each chunk is a task that opens the
    file. Also returns the per-pixel sweeps ``(ny, nx, n_points)`` float64 for files that have
    them (from the same read tasks), else None.
    """
    import dask
    import dask.array as da

    ny, nx = info.shape
    step = rows_per_block(nx, info.n_points, info.n_channels, max_block_bytes=max_block_bytes)
    spectra, sweeps = [], []
    for start in range(0, ny, step):
        rows = slice(start, min(ny, start + step))
        n = rows.stop - rows.start
        read = dask.delayed(_read_rows, pure=True, nout=2)(str(info.path), rows, options)
        spectra.append(da.from_delayed(read[0], shape=(n, nx, info.n_channels, info.n_points), dtype=np.float32))
        if info.bias_per_pixel:
            sweeps.append(da.from_delayed(read[1], shape=(n, nx, info.n_points), dtype=np.float64))
    return da.concatenate(spectra, axis=0), (da.concatenate(sweeps, axis=0) if sweeps else None)


def analysis_array(info: _FileInfo, *, options: KernelOptions, max_block_bytes: int = 64 * 2**20) -> da.Array:
    """Lazy ``(ny, nx, len(FIELDS))`` float64 results of a file: the kernels blockwise over its row blocks."""
    import dask.array as da

    spectra, sweeps = spectra_array(info, options=options, max_block_bytes=max_block_bytes)
    measured = da.from_array(info.measured, chunks=(spectra.chunks[0], (info.shape[1],)))
    arrays: list[Any] = [spectra, "yxcp", measured, "yx"]
    if sweeps is not None:
        arrays += [sweeps, "yxp"]
    return da.blockwise(_analyse_block, "yxf", *arrays, new_axes={"f": len(FIELDS)}, dtype=np.float64,
                        concatenate=True, bias=info.bias, options=options)


def _calibrate_task(path: str, options: KernelOptions) -> KernelOptions:
    """Task: ``calibrate_source`` (the single path's rule, on its first 64 MB block) in a worker."""
    with open_input(path, options=options) as source:
        return calibrate_source(source, options=options)


def calibrate_remote(client: Client, paths: Sequence[Path], *, options: KernelOptions) -> list[KernelOptions]:
    """Options with each file's template width, calibrated in parallel on the cluster."""
    futures = [client.submit(_calibrate_task, str(p), options, pure=False) for p in paths]
    return list(client.gather(futures))


def model_from_stack(stack: np.ndarray, info: _FileInfo, *, pixel_nm: float,
                     topography: np.ndarray | None) -> ResultsModel:
    """A ResultsModel from a gathered ``(ny, nx, len(FIELDS))`` stack, as :func:`analyse_source` fills it."""
    ny, nx = info.shape
    model = ResultsModel(ny, nx, pixel_nm=pixel_nm, topography=topography)
    rows, cols = np.nonzero(info.measured)
    if rows.size:
        values = stack[rows, cols]
        analysis = SpectrumAnalysis(*(values[:, k].astype(_INT_FIELDS.get(name, np.float32))
                                      for k, name in enumerate(FIELDS)))
        apply_to_model(model, rows, cols, analysis)
    model.update_status(state="done", message=f"analysed {rows.size} of {ny * nx} pixels from {info.path}")
    return model


@dataclass
class DaskRun:
    """One analysed input: the model, the calibrated options and the dask timing."""

    path: Path
    model: ResultsModel
    options: KernelOptions


def analyse_inputs_dask(
    paths: Sequence[Path],
    *,
    client: Client,
    options: KernelOptions,
    max_block_bytes: int = 64 * 2**20,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[DaskRun]:
    """Analyse every input on ``client``'s cluster; yields each run as soon as its blocks are back.

    Parameters
    ----------
    paths : sequence of Path
        Archives or ``.3ds`` files, readable by client and workers under these paths.
    client : distributed.Client
    options : KernelOptions
        As for the single path; ``threads`` is set to 1 (see the module docstring).
    max_block_bytes : int
        Spectra per task, bytes (whole rows, at least one).
    progress : callable, optional
        ``progress(pixels_done, pixels_total)`` over all inputs, after every block.
    """
    from distributed import as_completed

    options = dataclasses.replace(options, threads=1)
    infos = [_file_info(Path(p), options) for p in paths]
    calibrated = calibrate_remote(client, [i.path for i in infos], options=options)
    futures: dict[Any, tuple[int, int]] = {}  # future -> (input index, block index)
    blocks: list[list[np.ndarray | None]] = []
    row_starts: list[list[int]] = []
    for k, (info, opts) in enumerate(zip(infos, calibrated)):
        result = analysis_array(info, options=opts, max_block_bytes=max_block_bytes)
        parts = result.to_delayed().ravel()
        blocks.append([None] * len(parts))
        row_starts.append(list(np.cumsum((0, *result.chunks[0]))))
        for b, fut in enumerate(client.compute(list(parts))):
            futures[fut] = (k, b)
    total = int(sum(i.measured.sum() for i in infos))
    done = 0
    if progress is not None:
        progress(0, total)
    for fut in as_completed(list(futures)):
        k, b = futures[fut]
        blocks[k][b] = fut.result()
        start, stop = row_starts[k][b], row_starts[k][b + 1]
        done += int(infos[k].measured[start:stop].sum())
        if progress is not None:
            progress(done, total)
        if all(part is not None for part in blocks[k]):
            info = infos[k]
            with open_input(info.path, options=calibrated[k]) as source:
                dx, dy = source.pixel_size_m
                model = model_from_stack(np.concatenate(blocks[k], axis=0), info,  # type: ignore[arg-type]
                                         pixel_nm=float(math.sqrt(dx * dy) * 1e9), topography=source.topography)
            blocks[k] = []  # free the stacks of a finished input
            yield DaskRun(path=info.path, model=model, options=calibrated[k])
