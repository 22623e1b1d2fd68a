"""Reading a run archive: :func:`open_archive` validates a file and returns an :class:`ArchiveReader`.

Contract: every read of a damaged file raises ArchiveError (never an h5py or numpy error), also
in SWMR mode while a writer appends. :meth:`ArchiveReader.events` is the one way from archived
pixels to run-stream events (:meth:`ArchiveReader.start_document` the one start document), in
the order the consumer needs: row-major (recovery), visiting order, or by end time (what a live
consumer received: analyser backfill, replay).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypeVar, get_args

import h5py
import numpy as np

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.archive.layout import (
    ARCHIVE_VERSION,
    HDF5_SIGNATURE,
    REQUIRED,
    VERSION_ATTR,
    first_unmeasured,
    json_lines,
    read_geometry,
    read_text,
)
from stslive.acquisition.formats.codec import MalformedMessage, json_safe
from stslive.acquisition.formats.documents import EventDoc, StartDoc, event_fields
from stslive.acquisition.formats.runmodel import PIXEL_META_FIELDS, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError, StsliveError

Pixel: TypeAlias = tuple[int, int]  # (iy, ix)
#: Orders of :meth:`ArchiveReader.events`: ``row-major``; ``visit`` (the grid's raster or serpentine
#: visiting order); ``end-time`` (by the time each measurement ended, ties in visiting order).
EventOrder: TypeAlias = Literal["row-major", "visit", "end-time"]
EVENT_ORDERS: tuple[EventOrder, ...] = get_args(EventOrder)
#: What h5py, json and the value types raise on a damaged file (found by tests/fuzz/test_fuzz_archive.py).
_DAMAGE = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)
_Read = TypeVar("_Read", bound=Callable[..., Any])


def _reading(method: _Read) -> _Read:
    """Turn errors deep in a damaged file into ArchiveError; our typed errors pass unchanged."""

    @functools.wraps(method)
    def wrapper(self: ArchiveReader, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StsliveError:
            raise
        except _DAMAGE as exc:
            raise ArchiveError(
                self.path, f"damaged archive ({type(exc).__name__}: {exc}); the file is truncated or corrupt"
            ) from exc

    return wrapper  # type: ignore[return-value]


class ArchiveReader:
    """Read-only view of an archive; in SWMR mode :meth:`refresh` shows pixels appended since."""

    def __init__(self, file: h5py.File, path: Path) -> None:
        self._f = file
        self.path = path
        entry = file["entry"]
        self._entry = entry
        self.geometry = read_geometry(entry, path)
        # One handle per dataset, kept for the reader's life (see refresh()).
        self._ds: dict[str, h5py.Dataset] = {}

        def keep(name: str, obj: h5py.Group | h5py.Dataset) -> None:  # None: visititems goes on
            if isinstance(obj, h5py.Dataset):
                self._ds[name] = obj

        entry.visititems(keep)
        self._spectra: h5py.Dataset = self._ds["data/spectra"]
        self.channel_names: list[str] = [
            s.decode() if isinstance(s, bytes) else str(s) for s in entry["data/channel_names"][()]
        ]
        self.channel_units: list[str] = [
            s.decode() if isinstance(s, bytes) else str(s) for s in entry["data/channel_units"][()]
        ]
        self.bias: np.ndarray = entry["data/bias"][()]
        self.run_uid = str(entry.attrs.get("run_uid", ""))
        self.software_version = str(entry.attrs.get("software_version", ""))
        ny, nx = self.geometry.shape
        expect = (ny, nx, len(self.channel_names), self.bias.size)
        if self._spectra.shape != expect:
            raise ArchiveError(path, f"spectra shape {self._spectra.shape} does not match grid/channels {expect}")
        for name in ("measured", "failed", "failure_code", *(f"pixels/{f.name}" for f in PIXEL_META_FIELDS)):
            if name not in self._ds or self._ds[name].shape != (ny, nx):
                raise ArchiveError(path, f"/entry/{name} missing or not of shape {(ny, nx)}")

    @property
    def n_points(self) -> int:
        return int(self.bias.size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape

    @_reading
    def refresh(self) -> None:
        """Re-read dataset extents and chunk indexes (SWMR): new pixels, failures, log lines.

        The flags are refreshed first: the writer flushes data before flags, so every pixel the
        refreshed flags call measured is already in the spectra refreshed after them. Only the
        handles this reader holds are refreshed: refreshing a second handle of a dataset left
        the first one reading stale chunks (seen with HDF5 2.0 / h5py 3.16).
        """
        for name in ("measured", "failed", "failure_code"):
            self._ds[name].refresh()
        for name, ds in self._ds.items():
            if name not in ("measured", "failed", "failure_code"):
                ds.refresh()

    @property
    @_reading
    def measured(self) -> np.ndarray:
        return self._ds["measured"][()]

    @property
    @_reading
    def failed(self) -> np.ndarray:
        return self._ds["failed"][()]

    @property
    @_reading
    def failure_codes(self) -> np.ndarray:
        return self._ds["failure_code"][()]

    @property
    @_reading
    def failures(self) -> list[dict[str, Any]]:
        """Every recorded failure: dicts with iy, ix, code, reason, time and details."""
        return json_lines(self._ds["failures"])

    @property
    @_reading
    def log(self) -> list[dict[str, Any]]:
        return json_lines(self._ds["log"])

    @property
    @_reading
    def setpoint_sets(self) -> dict[int, SetpointSet]:
        return {d["id"]: SetpointSet.from_dict(d) for d in json_lines(self._ds["setpoint_sets"])}

    @property
    @_reading
    def pixel_meta(self) -> dict[str, np.ndarray]:
        """``field -> (ny, nx)`` array for every PixelMeta field (fill values where unmeasured)."""
        return {f.name: self._ds[f"pixels/{f.name}"][()] for f in PIXEL_META_FIELDS}

    @_reading
    def pixel(self, iy: int, ix: int) -> PixelMeta:
        """The metadata of one pixel as a PixelMeta."""
        return PixelMeta(**{f.name: self._ds[f"pixels/{f.name}"][iy, ix].item() for f in PIXEL_META_FIELDS})

    @property
    @_reading
    def documents(self) -> dict[str, Any]:
        """Run documents that were written, ``name -> dict`` (JSON)."""
        docs = {k.split("/", 1)[1]: ds for k, ds in self._ds.items() if k.startswith("documents/")}
        return {name: json.loads(read_text(ds)) for name, ds in docs.items() if ds.shape[0]}

    @property
    @_reading
    def topography(self) -> np.ndarray | None:
        sample = self._entry.get("sample")
        return None if sample is None or "topography" not in sample else sample["topography"][()]

    @property
    @_reading
    def ground_truth(self) -> dict[str, np.ndarray]:
        group = self._entry.get("sample/ground_truth")
        return {} if group is None else {k: group[k][()] for k in group}

    @property
    @_reading
    def ground_truth_units(self) -> dict[str, str]:
        group = self._entry.get("sample/ground_truth")
        return {} if group is None else {k: str(group[k].attrs.get("units", "")) for k in group}

    def channel_index(self, name: str) -> int:
        """Index of channel ``name``; ArchiveError listing the channels when absent."""
        try:
            return self.channel_names.index(name)
        except ValueError:
            raise ArchiveError(self.path, f"no channel {name!r}; channels are {self.channel_names}") from None

    @_reading
    def read_pixels(
        self, rows: slice = slice(None), cols: slice = slice(None), channels: Sequence[str] | None = None
    ) -> np.ndarray:
        """Spectra ``(rows, cols, channels, n_points)`` float32 (NaN where unmeasured)."""
        if channels is None:
            return self._spectra[rows, cols]
        idx = [self.channel_index(c) for c in channels]
        block = self._spectra[rows, cols]
        return np.ascontiguousarray(block[:, :, idx])

    def iter_blocks(
        self, rows: int | None = None, channels: Sequence[str] | None = None, max_bytes: int = 64 * 2**20
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(row_slice, spectra block)`` over the grid, a few rows at a time.

        ``rows`` defaults to as many as fit in ``max_bytes`` (at least one row).
        """
        ny, nx = self.geometry.shape
        if rows is None:
            per_row = nx * len(self.channel_names) * self.n_points * 4
            rows = max(1, int(max_bytes // per_row))
        if rows < 1:
            raise ArchiveError(self.path, f"rows must be >= 1, got {rows}")
        for start in range(0, ny, rows):
            sl = slice(start, min(ny, start + rows))
            yield sl, self.read_pixels(sl, slice(None), channels)

    @_reading
    def first_unmeasured(self, order: str | None = None) -> tuple[int, int] | None:
        """First pixel ``(iy, ix)`` in visiting order that is not measured, None when all are."""
        return first_unmeasured(self.geometry, self.measured, order)

    # -- the one path from archived pixels to run-stream documents --
    @_reading
    def event_pixels(self, order: EventOrder = "row-major", pixels: Collection[Pixel] | None = None) -> list[Pixel]:
        """Measured pixels ``(iy, ix)`` in ``order`` (:data:`EventOrder`); only those of ``pixels`` if given.

        ``end-time`` sorts by each measurement's ``t_end`` (``t_start`` where the end was not
        recorded; pixels with neither come last), ties in visiting order: the order a live
        consumer received them in. Pixels of ``pixels`` outside the grid or not measured are skipped.
        """
        if order not in EVENT_ORDERS:
            raise ArchiveError(self.path, f"event order {order!r} unknown; one of {EVENT_ORDERS}")
        measured = np.asarray(self.measured, dtype=bool)
        if pixels is not None:
            wanted = np.zeros_like(measured)
            ny, nx = measured.shape
            for iy, ix in pixels:
                if 0 <= iy < ny and 0 <= ix < nx:
                    wanted[iy, ix] = True
            measured &= wanted
        if order == "row-major":
            seq = np.argwhere(measured)
        else:
            visit = self.geometry.visit_order()
            seq = visit[measured[visit[:, 0], visit[:, 1]]]
        if order == "end-time":
            t = self.end_times()[seq[:, 0], seq[:, 1]]
            seq = seq[np.argsort(np.where(np.isfinite(t), t, np.inf), kind="stable")]
        return [(int(iy), int(ix)) for iy, ix in seq]

    @_reading
    def end_times(self) -> np.ndarray:
        """``(ny, nx)`` time each pixel's measurement ended (unix s): ``t_end``, else ``t_start``, else NaN."""
        meta = self._ds["pixels/t_end"][()], self._ds["pixels/t_start"][()]
        return np.where(np.isfinite(meta[0]), meta[0], meta[1])

    def events(
        self,
        order: EventOrder = "row-major",
        *,
        pixels: Collection[Pixel] | None = None,
        descriptor_uid: str = "",
        array_name: str = "spectra",
    ) -> Iterator[EventDoc]:
        """The run's events rebuilt from the archive: one per measured pixel, in ``order``.

        Parameters
        ----------
        order
            See :meth:`event_pixels`.
        pixels
            Only these pixels ``(iy, ix)`` (those not measured are skipped).
        descriptor_uid
            Descriptor to name in the events (the archive stores none).
        array_name
            Name of the ``(n_channels, n_points)`` float32 spectra array.

        Yields
        ------
        EventDoc
            With ``seq = -1`` (not from the wire) and the archive's run uid. Spectra are read one
            grid row at a time; the array is a read-only view of that row.
        """
        meta = self.pixel_meta  # whole (ny, nx) maps: one read per field, not per pixel
        row_index, row = -1, np.empty(0)
        for iy, ix in self.event_pixels(order, pixels):
            if iy != row_index:
                row_index, row = iy, self.read_pixels(slice(iy, iy + 1), slice(None))[0]
                row.flags.writeable = False
            fields = event_fields({name: values[iy, ix].item() for name, values in meta.items()})
            yield EventDoc(
                run_uid=self.run_uid,
                seq=-1,
                descriptor_uid=descriptor_uid,
                ix=ix,
                iy=iy,
                arrays={array_name: row[ix]},
                **fields,
            )

    @_reading
    def start_document(self) -> StartDoc:
        """The run's start document, rebuilt from the archive (``seq`` 0, uid = run uid).

        Grid, channels and their units, points and set-point sets are the archive's own record;
        instruments, metadata and time come from the stored ``documents/start`` (left empty, or the
        creation time, where it lacks them or holds something else); the software version is the
        one that wrote the archive. Non-finite numbers in the stored metadata become None.
        """
        stored = self.documents.get("start")
        stored = stored if isinstance(stored, dict) else {}
        instruments = stored.get("instruments")
        if not (isinstance(instruments, dict) and all(isinstance(v, str) for v in instruments.values())):
            instruments = {}
        metadata = stored.get("metadata")
        t = stored.get("time")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            t = datetime.fromisoformat(str(self._entry.attrs["start_time"])).timestamp()
        try:
            return StartDoc(
                run_uid=self.run_uid,
                uid=self.run_uid,
                seq=0,
                time=float(t),
                grid=self.geometry.to_dict(),
                channel_names=tuple(self.channel_names),
                channel_units=tuple(self.channel_units),
                n_points=self.n_points,
                setpoint_sets=tuple(s.to_dict() for _, s in sorted(self.setpoint_sets.items())),
                instruments={str(k): v for k, v in instruments.items()},
                software_version=self.software_version or "unknown",
                metadata=json_safe(metadata) if isinstance(metadata, dict) else {},
            )
        except MalformedMessage as exc:
            raise ArchiveError(self.path, f"cannot make a start document of this archive: {exc.detail}") from exc

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_archive(path: str | os.PathLike[str], *, swmr: bool | str = False) -> ArchiveReader:
    """Open and validate an archive; ArchiveError on anything that is not one of ours.

    ``swmr=True`` reads while a writer appends (call :meth:`ArchiveReader.refresh` to see more).
    ``swmr="auto"`` opens a finished file normally and falls back to SWMR only when a writer holds
    it (or was killed holding it). Use it wherever a file may or may not be live: an SWMR reader
    retries every failed metadata read with back-off, so a truncated or corrupt file opened with
    SWMR can stall for minutes inside HDF5, while a plain open fails at once with a clear error.
    """
    if swmr == "auto":
        try:
            return open_archive(path, swmr=False)
        except ArchiveError as exc:
            if "already open" not in str(exc):
                raise
            # Only a file an SWMR writer holds (or held when it died) goes to the SWMR reader: its
            # superblock is intact and says so. Anything else "already open" is damage, and an SWMR
            # open of a damaged file can retry inside HDF5 for minutes.
            if not (_h5status.superblock_intact(path) and _h5status.status_flags(path) & _h5status.SWMR_WRITE_ACCESS):
                raise ArchiveError(
                    path,
                    "marked open for writing but not by an SWMR writer, or its "
                    "superblock checksum is wrong: a non-SWMR writer died while "
                    "writing it, or the file is corrupt",
                ) from exc
        return open_archive(path, swmr=True)
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(path, "no such file; check the path")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_SIGNATURE:
        raise ArchiveError(
            path, "not an HDF5 file, so not an stslive run archive (a Nanonis .3ds grid: stslive analyse or replay it)"
        )
    try:
        f = h5py.File(path, "r", libver="latest", swmr=swmr)
    except OSError as exc:
        hint = (
            "a writer holds it or was killed: read with swmr=True, or resume it"
            if "already open" in str(exc)
            else "the file is truncated or corrupt"
        )
        raise ArchiveError(path, f"cannot open ({exc}); {hint}") from exc
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
        return ArchiveReader(f, path)
    except StsliveError:
        f.close()
        raise
    except _DAMAGE as exc:  # HDF5 read errors deep in a damaged file
        f.close()
        raise ArchiveError(path, f"damaged archive ({exc}); the file is truncated or corrupt") from exc
    except BaseException:  # anything else still must not leave the file open
        f.close()
        raise
