"""Opening a run archive for the screen, and the screen's wording of a truncated one.

:func:`open_for_viewing` is :func:`~stslive.acquisition.formats.archive.open_archive` with
``swmr="auto"``: a live run is followed with SWMR, a killed writer's file opens, a file cut short
is read as far as it goes (:attr:`ArchiveReader.health` says which pixels survived) and a damaged
one fails with ArchiveError within the screen's deadline. :func:`truncation_note` is the status
line of a truncated archive.
"""

from __future__ import annotations

from pathlib import Path

from stslive.acquisition.formats.archive import ArchiveHealth, ArchiveReader, open_archive

__all__ = ["open_for_viewing", "truncation_note"]


def open_for_viewing(path: str | Path, *, timeout_s: float = 10.0) -> ArchiveReader:
    """Open ``path`` read-only; ArchiveError when it cannot be read.

    ``timeout_s`` (s) bounds the SWMR look, in a child process, at a file an SWMR writer holds
    whose metadata failed a plain read (HDF5 retries damaged metadata for minutes in SWMR mode);
    the opener's other waits are short and fixed (a growing file's recorded end settling, a torn
    update read again).
    """
    return open_archive(path, swmr="auto", probe_timeout_s=timeout_s)


def truncation_note(health: ArchiveHealth, readable: int) -> str:
    """The screen's status line for a truncated archive ("" for a whole one): how much of the file
    is there (MB) and how many of the pixels it recorded as measured can be read."""
    if not health.truncated or health.stored_bytes is None:
        return ""
    recorded = readable if health.recorded_measured is None else health.recorded_measured
    return (
        f"TRUNCATED archive: {health.size_bytes / 1e6:.1f} of {health.stored_bytes / 1e6:.1f} MB present "
        f"({100 * health.size_bytes / health.stored_bytes:.1f} %): {readable:,} of its {recorded:,} "
        "measured pixels readable"
    )
