"""The run archive: one HDF5 file per run, the only module that knows its layout.

Layout (version :data:`ARCHIVE_VERSION`, NeXus-style so generic viewers open it)::

    /                         attrs NX_class=NXroot, default=entry, stslive_archive_version
    /entry                    NXentry; attrs run_uid, start_time (ISO 8601), software_version
      data/                   NXdata; signal=spectra, axes=[y, x, ., bias]
        spectra               float32 (ny, nx, n_channels, n_points), chunk = one pixel, NaN fill,
                              uncompressed (a per-pixel flush re-compresses partial chunks)
        channel_names, channel_units   str (n_channels,), Nanonis style "Current (A)"
        bias                  float64 (n_points,) V, the nominal sweep axis
        x, y                  float64 (nx,), (ny,) m, scan-frame axes for viewers (angle 0)
      measured, failed        bool (ny, nx)
      failure_code            int16 (ny, nx), 0 = none
      grid                    NXcollection; the GridGeometry as attributes (SI, unit in the name)
      pixels/<field>          (ny, nx) per PixelMeta field, units attribute
      setpoint_sets           uint8 JSON lines, one SetpointSet per line (appendable)
      failures, log           uint8 JSON lines (appendable)
      documents/<name>        uint8, one JSON document each (start, stop, writer)
      sample/topography       float32 (ny, nx) m, optional
      sample/ground_truth/<name>   simulations only, units attribute

Text that grows during a run is stored as resizable uint8 JSON (lines) rather than
variable-length strings: SWMR readers do not see vlen heap updates reliably, and HDF5 forbids
creating objects or changing attributes once SWMR is on, so every dataset exists before it is.

A pixel is written in two steps: spectra and metadata, flush, then the ``measured`` flag, flush.
The first flush puts the data in the file before the flag can reach it (``flush`` does not
fsync, so this protects against a killed process, not against a power cut). Re-measuring a
measured pixel (:meth:`ArchiveWriter.rewrite_pixel`) first clears its flag (flush) and logs the
replaced record, so "complete and measured, or not measured" holds at every instant.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import h5py
import numpy as np

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.runmodel import PIXEL_META_FIELDS, GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError, StsliveError

ARCHIVE_VERSION = 1
VERSION_ATTR = "stslive_archive_version"
#: Documents that may be (re)written during a run; they must exist before SWMR starts.
DOCUMENT_NAMES: tuple[str, ...] = ("start", "stop", "writer")
_REQUIRED = (
    "entry/data/spectra",
    "entry/data/channel_names",
    "entry/data/channel_units",
    "entry/data/bias",
    "entry/measured",
    "entry/failed",
    "entry/failure_code",
    "entry/grid",
    "entry/setpoint_sets",
    "entry/failures",
    "entry/log",
    "entry/documents/start",
)
_TEXT_CHUNK = 4096
_STR = h5py.string_dtype("utf-8")

GroundTruth = Mapping[str, "np.ndarray | float | tuple[np.ndarray | float, str]"]


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stslive")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, default=_json_default, allow_nan=True, separators=(",", ":")).encode()


def _text_dataset(group: h5py.Group, name: str, content: bytes = b"") -> h5py.Dataset:
    ds = group.create_dataset(name, shape=(len(content),), maxshape=(None,), dtype=np.uint8, chunks=(_TEXT_CHUNK,))
    if content:
        ds[:] = np.frombuffer(content, dtype=np.uint8)
    ds.attrs["content_type"] = "application/json"
    return ds


def _read_text(ds: h5py.Dataset) -> bytes:
    return ds[()].tobytes() if ds.shape[0] else b""


def _json_lines(ds: h5py.Dataset) -> list[Any]:
    return [json.loads(line) for line in _read_text(ds).splitlines() if line.strip()]


def _units_of(value: Any) -> tuple[np.ndarray, str]:
    if isinstance(value, tuple):
        array, units = value
        return np.asarray(array), str(units)
    return np.asarray(value), ""


# -- writer ------------------------------------------------------------------------------------
class ArchiveWriter:
    """Appends a run to its archive; use :meth:`create` or :meth:`open_for_resume`."""

    def __init__(self, file: h5py.File, path: Path) -> None:
        self._f = file
        self.path = path
        entry = file["entry"]
        self.geometry = _read_geometry(entry, path)
        self._spectra: h5py.Dataset = entry["data/spectra"]
        self._measured: h5py.Dataset = entry["measured"]
        self._failed: h5py.Dataset = entry["failed"]
        self._failure_code: h5py.Dataset = entry["failure_code"]
        self._meta = {f.name: entry["pixels"][f.name] for f in PIXEL_META_FIELDS}
        self._sets_ds: h5py.Dataset = entry["setpoint_sets"]
        self._failures_ds: h5py.Dataset = entry["failures"]
        self._log_ds: h5py.Dataset = entry["log"]
        self._docs = entry["documents"]
        self._set_ids = {s["id"] for s in _json_lines(self._sets_ds)}
        self.n_channels, self.n_points = self._spectra.shape[2:]
        # The writer is the file's only writer, so it keeps the flags in memory (no read per pixel).
        self._measured_mask: np.ndarray = self._measured[()]
        self._failed_mask: np.ndarray = self._failed[()]
        self._sinks = {
            name: _PointSink(ds)
            for name, ds in [("spectra", self._spectra), ("measured", self._measured), *self._meta.items()]
        }

    # construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        geometry: GridGeometry,
        channel_names: Sequence[str],
        n_points: int,
        setpoint_sets: Sequence[SetpointSet],
        start_doc: Mapping[str, Any],
        swmr: bool = True,
        topography: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        ground_truth: GroundTruth | None = None,
        overwrite: bool = False,
    ) -> ArchiveWriter:
        """Create a new archive at full grid shape and (by default) switch SWMR on.

        Parameters
        ----------
        channel_names
            Nanonis-style names with the unit in brackets, e.g. ``"Current (A)"``.
        bias
            Nominal sweep axis (V, ``n_points``); default: that of the first set-point set.
        start_doc
            The run's start document; its ``uid`` becomes the run uid (a new uuid4 if absent).
        ground_truth
            ``name -> array`` or ``name -> (array, units)``; simulations only. With ``swmr=True``
            it must be given here, since nothing can be created once SWMR is on.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise ArchiveError(path, "file exists; choose another path, resume it, or pass overwrite=True")
        names = [str(n) for n in channel_names]
        if not names or len(set(names)) != len(names):
            raise ArchiveError(path, f"channel_names must be unique and non-empty, got {names}")
        if not setpoint_sets:
            raise ArchiveError(path, "at least one set-point set is required")
        if n_points < 2:
            raise ArchiveError(path, f"n_points must be >= 2, got {n_points}")
        axis = setpoint_sets[0].bias_axis if bias is None else np.asarray(bias, dtype=np.float64)
        if axis.shape != (n_points,):
            raise ArchiveError(path, f"bias axis has shape {axis.shape}, expected ({n_points},)")
        ny, nx = geometry.shape
        if topography is not None and np.shape(topography) != (ny, nx):
            raise ArchiveError(path, f"topography has shape {np.shape(topography)}, expected {(ny, nx)}")
        start = dict(start_doc)
        start.setdefault("uid", str(uuid.uuid4()))
        t0 = float(start.get("time", time.time()))

        f = h5py.File(path, "w", libver="latest")
        try:
            f.attrs.update(
                {
                    "NX_class": "NXroot",
                    "default": "entry",
                    VERSION_ATTR: ARCHIVE_VERSION,
                    "creator": f"stslive {_software_version()}",
                }
            )
            entry = f.create_group("entry")
            entry.attrs.update(
                {
                    "NX_class": "NXentry",
                    "default": "data",
                    "run_uid": str(start["uid"]),
                    "start_time": datetime.fromtimestamp(t0, UTC).isoformat(),
                    "software_version": _software_version(),
                }
            )
            _create_data(entry, geometry, names, axis)
            for flag in ("measured", "failed"):
                entry.create_dataset(flag, shape=(ny, nx), dtype=np.bool_, chunks=_map_chunks(ny, nx), fillvalue=False)
            entry.create_dataset(
                "failure_code", shape=(ny, nx), dtype=np.int16, chunks=_map_chunks(ny, nx), fillvalue=0
            )
            grid = entry.create_group("grid")
            grid.attrs["NX_class"] = "NXcollection"
            grid.attrs.update(geometry.to_dict())
            pixels = entry.create_group("pixels")
            pixels.attrs["NX_class"] = "NXcollection"
            for fld in PIXEL_META_FIELDS:
                ds = pixels.create_dataset(
                    fld.name, shape=(ny, nx), dtype=fld.dtype, chunks=_map_chunks(ny, nx), fillvalue=fld.fill
                )
                if fld.units:
                    ds.attrs["units"] = fld.units
            _text_dataset(entry, "setpoint_sets", b"".join(_dumps(s.to_dict()) + b"\n" for s in setpoint_sets))
            _text_dataset(entry, "failures")
            _text_dataset(entry, "log")
            docs = entry.create_group("documents")
            docs.attrs["NX_class"] = "NXcollection"
            _text_dataset(docs, "start", _dumps(start))
            _text_dataset(docs, "stop")
            _text_dataset(docs, "writer")
            sample = entry.create_group("sample")
            sample.attrs["NX_class"] = "NXsample"
            if topography is not None:
                topo = sample.create_dataset("topography", data=np.asarray(topography, dtype=np.float32))
                topo.attrs["units"] = "m"
            if ground_truth:
                _create_ground_truth(sample, ground_truth)
        except BaseException:
            f.close()
            raise
        writer = cls(f, path)
        writer._start_writing(swmr)
        return writer

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike[str], *, swmr: bool = True) -> ArchiveWriter:
        """Re-open an archive to continue its run (after a stop, crash or SIGKILL).

        The flags a killed writer leaves in the superblock are cleared, after checking that the
        writer is no longer alive: for an SWMR writer by the process recorded in
        ``documents/writer`` (on this host), for a writer killed before SWMR was on (only the
        write flag set, so not even an SWMR reader can open the file) by HDF5's file lock.
        The file is then opened read-write *with* SWMR write access in one HDF5 call, so a kill
        at any moment of this start-up leaves flags the next resume and SWMR readers accept.
        """
        path = Path(path)
        if not path.is_file():
            raise ArchiveError(path, "no such file; check the path")
        flags = _h5status.status_flags(path)
        if flags & _h5status.WRITE_ACCESS and not flags & _h5status.SWMR_WRITE_ACCESS:
            if _h5status.held_by_writer(path):
                raise ArchiveError(path, "another process has this archive open for writing; stop it first")
            _h5status.clear_status_flags(path)
        with open_archive(path, swmr=True) as reader:  # validates version and layout
            writer_doc = reader.documents.get("writer", {})
        _refuse_live_writer(path, writer_doc)
        _h5status.clear_status_flags(path)
        try:
            f = _open_read_write(path, swmr=swmr)
        except OSError as exc:
            raise ArchiveError(path, f"cannot open for writing ({exc}); is another process using it?") from exc
        writer = cls(f, path)
        writer._start_writing(swmr)
        writer.append_log("resume", measured=int(np.count_nonzero(writer._measured_mask)))
        return writer

    def _start_writing(self, swmr: bool) -> None:
        self.write_document("writer", {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
        if swmr and not self._f.swmr_mode:
            self._f.swmr_mode = True
        self._f.flush()

    # per pixel
    def write_pixel(self, iy: int, ix: int, spectra: np.ndarray, meta: PixelMeta) -> None:
        """Write one unmeasured pixel's spectra ``(n_channels, n_points)`` and metadata, mark it measured.

        Order: data and metadata, flush, ``measured`` flag, flush; a reader (or a resume after a
        kill) sees either the complete pixel marked measured, or an unmeasured pixel. A pixel
        recorded as failed becomes measured and no longer failed (its failure record stays in
        ``failures``; the log gets a ``pixel_recovered`` line). A measured pixel is refused:
        overwriting it in place would expose a half-written pixel marked measured; use
        :meth:`rewrite_pixel`.
        """
        arr = self._check_write(iy, ix, spectra, meta)
        if self._measured_mask[iy, ix]:
            raise ArchiveError(self.path, f"pixel ({iy}, {ix}) is already measured; rewrite_pixel() replaces it")
        self._write_unmeasured(iy, ix, arr, meta)

    def rewrite_pixel(self, iy: int, ix: int, spectra: np.ndarray, meta: PixelMeta, *, reason: str) -> None:
        """Replace a measured pixel's spectrum (re-measure), keeping the old record in the run log.

        Sequence: log line ``pixel_replaced`` (the previous PixelMeta, the reason, the time) and
        ``measured`` cleared, flush; then as :meth:`write_pixel`. At every instant the pixel is
        either complete and marked measured (old or new spectrum) or unmeasured, so a kill in
        between leaves a pixel that ``--resume`` measures again. An unmeasured pixel is simply
        written (the reason is then not logged).
        """
        arr = self._check_write(iy, ix, spectra, meta)
        if self._measured_mask[iy, ix]:
            previous = PixelMeta(**{name: ds[iy, ix].item() for name, ds in self._meta.items()})
            self._append_line(
                self._log_ds,
                {
                    "time": time.time(),
                    "event": "pixel_replaced",
                    "iy": iy,
                    "ix": ix,
                    "reason": reason,
                    "previous": previous.to_dict(),
                },
            )
            self._sinks["measured"].write(iy, ix, _FALSE)
            self._measured_mask[iy, ix] = False
            self._f.flush()
        self._write_unmeasured(iy, ix, arr, meta)

    def _check_write(self, iy: int, ix: int, spectra: np.ndarray, meta: PixelMeta) -> np.ndarray:
        self._check_pixel(iy, ix)
        arr = np.asarray(spectra, dtype=np.float32)
        if arr.shape != (self.n_channels, self.n_points):
            raise ArchiveError(self.path, f"spectra shape {arr.shape} != ({self.n_channels}, {self.n_points})")
        if meta.setpoint_set_id not in self._set_ids:
            raise ArchiveError(self.path, f"set-point set {meta.setpoint_set_id} unknown; add_setpoint_set() first")
        return arr

    def _write_unmeasured(self, iy: int, ix: int, arr: np.ndarray, meta: PixelMeta) -> None:
        self._sinks["spectra"].write(iy, ix, arr)
        for name in self._meta:
            self._sinks[name].write(iy, ix, np.asarray(getattr(meta, name)))
        if self._failed_mask[iy, ix]:  # cleared with the data: never failed and measured at once
            code = int(self._failure_code[iy, ix])
            self._failed[iy, ix] = False
            self._failure_code[iy, ix] = 0
            self._failed_mask[iy, ix] = False
            self._append_line(
                self._log_ds,
                {"time": time.time(), "event": "pixel_recovered", "iy": iy, "ix": ix, "failure_code": code},
            )
        self._f.flush()
        self._sinks["measured"].write(iy, ix, _TRUE)
        self._measured_mask[iy, ix] = True
        self._f.flush()

    def write_block(self, iy: slice, ix: slice, spectra: np.ndarray, metas: Mapping[str, Any]) -> None:
        """Bulk path (simulated runs): write a block of pixels and mark them all measured.

        Parameters
        ----------
        iy, ix
            Row and column slices (step 1) of the block.
        spectra
            ``(rows, cols, n_channels, n_points)``, converted to float32.
        metas
            ``field -> array (rows, cols)`` or scalar, for the PixelMeta fields; ``x_m`` and ``y_m``
            default to the grid positions, fields with a default in PixelMeta to that default.
        """
        rows = range(*iy.indices(self.geometry.ny))
        cols = range(*ix.indices(self.geometry.nx))
        if rows.step != 1 or cols.step != 1 or not rows or not cols:
            raise ArchiveError(self.path, "write_block needs non-empty slices with step 1")
        shape = (len(rows), len(cols))
        arr = np.asarray(spectra)
        if arr.shape != (*shape, self.n_channels, self.n_points):
            raise ArchiveError(self.path, f"block shape {arr.shape} != {(*shape, self.n_channels, self.n_points)}")
        unknown = set(metas) - set(self._meta)
        if unknown:
            raise ArchiveError(self.path, f"unknown pixel metadata fields {sorted(unknown)}")
        values = dict(metas)
        if "x_m" not in values or "y_m" not in values:
            gx, gy = self.geometry.pixel_xy(*np.meshgrid(np.array(rows), np.array(cols), indexing="ij"))
            values.setdefault("x_m", gx)
            values.setdefault("y_m", gy)
        missing = [f.name for f in PIXEL_META_FIELDS if f.name not in values and f.name not in _META_DEFAULTS]
        if missing:
            raise ArchiveError(self.path, f"write_block: metadata fields {missing} are required")
        ids = np.unique(np.asarray(values["setpoint_set_id"]))
        if not set(ids.tolist()) <= self._set_ids:
            raise ArchiveError(self.path, f"set-point set ids {sorted(set(ids.tolist()) - self._set_ids)} unknown")
        self._spectra.write_direct(np.ascontiguousarray(arr, dtype=np.float32), dest_sel=np.s_[iy, ix])
        for fld in PIXEL_META_FIELDS:
            value = values[fld.name] if fld.name in values else _META_DEFAULTS[fld.name]
            self._meta[fld.name][iy, ix] = np.broadcast_to(np.asarray(value, dtype=fld.dtype), shape)
        self._f.flush()
        self._measured[iy, ix] = True
        self._measured_mask[iy, ix] = True
        self._f.flush()

    def record_failure(self, iy: int, ix: int, reason: str, *, code: int = 1, **details: Any) -> None:
        """Mark a pixel failed (never as data) with an int ``code`` > 0 and a reason in the log."""
        self._check_pixel(iy, ix)
        if code <= 0:
            raise ArchiveError(self.path, f"failure code must be > 0 (0 means no failure), got {code}")
        if self._measured_mask[iy, ix]:
            raise ArchiveError(
                self.path,
                f"pixel ({iy}, {ix}) is measured; a failed re-measure keeps its spectrum, "
                "so log it with append_log() instead of marking the pixel failed",
            )
        self._append_line(
            self._failures_ds, {"iy": iy, "ix": ix, "code": code, "reason": reason, "time": time.time(), **details}
        )
        self._failure_code[iy, ix] = code
        self._failed[iy, ix] = True
        self._failed_mask[iy, ix] = True
        self._f.flush()

    # run-level records
    def add_setpoint_set(self, setpoint_set: SetpointSet) -> None:
        """Record a set-point set introduced during the run (ids must be new)."""
        if setpoint_set.id in self._set_ids:
            raise ArchiveError(self.path, f"set-point set id {setpoint_set.id} already recorded; use a new id")
        self._append_line(self._sets_ds, setpoint_set.to_dict())
        self._set_ids.add(setpoint_set.id)
        self._f.flush()

    def append_log(self, event: str, **fields: Any) -> None:
        """Append ``{"time", "event", **fields}`` to the run log (pause, resume, excursions, ...)."""
        self._append_line(self._log_ds, {"time": time.time(), "event": event, **fields})
        self._f.flush()

    def write_document(self, name: str, doc: Mapping[str, Any]) -> None:
        """Store (replace) run document ``name`` (one of :data:`DOCUMENT_NAMES`) as JSON."""
        if name not in DOCUMENT_NAMES:
            raise ArchiveError(self.path, f"document {name!r} unknown; the layout has {DOCUMENT_NAMES}")
        content = np.frombuffer(_dumps(dict(doc)), dtype=np.uint8)
        ds = self._docs[name]
        ds.resize((content.size,))
        ds[:] = content
        self._f.flush()

    def write_ground_truth(self, truth: GroundTruth) -> None:
        """Store simulation ground truth ``name -> array | (array, units)`` (not in SWMR mode)."""
        if self._f.swmr_mode:
            raise ArchiveError(
                self.path,
                "ground truth cannot be added in SWMR mode; pass ground_truth= to "
                "create() or create the archive with swmr=False",
            )
        _create_ground_truth(self._f["entry/sample"], truth)
        self._f.flush()

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._f.id.valid:
            self._f.flush()
            self._f.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def measured(self) -> np.ndarray:
        """Current ``measured`` mask (ny, nx), a copy."""
        return self._measured_mask.copy()

    @property
    def failed(self) -> np.ndarray:
        """Current ``failed`` mask (ny, nx), a copy."""
        return self._failed_mask.copy()

    def first_unmeasured(self, order: str | None = None) -> tuple[int, int] | None:
        """First pixel ``(iy, ix)`` in visiting order that is not measured, None when all are."""
        return _first_unmeasured(self.geometry, self._measured_mask, order)

    def _check_pixel(self, iy: int, ix: int) -> None:
        if not (0 <= iy < self.geometry.ny and 0 <= ix < self.geometry.nx):
            raise ArchiveError(self.path, f"pixel ({iy}, {ix}) outside the grid {self.geometry.shape}")

    def _append_line(self, ds: h5py.Dataset, record: Mapping[str, Any]) -> None:
        line = np.frombuffer(_dumps(dict(record)) + b"\n", dtype=np.uint8)
        n = ds.shape[0]
        ds.resize((n + line.size,))
        ds[n:] = line


_META_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PixelMeta) if f.default is not dataclasses.MISSING}


