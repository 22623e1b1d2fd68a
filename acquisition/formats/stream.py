"""The run stream: documents, their wire format and the publisher (the one shared module).

Publisher (scan engine, replay) and consumers (analyser, viewer, recorders) import this module
and nothing else to speak the stream, so the schema lives in exactly one place.

Documents (after Bluesky's event model), one per message, all of one run share ``run_uid``:

========== ==================================================================================
kind       content
========== ==================================================================================
start      grid geometry, channels + units, set-point parameter sets, instruments, software
descriptor the arrays every event carries (name, dtype, shape, axis-0 labels and units)
event      one per pixel: ix/iy, x/y (m), set-point set id, phase timestamps (unix s),
           temperature before/after (K), lock-in status, the arrays
failed     a pixel that could not be measured: pixel + reason, never arrays
heartbeat  while idle/paused: state, and the run uid + seq of the last document sent
stop       exit status and counts per kind
========== ==================================================================================

Every document carries ``schema`` (:data:`SCHEMA`), ``version`` (:data:`SCHEMA_VERSION`),
``kind``, ``uid`` (its own), ``run_uid``, ``time`` (unix s) and ``seq``: a per-run counter over
*every* document of the run (start is 0), so a consumer sees any loss as a gap. An idle
heartbeat outside any run has ``run_uid = None`` and ``seq = -1``; events rebuilt from the
archive (not from the wire) carry ``seq = -1`` too.

Resumed runs and segments. ``stslive scan --resume`` continues a run in a new process: it
publishes a new start document with the *same* ``run_uid`` and ``seq`` restarting at 0, and
``metadata["segment"]`` = the number of resumes so far (from the archive's run log: 0 for the
first start; ``metadata["resumed"]`` is true after a resume). Consumers track ``seq`` per
(run uid, segment): a start of a known run opens a new segment, resets the seq expectation and
calls for a check of the archive, because the killed process may have archived pixels it never
published. A lower ``seq`` is never dropped on its number alone: an event is a duplicate only if
the same measurement of its pixel (same ``timestamps["t_start"]``) was already received; an
event or document below the expected ``seq`` that is no duplicate belongs to a new segment whose
start was missed. A re-measured pixel (same pixel, new ``t_start``) is a new measurement.
Before its start document the scan waits briefly (bounded, ``stslive scan --wait-subscribers``)
for a subscription, so a consumer started first does not miss it; a consumer that still missed
a start takes it from the archive (``documents/start``).

Wire format, one ZeroMQ multipart message::

    [topic, header, *array frames]

- ``topic`` = ``b"stslive.run." + kind`` (SUB filters by prefix: ``b"stslive.run."`` is all).
- ``header`` = the document as a map, JSON (UTF-8) or msgpack, chosen by the publisher; the
  decoder tells them apart by the first byte (JSON objects start with ``{``, msgpack maps with
  0x80-0x8f/0xde/0xdf) and accepts both. Its ``arrays`` entry lists ``{name, dtype, shape}``
  in frame order.
- one raw little-endian C-order buffer per array; dtype from :data:`ALLOWED_DTYPES` only.

Sockets (:class:`RunPublisher`): an XPUB (behaves as PUB, and sees subscriptions for the
handshake) with a raised HWM, plus an optional non-blocking PUSH with a bounded local backlog;
both bind to loopback only, unless given CURVE keys (``security=``, see
:mod:`stslive.acquisition.formats.security`; its helpers are re-exported here for ``stslive.live``).
The subscriber is in ``stream_consumer``.

Never pickle: nothing here can turn bytes into objects other than numbers, strings, lists and
maps, so a pickled payload is just a malformed header.

Non-finite numbers: header scalars (coordinates, times, temperatures, ...) must be finite; an
unknown optional value is ``null``. Float arrays may contain NaN, meaning "not measured" (a
sweep cut short, points padded to the descriptor's length); +-inf is always rejected.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import msgpack
import numpy as np
import zmq

from stslive.acquisition.formats.security import (
    Security,
    ServerGuard,
    bind_server,
    check_bind,
    secure_client,
    secure_server,
)
from stslive.drivers.errors import StreamError, StsliveError

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_ARRAY_BYTES",
    "MAX_HEADER_BYTES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TOPIC_PREFIX",
    "ArraySpec",
    "DescriptorDoc",
    "Document",
    "EventDoc",
    "FailedPixelDoc",
    "HeartbeatDoc",
    "MalformedDocument",
    "RunPublisher",
    "Security",
    "StartDoc",
    "StopDoc",
    "decode",
    "encode",
    "event_fields",
    "topic_for",
    # CURVE security (stslive.acquisition.formats.security), re-exported for stslive.live
    "check_bind",
    "secure_client",
    "secure_server",
]

log = logging.getLogger(__name__)

SCHEMA = "stslive.run"
SCHEMA_VERSION = 1
TOPIC_PREFIX = SCHEMA.encode() + b"."
#: Largest accepted header (bytes). Events need < 1 kB; start documents a few kB.
MAX_HEADER_BYTES = 256 * 1024
#: Largest accepted array payload per message (bytes): 16 channels x 100k points of float64.
MAX_ARRAY_BYTES = 16 * 100_000 * 8
#: Deepest nesting of free-form header data (set-point sets, metadata).
MAX_DEPTH = 16
#: Most arrays one event may carry.
MAX_ARRAYS = 16
#: Wire dtypes (numpy ``dtype.str``, little-endian); nothing else is decoded.
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i2", "<i4", "<i8", "<u2", "<u4", "<u8", "|u1", "|b1"})
#: the allowed wire dtypes parsed once (np.dtype() of a string costs a microsecond per array)
_WIRE_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
#: the keys of an array spec in an event header
_SPEC_KEYS = frozenset({"name", "dtype", "shape"})

HeaderFormat: TypeAlias = Literal["json", "msgpack"]


class MalformedDocument(StreamError):
    """A message that is not a valid run document; ``reason`` is a short counter key.

    Reasons: ``frames``, ``topic``, ``oversize``, ``header``, ``schema``, ``version``,
    ``kind``, ``field``, ``nonfinite``, ``dtype``, ``shape``, ``descriptor``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"rejected run document ({reason}): {message}")
        self.reason = reason
        self.detail = message


