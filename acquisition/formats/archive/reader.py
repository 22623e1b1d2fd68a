"""Reading a run archive: :func:`open_archive` validates a file and returns an :class:`ArchiveReader`.

Contract: every read of a damaged file raises ArchiveError (never an h5py or numpy error), also
in SWMR mode while a writer appends, and opening never waits on damage: SWMR (whose reads retry
with back-off) only for a file an SWMR writer holds, a file cut short through
:func:`~stslive.acquisition.formats.archive.health.open_view` with :attr:`ArchiveReader.health`
saying so and only the pixels inside the file measured. :meth:`ArchiveReader.events` is the one way from archived
pixels to run-stream events (:meth:`ArchiveReader.start_document` the one start document), in
the order the consumer needs: row-major (recovery), visiting order, or by end time (what a live
consumer received: analyser backfill, replay).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypeVar, get_args

import h5py
import numpy as np

from stslive.acquisition.formats.archive.conditions import archive_conditions
from stslive.acquisition.formats.archive.health import ArchiveHealth, ChunkLoss, chunk_loss, lost_entirely
from stslive.acquisition.formats.archive.layout import (
    first_unmeasured,
    read_geometry,
    read_text,
)
from stslive.acquisition.formats.codec import MalformedMessage, json_safe
from stslive.acquisition.formats.conditions import AmplitudeConvention, RecordingConditions
from stslive.acquisition.formats.documents import EventDoc, StartDoc, event_fields
from stslive.acquisition.formats.runmodel import PIXEL_META_FIELDS, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError, StsliveError

Pixel: TypeAlias = tuple[int, int]  # (iy, ix)
#: Orders of :meth:`ArchiveReader.events`: ``row-major``; ``visit`` (the grid's raster or serpentine
#: visiting order); ``end-time`` (by the time each measurement ended, ties in visiting order).
EventOrder: TypeAlias = Literal["row-major", "visit", "end-time"]
EVENT_ORDERS: tuple[EventOrder, ...] = get_args(EventOrder)
#: What h5py, json and the value types raise on a damaged file (found by tests/fuzz/test_fuzz_archive.py).
DAMAGE = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)
_Read = TypeVar("_Read", bound=Callable[..., Any])


def _reading(method: _Read) -> _Read:
    """Turn errors deep in a damaged file into ArchiveError; our typed errors pass unchanged."""

    @functools.wraps(method)
    def wrapper(self: ArchiveReader, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StsliveError:
            raise
        except DAMAGE as exc:
            raise ArchiveError(
                self.path, f"damaged archive ({type(exc).__name__}: {exc}); the file is truncated or corrupt"
            ) from exc

    return wrapper  # type: ignore[return-value]


class ArchiveReader:
    """Read-only view of an archive; in SWMR mode :meth:`refresh` shows pixels appended since.

    ``health`` (:class:`~stslive.acquisition.formats.archive.health.ArchiveHealth`) says whether
    the file was cut short; then every read returns fill values (NaN, unmeasured) for what lies
    past the cut, text records end at the cut, and :attr:`measured` holds only pixels whose
    spectra are inside the file.
    """

    def __init__(self, file: h5py.File, path: Path, health: ArchiveHealth | None = None) -> None:
        self._f = file
        self.path = path
        self.health = health if health is not None else ArchiveHealth(size_bytes=0, stored_bytes=None)
        self._loss: dict[str, ChunkLoss] = {}
        entry = file["entry"]
        self._entry = entry
        self.geometry = read_geometry(entry, path)
        # One handle per dataset, kept for the reader's life (see refresh()).
        self._ds: dict[str, h5py.Dataset] = {}
        if self.health.truncated:
            self._keep_surviving(entry, "")
        else:
            entry.visititems(self._keep)
        required = ("data/spectra", "measured", "failed", "failure_code", "setpoint_sets", "failures", "log")
        if missing := [name for name in required if name not in self._ds]:
            raise ArchiveError(path, f"{self.health.describe() or 'layout'}: /entry/{missing[0]} is unreadable")
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
        if self.health.truncated:
            self._measured_cut = self._surviving_pixels()

    def _keep(self, name: str, obj: h5py.Group | h5py.Dataset) -> None:  # None: visititems goes on
        if isinstance(obj, h5py.Dataset):
            self._ds[name] = obj

    def _keep_surviving(self, group: h5py.Group, prefix: str) -> None:
        """Collect the datasets of a truncated file whose headers survived the cut (a group lost
        with its members is left out; a required one is missed by the layout check)."""
        try:
            names = list(group)
        except DAMAGE:
            return
        for name in names:
            try:
                obj = group[name]
            except DAMAGE:
                continue
            if isinstance(obj, h5py.Group):
                self._keep_surviving(obj, f"{prefix}{name}/")
            else:
                self._keep(prefix + name, obj)

    # -- reads that know about a cut --
    def _lost(self, name: str) -> ChunkLoss:
        """What of dataset ``name`` lies past the cut; all of it when its chunk index does."""
        if name not in self._loss:
            try:
                self._loss[name] = chunk_loss(self._ds[name], self.health.size_bytes)
            except (OSError, RuntimeError, ValueError):  # the index itself is past the cut: nothing to locate
                self._loss[name] = lost_entirely(self._ds[name])
        return self._loss[name]

    def _read(self, name: str) -> np.ndarray:
        """Dataset ``name`` whole; in a truncated file what lies past the cut is its fill value."""
        ds = self._ds[name]
        if not self.health.truncated:
            return ds[()]
        loss = self._lost(name)
        if ds.ndim == 1 and ds.dtype == np.uint8:  # JSON text: it ends where the cut begins
            lost = loss.mask(ds.shape)
            return ds[: int(np.argmax(lost))] if lost.any() else ds[()]
        data = np.array(ds[()])
        if loss.lost.any():
            data[loss.mask(ds.shape)] = ds.fillvalue
        return data

    def _json_lines(self, name: str) -> list[Any]:
        text = self._read(name).tobytes()
        lines = text.splitlines()
        if self.health.truncated and lines and not text.endswith(b"\n"):
            lines = lines[:-1]  # a record cut in the middle
        return [json.loads(line) for line in lines if line.strip()]

    def _surviving_pixels(self) -> np.ndarray:
        """Measured pixels of a truncated file whose spectra lie inside it: by their flags where
        those survived, else by their spectra having been written (the writer writes spectra,
        then the flag)."""
        ny, nx = self.geometry.shape
        spectra, flags = self._lost("data/spectra"), self._lost("measured")
        readable = (spectra.mask((ny, nx), spectra.stored) & ~spectra.mask((ny, nx)))[..., 0, 0]
        flagged = np.array(self._ds["measured"][()], dtype=bool)
        flag_lost = flags.mask((ny, nx))
        recorded = np.where(flag_lost, spectra.mask((ny, nx), spectra.stored)[..., 0, 0], flagged)
        self.health = ArchiveHealth(
            size_bytes=self.health.size_bytes,
            stored_bytes=self.health.stored_bytes,
            readable=readable,
            recorded_measured=int(recorded.sum()),
        )
        return recorded & readable

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
        if self.health.truncated:
            return self._measured_cut.copy()
        return self._ds["measured"][()]

    @property
    @_reading
    def failed(self) -> np.ndarray:
        return self._read("failed")

    @property
    @_reading
    def failure_codes(self) -> np.ndarray:
        return self._read("failure_code")

    @property
    @_reading
    def failures(self) -> list[dict[str, Any]]:
        """Every recorded failure: dicts with iy, ix, code, reason, time and details."""
        return self._json_lines("failures")

    @property
    @_reading
    def log(self) -> list[dict[str, Any]]:
        return self._json_lines("log")

    @property
    @_reading
    def setpoint_sets(self) -> dict[int, SetpointSet]:
        return {d["id"]: SetpointSet.from_dict(d) for d in self._json_lines("setpoint_sets")}

    @property
    @_reading
    def pixel_meta(self) -> dict[str, np.ndarray]:
        """``field -> (ny, nx)`` array for every PixelMeta field (fill values where unmeasured)."""
        return {f.name: self._read(f"pixels/{f.name}") for f in PIXEL_META_FIELDS}

    @_reading
    def pixel(self, iy: int, ix: int) -> PixelMeta:
        """The metadata of one pixel as a PixelMeta."""
        if self.health.truncated:
            return PixelMeta(**{name: values[iy, ix].item() for name, values in self.pixel_meta.items()})
        return PixelMeta(**{f.name: self._ds[f"pixels/{f.name}"][iy, ix].item() for f in PIXEL_META_FIELDS})

    @property
    @_reading
    def documents(self) -> dict[str, Any]:
        """Run documents that were written, ``name -> dict`` (JSON); in a truncated file, those whole."""
        out = {}
        for key in (k for k in self._ds if k.startswith("documents/")):
            text = self._read(key).tobytes() if self.health.truncated else read_text(self._ds[key])
            if not text:
                continue
            try:
                out[key.split("/", 1)[1]] = json.loads(text)
            except ValueError:
                if not self.health.truncated:
                    raise
        return out

    @property
    @_reading
    def topography(self) -> np.ndarray | None:
        if "sample/topography" not in self._ds or self._survived_cut("sample/topography") is False:
            return None
        return self._ds["sample/topography"][()]

    @property
    @_reading
    def ground_truth(self) -> dict[str, np.ndarray]:
        names = [k for k in self._ds if k.startswith("sample/ground_truth/")]
        return {k.rsplit("/", 1)[1]: self._ds[k][()] for k in names if self._survived_cut(k) is not False}

    def _survived_cut(self, name: str) -> bool | None:
        """Whether dataset ``name`` lies wholly inside a truncated file (None: the file is whole)."""
        return None if not self.health.truncated else not self._lost(name).lost.any()

    def conditions(self, *, amplitude_convention: AmplitudeConvention | None = None) -> RecordingConditions:
        """Temperature, modulation and bias wiring the archive records
        (:func:`~stslive.acquisition.formats.archive.conditions.archive_conditions`); stslive stores
        the modulation as rms, so ``amplitude_convention`` (for Nanonis files) does not apply."""
        return archive_conditions(self)

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
        block = self._spectra[rows, cols]
        if self.health.truncated:  # NaN for every pixel not (wholly) inside the file
            block[~self._pixels_inside()[rows, cols]] = np.nan
        if channels is None:
            return block
        idx = [self.channel_index(c) for c in channels]
        return np.ascontiguousarray(block[:, :, idx])

    @_reading
    def spectra_chunk_index(self) -> int:
        """Walk the spectra's whole chunk index (a check that it is readable); returns the stored chunks."""
        count = [0]

        def visit(info: h5py.h5d.StoreInfo) -> None:
            count[0] += info.byte_offset is not None

        self._spectra.id.chunk_iter(visit)
        return count[0]

    def _pixels_inside(self) -> np.ndarray:
        readable = self.health.readable
        return np.zeros(self.geometry.shape, bool) if readable is None else readable

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
        meta = self._read("pixels/t_end"), self._read("pixels/t_start")
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
            grid row at a time; the array is a read-only view of that row. While a writer appends
            (SWMR), a pixel (re-)written while it was read is left out, never torn (a live
            consumer gets that measurement on the stream: the scan publishes it once archived).
        """
        live = bool(self._f.swmr_mode)
        if live:
            self.refresh()  # nothing cached from earlier reads: the metadata are read before the flags
        meta = self.pixel_meta  # whole (ny, nx) maps: one read per field, not per pixel
        row_index, row, whole = -1, np.empty(0), None
        for iy, ix in self.event_pixels(order, pixels):
            if iy != row_index:
                row_index, row = iy, self.read_pixels(slice(iy, iy + 1), slice(None))[0]
                row.flags.writeable = False
                whole = self._unchanged_row(iy, meta) if live else None
            if whole is not None and not whole[ix]:
                continue
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
    def _unchanged_row(self, iy: int, meta: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(nx,)`` True where row ``iy``'s pixels are measured now with the metadata ``meta`` holds.

        :meth:`events` calls it after reading the row's spectra, ``meta`` read before the flags.
        The writer flushes a pixel's spectra and metadata before its flag, and clears the flag
        before re-writing them: a pixel measured at both flag reads with unchanged metadata was
        not written in between, so its spectra belong to ``meta`` (without this check a read
        during a write paired new spectra with the previous, or the fill, metadata).
        """
        for name in ("measured", *(f"pixels/{f.name}" for f in PIXEL_META_FIELDS)):
            self._ds[name].refresh()  # the flags first, as refresh(); drops the chunks read before
        keep = np.array(self._ds["measured"][iy], dtype=bool)
        for f in PIXEL_META_FIELDS:
            before, now = meta[f.name][iy], self._ds[f"pixels/{f.name}"][iy]
            same = before == now
            if before.dtype.kind == "f":
                same |= np.isnan(before) & np.isnan(now)
            keep &= same
        return keep

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
