"""The run stream's documents and their encoding on the wire (one definition for every producer and consumer).

Kinds (after Bluesky's event model): ``start``, ``descriptor``, ``event`` (one measured pixel,
with arrays), ``failed`` (a pixel that could not be measured), ``heartbeat`` and ``stop``. Each
is a frozen dataclass whose fields are declared once with their check; the header map, its key
order and the validation of received headers all derive from that declaration. Every document
carries ``schema`` (:data:`RUN_SCHEMA`), ``version``, ``kind``, ``uid``, ``run_uid``, ``time``
(unix s) and ``seq`` (per-run counter over every document; -1 outside a run or for events
rebuilt from the archive). :func:`encode` / :func:`decode` map documents to and from
``[topic, header, *arrays]`` through :mod:`~stslive.acquisition.formats.codec`. Every field, its
unit and the resume rule are described in ``docs/formats.md``.
"""

# ruff: noqa: RUF009 - declared() is dataclasses.field() with the field's check attached

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias, get_args

import numpy as np

from stslive.acquisition.formats.codec import (
    ALLOWED_DTYPES,
    HeaderFormat,
    MalformedMessage,
    WireRules,
    from_frames,
    to_frames,
)
from stslive.acquisition.formats.fields import (
    declared,
    fail,
    flag,
    from_header,
    header_fields,
    integer,
    list_of_maps,
    map_of,
    number,
    one_of,
    optional,
    plain_map,
    text,
    texts,
    to_plain,
)
from stslive.drivers.errors import StreamError

__all__ = [
    "EXIT_STATUSES",
    "RUN_RULES",
    "RUN_SCHEMA",
    "RUN_SCHEMA_VERSION",
    "RUN_STATES",
    "TIMESTAMP_KEYS",
    "TOPIC_PREFIX",
    "ArraySpec",
    "DescriptorDoc",
    "Document",
    "EventDoc",
    "ExitStatus",
    "FailedPixelDoc",
    "HeartbeatDoc",
    "RunState",
    "StartDoc",
    "StopDoc",
    "decode",
    "encode",
    "event_fields",
    "new_uid",
    "topic_for",
]

RUN_SCHEMA = "stslive.run"
RUN_SCHEMA_VERSION = 1
TOPIC_PREFIX = RUN_SCHEMA.encode() + b"."
#: The states of a run (the scan's state machine, heartbeats): the one list of the project.
RunState: TypeAlias = Literal["idle", "running", "paused", "stopping", "done", "failed"]
RUN_STATES: tuple[RunState, ...] = get_args(RunState)
#: How a run ended (stop documents).
ExitStatus: TypeAlias = Literal["success", "abort", "fail"]
EXIT_STATUSES: tuple[ExitStatus, ...] = get_args(ExitStatus)
#: Phase times an event may carry in ``timestamps`` (unix s).
TIMESTAMP_KEYS = ("t_start", "t_sweep_start", "t_sweep_end", "t_end")
_ENVELOPE = frozenset({"schema", "version", "kind"})


def new_uid() -> str:
    """A fresh random document/run uid (32 hex characters)."""
    return uuid.uuid4().hex


def topic_for(kind: str) -> bytes:
    """The ZeroMQ topic frame of a document kind (SUB filters by prefix: :data:`TOPIC_PREFIX` is all)."""
    return TOPIC_PREFIX + kind.encode()