def new_uid() -> str:
    """A fresh random document/run uid (32 hex characters)."""
    return uuid.uuid4().hex


def topic_for(kind: str) -> bytes:
    """The ZeroMQ topic frame of a document kind."""
    return TOPIC_PREFIX + kind.encode()


# -- field validators (declarative: each document class lists its fields and their checks) -----
Validator: TypeAlias = Callable[[Any, str], Any]


def _fail(name: str, what: str, value: Any) -> MalformedDocument:
    shown = repr(value)
    return MalformedDocument("field", f"field {name!r} must be {what}, got {shown[:80]}")


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _fail(name, "a string", value)
    return value


def _opt(check: Validator) -> Validator:
    def optional(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    return optional


def _int(minimum: int | None = None) -> Validator:
    def integer(value: Any, name: str) -> int:
        # bool is an int subclass; a flag where a count belongs is a producer bug
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(name, "an integer", value)
        if minimum is not None and value < minimum:
            raise _fail(name, f"an integer >= {minimum}", value)
        return value

    return integer


_size = _int(0)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value)
    return value


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "a number", value)
    if not math.isfinite(value):
        raise MalformedDocument(
            "nonfinite", f"field {name!r} is {value!r}; header numbers must be finite (use null for unknown)"
        )
    return float(value)


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(name, "a list of strings", value)
    return tuple(_str(v, f"{name}[{i}]") for i, v in enumerate(value))


