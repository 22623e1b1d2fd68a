"""The one wire codec of stslive: a ZeroMQ multipart message ``[topic, header, *array frames]``.

Contract. The header is a map, JSON (UTF-8) or msgpack, told apart by its first byte (a JSON
object starts with ``{``, a msgpack map with 0x80-0x8f, 0xde or 0xdf). Its ``arrays`` entry, when
present, lists ``{name, dtype, shape}`` of the raw little-endian C-order frames that follow, in
frame order. Only :data:`ALLOWED_DTYPES` are decoded and nothing is ever unpickled. Header numbers
are finite (JSON ``NaN``/``Infinity`` tokens are refused). Each protocol that uses the codec (the
run stream, the results stream) states its envelope (``schema``, ``version``, ``kind`` -> topic)
and limits in a :class:`WireRules`; :func:`from_frames` checks frames, header, envelope and arrays
and raises :class:`MalformedMessage`, whose ``reason`` is a short key for counters. The format is
described in ``docs/formats.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

import msgpack
import numpy as np
import zmq

from stslive.drivers.errors import StreamError

__all__ = [
    "ALLOWED_DTYPES",
    "HEADER_FORMATS",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "HeaderFormat",
    "MalformedMessage",
    "WireMessage",
    "WireRules",
    "check_envelope",
    "from_frames",
    "json_safe",
    "to_frames",
]

HeaderFormat: TypeAlias = Literal["json", "msgpack"]
HEADER_FORMATS: tuple[HeaderFormat, ...] = ("json", "msgpack")
#: Wire dtypes (numpy ``dtype.str``, little-endian); nothing else is encoded or decoded.
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i2", "<i4", "<i8", "<u2", "<u4", "|u1", "|b1"})
#: Largest header (bytes) of any message: a run's start document takes a few kB, an event < 1 kB.
MAX_HEADER_BYTES = 256 * 1024
#: Most dimensions of one array.
MAX_NDIM = 4
#: the allowed dtypes parsed once: np.dtype() of a wire string is never called on input
_WIRE_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
_SPEC_KEYS = frozenset({"name", "dtype", "shape"})


class MalformedMessage(StreamError):
    """A message that breaks the wire format or its protocol's rules; ``reason`` is a counter key.

    Reasons: ``frames``, ``topic``, ``oversize``, ``header``, ``schema``, ``version``, ``kind``,
    ``field``, ``nonfinite``, ``dtype``, ``shape``, ``descriptor``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"rejected message ({reason}): {message}")
        self.reason = reason
        self.detail = message


@dataclass(frozen=True)
class WireRules:
    """What one protocol accepts on the wire.

    Attributes
    ----------
    schema, version
        The header's ``schema`` string and ``version`` integer.
    topics
        ``kind -> topic frame`` of every message kind; the topic must match the header's kind.
    max_arrays
        Most array frames per message.
    max_array_bytes
        Largest sum of array frame sizes per message (bytes).
    header_formats
        Header encodings accepted.
    finite_arrays
        Refuse ``+-inf`` in float arrays (NaN is always allowed: "not measured").
    """

    schema: str
    version: int
    topics: Mapping[str, bytes]
    max_arrays: int
    max_array_bytes: int
    header_formats: tuple[HeaderFormat, ...] = HEADER_FORMATS
    finite_arrays: bool = False


class WireMessage(NamedTuple):
    """A decoded message: its kind, its header (without ``arrays``) and its arrays.

    ``arrays`` is None when the header had no ``arrays`` entry (and then no array frame came);
    the arrays are read-only views on the received buffers.
    """

    kind: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] | None


def json_safe(value: Any) -> Any:
    """``value`` with builtin types only (numpy scalars unwrapped, tuples as lists) and non-finite
    floats as None, so that strict JSON can carry it."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- encoding ----------------------------------------------------------------------------------
def _wire_array(arr: np.ndarray, name: str) -> np.ndarray:
    """Contiguous little-endian ``arr`` (no copy when it already is); StreamError for a dtype not allowed."""
    wire = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    if wire.dtype.str not in ALLOWED_DTYPES:
        raise StreamError(f"array {name!r} has dtype {arr.dtype}; the stream carries only {sorted(ALLOWED_DTYPES)}")
    return wire


def _nonfinite_key(obj: Any, key: str = "") -> str | None:
    """Key path of the first NaN/inf float in a header tree, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else key
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        if isinstance(v, float | dict | list) and (bad := _nonfinite_key(v, f"{key}.{k}" if key else str(k))):
            return bad
    return None