# -- documents ---------------------------------------------------------------------------------
def _dtype(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in ALLOWED_DTYPES:
        raise MalformedMessage("dtype", f"{name}: dtype {value!r} not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise fail(name, "a list of integers", value)
    return tuple(integer(0)(n, f"{name}[{i}]") for i, n in enumerate(value))


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """What one event array looks like: dtype (wire string), shape, axis-0 labels and units."""

    dtype: str = declared(_dtype)
    shape: tuple[int, ...] = declared(_shape)
    labels: tuple[str, ...] = declared(texts, default=())
    units: tuple[str, ...] = declared(texts, default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain map for the header."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, name: str = "array") -> ArraySpec:
        """Validate a header map (every field present); raises MalformedMessage."""
        return cls(**from_header(cls, data, name))


_array_specs = map_of(ArraySpec.from_dict, "a map of array specs")


@dataclass(frozen=True, kw_only=True)
class _Document:
    """Fields every document has; a subclass declares its own and its ``KIND``."""

    KIND: ClassVar[str] = ""

    run_uid: str | None = declared(text)
    seq: int = declared(integer(0))
    uid: str = declared(text, factory=new_uid)
    time: float = declared(number, factory=time.time)

    @property
    def kind(self) -> str:
        """The document kind (``start``, ``event``, ...)."""
        return self.KIND

    def to_dict(self) -> dict[str, Any]:
        """The header map: schema, version, kind and every declared field (arrays excluded)."""
        out: dict[str, Any] = {"schema": RUN_SCHEMA, "version": RUN_SCHEMA_VERSION, "kind": self.KIND}
        for name, _ in header_fields(type(self)):
            out[name] = to_plain(getattr(self, name))
        return out

    def body(self) -> dict[str, Any]:
        """The fields a :class:`~stslive.acquisition.formats.publisher.RunPublisher` method takes:
        all but the envelope (``run_uid``, ``seq``, ``uid``, ``time``) and ``descriptor_uid``."""
        skip = ("run_uid", "seq", "uid", "time", "descriptor_uid")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Document:
        """Build from a header map (schema, version and kind are checked by :func:`decode`)."""
        return cls(**from_header(cls, data, f"{cls.KIND} document", envelope=_ENVELOPE))


@dataclass(frozen=True, kw_only=True)
class StartDoc(_Document):
    """Opens a run; its ``uid`` is the run uid. ``grid`` is the grid geometry map (nx, ny, centre/size in m,
    angle in deg, order); ``setpoint_sets`` the set-point parameter sets as maps (SI units, each with ``id``)."""

    KIND: ClassVar[str] = "start"

    grid: dict[str, Any] = declared(plain_map)
    channel_names: tuple[str, ...] = declared(texts)
    channel_units: tuple[str, ...] = declared(texts)
    n_points: int = declared(integer(1))
    setpoint_sets: tuple[dict[str, Any], ...] = declared(list_of_maps)
    instruments: dict[str, str] = declared(map_of(text, "a map of strings"))
    software_version: str = declared(text)
    metadata: dict[str, Any] = declared(plain_map, factory=dict)

    def __post_init__(self) -> None:
        if self.uid != self.run_uid:  # as in Bluesky: the start document's uid is the run uid
            raise MalformedMessage("field", f"start: uid {self.uid!r} must equal run_uid {self.run_uid!r}")
        if len(self.channel_names) != len(self.channel_units):
            raise MalformedMessage(
                "field", f"start: {len(self.channel_names)} channel names but {len(self.channel_units)} units"
            )
        for key in ("nx", "ny"):
            integer(1)(self.grid.get(key), f"grid.{key}")


@dataclass(frozen=True, kw_only=True)
class DescriptorDoc(_Document):
    """Describes the arrays of the run's events (``data_keys``: name -> :class:`ArraySpec`)."""

    KIND: ClassVar[str] = "descriptor"

    data_keys: dict[str, ArraySpec] = declared(_array_specs)
    name: str = declared(text, default="primary")

    def check(self, event: EventDoc) -> None:
        """Raise :class:`MalformedMessage` (reason ``descriptor``) if ``event`` does not match."""
        if set(event.arrays) != set(self.data_keys):
            raise MalformedMessage(
                "descriptor",
                f"event seq {event.seq} carries arrays {sorted(event.arrays)}, "
                f"descriptor says {sorted(self.data_keys)}",
            )
        for name, spec in self.data_keys.items():
            arr = event.arrays[name]
            if arr.dtype.str != spec.dtype or arr.shape != spec.shape:
                raise MalformedMessage(
                    "descriptor",
                    f"event seq {event.seq} array {name!r} is {arr.dtype.str}{list(arr.shape)}, "
                    f"descriptor says {spec.dtype}{list(spec.shape)}",
                )


@dataclass(frozen=True, kw_only=True)
class _PixelDoc(_Document):
    """The pixel a document is about: grid indices, position (m) and set-point set."""

    ix: int = declared(integer(0))
    iy: int = declared(integer(0))
    x_m: float = declared(number)
    y_m: float = declared(number)
    setpoint_set_id: int = declared(integer(0))


@dataclass(frozen=True, kw_only=True)
class _DescribedDoc(_Document):
    """A document whose arrays a descriptor describes."""

    descriptor_uid: str = declared(text)


@dataclass(frozen=True, kw_only=True, eq=False)
class EventDoc(_PixelDoc, _DescribedDoc):
    """One measured pixel.

    ``timestamps`` holds the phase times (unix s, :data:`TIMESTAMP_KEYS`); temperatures are in K
    and ``z_m`` the tip height at the set-point in m (``None`` if not read); ``arrays`` are
    read-only numpy arrays as described by the run's descriptor (NaN = point not measured).
    The header's key order is that of the fields: the envelope, ``descriptor_uid``, the pixel,
    then the fields below (dataclass fields follow the bases from the last one listed).
    """

    KIND: ClassVar[str] = "event"

    timestamps: dict[str, float] = declared(map_of(number, "a map of numbers"))
    temperature_before_K: float | None = declared(optional(number))
    temperature_after_K: float | None = declared(optional(number))
    z_m: float | None = declared(optional(number), default=None)
    lockin_status: int = declared(integer(0), default=0)
    lockin_overload: bool = declared(flag, default=False)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> EventDoc:
        """Build from a header map and the decoded arrays."""
        values = from_header(cls, data, "event document", envelope=_ENVELOPE)
        return cls(**values, arrays=dict(arrays or {}))


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
class FailedPixelDoc(_PixelDoc):
    """A pixel that failed after the retries: where, with which set, why. No arrays."""

    KIND: ClassVar[str] = "failed"

    reason: str = declared(text)
    attempts: int = declared(integer(0), default=1)


@dataclass(frozen=True, kw_only=True)
class HeartbeatDoc(_Document):
    """Sign of life while idle or paused.

    ``last_seq`` is the seq of the last document sent before this one, of run ``last_run_uid``:
    inside a run that is the run itself; between runs it is the previous run (``None`` and -1
    before any run), so a consumer sees even the loss of a run's last documents (its stop).
    Outside a run ``run_uid`` is None and ``seq`` -1.
    """

    KIND: ClassVar[str] = "heartbeat"

    run_uid: str | None = declared(optional(text))
    seq: int = declared(integer(-1))
    state: RunState = declared(one_of(*RUN_STATES))
    last_seq: int = declared(integer(-1))
    last_run_uid: str | None = declared(optional(text), default=None)
    message: str = declared(text, default="")

    def __post_init__(self) -> None:
        if (self.run_uid is None) != (self.seq == -1):
            raise MalformedMessage("field", "heartbeat: seq is -1 exactly when run_uid is null (idle, outside a run)")


@dataclass(frozen=True, kw_only=True)
class StopDoc(_Document):
    """Closes a run: ``exit_status`` success/abort/fail, ``counts`` documents per kind."""

    KIND: ClassVar[str] = "stop"

    exit_status: ExitStatus = declared(one_of(*EXIT_STATUSES))
    counts: dict[str, int] = declared(map_of(integer(0), "a map of integers"))
    reason: str = declared(text, default="")


Document: TypeAlias = StartDoc | DescriptorDoc | EventDoc | FailedPixelDoc | HeartbeatDoc | StopDoc
_KINDS: dict[str, type[_Document]] = {
    c.KIND: c for c in (StartDoc, DescriptorDoc, EventDoc, FailedPixelDoc, HeartbeatDoc, StopDoc)
}

#: Most arrays one event may carry.
MAX_ARRAYS = 16
#: Largest array payload of one event (bytes): 16 channels x 100k points of float64.
MAX_ARRAY_BYTES = 16 * 100_000 * 8
#: The run stream's wire rules: NaN marks points not measured, inf is never a measurement.
RUN_RULES = WireRules(
    schema=RUN_SCHEMA,
    version=RUN_SCHEMA_VERSION,
    topics={kind: topic_for(kind) for kind in _KINDS},
    max_arrays=MAX_ARRAYS,
    max_array_bytes=MAX_ARRAY_BYTES,
    finite_arrays=True,
)


# -- wire --------------------------------------------------------------------------------------
def encode(doc: Document, *, header_format: HeaderFormat = "json") -> list[bytes]:
    """Serialise a document to ``[topic, header, *array frames]`` (arrays only for events).

    Raises
    ------
    StreamError
        If the document holds non-finite header numbers, inf in an array, an array of a dtype not
        allowed, or a header over the size limit.
    """
    arrays = doc.arrays if isinstance(doc, EventDoc) else None
    try:
        return to_frames(
            topic_for(doc.KIND),
            doc.to_dict(),
            arrays,
            header_format=header_format,
            finite_arrays=RUN_RULES.finite_arrays,
        )
    except StreamError as exc:
        raise StreamError(f"{doc.KIND} seq {doc.seq}: {exc}") from exc


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
    MalformedMessage
        (a StreamError) with a ``reason`` key, for anything not a valid document of this schema
        version (see :func:`stslive.acquisition.formats.codec.from_frames`), and for fields of
        the wrong type, missing or unexpected.
    """
    kind, header, arrays = from_frames(frames, RUN_RULES)
    cls = _KINDS[kind]
    if cls is EventDoc:
        if arrays is None:
            raise fail("arrays", f"a list of at most {MAX_ARRAYS} array specs", None)
        return EventDoc.from_dict(header, arrays)
    if arrays is not None:
        raise MalformedMessage("field", f"{kind} document: unexpected fields ['arrays']; only events carry arrays")
    return cls.from_dict(header)  # type: ignore[return-value]
