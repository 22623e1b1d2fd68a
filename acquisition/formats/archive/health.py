"""How much of an archive file is there: truncation, and bounded ways to read a file as it is.

An archive's HDF5 superblock records where the file ends. A copy cut short (``head -c``, a full
disk, an interrupted transfer) is shorter than that: HDF5 refuses to open it, and an SWMR reader,
which skips that check, retries every unreadable metadata block with back-off for minutes.
:func:`open_cut` instead opens a private copy that is as long as recorded (zeros past the cut,
sparse) and shows the superblock without writer flags, so HDF5 opens it plainly: metadata lost in
the cut fails its checksum at once. Raw data chunks have no checksum, so :class:`ChunkLoss` marks
every chunk that ends past the cut as lost, and the reader returns fill values there
(:meth:`ChunkLoss.mask`). :func:`open_view` does the same without a copy, through a Python file
object (:class:`_CutView`), for a short look inside the opener (HDF5 calls back into Python for
every read, which must not outlive the call). The file itself is never written.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stslive.acquisition.formats import _h5status

__all__ = ["ArchiveHealth", "ChunkLoss", "chunk_loss", "lost_entirely", "open_cut", "open_view"]


@dataclass(frozen=True)
class ArchiveHealth:
    """How complete an archive file is.

    Attributes
    ----------
    size_bytes : int
        The file's size on disk.
    stored_bytes : int or None
        Where HDF5 recorded the file ends (None: not a v2/v3 superblock).
    readable : ndarray or None
        ``(ny, nx)`` bool, pixels whose spectra lie wholly inside the file; None when whole.
    recorded_measured : int or None
        Pixels the file marks measured as far as its flags could be read (truncated files).
    """

    size_bytes: int
    stored_bytes: int | None
    readable: np.ndarray | None = None
    recorded_measured: int | None = None

    @property
    def truncated(self) -> bool:
        """The file ends before the end HDF5 recorded: everything past the cut is lost."""
        return self.stored_bytes is not None and self.size_bytes < self.stored_bytes

    def describe(self) -> str:
        """One phrase for a status line or a report, "" for a whole file."""
        if not self.truncated or self.stored_bytes is None:
            return ""
        text = (
            f"TRUNCATED archive: {self.size_bytes} of {self.stored_bytes} bytes present "
            f"({100 * self.size_bytes / self.stored_bytes:.1f} %)"
        )
        if self.readable is not None:
            text += f", spectra of {int(self.readable.sum())} of {self.readable.size} pixels inside the file"
        return text


class _CutView(io.RawIOBase):
    """Read-only file view for HDF5: ``stored`` bytes long (zeros past the real end), flags cleared."""

    def __init__(self, path: Path, stored: int, superblock: bytes) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115  (closed in close(), after HDF5 has let go)
        self._size = os.fstat(self._fh.fileno()).st_size
        self._stored = max(stored, self._size)
        self._head = superblock
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._stored}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._stored - self._pos))
        real = max(0, min(n, self._size - self._pos))
        if real:
            self._fh.seek(self._pos)
            got = self._fh.readinto(view[:real]) or 0
            view[got:n] = bytes(n - got)
        else:
            view[:n] = bytes(n)
        head = self._head
        if self._pos < len(head) and n:  # the superblock as patched
            k = min(n, len(head) - self._pos)
            view[:k] = head[self._pos : self._pos + k]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_view(path: Path) -> tuple[h5py.File, ArchiveHealth]:
    """Open a file read-only through :class:`_CutView`: without SWMR, writer flags or HDF5's
    length check (module docstring), for a look that ends before the caller returns.

    The caller closes the file; it is closed before its view when it is garbage collected (a view
    closed first would crash HDF5's own close). Raises OSError as h5py does for unreadable metadata.
    """
    sb = _h5status.superblock(path)
    if sb is None:
        raise OSError("not a version 2/3 HDF5 superblock")
    view = _CutView(path, sb.stored_eof, _h5status.without_flags(path))
    try:
        f = h5py.File(view, "r")
    except BaseException:
        view.close()
        raise
    weakref.finalize(f, _close_pair, f.id, view)
    return f, ArchiveHealth(size_bytes=view._size, stored_bytes=sb.stored_eof)


def _close_pair(fid: h5py.h5f.FileID, view: _CutView) -> None:
    if fid.valid:
        fid.close()
    view.close()


def open_cut(path: Path) -> tuple[h5py.File, ArchiveHealth]:
    """Open a file cut short read-only: a private temporary copy, extended (sparse) to the recorded
    end and without writer flags, opened plainly and unlinked at once (module docstring).

    Costs a copy of the bytes present (a damaged file only). Raises OSError as h5py does for
    unreadable metadata.
    """
    sb = _h5status.superblock(path)
    if sb is None:
        raise OSError("not a version 2/3 HDF5 superblock")
    size = path.stat().st_size
    fd, copy = tempfile.mkstemp(prefix="stslive-cut-", suffix=".h5")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 22)
            out.truncate(max(sb.stored_eof, size))  # zeros past the cut, without using disk
            out.seek(0)
            out.write(_h5status.without_flags(path))
        f = h5py.File(copy, "r", libver="latest")
    except BaseException:
        _remove(copy)
        raise
    try:
        os.unlink(copy)  # HDF5 keeps its descriptor; the space is freed when it closes
    except OSError:  # a system that cannot unlink an open file: removed with the file object
        weakref.finalize(f, _remove, copy)
    return f, ArchiveHealth(size_bytes=size, stored_bytes=sb.stored_eof)


def _remove(copy: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(copy)


class ChunkLoss:
    """Which chunks of a dataset lie past the cut of a truncated file.

    Attributes
    ----------
    chunks : tuple of int
        The dataset's chunk shape (its whole shape for a contiguous dataset).
    lost : ndarray
        Bool over the chunk grid, True where the chunk's bytes end past the file's end.
    stored : ndarray
        Bool over the chunk grid, True where a chunk was ever written (allocated).
    """

    def __init__(self, chunks: tuple[int, ...], lost: np.ndarray, stored: np.ndarray) -> None:
        self.chunks = chunks
        self.lost = lost
        self.stored = stored

    def mask(self, shape: tuple[int, ...], grid: np.ndarray | None = None) -> np.ndarray:
        """``grid`` (default :attr:`lost`) expanded to elements over the first ``len(shape)`` axes."""
        out = self.lost if grid is None else grid
        for axis, n in enumerate(shape):
            out = np.repeat(out, self.chunks[axis], axis=axis)[(slice(None),) * axis + (slice(0, n),)]
        return out


def lost_entirely(ds: h5py.Dataset) -> ChunkLoss:
    """A :class:`ChunkLoss` of ``ds`` with every chunk lost (its chunk index lies past the cut)."""
    chunks = ds.chunks or tuple(max(1, n) for n in ds.shape)
    grid = tuple(-(-n // c) for n, c in zip(ds.shape, chunks, strict=True))
    return ChunkLoss(chunks, np.ones(grid, dtype=bool), np.zeros(grid, dtype=bool))


def chunk_loss(ds: h5py.Dataset, size: int) -> ChunkLoss:
    """The :class:`ChunkLoss` of ``ds`` in a file whose real length is ``size`` bytes.

    Raises OSError/RuntimeError/ValueError when the dataset's chunk index itself lies past the cut.
    """
    shape = ds.shape
    if ds.chunks is None:  # contiguous or compact: one block
        offset = ds.id.get_offset()
        end = None if offset is None else offset + ds.id.get_storage_size()
        one = np.ones((1,) * len(shape), dtype=bool)
        return ChunkLoss(
            tuple(max(1, n) for n in shape), one & (end is not None and end > size), one & (end is not None)
        )
    chunks = ds.chunks
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    lost = np.zeros(grid, dtype=bool)
    stored = np.zeros(grid, dtype=bool)

    def visit(info: h5py.h5d.StoreInfo) -> None:
        if info.byte_offset is None:
            return
        at = tuple(o // c for o, c in zip(info.chunk_offset, chunks, strict=True))
        stored[at] = True
        lost[at] = info.byte_offset + info.size > size

    ds.id.chunk_iter(visit)
    return ChunkLoss(chunks, lost, stored)