def _plain(value: Any, name: str, depth: int = 0) -> Any:
    """Free-form JSON-like data (maps with string keys, lists, str, finite numbers, bool, null)."""
    if depth > MAX_DEPTH:
        raise MalformedDocument("header", f"field {name!r} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return _float(value, name)
    if isinstance(value, list | tuple):
        return [_plain(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {_str(k, f"{name} key"): _plain(v, f"{name}.{k}", depth + 1) for k, v in value.items()}
    raise _fail(name, "plain data (maps, lists, strings, numbers)", value)


def _plain_map(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(name, "a map", value)
    return _plain(value, name)


def _float_map(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _fail(name, "a map of numbers", value)
    return {_str(k, f"{name} key"): _float(v, f"{name}.{k}") for k, v in value.items()}


def _int_map(value: Any, name: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _fail(name, "a map of integers", value)
    return {_str(k, f"{name} key"): _int(0)(v, f"{name}.{k}") for k, v in value.items()}


def _str_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(name, "a map of strings", value)
    return {_str(k, f"{name} key"): _str(v, f"{name}.{k}") for k, v in value.items()}


def _map_list(value: Any, name: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list | tuple):
        raise _fail(name, "a list of maps", value)
    return tuple(_plain_map(v, f"{name}[{i}]") for i, v in enumerate(value))


def _one_of(*allowed: str) -> Validator:
    def choice(value: Any, name: str) -> str:
        if value not in allowed:
            raise _fail(name, f"one of {', '.join(allowed)}", value)
        return value

    return choice


def _to_plain(value: Any) -> Any:
    """Dataclass field value -> JSON/msgpack-ready value (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, ArraySpec):
        return value.to_dict()
    return value


# -- documents ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """What one event array looks like: dtype (wire string), shape, axis-0 labels and units."""

    dtype: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] = ()
    units: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain map for the header."""
        return {"dtype": self.dtype, "shape": list(self.shape), "labels": list(self.labels), "units": list(self.units)}

    @classmethod
    def from_dict(cls, data: Any, name: str = "array") -> ArraySpec:
        """Validate a header map; raises :class:`MalformedDocument`."""
        if not isinstance(data, dict) or set(data) != {"dtype", "shape", "labels", "units"}:
            raise _fail(name, "a map with dtype, shape, labels, units", data)
        dtype = _str(data["dtype"], f"{name}.dtype")
        if dtype not in ALLOWED_DTYPES:
            raise MalformedDocument("dtype", f"{name}: dtype {dtype!r} not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
        shape = data["shape"]
        if not isinstance(shape, list | tuple):
            raise _fail(f"{name}.shape", "a list of integers", shape)
        return cls(
            dtype=dtype,
            shape=tuple(_int(0)(n, f"{name}.shape[{i}]") for i, n in enumerate(shape)),
            labels=_str_tuple(data["labels"], f"{name}.labels"),
            units=_str_tuple(data["units"], f"{name}.units"),
        )


def _array_specs(value: Any, name: str) -> dict[str, ArraySpec]:
    if not isinstance(value, dict):
        raise _fail(name, "a map of array specs", value)
    return {_str(k, f"{name} key"): ArraySpec.from_dict(v, f"{name}.{k}") for k, v in value.items()}


_SCHEMES: dict[type, tuple[frozenset[str], tuple[tuple[str, Validator], ...]]] = {}


@dataclass(frozen=True, kw_only=True)
class _Document:
    """Fields every document has. Subclasses add theirs and list validators in ``FIELDS``."""

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[dict[str, Validator]] = {}
    COMMON: ClassVar[dict[str, Validator]] = {
        "uid": _str,
        "run_uid": _str,
        "seq": _int(0),
        "time": _float,
    }

    run_uid: str | None
    seq: int
    uid: str = field(default_factory=new_uid)
    time: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        """The document kind (``start``, ``event``, ...)."""
        return self.KIND

    def to_dict(self) -> dict[str, Any]:
        """The header map: schema, version, kind and every field (arrays excluded)."""
        out: dict[str, Any] = {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": self.KIND}
        for f in dataclasses.fields(self):
            if not (f.name == "arrays" and isinstance(self, EventDoc)):
                out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def _scheme(cls) -> tuple[frozenset[str], tuple[tuple[str, Validator], ...]]:
        """The header keys this kind must have and its (field, validator) pairs; built once per kind
        (every event is validated: at 5,000 events/s rebuilding them was a tenth of the decode)."""
        scheme = _SCHEMES.get(cls)
        if scheme is None:
            checks = {**cls.COMMON, **cls.FIELDS}
            expected = {"schema", "version", "kind", *checks, *(("arrays",) if cls is EventDoc else ())}
            scheme = _SCHEMES[cls] = (frozenset(expected), tuple(checks.items()))
        return scheme

    @classmethod
    def _validated(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        expected, checks = cls._scheme()
        if data.keys() != expected:
            keys = set(data)
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise MalformedDocument(
                "field", f"{cls.KIND} document: missing fields {missing}, unexpected fields {extra}"
            )
        return {name: check(data[name], name) for name, check in checks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Document:
        """Build from a header map (schema/version/kind already checked by :func:`decode`)."""
        return cls(**cls._validated(data))


@dataclass(frozen=True, kw_only=True)
class StartDoc(_Document):
    """Opens a run; its ``uid`` is the run uid. ``grid`` is the grid geometry map (nx, ny, centre/size in m,
    angle in deg, order); ``setpoint_sets`` the set-point parameter sets as maps (SI units, each with ``id``)."""

    KIND: ClassVar[str] = "start"
    FIELDS: ClassVar[dict[str, Validator]] = {
        "grid": _plain_map,
        "channel_names": _str_tuple,
        "channel_units": _str_tuple,
        "n_points": _int(1),
        "setpoint_sets": _map_list,
        "instruments": _str_map,
        "software_version": _str,
        "metadata": _plain_map,
    }

    grid: dict[str, Any]
    channel_names: tuple[str, ...]
    channel_units: tuple[str, ...]
    n_points: int
    setpoint_sets: tuple[dict[str, Any], ...]
    instruments: dict[str, str]
    software_version: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.uid != self.run_uid:  # as in Bluesky: the start document's uid is the run uid
            raise MalformedDocument("field", f"start: uid {self.uid!r} must equal run_uid {self.run_uid!r}")
        if len(self.channel_names) != len(self.channel_units):
            raise MalformedDocument(
                "field", f"start: {len(self.channel_names)} channel names but {len(self.channel_units)} units"
            )
        for key in ("nx", "ny"):
            _int(1)(self.grid.get(key), f"grid.{key}")


@dataclass(frozen=True, kw_only=True)
class DescriptorDoc(_Document):
    """Describes the arrays of the run's events (``data_keys``: name -> :class:`ArraySpec`)."""

    KIND: ClassVar[str] = "descriptor"
    FIELDS: ClassVar[dict[str, Validator]] = {"name": _str, "data_keys": _array_specs}

    data_keys: dict[str, ArraySpec]
    name: str = "primary"

    def check(self, event: EventDoc) -> None:
        """Raise :class:`MalformedDocument` (reason ``descriptor``) if ``event`` does not match."""
        if set(event.arrays) != set(self.data_keys):
            raise MalformedDocument(
                "descriptor",
                f"event seq {event.seq} carries arrays {sorted(event.arrays)}, "
                f"descriptor says {sorted(self.data_keys)}",
            )
        for name, spec in self.data_keys.items():
            arr = event.arrays[name]
            if arr.dtype.str != spec.dtype or arr.shape != spec.shape:
                raise MalformedDocument(
                    "descriptor",
                    f"event seq {event.seq} array {name!r} is {arr.dtype.str}{list(arr.shape)}, "
                    f"descriptor says {spec.dtype}{list(spec.shape)}",
                )


_PIXEL_FIELDS: dict[str, Validator] = {
    "ix": _int(0),
    "iy": _int(0),
    "x_m": _float,
    "y_m": _float,
    "setpoint_set_id": _int(0),
}


@dataclass(frozen=True, kw_only=True, eq=False)
class EventDoc(_Document):
    """One measured pixel.

    ``timestamps`` holds the phase times (unix s), e.g. ``t_start``, ``t_sweep_start``,
    ``t_sweep_end``, ``t_end``; temperatures are in K and ``z_m`` the tip height at the
    set-point in m (``None`` if not read); ``arrays`` are
    read-only numpy arrays as described by the run's descriptor (NaN = point not measured).
    """

    KIND: ClassVar[str] = "event"
    FIELDS: ClassVar[dict[str, Validator]] = {
        "descriptor_uid": _str,
        **_PIXEL_FIELDS,
        "timestamps": _float_map,
        "temperature_before_K": _opt(_float),
        "temperature_after_K": _opt(_float),
        "z_m": _opt(_float),
        "lockin_status": _int(0),
        "lockin_overload": _bool,
    }

    descriptor_uid: str
    ix: int
    iy: int
    x_m: float
    y_m: float
    setpoint_set_id: int
    timestamps: dict[str, float]
    temperature_before_K: float | None
    temperature_after_K: float | None
    z_m: float | None = None
    lockin_status: int = 0
    lockin_overload: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: dict[str, np.ndarray] | None = None) -> EventDoc:
        """Build from a header map and the decoded arrays (the header's ``arrays`` is their spec)."""
        values = cls._validated(data)
        values["arrays"] = dict(arrays or {})
        return cls(**values)


TIMESTAMP_KEYS = ("t_start", "t_sweep_start", "t_sweep_end", "t_end")


def event_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """EventDoc keyword fields from a pixel-metadata map (``runmodel.PixelMeta.to_dict()``).

    Phase times go into ``timestamps``; the archive's NaN for "not read" becomes ``None``.
    """

    def known(key: str) -> float | None:
        value = meta.get(key)
        return None if value is None or not math.isfinite(value) else float(value)

    return {
        "x_m": float(meta["x_m"]),
        "y_m": float(meta["y_m"]),
        "setpoint_set_id": int(meta["setpoint_set_id"]),
        "timestamps": {k: float(meta[k]) for k in TIMESTAMP_KEYS if known(k) is not None},
        "temperature_before_K": known("temperature_before_K"),
        "temperature_after_K": known("temperature_after_K"),
        "z_m": known("z_m"),
        "lockin_status": int(meta.get("lockin_status", 0)),
        "lockin_overload": bool(meta.get("lockin_overload", False)),
    }


@dataclass(frozen=True, kw_only=True)
class FailedPixelDoc(_Document):
    """A pixel that failed after the retries: where, with which set, why. No arrays."""

    KIND: ClassVar[str] = "failed"
    FIELDS: ClassVar[dict[str, Validator]] = {**_PIXEL_FIELDS, "reason": _str, "attempts": _int(0)}

    ix: int
    iy: int
    x_m: float
    y_m: float
    setpoint_set_id: int
    reason: str
    attempts: int = 1


RunState = Literal["idle", "running", "paused", "stopping", "done", "failed"]
_STATES = ("idle", "running", "paused", "stopping", "done", "failed")


@dataclass(frozen=True, kw_only=True)
class HeartbeatDoc(_Document):
    """Sign of life while idle or paused.

    ``last_seq`` is the seq of the last document sent before this one, of run ``last_run_uid``:
    inside a run that is the run itself; between runs it is the previous run (``None`` and -1
    before any run), so a consumer sees even the loss of a run's last documents (its stop).
    """

    KIND: ClassVar[str] = "heartbeat"
    COMMON: ClassVar[dict[str, Validator]] = {
        **_Document.COMMON,
        "run_uid": _opt(_str),
        "seq": _int(-1),
    }
    FIELDS: ClassVar[dict[str, Validator]] = {
        "state": _one_of(*_STATES),
        "last_run_uid": _opt(_str),
        "last_seq": _int(-1),
        "message": _str,
    }

    state: str
    last_seq: int
    last_run_uid: str | None = None
    message: str = ""

    def __post_init__(self) -> None:
        if (self.run_uid is None) != (self.seq == -1):
            raise MalformedDocument("field", "heartbeat: seq is -1 exactly when run_uid is null (idle, outside a run)")


@dataclass(frozen=True, kw_only=True)
class StopDoc(_Document):
    """Closes a run: ``exit_status`` success/abort/fail, ``counts`` documents per kind."""

    KIND: ClassVar[str] = "stop"
    FIELDS: ClassVar[dict[str, Validator]] = {
        "exit_status": _one_of("success", "abort", "fail"),
        "reason": _str,
        "counts": _int_map,
    }

    exit_status: str
    counts: dict[str, int]
    reason: str = ""


Document: TypeAlias = StartDoc | DescriptorDoc | EventDoc | FailedPixelDoc | HeartbeatDoc | StopDoc
_KINDS: dict[str, type[_Document]] = {
    c.KIND: c for c in (StartDoc, DescriptorDoc, EventDoc, FailedPixelDoc, HeartbeatDoc, StopDoc)
}
_TOPICS = {kind: topic_for(kind) for kind in _KINDS}


# -- wire format -------------------------------------------------------------------------------
def _wire_array(arr: np.ndarray, name: str) -> np.ndarray:
    """Contiguous little-endian version of ``arr`` (no copy when it already is)."""
    wire = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    if wire.dtype.str not in ALLOWED_DTYPES:
        raise StreamError(f"array {name!r} has dtype {arr.dtype}; the stream carries only {sorted(ALLOWED_DTYPES)}")
    return wire


def _nonfinite_key(obj: Any, key: str = "") -> str | None:
    """Key path of the first NaN/inf float in a header tree, or None (cheap: no validation)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else key
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        if isinstance(v, float | dict | list) and (bad := _nonfinite_key(v, f"{key}.{k}" if key else str(k))):
            return bad
    return None


def encode(doc: Document, *, header_format: HeaderFormat = "json") -> list[bytes]:
    """Serialise a document to ``[topic, header, *array frames]``.

    Parameters
    ----------
    doc
        Any run document.
    header_format
        ``"json"`` (readable, default) or ``"msgpack"`` (smaller, faster).

    Raises
    ------
    StreamError
        If the document holds non-finite header numbers or an array of a dtype not allowed.
    """
    header = doc.to_dict()
    frames: list[bytes] = []
    if isinstance(doc, EventDoc):
        specs = []
        for name, arr in doc.arrays.items():
            wire = _wire_array(np.asarray(arr), name)
            if wire.dtype.kind == "f" and np.isinf(wire).any():
                raise StreamError(f"event seq {doc.seq}: array {name!r} contains inf; use NaN for points not measured")
            specs.append({"name": name, "dtype": wire.dtype.str, "shape": list(wire.shape)})
            frames.append(wire.tobytes())  # one copy; zmq copies < 64 KiB frames anyway
        header["arrays"] = specs
    try:
        if header_format == "json":
            raw = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
        elif header_format == "msgpack":
            bad = _nonfinite_key(header)  # msgpack would carry NaN silently; refuse it as JSON does
            if bad is not None:
                raise ValueError(f"field {bad!r} is not finite")
            raw = msgpack.packb(header, use_bin_type=True)
        else:
            raise StreamError(f"header_format must be 'json' or 'msgpack', not {header_format!r}")
    except ValueError as exc:  # json: NaN/inf in a header number
        raise StreamError(
            f"{doc.KIND} seq {doc.seq}: cannot encode header ({exc}); header numbers must be finite"
        ) from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise StreamError(
            f"{doc.KIND} header is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit; move bulk data into arrays"
        )
    return [topic_for(doc.KIND), raw, *frames]


def _reject_constant(token: str) -> Any:
    raise MalformedDocument("nonfinite", f"header contains {token}; header numbers must be finite")


def _parse_header(raw: memoryview) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedDocument("oversize", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(raw) == 0:
        raise MalformedDocument("header", "empty header frame")
    first = raw[0]
    try:
        if first == ord("{"):
            header = json.loads(bytes(raw), parse_constant=_reject_constant)
        elif 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
            header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        else:
            raise MalformedDocument(
                "header", f"header is neither a JSON object nor a msgpack map (first byte 0x{first:02x})"
            )
    except (ValueError, RecursionError, msgpack.UnpackException) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and msgpack's ExtraData/FormatError;
        # RecursionError a JSON bomb of nested brackets
        if isinstance(exc, MalformedDocument):
            raise
        raise MalformedDocument("header", f"cannot parse header: {exc}") from exc
    if not isinstance(header, dict):
        raise MalformedDocument("header", f"header is a {type(header).__name__}, not a map")
    return header


def _decode_arrays(specs: Any, frames: Sequence[memoryview]) -> dict[str, np.ndarray]:
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise _fail("arrays", f"a list of at most {MAX_ARRAYS} array specs", specs)
    if len(specs) != len(frames):
        raise MalformedDocument("frames", f"header lists {len(specs)} arrays but {len(frames)} array frames arrived")
    if sum(len(f) for f in frames) > MAX_ARRAY_BYTES:
        raise MalformedDocument("oversize", f"array payload exceeds {MAX_ARRAY_BYTES} bytes")
    arrays: dict[str, np.ndarray] = {}
    for i, (spec, frame) in enumerate(zip(specs, frames, strict=True)):
        if not isinstance(spec, dict) or spec.keys() != _SPEC_KEYS:
            raise _fail(f"arrays[{i}]", "a map with name, dtype, shape", spec)
        name = _str(spec["name"], f"arrays[{i}].name")
        dtype = spec["dtype"]
        dt = _WIRE_DTYPES.get(dtype) if isinstance(dtype, str) else None  # never np.dtype() of a wire string
        if dt is None:
            raise MalformedDocument(
                "dtype", f"array {name!r}: dtype {dtype!r} not allowed (allowed: {sorted(ALLOWED_DTYPES)})"
            )
        shape = spec["shape"]
        if not isinstance(shape, list) or len(shape) > 4:
            raise MalformedDocument("shape", f"array {name!r}: shape must be a list of at most 4 sizes, got {shape!r}")
        for size in shape:
            _size(size, f"{name}.shape")
        if math.prod(shape) * dt.itemsize != len(frame):
            raise MalformedDocument(
                "shape",
                f"array {name!r}: {dtype}{shape} needs {math.prod(shape) * dt.itemsize} bytes, frame has {len(frame)}",
            )
        if name in arrays:
            raise MalformedDocument("field", f"array {name!r} appears twice")
        arr = np.frombuffer(frame, dtype=dt).reshape(shape)
        if dt.kind == "f" and np.isinf(arr).any():
            raise MalformedDocument(
                "nonfinite", f"array {name!r} contains inf (NaN marks unmeasured points; inf is never valid)"
            )
        arrays[name] = arr
    return arrays


def decode(frames: Sequence[Any]) -> Document:
    """Parse ``[topic, header, *array frames]`` into a document.

    Parameters
    ----------
    frames
        The multipart message: bytes, memoryviews or ``zmq.Frame`` objects.

    Returns
    -------
    Document
        Arrays are read-only views on the received buffers; copy them to modify.

    Raises
    ------
    MalformedDocument
        (a :class:`StreamError`) with a ``reason`` key, for anything not a valid document of this
        schema version: frame count, topic, header size or syntax, schema, version, kind, field
        types, non-finite header numbers, dtype outside :data:`ALLOWED_DTYPES`, size mismatch,
        inf in arrays.
    """
    if len(frames) < 2:
        raise MalformedDocument("frames", f"expected [topic, header, *arrays], got {len(frames)} frame(s)")
    views = [memoryview(f.buffer if isinstance(f, zmq.Frame) else f).cast("B") for f in frames]
    header = _parse_header(views[1])
    schema, version, kind = header.get("schema"), header.get("version"), header.get("kind")
    if schema != SCHEMA:
        raise MalformedDocument("schema", f"schema {schema!r} is not {SCHEMA!r}")
    if version != SCHEMA_VERSION:
        raise MalformedDocument(
            "version",
            f"schema version {version!r} not supported (this build reads {SCHEMA_VERSION}); "
            "upgrade stslive on one side",
        )
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedDocument("kind", f"unknown document kind {kind!r}")
    if views[0] != _TOPICS[kind]:
        raise MalformedDocument("topic", f"topic {bytes(views[0])[:60]!r} does not match kind {kind!r}")
    if cls is EventDoc:
        return EventDoc.from_dict(header, _decode_arrays(header.get("arrays"), views[2:]))
    if len(views) != 2:
        raise MalformedDocument(
            "frames", f"a {kind} document has no arrays, but {len(views) - 2} extra frame(s) arrived"
        )
    return cls.from_dict(header)  # type: ignore[return-value]


# -- publisher ---------------------------------------------------------------------------------
def check_local_endpoint(endpoint: str) -> None:
    """Refuse endpoints that would publish beyond this machine without keys.

    ``ipc://``/``inproc://`` and ``tcp://`` on a loopback address (127.0.0.0/8, ::1,
    ``localhost``) are allowed; anything else needs ZeroMQ CURVE keys: same as
    :func:`stslive.acquisition.formats.security.check_bind` with no :class:`Security`.
    """
    check_bind(endpoint, None)


class RunPublisher:
    """Publishes run documents on a PUB socket and, optionally, a PUSH socket.

    PUB is for any number of consumers that may miss messages (viewer); its send-HWM is raised
    to ``hwm`` because at the default 1000 a burst drops 20-45 % of messages (ARCHITECTURE.md).
    The PUB socket is an XPUB so :meth:`wait_for_subscribers` can see subscriptions arrive
    (a SUB that connects after a message was sent never gets it).

    PUSH is for one consumer that must not drop (a recorder). A PUSH with no peer would block
    the scan on send, so it sends non-blocking: what cannot be sent waits in a local backlog
    bounded by ``push_backlog_bytes``, retried before every later send and in :meth:`close`.
    When the backlog is full the oldest messages are dropped and counted in
    ``push_dropped``; the consumer sees the gap in ``seq`` and fills it from the archive.
    The scan is never blocked by the stream.

    Parameters
    ----------
    pub_endpoint
        Where to bind the PUB socket, e.g. ``"tcp://127.0.0.1:5556"`` (port 0: any free port,
        see :attr:`pub_endpoint`). ``None``: no PUB socket.
    push_endpoint
        Where to bind the PUSH socket, or ``None`` (default) for none.
    context
        ZeroMQ context to use (tests inject one); by default a private one, terminated on close.
    header_format
        ``"json"`` or ``"msgpack"``.
    hwm
        Send high-water mark (messages) of both sockets.
    push_backlog_bytes
        Bound of the local PUSH backlog (bytes).
    security
        CURVE keys (:class:`Security`): both sockets then admit only allowed viewer and
        controller keys, on any address. ``None`` (default): loopback only, no keys.
    """

    def __init__(
        self,
        pub_endpoint: str | None = "tcp://127.0.0.1:5556",
        *,
        push_endpoint: str | None = None,
        context: zmq.Context | None = None,
        header_format: HeaderFormat = "json",
        hwm: int = 100_000,
        push_backlog_bytes: int = 256 * 1024 * 1024,
        security: Security | None = None,
    ) -> None:
        if pub_endpoint is None and push_endpoint is None:
            raise StreamError("RunPublisher needs a pub_endpoint, a push_endpoint or both")
        if header_format not in ("json", "msgpack"):
            raise StreamError(f"header_format must be 'json' or 'msgpack', not {header_format!r}")
        for ep in (pub_endpoint, push_endpoint):
            if ep is not None:
                check_bind(ep, security)
        # -- CURVE (issue 6): set before any socket exists, released in close()
        self._security = security
        self._guards: list[ServerGuard] = []
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self.header_format: HeaderFormat = header_format
        self._pub: zmq.Socket | None = None
        self._push: zmq.Socket | None = None
        self._backlog: collections.deque[list[bytes]] = collections.deque()
        self._backlog_bytes = 0
        self._backlog_limit = push_backlog_bytes
        self.push_dropped = 0
        self.sent = 0
        self._subscribers = 0
        try:
            if pub_endpoint is not None:
                self._pub = self._bind(zmq.XPUB, pub_endpoint, hwm)
                # report every SUB's subscription, not only the first one per topic
                self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            if push_endpoint is not None:
                self._push = self._bind(zmq.PUSH, push_endpoint, hwm)
        except StsliveError:  # a CURVE key file is missing (ConfigError) or the port is taken (StreamError)
            self.close(linger_s=0)
            raise
        self._run_uid: str | None = None
        self._seq = -1
        self._last_run_uid: str | None = None  # for idle heartbeats: where the last run ended
        self._last_seq = -1
        self._descriptor_uid: str | None = None
        self._counts: collections.Counter[str] = collections.Counter()

    def _bind(self, kind: int, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)  # close() flushes explicitly with its own deadline
        guard = bind_server(sock, endpoint, self._security, role="data", what="the run stream")
        if guard is not None:
            self._guards.append(guard)
        return sock

    # -- endpoints and subscribers --
    @property
    def pub_endpoint(self) -> str | None:
        """The endpoint the PUB socket actually bound (port resolved)."""
        return None if self._pub is None else self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def push_endpoint(self) -> str | None:
        """The endpoint the PUSH socket actually bound (port resolved)."""
        return None if self._push is None else self._push.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def backlog(self) -> int:
        """Messages waiting in the PUSH backlog (no PULL peer yet, or it is slow)."""
        return len(self._backlog)

    def wait_for_subscribers(self, count: int = 1, *, timeout_s: float = 5.0) -> int:
        """Wait until ``count`` subscriptions have reached the PUB socket; returns how many did.

        Each SUB sends one subscription per topic prefix (one with the default filter). Once
        it has arrived, that SUB receives everything published after; this is the handshake
        that keeps a run's first documents from being lost.

        Raises
        ------
        StreamError
            If fewer arrived within ``timeout_s``.
        """
        if self._pub is None:
            raise StreamError("wait_for_subscribers needs a PUB socket")
        deadline = time.monotonic() + timeout_s
        wait_ms = 0  # first take in everything already queued (the count may be stale), then wait
        while True:
            while self._pub.poll(wait_ms):
                msg = self._pub.recv()
                self._subscribers += {b"\x01": 1, b"\x00": -1}.get(msg[:1], 0)
                wait_ms = 0
            if self._subscribers >= count:
                return self._subscribers
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamError(
                    f"only {self._subscribers} of {count} subscription(s) reached {self.pub_endpoint} "
                    f"within {timeout_s} s; is the consumer running and connected to it?"
                )
            wait_ms = int(left * 1000) + 1

    # -- sending --
    def publish(self, doc: Document) -> list[bytes]:
        """Send a complete document as it is (no renumbering); returns the frames sent."""
        frames = encode(doc, header_format=self.header_format)
        if self._pub is not None:
            self._pub.send_multipart(frames, copy=True)  # XPUB never blocks: drops at HWM
        if self._push is not None:
            self._send_push(frames)
        self.sent += 1
        return frames

    def _send_push(self, frames: list[bytes]) -> None:
        assert self._push is not None
        self._drain_backlog()
        if not self._backlog:
            try:
                self._push.send_multipart(frames, flags=zmq.NOBLOCK, copy=True)
                return
            except zmq.Again:
                pass  # no peer, or its queue is full: keep it locally instead of blocking the scan
        size = sum(len(f) for f in frames)
        self._backlog.append(frames)
        self._backlog_bytes += size
        while self._backlog_bytes > self._backlog_limit and self._backlog:
            dropped = self._backlog.popleft()
            self._backlog_bytes -= sum(len(f) for f in dropped)
            self.push_dropped += 1

    def _drain_backlog(self) -> None:
        assert self._push is not None
        while self._backlog:
            try:
                self._push.send_multipart(self._backlog[0], flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            sent = self._backlog.popleft()
            self._backlog_bytes -= sum(len(f) for f in sent)

    def flush(self, *, timeout_s: float = 1.0) -> bool:
        """Try to hand the PUSH backlog to ZeroMQ for up to ``timeout_s``; True if it is empty."""
        if self._push is None:
            return True
        deadline = time.monotonic() + timeout_s
        self._drain_backlog()
        while self._backlog and time.monotonic() < deadline:
            self._push.poll(10, zmq.POLLOUT)
            self._drain_backlog()
        return not self._backlog

    # -- the run's documents --
    def _next(self, kind: str) -> tuple[str, int]:
        if self._run_uid is None:
            raise StreamError(f"cannot publish a {kind} document outside a run; call start() first")
        self._seq += 1
        self._counts[kind] += 1
        return self._run_uid, self._seq

    @property
    def run_uid(self) -> str | None:
        """The open run's uid, or None between runs."""
        return self._run_uid

    def start(self, *, run_uid: str | None = None, **fields: Any) -> StartDoc:
        """Open a run (seq restarts at 0) and publish its start document.

        ``fields`` are :class:`StartDoc`'s: grid, channel_names, channel_units, n_points,
        setpoint_sets, instruments, software_version, metadata.
        """
        if self._run_uid is not None:
            raise StreamError(f"run {self._run_uid} is still open; call stop() before starting another")
        self._run_uid, self._seq, self._descriptor_uid = run_uid or new_uid(), -1, None
        self._counts.clear()
        uid, seq = self._next("start")
        try:
            doc = StartDoc(run_uid=uid, uid=uid, seq=seq, **fields)
        except (StreamError, TypeError):
            self._run_uid = None
            raise
        self.publish(doc)
        return doc

    def descriptor(self, arrays: Mapping[str, ArraySpec], *, name: str = "primary") -> DescriptorDoc:
        """Publish the descriptor of the events to come."""
        run_uid, seq = self._next("descriptor")
        doc = DescriptorDoc(run_uid=run_uid, seq=seq, data_keys=dict(arrays), name=name)
        self._descriptor_uid = doc.uid
        self.publish(doc)
        return doc

    def event(self, *, arrays: Mapping[str, np.ndarray], **fields: Any) -> EventDoc:
        """Publish one pixel's event; ``fields`` are :class:`EventDoc`'s (ix, iy, x_m, ...)."""
        if self._descriptor_uid is None:
            stage = "start() and then a descriptor" if self._run_uid is None else "a descriptor"
            raise StreamError(f"publish {stage} before the first event")
        run_uid, seq = self._next("event")
        doc = EventDoc(run_uid=run_uid, seq=seq, descriptor_uid=self._descriptor_uid, arrays=dict(arrays), **fields)
        self.publish(doc)
        return doc

    def failed_pixel(self, **fields: Any) -> FailedPixelDoc:
        """Publish a failed pixel (ix, iy, x_m, y_m, setpoint_set_id, reason, attempts)."""
        run_uid, seq = self._next("failed")
        doc = FailedPixelDoc(run_uid=run_uid, seq=seq, **fields)
        self.publish(doc)
        return doc

    def heartbeat(self, state: RunState = "idle", *, message: str = "") -> HeartbeatDoc:
        """Publish a heartbeat; inside a run it takes the next seq, outside it has seq -1."""
        if self._run_uid is None:
            doc = HeartbeatDoc(
                run_uid=None,
                seq=-1,
                state=state,
                last_run_uid=self._last_run_uid,
                last_seq=self._last_seq,
                message=message,
            )
        else:
            run_uid, seq = self._next("heartbeat")
            doc = HeartbeatDoc(
                run_uid=run_uid, seq=seq, state=state, last_run_uid=run_uid, last_seq=seq - 1, message=message
            )
        self.publish(doc)
        return doc

    def stop(self, exit_status: Literal["success", "abort", "fail"] = "success", *, reason: str = "") -> StopDoc:
        """Publish the stop document (with counts per kind, stop included) and close the run."""
        run_uid, seq = self._next("stop")
        doc = StopDoc(run_uid=run_uid, seq=seq, exit_status=exit_status, reason=reason, counts=dict(self._counts))
        self.publish(doc)
        self._last_run_uid, self._last_seq = run_uid, seq
        self._run_uid, self._descriptor_uid = None, None
        return doc

    # -- lifetime --
    def close(self, *, linger_s: float = 1.0) -> None:
        """Flush the PUSH backlog for up to ``linger_s``, then close the sockets (and own context)."""
        if self._push is not None:
            self.flush(timeout_s=linger_s)
            if self._backlog:
                log.warning(
                    "closing run stream with %d undelivered PUSH message(s): no consumer took them", len(self._backlog)
                )
            self._push.close(linger=int(linger_s * 1000))
            self._push = None
        if self._pub is not None:
            self._pub.close(linger=int(linger_s * 1000))
            self._pub = None
        for guard in self._guards:  # stops the context's authenticator with the last socket
            guard.release()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> RunPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