def to_frames(
    topic: bytes,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    header_format: HeaderFormat = "json",
    finite_arrays: bool = False,
) -> list[bytes]:
    """Serialise one message to ``[topic, header, *array frames]``.

    Parameters
    ----------
    topic
        The topic frame.
    header
        Plain data (maps, lists, strings, finite numbers, bool, None); an ``arrays`` entry is added
        when ``arrays`` is not None (an empty map gives ``"arrays": []``).
    arrays
        ``name -> array`` sent as raw little-endian frames in this order.
    header_format
        ``"json"`` (compact separators) or ``"msgpack"``.
    finite_arrays
        Refuse float arrays holding +-inf.

    Raises
    ------
    StreamError
        Non-finite header numbers, a dtype not allowed, inf where refused, or a header over
        :data:`MAX_HEADER_BYTES`.
    """
    head = dict(header)
    frames: list[bytes] = []
    if arrays is not None:
        specs = []
        for name, arr in arrays.items():
            wire = _wire_array(np.asarray(arr), name)
            if finite_arrays and wire.dtype.kind == "f" and np.isinf(wire).any():
                raise StreamError(f"array {name!r} contains inf; use NaN for points not measured")
            specs.append({"name": name, "dtype": wire.dtype.str, "shape": list(wire.shape)})
            frames.append(wire.tobytes())  # one copy; zmq copies < 64 KiB frames anyway
        head["arrays"] = specs
    try:
        if header_format == "json":
            raw = json.dumps(head, allow_nan=False, separators=(",", ":")).encode()
        elif header_format == "msgpack":
            bad = _nonfinite_key(head)  # msgpack would carry NaN silently; refuse it as JSON does
            if bad is not None:
                raise ValueError(f"field {bad!r} is not finite")
            raw = msgpack.packb(head, use_bin_type=True)
        else:
            raise StreamError(f"header_format must be 'json' or 'msgpack', not {header_format!r}")
    except ValueError as exc:  # json: NaN/inf in a header number
        raise StreamError(f"cannot encode header ({exc}); header numbers must be finite") from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise StreamError(
            f"header is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit; move bulk data into arrays"
        )
    return [topic, raw, *frames]


# -- decoding ----------------------------------------------------------------------------------
def _reject_constant(token: str) -> Any:
    raise MalformedMessage("nonfinite", f"header contains {token}; header numbers must be finite")


def _parse_header(raw: memoryview, formats: tuple[HeaderFormat, ...]) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedMessage("oversize", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    if len(raw) == 0:
        raise MalformedMessage("header", "empty header frame")
    first = raw[0]
    fmt = "json" if first == ord("{") else "msgpack" if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF) else None
    if fmt not in formats:
        accepted = " or ".join(f.replace("json", "JSON") for f in formats)
        raise MalformedMessage("header", f"header is not {accepted} (first byte 0x{first:02x})")
    try:
        if fmt == "json":
            header = json.loads(bytes(raw), parse_constant=_reject_constant)
        else:
            header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, RecursionError, msgpack.UnpackException) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and msgpack's ExtraData/FormatError;
        # RecursionError a JSON bomb of nested brackets
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage("header", f"header is not {fmt.replace('json', 'JSON')} ({exc})") from exc
    if not isinstance(header, dict):
        raise MalformedMessage("header", f"header is a {type(header).__name__}, not a map")
    return header


