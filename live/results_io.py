"""Persistence and wire format of :class:`~stslive.live.results.ResultsModel`.

``maps.h5``: :func:`save_maps_h5` / :func:`load_maps_h5`. The seven core datasets
(:data:`CORE_DATASETS`: ``delta`` in eV, ``alpha``, ``b``, ``alpha_pos``, ``alpha_neg``, ``valid``,
``reason``), every other map, the flags, the topography, the correlation snapshot and the status;
the layout is described in ``docs/formats.md``. A file holding only the core datasets reads as
"every pixel measured".

Wire: the results stream speaks the one codec (:mod:`stslive.acquisition.formats.codec`) under
:data:`RESULTS_RULES`: topics ``pixel``, ``pixels`` (a batch, one array per
:class:`~stslive.live.results.PixelResult` field), ``maps`` (every map, for viewers that join
late), ``snapshot`` (correlations) and ``status``; JSON headers (non-finite numbers as ``null``),
raw array frames. :func:`encode_message` / :func:`decode_message` convert, :func:`apply_message`
applies a message to a model.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stslive.acquisition.formats.codec import (
    MalformedMessage,
    WireRules,
    check_envelope,
    from_frames,
    json_safe,
    to_frames,
)
from stslive.drivers.errors import FileFormatError, StreamError
from stslive.live.results import (
    FLAG_DESCRIPTIONS,
    FLAG_LABELS,
    MAP_SPECS,
    CorrelationSnapshot,
    PixelResult,
    ResultsModel,
)

MAPS_FORMAT_VERSION = 1
RESULTS_SCHEMA = "stslive.results"
RESULTS_SCHEMA_VERSION = 1
# "pixels" shares the "pixel" prefix, so a viewer subscribed to "pixel" receives both
TOPICS = ("pixel", "pixels", "maps", "snapshot", "status")
#: The results stream's wire rules. A maps message carries every map and the topography (19
#: arrays; 1 GiB covers the maps of a 2048 x 2048 grid four times). Float maps may hold inf (a
#: coherence-peak visibility over a zero background), so inf is not refused here.
RESULTS_RULES = WireRules(
    schema=RESULTS_SCHEMA,
    version=RESULTS_SCHEMA_VERSION,
    topics={topic: topic.encode() for topic in TOPICS},
    max_arrays=64,
    max_array_bytes=1 << 30,
    header_formats=("json",),
)

#: model map name -> maps.h5 dataset name (the core names first; the rest keep a unit-free name)
H5_NAMES: dict[str, str] = {
    "delta_eV": "delta",
    "peak_neg_V": "peak_neg",
    "peak_pos_V": "peak_pos",
    "temperature_K": "temperature",
}
CORE_DATASETS = ("delta", "alpha", "b", "alpha_pos", "alpha_neg", "valid", "reason")

Message = tuple[str, dict[str, Any], dict[str, np.ndarray]]


# -- maps.h5 ------------------------------------------------------------------------------------
def _h5_name(name: str) -> str:
    return H5_NAMES.get(name, name)


def save_maps_h5(model: ResultsModel, path: str | Path) -> None:
    """Write ``model`` to ``path`` in the ``maps.h5`` layout described in the module docstring."""
    path = Path(path)
    with model.lock:
        maps = model.copy_maps()
        topo = None if model.topography is None else model.topography.copy()
        topo_origin = model.topography_origin
        snap = model.snapshot
        sets = dict(model.setpoint_sets)
        status = model.status_fields()
    tmp = path.with_name(path.name + ".part")
    # write aside and rename so a reader (the viewer's FileSource) never opens a half-written file
    with h5py.File(tmp, "w") as f:
        f.attrs["stslive_maps_version"] = MAPS_FORMAT_VERSION
        f.attrs["pixel_size_nm"] = model.pixel_nm
        f.attrs["setpoint_sets"] = json.dumps({str(k): v for k, v in sets.items()})
        f.attrs["status"] = json.dumps(json_safe(status))
        f.attrs["set_threshold"] = model.set_threshold
        for name, (_, _, unit, description) in MAP_SPECS.items():
            ds = f.create_dataset(_h5_name(name), data=maps[name])
            ds.attrs["units"] = unit
            ds.attrs["long_name"] = description
        f["flags"].attrs["bits"] = json.dumps({FLAG_LABELS[k]: int(k) for k in FLAG_LABELS})
        f["flags"].attrs["descriptions"] = json.dumps({FLAG_LABELS[k]: v for k, v in FLAG_DESCRIPTIONS.items()})
        if topo is not None:
            ds = f.create_dataset("topography", data=topo)
            ds.attrs["units"] = "m"
            ds.attrs["origin"] = topo_origin
        if snap is not None:
            g = f.create_group("correlation")
            for name in CorrelationSnapshot.ARRAYS:
                g.create_dataset(name, data=getattr(snap, name))
            g["r_nm"].attrs["units"] = "nm"
            for key, value in _snapshot_scalars(snap).items():
                g.attrs[key] = value
    tmp.replace(path)


def load_maps_h5(path: str | Path) -> ResultsModel:
    """Read a ``maps.h5``; a file with only the 7 core datasets gives measured = every pixel.

    Raises
    ------
    FileFormatError
        Not HDF5, a core dataset missing, or inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "analysis file not found; run `stslive analyse` or give the right --analysis path")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(path, f"not a readable HDF5 file ({exc}); re-run the analysis") from exc
    with f:
        missing = [n for n in CORE_DATASETS if n not in f]
        if missing:
            raise FileFormatError(path, f"not a maps.h5 analysis file: datasets {missing} missing")
        shape = f["delta"].shape
        if len(shape) != 2 or any(f[n].shape != shape for n in CORE_DATASETS):
            raise FileFormatError(path, f"maps must all be 2D of one shape; delta is {shape}")
        model = ResultsModel(
            *shape,
            pixel_nm=float(f.attrs.get("pixel_size_nm", np.nan)),
            set_threshold=float(f.attrs.get("set_threshold", 0.5)),
        )
        values = {name: f[_h5_name(name)][()] for name in MAP_SPECS if _h5_name(name) in f}
        if "measured" not in values:
            # a core-only file (an older `stslive analyse`) covers the whole grid it was given
            values["measured"] = np.ones(shape, dtype=bool)
        model.update_block(slice(None), slice(None), **values)
        if "topography" in f:
            model.set_topography(f["topography"][()], origin=str(f["topography"].attrs.get("origin", "")))
        if "setpoint_sets" in f.attrs:
            model.set_setpoint_sets({int(k): v for k, v in json.loads(f.attrs["setpoint_sets"]).items()})
        if "status" in f.attrs:
            st = json.loads(f.attrs["status"])
            model.update_status(
                state=st.get("state"),
                current_set=st.get("current_set"),
                last_seq=st.get("last_seq"),
                message=st.get("message"),
                pixels_per_hour=st.get("pixels_per_hour"),
            )
        if "correlation" in f:
            g = f["correlation"]
            model.set_snapshot(_snapshot_from({n: g[n][()] for n in CorrelationSnapshot.ARRAYS}, dict(g.attrs)))
    return model


