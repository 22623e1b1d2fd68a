"""The Nanonis TCP protocol as the simulated controller speaks it, written from the protocol document.

Contract (SPECS "Nanonis TCP Protocol", R13742 of June 2024, and R10862 of July 2021, pp. 24-32
and the Bias Spectroscopy, Signals and Utilities sections), big-endian throughout:

* request header, 40 bytes: command name NUL-padded to 32, int32 body size, uint16 "send
  response back", 2 unused bytes; response header: name, int32 body size, 4 unused bytes;
* a response body is the return arguments then the error section: uint32 status (1 = error),
  int32 description size, the description without its own prefix;
* argument layouts per command in :data:`LAYOUTS` (type codes below); the older release
  (R10862) answers ``BiasSpectr.ChsGet`` without names and ``BiasSpectr.PropsGet`` with the
  channel names and without the autosave flags (:data:`OLD_LAYOUTS`), and has no
  ``Util.VersionGet``.

Deliberately independent of :mod:`stslive.drivers.nanonis_codec`: a simulation that shared the
driver's table would agree with every mistake in it.

Type codes: ``u16 u32 i32 f32 f64`` scalars; ``str`` int32 size + bytes; ``i32*``/``f32*`` int32
count + elements; ``str*`` int32 total bytes (each element's prefix included) + int32 count +
elements; ``strb*`` int32 total bytes + elements, the count given by an earlier argument
(``ChsGet``); ``f32**`` int32 rows, int32 columns, row-major values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

HEADER = struct.Struct(">32siHH")
RESPONSE_HEADER = struct.Struct(">32si4x")
HEADER_SIZE = 40
_SCALAR = {"u16": ">H", "u32": ">I", "i32": ">i", "f32": ">f", "f64": ">d"}
_ARRAY = {"i32*": ">i4", "f32*": ">f4"}


class ProtocolError(Exception):
    """A request the simulated controller cannot parse (its text goes into the error section)."""


Layout = tuple[tuple[str, ...], tuple[str, ...]]  # (argument types, return types)

#: command -> (argument type codes, return type codes), R13742.
LAYOUTS: dict[str, Layout] = {
    "Bias.Set": (("f32",), ()),
    "Bias.Get": ((), ("f32",)),
    "Current.Get": ((), ("f32",)),
    "ZCtrl.OnOffSet": (("u32",), ()),
    "ZCtrl.OnOffGet": ((), ("u32",)),
    "ZCtrl.SetpntSet": (("f32",), ()),
    "ZCtrl.SetpntGet": ((), ("f32",)),
    "ZCtrl.ZPosGet": ((), ("f32",)),
    "FolMe.XYPosSet": (("f64", "f64", "u32"), ()),
    "FolMe.XYPosGet": (("u32",), ("f64", "f64")),
    "Scan.FrameSet": (("f32",) * 5, ()),
    "Scan.FrameGet": ((), ("f32",) * 5),
    "Signals.NamesGet": ((), ("str*",)),
    "Signals.InSlotsGet": ((), ("str*", "i32*")),
    "Signals.ValsGet": (("i32*", "u32"), ("f32*",)),
    "BiasSpectr.Open": ((), ()),
    "BiasSpectr.Start": (("u32", "str"), ("str*", "f32**", "f32*")),
    "BiasSpectr.Stop": ((), ()),
    "BiasSpectr.StatusGet": ((), ("u32",)),
    "BiasSpectr.ChsSet": (("i32*",), ()),
    "BiasSpectr.ChsGet": ((), ("i32*", "strb*")),
    "BiasSpectr.PropsSet": (("u16", "i32", "u16", "i32", "f32", "u16", "u16"), ()),
    "BiasSpectr.PropsGet": ((), ("u16", "i32", "u16", "i32", "str*", "str*", "u16", "u16")),
    "BiasSpectr.AdvPropsSet": (("u16",) * 4, ()),
    "BiasSpectr.AdvPropsGet": ((), ("u16",) * 4),
    "BiasSpectr.LimitsSet": (("f32", "f32"), ()),
    "BiasSpectr.LimitsGet": ((), ("f32", "f32")),
    "BiasSpectr.TimingSet": (("f32",) * 8, ()),
    "BiasSpectr.TimingGet": ((), ("f32",) * 8),
    "Util.VersionGet": ((), ("str", "str", "u32", "u32")),
}

#: What differs in R10862 (July 2021): ChsGet has no names, PropsGet lists the channels and has
#: no autosave flags, Util.VersionGet does not exist.
OLD_LAYOUTS: dict[str, Layout | None] = {
    "BiasSpectr.ChsGet": ((), ("i32*",)),
    "BiasSpectr.PropsGet": ((), ("u16", "i32", "u16", "i32", "str*", "str*", "str*")),
    "Util.VersionGet": None,
}


def layouts_for(old: bool) -> dict[str, Layout]:
    """The command table of a controller of the older (R10862) or newer (R13742) layout."""
    if not old:
        return dict(LAYOUTS)
    table = {**LAYOUTS, **OLD_LAYOUTS}
    return {name: layout for name, layout in table.items() if layout is not None}


# -- decoding requests ----------------------------------------------------------------------------
def parse_header(head: bytes) -> tuple[str, int, bool]:
    """(command name, body size, send response back) of a 40-byte request header."""
    raw, size, respond, _ = HEADER.unpack(head)
    name = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    if size < 0:
        raise ProtocolError(f"negative body size {size}")
    return name, size, bool(respond)


def decode_arguments(types: Sequence[str], body: bytes) -> list[Any]:
    """The arguments of a request body; ProtocolError if it is short, long or malformed."""
    pos = 0
    out: list[Any] = []

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(body):
            raise ProtocolError(f"request body of {len(body)} bytes is too short for its arguments")
        chunk = body[pos : pos + n]
        pos += n
        return chunk

    for code in types:
        if code in _SCALAR:
            fmt = struct.Struct(_SCALAR[code])
            out.append(fmt.unpack(take(fmt.size))[0])
        elif code == "str":
            (size,) = struct.unpack(">i", take(4))
            out.append(take(size).decode("utf-8", errors="replace"))
        elif code in _ARRAY:
            (count,) = struct.unpack(">i", take(4))
            out.append(np.frombuffer(take(4 * count), dtype=_ARRAY[code]).copy())
        else:
            raise ProtocolError(f"argument type {code} not accepted in requests")
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} bytes after the arguments")
    return out


# -- encoding responses ---------------------------------------------------------------------------
def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">i", len(raw)) + raw


def encode_value(code: str, value: Any) -> bytes:
    """One return argument by its type code."""
    if code in _SCALAR:
        return struct.pack(_SCALAR[code], value)
    if code == "str":
        return _string(str(value))
    if code in _ARRAY:
        arr = np.asarray(value, dtype=_ARRAY[code]).ravel()
        return struct.pack(">i", arr.size) + arr.tobytes()
    if code in ("str*", "strb*"):
        # The total size counts each element's 4-byte prefix (as SPECS' own client reads it).
        items = b"".join(_string(s) for s in value)
        count = b"" if code == "strb*" else struct.pack(">i", len(value))
        return struct.pack(">i", len(items)) + count + items
    if code == "f32**":
        arr = np.asarray(value, dtype=">f4")
        if arr.ndim != 2:
            raise ValueError(f"f32** needs a 2D array, got shape {arr.shape}")
        rows, cols = (int(n) for n in arr.shape)
        return struct.pack(">ii", rows, cols) + arr.tobytes()
    raise ValueError(f"unknown return type code {code!r}")


def error_section(message: str = "") -> bytes:
    """uint32 status (1 if ``message``), int32 size, the description."""
    raw = message.encode("utf-8")
    return struct.pack(">Ii", 1 if message else 0, len(raw)) + raw


def response(name: str, body: bytes) -> bytes:
    """A response frame: 40-byte header (name, body size, 4 unused bytes) and the body."""
    return RESPONSE_HEADER.pack(name.encode("ascii")[:32], len(body)) + body


def success(name: str, types: Sequence[str], values: Sequence[Any]) -> bytes:
    """The reply of a command that ran: its return values then an empty error section."""
    body = b"".join(encode_value(code, value) for code, value in zip(types, values, strict=True))
    return response(name, body + error_section())


def failure(name: str, types: Sequence[str], message: str) -> bytes:
    """The reply of a command that failed: zero-valued return arguments then the error section.

    The document places the error section after the return arguments in every reply, so a
    failed command still carries its (empty) return arguments; clients skip them.
    """
    zero = {"u16": 0, "u32": 0, "i32": 0, "f32": 0.0, "f64": 0.0, "str": "", "f32**": np.zeros((0, 0))}
    body = b"".join(encode_value(code, zero.get(code, ())) for code in types)
    return response(name, body + error_section(message))
