"""Opening a run archive: :func:`open_archive` picks how (plain, SWMR, or through the view of a
file cut short), validates version and layout, and returns an
:class:`~stslive.acquisition.formats.archive.reader.ArchiveReader`.

Contract: opening never waits on damage. SWMR, whose reads retry failed metadata with back-off
for minutes, is used only for a file an SWMR writer holds (or held when it was killed), after its
metadata was read plainly; a file shorter than its superblock records is read through
:func:`~stslive.acquisition.formats.archive.health.open_cut`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.archive.health import ArchiveHealth, open_cut, open_view
from stslive.acquisition.formats.archive.layout import ARCHIVE_VERSION, HDF5_SIGNATURE, REQUIRED, VERSION_ATTR
from stslive.acquisition.formats.archive.reader import DAMAGE, ArchiveReader
from stslive.drivers.errors import ArchiveError, StsliveError

__all__ = ["SWMR_PROBE_S", "open_archive", "swmr_writer_flagged", "writer_alive"]


#: How long a live writer's recorded end of file may run ahead of the bytes on disk, s (it
#: records the new end, then writes up to it).
_SETTLE_S = 1.0
#: Attempts (0.1 s apart) at a plain read of a file an SWMR writer may be updating.
_VIEW_ATTEMPTS = 3
#: Default deadline of the child process that tries an SWMR open when a plain read fails, s.
SWMR_PROBE_S = 5.0


def open_archive(
    path: str | os.PathLike[str], *, swmr: bool | str = False, probe_timeout_s: float = SWMR_PROBE_S
) -> ArchiveReader:
    """Open and validate an archive; ArchiveError on anything that is not one of ours.

    ``swmr=False`` opens plainly: a file a writer holds is refused ("already open").
    ``swmr=True`` or ``"auto"`` follows a live run: SWMR (call :meth:`ArchiveReader.refresh` to see
    more) for a file whose superblock says an SWMR writer holds it (a live run, or one killed),
    a plain open for any other. An SWMR reader retries failed metadata reads with back-off for
    minutes, so a file reaches it only after its metadata was read plainly through
    :func:`~stslive.acquisition.formats.archive.health.open_view` (a file a live writer is
    updating that fails that look is tried with SWMR in a child process first, within
    ``probe_timeout_s`` seconds). A file shorter than its superblock records (cut short) is opened through
    :func:`~stslive.acquisition.formats.archive.health.open_cut` in any mode;
    :attr:`ArchiveReader.health` then says so. Nothing here waits on damage.
    """
    if swmr not in (True, False, "auto"):
        raise ArchiveError(path, f"swmr must be True, False or 'auto', got {swmr!r}")
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(path, "no such file; check the path")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        raise ArchiveError(
            path,
            "not an HDF5 file, so not an stslive run archive (a Nanonis .3ds or .dat: stslive analyse or replay it)",
        )
    sb = _h5status.superblock(path)
    if sb is not None and not sb.intact:
        raise ArchiveError(path, "HDF5 superblock checksum mismatch: the file is corrupt")
    size = path.stat().st_size
    flags = 0 if sb is None else sb.flags
    swmr_writer = bool(flags & _h5status.SWMR_WRITE_ACCESS)
    if sb is not None and size < sb.stored_eof and swmr and swmr_writer:
        deadline = time.monotonic() + _SETTLE_S
        while sb is not None and size < sb.stored_eof and time.monotonic() < deadline:
            time.sleep(0.05)
            sb, size = _h5status.superblock(path), path.stat().st_size
    if sb is not None and size < sb.stored_eof:
        return _open_cut(path, ArchiveHealth(size_bytes=size, stored_bytes=sb.stored_eof))
    if swmr and flags & _h5status.WRITE_ACCESS and not swmr_writer:
        raise ArchiveError(
            path,
            "marked open for writing but not by an SWMR writer: another process writes it, a "
            "non-SWMR writer died while writing it (resume it to clear that), or the file is corrupt",
        )
    if swmr and swmr_writer:
        _check_plainly(path, probe_timeout_s)
    try:
        f = h5py.File(path, "r", libver="latest", swmr=bool(swmr) and swmr_writer)
    except OSError as exc:
        hint = (
            "a writer holds it or was killed: read with swmr=True, or resume it"
            if "already open" in str(exc)
            else "the file is truncated or corrupt"
        )
        raise ArchiveError(path, f"cannot open ({exc}); {hint}") from exc
    return _validated(f, path, ArchiveHealth(size_bytes=size, stored_bytes=None if sb is None else sb.stored_eof))


def swmr_writer_flagged(path: str | os.PathLike[str]) -> bool:
    """Whether the file's superblock says an SWMR writer holds it (a live run, or one killed:
    :func:`writer_alive` tells them apart); False for a file that is not there."""
    try:
        sb = _h5status.superblock(path)
    except OSError:
        return False
    return sb is not None and bool(sb.flags & _h5status.SWMR_WRITE_ACCESS)


def writer_alive(writer_doc: object) -> bool | None:
    """Whether the process of an archive's ``writer`` document (pid, host) is alive.

    None when it cannot be told: no usable document, or another host.
    """
    if not isinstance(writer_doc, dict):
        return None
    pid, host = writer_doc.get("pid"), writer_doc.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _check_plainly(path: Path, probe_timeout_s: float) -> None:
    """Read every piece of metadata a reader uses through the flag-clearing view, so an SWMR open
    that follows cannot stall on damage; ArchiveError when it is damaged.

    A failure is retried (a live writer's torn update), then decided by an SWMR open in a child
    process within ``probe_timeout_s`` (s; only another process can be abandoned while HDF5 retries).
    """
    failure: Exception | None = None
    for attempt in range(_VIEW_ATTEMPTS):
        try:
            f, health = open_view(path)
            with _validated(f, path, health) as reader:
                _read_all_metadata(reader)
            return
        except (StsliveError, OSError, RuntimeError, ValueError, KeyError) as exc:
            failure = exc
            time.sleep(0.1 * (attempt + 1))
    probe = "import sys; from stslive.acquisition.formats.archive.opener import swmr_probe; swmr_probe(sys.argv[1])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe, os.fspath(path)], capture_output=True, timeout=probe_timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        done = None
    if done is not None and done.returncode == 0:
        return
    why = "HDF5 kept retrying" if done is None else "it fails"
    raise ArchiveError(
        path,
        f"marked open by an SWMR writer, unreadable plainly ({failure}) and with SWMR ({why} "
        f"within {probe_timeout_s:g} s): the file is corrupt",
    )


def _read_all_metadata(reader: ArchiveReader) -> None:
    _ = reader.measured, reader.failed, reader.pixel_meta, reader.documents, reader.log, reader.setpoint_sets
    reader.spectra_chunk_index()


def swmr_probe(path: str) -> None:
    """Child-process side of :func:`_check_plainly`: open with SWMR and read every piece of
    metadata a reader uses (exit status 0), or raise."""
    f = h5py.File(path, "r", libver="latest", swmr=True)
    with _validated(f, Path(path), ArchiveHealth(size_bytes=0, stored_bytes=None)) as reader:
        _read_all_metadata(reader)


def _open_cut(path: Path, health: ArchiveHealth) -> ArchiveReader:
    try:
        f, health = open_cut(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ArchiveError(
            path, f"{health.describe()}; its layout lies past the cut ({exc}): the file is truncated or corrupt"
        ) from exc
    reader = _validated(f, path, health)
    if reader.health.readable is not None and not reader.health.readable.any():
        what = reader.health.describe()
        reader.close()
        raise ArchiveError(path, f"{what}: no spectrum survived the cut; the file is truncated or corrupt")
    return reader


def _validated(f: h5py.File, path: Path, health: ArchiveHealth) -> ArchiveReader:
    """The reader of an open file after checking version and layout; the file is closed on any error."""
    try:
        version = f.attrs.get(VERSION_ATTR)
        if version is None:
            raise ArchiveError(path, f"HDF5 file without the {VERSION_ATTR!r} attribute: not an stslive archive")
        if int(version) != ARCHIVE_VERSION:
            raise ArchiveError(
                path,
                f"archive version {int(version)}; this stslive reads version "
                f"{ARCHIVE_VERSION}: use a matching stslive release",
            )
        missing = [name for name in REQUIRED if name not in f]
        if missing:
            raise ArchiveError(path, f"archive layout incomplete, missing {missing}")
        return ArchiveReader(f, path, health)
    except StsliveError:
        f.close()
        raise
    except DAMAGE as exc:  # HDF5 read errors deep in a damaged file
        f.close()
        what = health.describe() or "damaged archive"
        raise ArchiveError(path, f"{what} ({exc}); the file is truncated or corrupt") from exc
    except BaseException:  # anything else still must not leave the file open
        f.close()
        raise