_TRUE = np.array(True)
_FALSE = np.array(False)


def _open_read_write(path: Path, *, swmr: bool) -> h5py.File:
    """Open read-write; with ``swmr`` in SWMR write mode from the first instant.

    h5py offers SWMR writing only as a switch after a plain read-write open; a kill between the
    two leaves the write flag without the SWMR flag, which no reader and no resume accepts.
    Opening with ``ACC_SWMR_WRITE`` sets both flags in the one superblock write of the open.
    """
    if not swmr:
        return h5py.File(path, "r+", libver="latest")
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=fapl)
    return h5py.File(fid)


class _PointSink:
    """Writes ``ds[iy, ix] = value`` through the low-level API with cached dataspaces.

    h5py's ``ds[iy, ix] = v`` spends ~120 us parsing the selection and rebuilding spaces; a
    hyperslab write on cached spaces costs ~10-20 us, which matters for a dozen metadata fields
    per pixel (p50 write+flush went from ~1.8 ms to well under 1 ms on the test machine).
    """

    def __init__(self, ds: h5py.Dataset) -> None:
        self._id = ds.id
        self.dtype = ds.dtype
        self._tail = (0,) * (ds.ndim - 2)
        self._count = (1, 1, *ds.shape[2:])
        self._fspace = ds.id.get_space()
        self._mspace = h5py.h5s.create_simple(self._count)

    def write(self, iy: int, ix: int, value: np.ndarray) -> None:
        self._fspace.select_hyperslab((iy, ix, *self._tail), self._count)
        data = np.ascontiguousarray(value, dtype=self.dtype).reshape(self._count)
        self._id.write(self._mspace, self._fspace, data)