# -- messages -----------------------------------------------------------------------------------
def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _snapshot_scalars_names() -> list[str]:
    return [f.name for f in fields(CorrelationSnapshot) if f.name not in CorrelationSnapshot.ARRAYS]


def _snapshot_scalars(snap: CorrelationSnapshot) -> dict[str, Any]:
    return {k: getattr(snap, k) for k in _snapshot_scalars_names()}


def _snapshot_value(name: str, raw: Any) -> Any:
    """A snapshot scalar as stored (HDF5 attribute or message header) back to its field's type."""
    if name == "n_pixels":
        return int(raw or 0)
    if name == "warnings":
        return tuple(w.decode() if isinstance(w, bytes) else str(w) for w in ([] if raw is None else raw))
    if name.endswith("_ci90"):
        pair = [] if raw is None else list(raw)
        return (_nan(pair[0]), _nan(pair[1])) if len(pair) == 2 else (float("nan"), float("nan"))
    return _nan(raw)


def _snapshot_from(arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> CorrelationSnapshot:
    values: dict[str, Any] = {k: _snapshot_value(k, scalars.get(k)) for k in _snapshot_scalars_names()}
    values.update({n: np.asarray(arrays[n]) for n in CorrelationSnapshot.ARRAYS})
    return CorrelationSnapshot(**values)


def _header(kind: str, **body: Any) -> dict[str, Any]:
    return {"schema": RESULTS_SCHEMA, "version": RESULTS_SCHEMA_VERSION, "kind": kind, **json_safe(body)}


def pixel_message(result: PixelResult) -> Message:
    """A ``pixel`` message for one result (no arrays)."""
    return "pixel", _header("pixel", result=result.to_dict()), {}


#: wire dtype of each PixelResult field in a ``pixels`` message (the maps' dtypes; indices int32)
PIXELS_DTYPES: dict[str, np.dtype] = {
    f.name: np.dtype("<i4") if f.name in ("iy", "ix") else MAP_SPECS[f.name][0].newbyteorder("<")
    for f in fields(PixelResult)
}


def pixels_message(columns: dict[str, np.ndarray]) -> Message:
    """A ``pixels`` message: n results as (n,) arrays named by :class:`PixelResult` fields.

    ``iy`` and ``ix`` are required; any other field may be left out (the receiver keeps the map's
    fill value there). Values are cast to the maps' dtypes, so nothing is lost on the way.
    """
    unknown = set(columns) - set(PIXELS_DTYPES)
    if unknown or not {"iy", "ix"} <= set(columns):
        raise StreamError(f"pixels message needs iy, ix and PixelResult fields only; got unknown {sorted(unknown)}")
    arrays = {k: np.ascontiguousarray(np.asarray(v).reshape(-1), dtype=PIXELS_DTYPES[k]) for k, v in columns.items()}
    n = arrays["iy"].size
    if any(a.size != n for a in arrays.values()):
        raise StreamError(f"pixels message: arrays of unequal length {sorted({a.size for a in arrays.values()})}")
    return "pixels", _header("pixels", n=n), arrays


def _apply_pixels(model: ResultsModel, arrays: dict[str, np.ndarray]) -> None:
    unknown = set(arrays) - set(PIXELS_DTYPES)
    if unknown or "iy" not in arrays or "ix" not in arrays:
        raise StreamError(f"pixels message: needs iy and ix, unknown arrays {sorted(unknown)}")
    iy, ix = arrays["iy"].astype(np.intp), arrays["ix"].astype(np.intp)
    if any(a.shape != iy.shape or a.ndim != 1 for a in arrays.values()):
        raise StreamError("pixels message: every array must be 1-D of the same length")
    if iy.size == 0:
        return
    if iy.min() < 0 or ix.min() < 0 or iy.max() >= model.ny or ix.max() >= model.nx:
        raise StreamError(
            f"pixels message: a pixel lies outside the {model.ny} x {model.nx} grid; "
            "a new run started? restart the viewer"
        )
    model.update_block(iy, ix, **{k: v for k, v in arrays.items() if k not in ("iy", "ix")})
    if "setpoint_set" in arrays:
        model.update_status(current_set=int(arrays["setpoint_set"][-1]))


def snapshot_message(snap: CorrelationSnapshot) -> Message:
    """A ``snapshot`` message: scalars in the header, profiles and the 2D cross map as arrays."""
    return (
        "snapshot",
        _header("snapshot", **_snapshot_scalars(snap)),
        {n: np.ascontiguousarray(getattr(snap, n)) for n in CorrelationSnapshot.ARRAYS},
    )


def status_message(model: ResultsModel) -> Message:
    """A ``status`` message: grid shape, state, set, seq, rate override and the temperature trace."""
    st = model.status()
    with model.lock:
        sets = dict(model.setpoint_sets)
    header = _header(
        "status",
        ny=model.ny,
        nx=model.nx,
        pixel_nm=model.pixel_nm,
        setpoint_sets={str(k): v for k, v in sets.items()},
        **model.status_fields(),
    )
    return "status", header, {"temperature_t": st.temperature_t, "temperature_K": st.temperature_K}


def maps_message(model: ResultsModel) -> Message:
    """A ``maps`` message carrying every map (and the topography), for late-joining viewers."""
    arrays = model.copy_maps()
    with model.lock:
        if model.topography is not None:
            arrays["topography"] = model.topography.copy()
    return "maps", _header("maps", ny=model.ny, nx=model.nx, pixel_nm=model.pixel_nm), arrays


def model_messages(model: ResultsModel) -> list[Message]:
    """The full state of ``model``: maps, then the snapshot if any, then status."""
    out = [maps_message(model)]
    with model.lock:
        snap = model.snapshot
    if snap is not None:
        out.append(snapshot_message(snap))
    out.append(status_message(model))
    return out


def model_from_message(topic: str, header: dict[str, Any]) -> ResultsModel:
    """An empty model sized by a ``maps`` or ``status`` header (a viewer joining a stream)."""
    _check_header(topic, header)
    if topic not in ("maps", "status"):
        raise StreamError(f"a {topic!r} message does not carry the grid shape; wait for 'status' or 'maps'")
    return ResultsModel(int(header["ny"]), int(header["nx"]), pixel_nm=_nan(header.get("pixel_nm")))


def _check_header(topic: str, header: dict[str, Any]) -> None:
    """The envelope check of :func:`decode_message`, for messages handed over in process too."""
    if check_envelope(header, RESULTS_RULES) != topic:
        raise MalformedMessage("topic", f"topic {topic!r} does not match kind {header.get('kind')!r}")


def apply_message(model: ResultsModel, topic: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Apply one message to ``model``; :class:`StreamError` on anything inconsistent."""
    _check_header(topic, header)
    try:
        if topic == "pixel":
            raw = dict(header["result"])
            ints = {"iy", "ix", "setpoint_set", "reason", "flags"}
            result = PixelResult.from_dict(
                {k: (int(v) if k in ints else bool(v) if k == "valid" else _nan(v)) for k, v in raw.items()}
            )
            model.update_pixel(result)
        elif topic == "pixels":
            _apply_pixels(model, arrays)
        elif topic == "maps":
            if (header["ny"], header["nx"]) != (model.ny, model.nx):
                raise StreamError(
                    f"maps are {header['ny']} x {header['nx']}, this model {model.ny} x {model.nx}: "
                    "a new run started; restart the viewer"
                )
            topo = arrays.pop("topography", None)
            for name, arr in arrays.items():
                if name not in MAP_SPECS or arr.shape != (model.ny, model.nx):
                    raise StreamError(f"maps message: array {name!r} {arr.shape} not a known (ny, nx) map")
            model.update_block(slice(None), slice(None), **arrays)
            if topo is not None:
                model.set_topography(topo)
        elif topic == "snapshot":
            model.set_snapshot(_snapshot_from(arrays, header))
        else:
            if (header["ny"], header["nx"]) != (model.ny, model.nx):
                raise StreamError(
                    f"status for a {header['ny']} x {header['nx']} grid, model is "
                    f"{model.ny} x {model.nx}: restart the viewer for the new run"
                )
            with model.lock:
                model._temp_t.clear()
                model._temp_K.clear()
                model._temp_t.extend(np.asarray(arrays.get("temperature_t", [])).tolist())
                model._temp_K.extend(np.asarray(arrays.get("temperature_K", [])).tolist())
            model.set_setpoint_sets({int(k): v for k, v in header.get("setpoint_sets", {}).items()})
            model.update_status(
                state=header["state"],
                current_set=header["current_set"],
                last_seq=header["last_seq"],
                message=header.get("message") or "",
                pixels_per_hour=header.get("pixels_per_hour"),
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StreamError):
            raise
        raise StreamError(f"malformed {topic!r} results message: {exc!r}") from exc


# -- frames -------------------------------------------------------------------------------------
def encode_message(topic: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[bytes]:
    """ZeroMQ frames ``[topic, JSON header, *array frames]`` (:func:`stslive.acquisition.formats.codec.to_frames`)."""
    return to_frames(topic.encode(), header, arrays)


def decode_message(frames: list[bytes]) -> Message:
    """Inverse of :func:`encode_message`; MalformedMessage (a StreamError) on any malformed frame set."""
    kind, header, arrays = from_frames(frames, RESULTS_RULES)
    if arrays is None:  # every results header lists its arrays, an empty list included
        raise MalformedMessage("field", f"{kind} results header without its 'arrays' list")
    return kind, header, arrays
