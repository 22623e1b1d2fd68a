"""Opening a run archive for viewing without ever hanging, and what can be read of a damaged one.

:func:`open_for_viewing` returns the archive's reader and its :class:`ArchiveHealth`. A finished,
whole file is opened directly without SWMR (a damaged one then fails at once). A file that an SWMR
writer holds, or whose HDF5 superblock says it is longer than it is (a partial copy, a full disk),
is first opened by a child process with a deadline: an SWMR read of damaged metadata retries
inside HDF5 for minutes while holding the GIL, so only another process can be abandoned. A
truncated file is read in SWMR mode (a plain open refuses it), and only the pixels whose spectra
lie wholly inside the file count as readable.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader, open_archive
from stslive.acquisition.formats.archive.layout import HDF5_SIGNATURE
from stslive.drivers.errors import ArchiveError, StsliveError

__all__ = ["ArchiveHealth", "open_for_viewing", "superblock"]

#: Superblock status flag of a file an SWMR writer holds (HDF5's H5F_SUPER_SWMR_WRITE_ACCESS).
SWMR_WRITE_FLAG = 0x04
_SPECTRA = "entry/data/spectra"


@dataclass(frozen=True)
class ArchiveHealth:
    """How much of an archive file is there.

    Attributes
    ----------
    size_bytes
        The file's size on disk.
    stored_bytes
        The end of file that HDF5 recorded in the superblock (None: not a v2/v3 superblock).
    readable
        (ny, nx) bool, pixels whose spectra lie inside the file; None when the file is whole.
    """

    size_bytes: int
    stored_bytes: int | None
    readable: np.ndarray | None = None

    @property
    def truncated(self) -> bool:
        """The file ends before the end HDF5 recorded: everything past the cut is lost."""
        return self.stored_bytes is not None and self.size_bytes < self.stored_bytes

    def describe(self) -> str:
        """One phrase for the status line, "" for a whole file."""
        if not self.truncated or self.stored_bytes is None:
            return ""
        return (
            f"TRUNCATED archive: {self.size_bytes / 1e6:.1f} of {self.stored_bytes / 1e6:.1f} MB present "
            f"({100 * self.size_bytes / self.stored_bytes:.1f} %)"
        )


def superblock(path: str | Path) -> tuple[int, int] | None:
    """(status flags, recorded end of file in bytes) of a v2/v3 HDF5 superblock; None for another layout."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if not head.startswith(HDF5_SIGNATURE) or len(head) < 12 or head[8] not in (2, 3):
        return None
    size = head[9]  # bytes per file address
    if size not in (4, 8) or len(head) < 12 + 3 * size:
        return None
    # version 2/3 layout: signature, version, sizes, flags, base, extension, end-of-file, root, checksum
    return head[11], int.from_bytes(head[12 + 2 * size : 12 + 3 * size], "little")


def open_for_viewing(path: str | Path, *, timeout_s: float = 10.0) -> tuple[ArchiveReader, ArchiveHealth]:
    """Open ``path`` read-only within ``timeout_s`` (s); ArchiveError when it cannot be read.

    Returns the reader (SWMR when a writer holds the file or it is truncated) and the file's
    health; a truncated file's ``readable`` mask says which pixels survived the cut.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(path, "no such file; check the path")
    deadline = time.monotonic() + timeout_s
    while True:
        block, health = _health(path)
        live = block is not None and bool(block[0] & SWMR_WRITE_FLAG)
        if block is None or not (health.truncated or live):
            return open_archive(path, swmr="auto"), health  # finished and whole: no SWMR, nothing can stall
        try:
            readable = _probe_in_child(path, health, max(0.5, deadline - time.monotonic()))
            reader = open_archive(path, swmr=True if health.truncated else "auto")
        except _Stalled:
            raise
        except ArchiveError:
            # a live writer between writing data and recording the file's new end: HDF5 calls the
            # file truncated for a moment (measured: 2 of 925 opens of a file written at full speed)
            if not live or time.monotonic() > deadline - 0.5:
                raise
            time.sleep(0.2)
            continue
        return reader, ArchiveHealth(health.size_bytes, health.stored_bytes, readable)


def _health(path: Path) -> tuple[tuple[int, int] | None, ArchiveHealth]:
    """The superblock and the health of ``path``; a growing file gets half a second to look whole."""
    for _ in range(5):
        block = superblock(path)
        health = ArchiveHealth(size_bytes=path.stat().st_size, stored_bytes=None if block is None else block[1])
        if block is None or not (health.truncated and block[0] & SWMR_WRITE_FLAG):
            break
        time.sleep(0.1)  # a writer records a new end of file as it flushes
    return block, health


class _Stalled(ArchiveError):
    """HDF5 did not finish reading the file's layout in time (it retries damaged metadata for minutes)."""


def _probe_in_child(path: Path, health: ArchiveHealth, timeout_s: float) -> np.ndarray | None:
    """Make the first reads of a viewer in a child process; its readable mask if the file is truncated."""
    code = "import sys; from stslive.live.viewer.archive_open import _probe; _probe(sys.argv[1])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        what = f"{health.describe()}; " if health.truncated else "marked open by an SWMR writer; "
        raise _Stalled(
            path,
            f"{what}HDF5 could not read its layout within {round(timeout_s, 1):g} s: the file is damaged, "
            "nothing to show",
        ) from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise ArchiveError(path, f"{health.describe() or 'cannot read it'}: {lines[-1]}")
    answer = json.loads(done.stdout)
    if answer["readable"] is None:
        return None
    ny, nx = answer["shape"]
    bits = np.frombuffer(base64.b64decode(answer["readable"]), dtype=np.uint8)
    return np.unpackbits(bits, count=ny * nx).astype(bool).reshape(ny, nx)


def _probe(path_text: str) -> None:
    """Child-process side of :func:`open_for_viewing`: one JSON line on stdout, or a message on stderr."""
    path = Path(path_text)
    block = superblock(path)
    size = path.stat().st_size
    truncated = block is not None and size < block[1]
    try:
        with open_archive(path, swmr=True if truncated else "auto") as reader:
            _ = reader.measured, reader.pixel_meta, reader.documents, reader.log, reader.setpoint_sets
            shape = reader.shape
        readable = _readable_pixels(path, shape, size) if truncated else None
    except StsliveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    packed = None if readable is None else base64.b64encode(np.packbits(readable.ravel()).tobytes()).decode()
    print(json.dumps({"shape": list(shape), "readable": packed}))


def _readable_pixels(path: Path, shape: tuple[int, int], size: int) -> np.ndarray:
    """(ny, nx) bool: pixels whose stored spectra chunk ends inside the first ``size`` bytes."""
    import h5py  # the archive module's own dependency; only the chunk index is read here

    readable = np.zeros(shape, dtype=bool)
    try:
        with h5py.File(path, "r", libver="latest", swmr=True) as f:
            ds = f[_SPECTRA]
            rows, cols = (ds.chunks or ds.shape)[:2]

            def visit(info: h5py.h5d.StoreInfo) -> None:
                if info.byte_offset is not None and info.byte_offset + info.size <= size:
                    iy, ix = info.chunk_offset[:2]
                    readable[iy : iy + rows, ix : ix + cols] = True

            ds.id.chunk_iter(visit)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:  # the chunk index itself lies past the cut
        raise ArchiveError(path, f"its chunk index is unreadable ({exc}); no spectrum can be located") from exc
    return readable