def _map_chunks(ny: int, nx: int) -> tuple[int, int]:
    # Small uncompressed chunks: a per-pixel write rewrites one chunk in place.
    return (min(ny, 64), min(nx, 64))


def _create_data(entry: h5py.Group, geometry: GridGeometry, names: list[str], axis: np.ndarray) -> None:
    ny, nx = geometry.shape
    data = entry.create_group("data")
    data.attrs.update({"NX_class": "NXdata", "signal": "spectra", "axes": ["y", "x", ".", "bias"]})
    spectra = data.create_dataset(
        "spectra",
        shape=(ny, nx, len(names), axis.size),
        dtype=np.float32,
        chunks=(1, 1, len(names), axis.size),
        fillvalue=np.float32(np.nan),
    )
    spectra.attrs["long_name"] = "spectra (ny, nx, channel, point); units per channel in channel_units"
    data.create_dataset("channel_names", data=np.array(names, dtype=object), dtype=_STR)
    data.create_dataset("channel_units", data=np.array([_unit_of(n) for n in names], dtype=object), dtype=_STR)
    data.create_dataset("bias", data=axis).attrs["units"] = "V"
    dx, dy = geometry.pixel_size_m
    data.create_dataset("x", data=geometry.centre_x_m - geometry.width_m / 2 + (np.arange(nx) + 0.5) * dx).attrs[
        "units"
    ] = "m"
    data.create_dataset("y", data=geometry.centre_y_m - geometry.height_m / 2 + (np.arange(ny) + 0.5) * dy).attrs[
        "units"
    ] = "m"


