"""Offline analysis of many runs on a Dask cluster, with the kernels and outputs of ``stslive analyse``.

Dask is an optional extra (``pip install 'stslive[dask]'``); nothing else in stslive imports it.
Per input file the client builds, from the file's metadata only: a **calibrate** task (the
peak-template width by :func:`~stslive.live.pipeline.calibrate_source`, as the single-process
path does), then one fused read + kernels task per block of whole grid rows
(:func:`analysis_array`) that returns only the stack of
:class:`~stslive.live.kernels.SpectrumAnalysis` fields: spectra never leave the worker that read
them. The stacks are **gathered** on the client into a
:class:`~stslive.live.results.ResultsModel` (:func:`~stslive.live.pipeline.apply_to_model`), whose
correlations, files and figures are then written exactly as by the single path
(:func:`stslive.live.offline.analyse.write_outputs`). With the single path's block size (64 MB, the
default) the maps are bit-identical to it; other sizes differ by float32 rounding only, because
the BLAS summation order of the gap templates follows the batch shape.

Deployment: workers and client must see the files under the same path; run one worker process
per core with one thread each (``dask worker --nworkers N --nthreads 1``, :func:`dask_client`'s
LocalCluster default) - h5py serialises the HDF5 calls of a process, and the kernels' own pool is
set to one thread per task here. A worker holds one block of B bytes of spectra at a time
(``--block-mb``) plus the kernels' working set and its result stack: about 2 B + 50 MB.
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
    "FIELDS",
    "require_dask",
    "dask_client",
    "is_scheduler_address",
    "rows_per_block",
    "analysis_array",
    "calibrate_remote",
    "model_from_stack",
    "DaskRun",
    "analyse_inputs_dask",
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
        raise ConfigError(
            f"--dask needs the optional Dask extra ({exc.name} is missing): pip install 'stslive[dask]'"
        ) from None


def is_scheduler_address(text: str) -> bool:
    """Whether ``text`` looks like a dask.distributed scheduler address (not an input path)."""
    return bool(_ADDRESS.match(text)) and not Path(text).exists()


@contextmanager
def dask_client(
    address: str | None,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    connect_timeout: str | float | None = None,
) -> Iterator[Client]:
    """A distributed Client: to ``address``, or to a LocalCluster of processes made here.

    Parameters
    ----------
    address : str or None
        Scheduler address of an existing cluster (``tcp://host:8786``); None starts a
        LocalCluster with ``workers`` worker processes (default: one per core) of
        ``threads_per_worker`` threads, closed on exit.
    connect_timeout : str, float or None
        How long to try reaching ``address`` (``"60s"`` or seconds); None: Dask's
        ``distributed.comm.timeouts.connect`` (30 s unless configured, e.g. by
        ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s``).
    """
    require_dask()
    import dask.config
    from distributed import Client, LocalCluster

    if address is not None:
        if not is_scheduler_address(address):
            raise ConfigError(
                f"--dask {address!r} is not a scheduler address (tcp://HOST:PORT); put --dask "
                "after the inputs, or write --dask=tcp://HOST:PORT"
            )
        timeout = (
            connect_timeout if connect_timeout is not None else dask.config.get("distributed.comm.timeouts.connect")
        )
        try:
            client = Client(address, timeout=timeout)
        except OSError as exc:  # TimeoutError is an OSError too
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address} within {timeout} ({exc}); start it "
                "(dask scheduler), give a loaded cluster longer "
                "(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s) or drop the address to use a "
                "local cluster"
            ) from exc
        with client:
            yield client
        return
    n = workers if workers is not None else len(os.sched_getaffinity(0))
    # dashboard on a free port: a second analysis on the same machine would fight over 8787
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def rows_per_block(nx: int, n_points: int, n_channels: int, *, max_block_bytes: int) -> int:
    """Whole grid rows per task so that a block of float32 spectra stays under ``max_block_bytes``."""
    return max(1, int(max_block_bytes // (nx * n_points * n_channels * 4)))


def _analyse_rows(path: str, options: KernelOptions, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Task: read grid rows of ``path`` and run the kernels on them -> ``(rows, nx, len(FIELDS))`` float64.

    Read and kernels are ONE task so that spectra never leave the worker that read them: as two
    tasks (read, then analyse) the scheduler moved 64 MB blocks between worker processes and kept
    read-ahead blocks in worker memory, 3.8x slower than the single path (stslive bench campaign). The
    file is opened here because h5py files are not picklable. The rows come from dask's
    ``block_info`` (the block's location in the result array). Unmeasured pixels are NaN (they are
    never copied into the model).
    """
    assert block_info is not None  # map_blocks always passes it to a function that asks for it
    start, stop = block_info[None]["array-location"][0]
    with open_input(path, options=options) as source:
        try:
            block = source.read_block(slice(start, stop))
        except OSError as exc:  # the same message the single path gives for a damaged file
            raise FileFormatError(
                source.path,
                f"cannot read the spectra ({exc}); the file is truncated or corrupt, re-copy it or export it again",
            ) from exc
    out = np.full((*block.measured.shape, len(FIELDS)), np.nan)
    rows, cols = np.nonzero(block.measured)
    if rows.size:
        # exactly what analyse_source hands the kernels for this block (same pixels, same order)
        analysis = analyse_arrays(
            block.bias if block.bias.ndim == 1 else block.bias[rows, cols],
            current=block.current[rows, cols],
            options=options,
            lockin=None if block.lockin is None else block.lockin[rows, cols],
        )
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


def _file_info(path: Path, options: KernelOptions) -> _FileInfo:
    with open_input(path, options=options) as source:
        source.require_bias_sweep()
        # the spectra a task reads: the current, plus the lock-in when open_input picked one (it
        # does when the options use it) - the single path's block size counts the same channels
        n_channels = 1 + int(source.lockin_channel is not None)
        return _FileInfo(
            path=path, shape=source.shape, n_points=source.n_points, n_channels=n_channels, measured=source.measured
        )


def analysis_array(info: _FileInfo, *, options: KernelOptions, max_block_bytes: int = 64 * 2**20) -> da.Array:
    """Lazy ``(ny, nx, len(FIELDS))`` float64 results of a file, one fused read + kernels task per row block.

    Chunked along y in :func:`rows_per_block` rows (the single path's blocks at the same
    ``max_block_bytes``); the other axes are one chunk each.
    """
    import dask.array as da

    ny, nx = info.shape
    step = rows_per_block(nx, info.n_points, info.n_channels, max_block_bytes=max_block_bytes)
    row_chunks = tuple(min(step, ny - start) for start in range(0, ny, step))
    return da.map_blocks(
        _analyse_rows,
        str(info.path),
        options,
        chunks=(row_chunks, (nx,), (len(FIELDS),)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
    )


def _calibrate_task(path: str, options: KernelOptions) -> KernelOptions:
    """Task: ``calibrate_source`` (the single path's rule, on its first 64 MB block) in a worker."""
    with open_input(path, options=options) as source:
        return calibrate_source(source, options=options)


def calibrate_remote(client: Client, paths: Sequence[Path], *, options: KernelOptions) -> list[KernelOptions]:
    """Options with each file's template width, calibrated in parallel on the cluster."""
    futures = [client.submit(_calibrate_task, str(p), options, pure=False) for p in paths]
    return list(client.gather(futures))


def model_from_stack(
    stack: np.ndarray, info: _FileInfo, *, pixel_nm: float, topography: np.ndarray | None
) -> ResultsModel:
    """A ResultsModel from a gathered ``(ny, nx, len(FIELDS))`` stack, as :func:`analyse_source` fills it."""
    ny, nx = info.shape
    model = ResultsModel(ny, nx, pixel_nm=pixel_nm, topography=topography)
    rows, cols = np.nonzero(info.measured)
    if rows.size:
        values = stack[rows, cols]
        analysis = SpectrumAnalysis(
            *(values[:, k].astype(_INT_FIELDS.get(name, np.float32)) for k, name in enumerate(FIELDS))
        )
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
    for k, (info, opts) in enumerate(zip(infos, calibrated, strict=False)):
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
                model = model_from_stack(
                    np.concatenate([part for part in blocks[k] if part is not None], axis=0),
                    info,
                    pixel_nm=float(math.sqrt(dx * dy) * 1e9),
                    topography=source.topography,
                )
            blocks[k] = []  # free the stacks of a finished input
            yield DaskRun(path=info.path, model=model, options=calibrated[k])
