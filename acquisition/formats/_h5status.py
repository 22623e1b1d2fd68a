"""The HDF5 superblock of an archive: what it says (:func:`superblock`) and clearing the
"open for (SWMR) write" flags an HDF5 writer leaves behind when it is killed.

A process killed while it holds an archive open for SWMR writing leaves the superblock's file
consistency flags set; HDF5 then refuses every later non-SWMR open with "file is already open
for write (may use <h5clear file> to clear file consistency flags)". ``h5clear`` is a separate
C tool that h5py neither ships nor wraps, so resume does its one job here: zero the flags byte of
a version 2/3 superblock and rewrite the superblock checksum (Jenkins lookup3, which HDF5 checks
on every open, so a wrong checksum could never go unnoticed).

The flags byte holds :data:`WRITE_ACCESS` and, for an SWMR writer, :data:`SWMR_WRITE_ACCESS`.
A file left with the write bit alone (a writer opened it read-write and died before switching
SWMR on) cannot be opened even by an SWMR reader, so the writer document inside cannot tell
whether that writer still lives; :func:`held_by_writer` asks HDF5's own file lock instead,
which a non-SWMR writer holds for as long as it has the file open.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from stslive.drivers.errors import ArchiveError

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF
#: Superblock status flag bits (H5F_SUPER_WRITE_ACCESS, H5F_SUPER_SWMR_WRITE_ACCESS in HDF5).
WRITE_ACCESS = 0x01
SWMR_WRITE_ACCESS = 0x04


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data``, the checksum of HDF5 metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length > 12:
        wa, wb, wc = struct.unpack_from("<3I", data, i)
        a, b, c = (a + wa) & _MASK, (b + wb) & _MASK, (c + wc) & _MASK
        a = ((a - c) & _MASK) ^ _rot(c, 4)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, 6)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, 8)
        b = (b + a) & _MASK
        a = ((a - c) & _MASK) ^ _rot(c, 16)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, 19)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, 4)
        b = (b + a) & _MASK
        length -= 12
        i += 12
    if length == 0:
        return c
    wa, wb, wc = struct.unpack("<3I", data[i:] + b"\0" * (12 - length))
    a, b, c = (a + wa) & _MASK, (b + wb) & _MASK, (c + wc) & _MASK
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c


def _superblock(head: bytes, path: Path) -> tuple[int, int]:
    """(flags offset, checksum offset) of a v2/v3 superblock at file offset 0."""
    if not head.startswith(_SIGNATURE) or len(head) < 12:
        raise ArchiveError(path, "no HDF5 superblock at offset 0; this is not an stslive archive")
    version, size_offsets = head[8], head[9]
    if version not in (2, 3):
        raise ArchiveError(path, f"HDF5 superblock version {version}; stslive archives use 2 or 3")
    return 11, 12 + 4 * size_offsets


@dataclass(frozen=True)
class Superblock:
    """What a v2/v3 superblock says: status flags, recorded end of file (bytes), checksum intact."""

    flags: int
    stored_eof: int
    intact: bool


def superblock(path: str | os.PathLike[str]) -> Superblock | None:
    """The v2/v3 superblock at offset 0; None for another layout (v0/v1, what h5py writes by default)."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head.startswith(_SIGNATURE) or len(head) < 12 or head[8] not in (2, 3) or head[9] not in (4, 8):
        return None
    size = head[9]
    sum_at = 12 + 4 * size
    if len(head) < sum_at + 4:
        return None
    base = int.from_bytes(head[12 : 12 + size], "little")
    eof = int.from_bytes(head[12 + 2 * size : 12 + 3 * size], "little")
    (stored,) = struct.unpack_from("<I", head, sum_at)
    return Superblock(flags=head[11], stored_eof=base + eof, intact=lookup3(head[:sum_at]) == stored)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64)


def _zeroed(head: bytes, flags_at: int, sum_at: int) -> bytes:
    """``head`` through its checksum, flags zeroed and checksum recomputed."""
    fixed = bytearray(head[:sum_at])
    fixed[flags_at] = 0
    return bytes(fixed) + struct.pack("<I", lookup3(bytes(fixed)))


def without_flags(path: str | os.PathLike[str]) -> bytes:
    """The superblock bytes (through its checksum) with the status flags zeroed and the checksum
    recomputed: what a reader presents to HDF5 to open a file no writer is writing any more."""
    path = Path(path)
    head = _head(path)
    flags_at, sum_at = _superblock(head, path)
    if len(head) < sum_at + 4:
        raise ArchiveError(path, "truncated HDF5 superblock")
    return _zeroed(head, flags_at, sum_at)


def status_flags(path: str | os.PathLike[str]) -> int:
    """The superblock's file consistency flags (0 when no writer holds or held it open)."""
    path = Path(path)
    head = _head(path)
    flags_at, _ = _superblock(head, path)
    return head[flags_at]


def clear_status_flags(path: str | os.PathLike[str]) -> bool:
    """Zero the consistency flags left by a dead writer; returns whether anything changed.

    The caller must have made sure that no live process writes the file.
    """
    path = Path(path)
    sb = superblock(path)
    if sb is None:
        _superblock(_head(path), path)  # raises the reason
        raise ArchiveError(path, "truncated HDF5 superblock; the file cannot be repaired")
    if not sb.intact:
        raise ArchiveError(path, "HDF5 superblock checksum mismatch; the file is corrupt")
    if sb.flags == 0:
        return False
    fixed = without_flags(path)
    with open(path, "r+b") as fh:
        fh.write(fixed)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def held_by_writer(path: str | os.PathLike[str]) -> bool:
    """Whether a live process holds HDF5's lock on the file (a non-SWMR writer does).

    HDF5 takes an exclusive ``flock`` when it opens a file for writing and drops it only when
    it closes the file or, for SWMR writers, once SWMR is on; the kernel drops it when the
    process dies. So a file whose flags say "open for write" but which nobody has locked was
    left by a dead writer. (Unreliable if HDF5_USE_FILE_LOCKING=FALSE disables the locks.)
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