def _unit_of(channel_name: str) -> str:
    """Unit in the trailing brackets of a Nanonis-style channel name, "" when none."""
    name = channel_name.strip()
    if name.endswith(")") and "(" in name:
        return name[name.rindex("(") + 1 : -1]
    return ""


def _create_ground_truth(sample: h5py.Group, truth: GroundTruth) -> None:
    group = sample.require_group("ground_truth")
    group.attrs["NX_class"] = "NXcollection"
    for name, value in truth.items():
        array, units = _units_of(value)
        if name in group:
            del group[name]
        ds = group.create_dataset(name, data=array)
        ds.attrs["units"] = units


def _read_geometry(entry: h5py.Group, path: Path) -> GridGeometry:
    attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in entry["grid"].attrs.items() if k != "NX_class"}
    try:
        return GridGeometry.from_dict(attrs)
    except Exception as exc:  # ConfigError: the stored geometry is not a valid grid
        raise ArchiveError(path, f"grid geometry in the file is invalid: {exc}") from exc


def _first_unmeasured(geometry: GridGeometry, measured: np.ndarray, order: str | None) -> tuple[int, int] | None:
    seq = geometry.visit_order(order)
    todo = ~measured[seq[:, 0], seq[:, 1]]
    if not todo.any():
        return None
    iy, ix = seq[int(np.argmax(todo))]
    return int(iy), int(ix)


def _refuse_live_writer(path: Path, writer_doc: Mapping[str, Any]) -> None:
    pid, host = writer_doc.get("pid"), writer_doc.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:  # alive, owned by someone else
        pass
    raise ArchiveError(path, f"process {pid} on {host} may still be writing this archive; stop it first")


# -- reader ------------------------------------------------------------------------------------
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
        self.geometry = _read_geometry(entry, path)
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
        return _json_lines(self._ds["failures"])

    @property
    @_reading
    def log(self) -> list[dict[str, Any]]:
        return _json_lines(self._ds["log"])

    @property
    @_reading
    def setpoint_sets(self) -> dict[int, SetpointSet]:
        return {d["id"]: SetpointSet.from_dict(d) for d in _json_lines(self._ds["setpoint_sets"])}

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
        return {name: json.loads(_read_text(ds)) for name, ds in docs.items() if ds.shape[0]}

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
        return _first_unmeasured(self.geometry, self.measured, order)

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
    if head != b"\x89HDF\r\n\x1a\n":
        raise ArchiveError(
            path, "not an HDF5 file, so not an stslive run archive (for a Nanonis grid use the .3ds importer)"
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
        missing = [name for name in _REQUIRED if name not in f]
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
