"""Size estimates checked before anything is allocated or written: refuse a grid that cannot fit.

A grid of 100000 x 100000 pixels is a typo, not a scan; found out by a ``MemoryError`` after
minutes, or a disk filled with 77 GB, it costs more than a one-line refusal up front. Each
estimate is a rounded-up figure per pixel (measured, see the constants); :func:`require`
compares it with the memory available now and the free space of the target folder and raises
:class:`~stslive.drivers.errors.ConfigError` naming the option, the need and what is there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stslive.drivers.errors import ConfigError

#: Bytes of memory per grid pixel that building a plan takes (the cell and position arrays and
#: the cell -> index dict: 176 B/pixel peak, measured with tracemalloc on 300 x 250), rounded up.
PLAN_BYTES_PER_PIXEL = 256
#: Peak bytes per pixel of building a simulated film (its maps on the padded periodic grid:
#: 117 B/pixel measured on 300 x 250, 310 on 64 x 48 where the padding dominates), rounded up.
FILM_BYTES_PER_PIXEL = 160
#: Archive bytes per pixel beyond its spectra (the per-pixel metadata and masks), rounded up.
ARCHIVE_META_BYTES_PER_PIXEL = 128


def archive_bytes(n_pixels: int, *, channels: int, points: int) -> int:
    """Bytes a complete archive of ``n_pixels`` spectra of ``channels`` x ``points`` float32 takes."""
    return n_pixels * (channels * points * 4 + ARCHIVE_META_BYTES_PER_PIXEL)


def available_memory_bytes() -> int | None:
    """Memory the system can give now without swapping (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def human_bytes(n: float) -> str:
    """``1.5e9`` -> ``"1.5 GB"`` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError("unreachable")


def require(
    what: str,
    *,
    memory_bytes: float = 0,
    disk_bytes: float = 0,
    disk_path: Path | None = None,
) -> None:
    """Refuse ``what`` (e.g. ``"--grid 100000x100000"``) if it needs more memory or disk than there is.

    Parameters
    ----------
    what
        The option and value that asked for it, for the message.
    memory_bytes
        Estimated peak memory (bytes); compared with :func:`available_memory_bytes`.
    disk_bytes, disk_path
        Estimated bytes to write and where (file or folder).

    Raises
    ------
    ConfigError
        One of the needs exceeds what is available; the message gives both figures.
    """
    memory = available_memory_bytes()
    if memory is not None and memory_bytes > memory:
        raise ConfigError(
            f"{what}: needs about {human_bytes(memory_bytes)} of memory, {human_bytes(memory)} is available; "
            "give a smaller grid"
        )
    if disk_path is not None and disk_bytes > 0:
        free = free_disk_bytes(disk_path)
        if disk_bytes > free:
            raise ConfigError(
                f"{what}: writes about {human_bytes(disk_bytes)} to {disk_path}, only {human_bytes(free)} is "
                "free there; give a smaller grid or another place"
            )
