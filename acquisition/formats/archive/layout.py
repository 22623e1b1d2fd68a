"""The archive's HDF5 layout: names, version, creation of an empty archive and the shared low-level reads.

Contract: :func:`create_layout` makes every group and dataset a run will write, before SWMR is
switched on (HDF5 forbids creating objects or changing attributes once it is). Text that grows
during a run (set-point sets, failures, log, documents) is resizable uint8 JSON, because SWMR
readers do not see variable-length string heap updates reliably. The layout is described in
``docs/formats.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stslive.acquisition.formats.runmodel import PIXEL_META_FIELDS, GridGeometry, SetpointSet, channel_unit
from stslive.acquisition.formats.version import software_version
from stslive.drivers.errors import ArchiveError, ConfigError

ARCHIVE_VERSION = 1
VERSION_ATTR = "stslive_archive_version"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Documents that may be (re)written during a run; they must exist before SWMR starts.
DOCUMENT_NAMES: tuple[str, ...] = ("start", "stop", "writer")
#: What a file must hold to be read as an archive.
REQUIRED = (
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(doc: Any) -> bytes:
    """Compact JSON of a record (numpy values converted; NaN kept as the ``NaN`` token)."""
    return json.dumps(doc, default=_json_default, allow_nan=True, separators=(",", ":")).encode()


def text_dataset(group: h5py.Group, name: str, content: bytes = b"") -> h5py.Dataset:
    """A resizable uint8 dataset holding JSON text (one document, or JSON lines)."""
    ds = group.create_dataset(name, shape=(len(content),), maxshape=(None,), dtype=np.uint8, chunks=(_TEXT_CHUNK,))
    if content:
        ds[:] = np.frombuffer(content, dtype=np.uint8)
    ds.attrs["content_type"] = "application/json"
    return ds


def read_text(ds: h5py.Dataset) -> bytes:
    return ds[()].tobytes() if ds.shape[0] else b""


def json_lines(ds: h5py.Dataset) -> list[Any]:
    return [json.loads(line) for line in read_text(ds).splitlines() if line.strip()]


def map_chunks(ny: int, nx: int) -> tuple[int, int]:
    # Small uncompressed chunks: a per-pixel write rewrites one chunk in place.
    return (min(ny, 64), min(nx, 64))


def read_geometry(entry: h5py.Group, path: Path) -> GridGeometry:
    """The grid stored in ``/entry/grid``; ArchiveError when it is not a valid grid."""
    attrs = {k: v.item() if isinstance(v, np.generic) else v for k, v in entry["grid"].attrs.items() if k != "NX_class"}
    try:
        return GridGeometry.from_dict(attrs)
    except (ConfigError, TypeError, ValueError) as exc:  # attributes of a damaged or foreign file
        raise ArchiveError(path, f"grid geometry in the file is invalid: {exc}") from exc


def first_unmeasured(geometry: GridGeometry, measured: np.ndarray, order: str | None) -> tuple[int, int] | None:
    """First pixel ``(iy, ix)`` in visiting order ``order`` that is not measured, None when all are."""
    seq = geometry.visit_order(order)
    todo = ~measured[seq[:, 0], seq[:, 1]]
    if not todo.any():
        return None
    iy, ix = seq[int(np.argmax(todo))]
    return int(iy), int(ix)


# -- creation ----------------------------------------------------------------------------------
def create_layout(
    f: h5py.File,
    *,
    geometry: GridGeometry,
    names: list[str],
    axis: np.ndarray,
    setpoint_sets: Sequence[SetpointSet],
    start: Mapping[str, Any],
    t0: float,
    topography: np.ndarray | None,
    ground_truth: GroundTruth | None,
) -> None:
    """Make the whole layout of an empty archive in the new file ``f`` (nothing measured yet).

    ``start`` is the run's start document (its ``uid`` is the run uid), ``t0`` its time (unix s).
    """
    ny, nx = geometry.shape
    version = software_version()
    f.attrs.update(
        {"NX_class": "NXroot", "default": "entry", VERSION_ATTR: ARCHIVE_VERSION, "creator": f"stslive {version}"}
    )
    entry = f.create_group("entry")
    entry.attrs.update(
        {
            "NX_class": "NXentry",
            "default": "data",
            "run_uid": str(start["uid"]),
            "start_time": datetime.fromtimestamp(t0, UTC).isoformat(),
            "software_version": version,
        }
    )
    _create_data(entry, geometry, names, axis)
    for flag in ("measured", "failed"):
        entry.create_dataset(flag, shape=(ny, nx), dtype=np.bool_, chunks=map_chunks(ny, nx), fillvalue=False)
    entry.create_dataset("failure_code", shape=(ny, nx), dtype=np.int16, chunks=map_chunks(ny, nx), fillvalue=0)
    grid = entry.create_group("grid")
    grid.attrs["NX_class"] = "NXcollection"
    grid.attrs.update(geometry.to_dict())
    pixels = entry.create_group("pixels")
    pixels.attrs["NX_class"] = "NXcollection"
    for fld in PIXEL_META_FIELDS:
        ds = pixels.create_dataset(
            fld.name, shape=(ny, nx), dtype=fld.dtype, chunks=map_chunks(ny, nx), fillvalue=fld.fill
        )
        if fld.units:
            ds.attrs["units"] = fld.units
    text_dataset(entry, "setpoint_sets", b"".join(dumps(s.to_dict()) + b"\n" for s in setpoint_sets))
    text_dataset(entry, "failures")
    text_dataset(entry, "log")
    docs = entry.create_group("documents")
    docs.attrs["NX_class"] = "NXcollection"
    text_dataset(docs, "start", dumps(dict(start)))
    text_dataset(docs, "stop")
    text_dataset(docs, "writer")
    sample = entry.create_group("sample")
    sample.attrs["NX_class"] = "NXsample"
    if topography is not None:
        topo = sample.create_dataset("topography", data=np.asarray(topography, dtype=np.float32))
        topo.attrs["units"] = "m"
    if ground_truth:
        create_ground_truth(sample, ground_truth)


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
    data.create_dataset("channel_units", data=np.array([channel_unit(n) for n in names], dtype=object), dtype=_STR)
    data.create_dataset("bias", data=axis).attrs["units"] = "V"
    dx, dy = geometry.pixel_size_m
    x = geometry.centre_x_m - geometry.width_m / 2 + (np.arange(nx) + 0.5) * dx
    y = geometry.centre_y_m - geometry.height_m / 2 + (np.arange(ny) + 0.5) * dy
    data.create_dataset("x", data=x).attrs["units"] = "m"
    data.create_dataset("y", data=y).attrs["units"] = "m"


def create_ground_truth(sample: h5py.Group, truth: GroundTruth) -> None:
    """(Re)write ``sample/ground_truth/<name>`` from ``name -> array | (array, units)``."""
    group = sample.require_group("ground_truth")
    group.attrs["NX_class"] = "NXcollection"
    for name, value in truth.items():
        if isinstance(value, tuple):
            array, units = np.asarray(value[0]), str(value[1])
        else:
            array, units = np.asarray(value), ""
        if name in group:
            del group[name]
        ds = group.create_dataset(name, data=array)
        ds.attrs["units"] = units