def _size(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedMessage("field", f"{name} must be an integer >= 0, got {repr(value)[:80]}")
    return value


def _decode_arrays(specs: Any, frames: Sequence[memoryview], rules: WireRules) -> dict[str, np.ndarray]:
    if not isinstance(specs, list) or len(specs) > rules.max_arrays:
        raise MalformedMessage(
            "field", f"field 'arrays' must be a list of at most {rules.max_arrays} array specs, got {repr(specs)[:80]}"
        )
    if len(specs) != len(frames):
        raise MalformedMessage("frames", f"header lists {len(specs)} arrays but {len(frames)} array frames arrived")
    if sum(len(f) for f in frames) > rules.max_array_bytes:
        raise MalformedMessage("oversize", f"array payload exceeds {rules.max_array_bytes} bytes")
    arrays: dict[str, np.ndarray] = {}
    for i, (spec, frame) in enumerate(zip(specs, frames, strict=True)):
        if not isinstance(spec, dict) or spec.keys() != _SPEC_KEYS:
            raise MalformedMessage("field", f"arrays[{i}] must be a map with name, dtype, shape, got {repr(spec)[:80]}")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str):
            raise MalformedMessage("field", f"arrays[{i}].name must be a string, got {repr(name)[:80]}")
        dt = _WIRE_DTYPES.get(dtype) if isinstance(dtype, str) else None
        if dt is None:
            raise MalformedMessage(
                "dtype", f"array {name!r}: dtype {dtype!r} not allowed (allowed: {sorted(ALLOWED_DTYPES)})"
            )
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise MalformedMessage(
                "shape", f"array {name!r}: shape must be a list of at most {MAX_NDIM} sizes, got {shape!r}"
            )
        for size in shape:
            _size(size, f"{name}.shape")
        expected = math.prod(shape) * dt.itemsize
        if expected != len(frame):
            raise MalformedMessage(
                "shape", f"array {name!r}: {len(frame)} bytes for shape {shape} of {dtype} ({expected} expected)"
            )
        if name in arrays:
            raise MalformedMessage("field", f"array {name!r} appears twice")
        arr = np.frombuffer(frame, dtype=dt).reshape(shape)
        if rules.finite_arrays and dt.kind == "f" and np.isinf(arr).any():
            raise MalformedMessage(
                "nonfinite", f"array {name!r} contains inf (NaN marks unmeasured points; inf is never valid)"
            )
        arrays[name] = arr
    return arrays


def check_envelope(header: Mapping[str, Any], rules: WireRules) -> str:
    """The kind of a header whose ``schema``, ``version`` and ``kind`` are those of ``rules``.

    Raises
    ------
    MalformedMessage
        Reason ``schema``, ``version`` or ``kind``.
    """
    schema, version, kind = header.get("schema"), header.get("version"), header.get("kind")
    if schema != rules.schema:
        raise MalformedMessage("schema", f"schema {schema!r} is not {rules.schema!r}")
    if version != rules.version:
        raise MalformedMessage(
            "version",
            f"{rules.schema} version {version!r} not supported (this build reads {rules.version}); "
            "upgrade stslive on one side",
        )
    if not isinstance(kind, str) or kind not in rules.topics:
        raise MalformedMessage("kind", f"unknown {rules.schema} kind {kind!r}")
    return kind


def from_frames(frames: Sequence[Any], rules: WireRules) -> WireMessage:
    """Parse ``[topic, header, *array frames]`` under ``rules``.

    Parameters
    ----------
    frames
        The multipart message: bytes, memoryviews or ``zmq.Frame`` objects.
    rules
        The protocol's envelope and limits.

    Raises
    ------
    MalformedMessage
        (a StreamError) for a frame count, topic, header size or syntax, schema, version, kind,
        array spec, dtype, size or (where refused) inf that breaks the rules.
    """
    if len(frames) < 2:
        raise MalformedMessage("frames", f"expected [topic, header, *arrays], got {len(frames)} frame(s)")
    views = [memoryview(f.buffer if isinstance(f, zmq.Frame) else f).cast("B") for f in frames]
    header = _parse_header(views[1], rules.header_formats)
    kind = check_envelope(header, rules)
    topic = rules.topics[kind]
    if views[0] != topic:
        raise MalformedMessage("topic", f"topic {bytes(views[0])[:60]!r} does not match kind {kind!r}")
    if "arrays" in header:
        arrays: dict[str, np.ndarray] | None = _decode_arrays(header.pop("arrays"), views[2:], rules)
    elif len(views) > 2:
        raise MalformedMessage(
            "frames", f"a {kind} header lists no arrays, but {len(views) - 2} extra frame(s) arrived"
        )
    else:
        arrays = None
    return WireMessage(kind, header, arrays)
