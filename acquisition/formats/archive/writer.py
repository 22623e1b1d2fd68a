"""Writing a run archive: :class:`ArchiveWriter` creates, appends to and resumes one file per run.

Contract: the writer is the file's only writer. A pixel is written in two steps: spectra and
metadata, flush, then its ``measured`` flag, flush; so a reader, or a resume after a kill, sees
either a complete pixel marked measured or an unmeasured one (``flush`` does not fsync: this
protects against a killed process, not a power cut). Re-measuring a pixel
(:meth:`ArchiveWriter.rewrite_pixel`) first clears its flag and logs the replaced record.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from stslive.acquisition.formats import _h5status
from stslive.acquisition.formats.archive.layout import (
    DOCUMENT_NAMES,
    GroundTruth,
    create_ground_truth,
    create_layout,
    dumps,
    first_unmeasured,
    json_lines,
    read_geometry,
)
from stslive.acquisition.formats.archive.opener import open_archive, writer_alive
from stslive.acquisition.formats.runmodel import PIXEL_META_FIELDS, GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.errors import ArchiveError


class ArchiveWriter:
    """Appends a run to its archive; use :meth:`create` or :meth:`open_for_resume`."""

    def __init__(self, file: h5py.File, path: Path) -> None:
        self._f = file
        self.path = path
        entry = file["entry"]
        self.geometry = read_geometry(entry, path)
        self._spectra: h5py.Dataset = entry["data/spectra"]
        self._measured: h5py.Dataset = entry["measured"]
        self._failed: h5py.Dataset = entry["failed"]
        self._failure_code: h5py.Dataset = entry["failure_code"]
        self._meta = {f.name: entry["pixels"][f.name] for f in PIXEL_META_FIELDS}
        self._sets_ds: h5py.Dataset = entry["setpoint_sets"]
        self._failures_ds: h5py.Dataset = entry["failures"]
        self._log_ds: h5py.Dataset = entry["log"]
        self._docs = entry["documents"]
        self._set_ids = {s["id"] for s in json_lines(self._sets_ds)}
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
        data_attrs: Mapping[str, str | float] | None = None,
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
        data_attrs
            Attributes of ``/entry/data`` (e.g. ``lockin_wiring``: how a channel was converted).
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
            create_layout(
                f,
                geometry=geometry,
                names=names,
                axis=axis,
                setpoint_sets=setpoint_sets,
                start=start,
                t0=t0,
                topography=topography,
                ground_truth=ground_truth,
            )
            for key, value in (data_attrs or {}).items():
                f["entry/data"].attrs[key] = value
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
        content = np.frombuffer(dumps(dict(doc)), dtype=np.uint8)
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
        create_ground_truth(self._f["entry/sample"], truth)
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
        return first_unmeasured(self.geometry, self._measured_mask, order)

    def _check_pixel(self, iy: int, ix: int) -> None:
        if not (0 <= iy < self.geometry.ny and 0 <= ix < self.geometry.nx):
            raise ArchiveError(self.path, f"pixel ({iy}, {ix}) outside the grid {self.geometry.shape}")

    def _append_line(self, ds: h5py.Dataset, record: Mapping[str, Any]) -> None:
        line = np.frombuffer(dumps(dict(record)) + b"\n", dtype=np.uint8)
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


def _refuse_live_writer(path: Path, writer_doc: Mapping[str, Any]) -> None:
    pid, host = writer_doc.get("pid"), writer_doc.get("host")
    if pid == os.getpid() or not writer_alive(dict(writer_doc)):
        return
    raise ArchiveError(path, f"process {pid} on {host} may still be writing this archive; stop it first")
