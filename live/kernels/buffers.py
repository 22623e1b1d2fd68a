"""Per-thread work arrays, reused between calls: the one scratch pool of the kernels and the flags.

Why a pool: the batch paths need a few MB of work arrays per chunk, and fresh ones are paged in
anew on every chunk (first touch of new memory costs more than the arithmetic on a small VM).
Each thread has its own arrays, so worker threads never share one.

Contract: :func:`scratch` gives undefined content, valid until the same thread asks for the same
name again; :func:`nan_buffer` gives an array that is NaN wherever its caller never writes.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_KEPT_BYTES", "nan_buffer", "scratch"]

_LOCAL = threading.local()

#: Work arrays above this size are not kept (a whole map analysed at once must not pin its
#: size); 1024 spectra x 1601 float64 points fit.
MAX_KEPT_BYTES = 16 << 20

#: Most NaN buffers kept per thread (one per name, grid and column set in use).
_MAX_NAN_BUFFERS = 16


def scratch(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """A C-contiguous per-thread work array of ``shape``, undefined content.

    Parameters
    ----------
    name : str
        What the array is for; two live arrays of one thread need two names.
    shape : tuple of int
    dtype : dtype
    """
    # Called several times per chunk, and the live analyser's chunks are 1-10 spectra: the hit
    # path is kept to a dict lookup, a slice and a reshape.
    size = math.prod(shape)
    cache: dict[tuple[str, object], np.ndarray] = _LOCAL.__dict__.setdefault("scratch", {})
    key = (name, dtype)  # a dtype hashes by value
    buf = cache.get(key)
    if buf is None or buf.size < size:
        if size * np.dtype(dtype).itemsize > MAX_KEPT_BYTES:
            return np.empty(shape, dtype)
        buf = cache[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def nan_buffer(name: str, rows: int, n: int, dtype: npt.DTypeLike, columns: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A per-thread (rows, n) work array that is NaN outside ``columns`` (half-open ranges).

    The caller writes only ``columns``, so the NaN elsewhere survives reuse: a column read
    outside them shows up as NaN (reason NAN_INPUT), never as stale data of another call.
    """
    cache: dict[tuple[object, ...], np.ndarray] = _LOCAL.__dict__.setdefault("nan", {})
    key = (name, n, np.dtype(dtype), columns)  # a dtype hashes by value
    buf = cache.get(key)
    if buf is None or buf.shape[0] < rows:
        if len(cache) > _MAX_NAN_BUFFERS:
            cache.clear()
        buf = cache[key] = np.full((rows, n), np.nan, dtype)
    return buf[:rows]
