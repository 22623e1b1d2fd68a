"""The Nanonis TCP programming interface: frames, typed bodies and the command table.

Contract (SPECS "Nanonis TCP protocol"; argument lists as in the official ``nanonis-spm``
client), big-endian throughout:

* header, 40 bytes: command name (32 bytes, NUL padded), int32 body size, uint16 send-response
  flag, 2 bytes padding; a response repeats the command name;
* body: the arguments in order; a string is its int32 size then the bytes, a 1D array its int32
  count then the elements, a string array its int32 total size, int32 count, then each string,
  a 2D array int32 rows, int32 columns, then row-major values;
* every response body ends with the error section (uint32 status, 1 = error; int32 size;
  description); a non-zero status or a non-empty description is a
  :class:`~stslive.drivers.errors.ControllerError`.

:data:`COMMANDS` maps each command name to its :class:`CommandSignature`: (field, type code)
pairs for arguments and return values, type codes ``f32 f64 i32 u16 u32 str`` (scalars),
``i32[] f32[] str[]`` (arrays), ``str[n]`` (int32 total size then strings counted by the
preceding array, as ``BiasSpectr.ChsGet`` sends them) and ``f32[,]`` (2D). :data:`OLD_COMMANDS`
holds the layouts of releases before R11798.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stslive.drivers.errors import ControllerError, InstrumentReplyError

INSTRUMENT = "nanonis"
HEADER = struct.Struct(">32siHH")
HEADER_SIZE = HEADER.size  # 40
ERROR_HEAD = struct.Struct(">Ii")  # uint32 status (1 = error), int32 description size
_I32 = struct.Struct(">i")

_SCALARS: dict[str, struct.Struct] = {
    "f32": struct.Struct(">f"),
    "f64": struct.Struct(">d"),
    "i32": struct.Struct(">i"),
    "u16": struct.Struct(">H"),
    "u32": struct.Struct(">I"),
}
_ARRAYS: dict[str, np.dtype[Any]] = {"i32[]": np.dtype(">i4"), "f32[]": np.dtype(">f4")}
TYPES = frozenset(_SCALARS) | frozenset(_ARRAYS) | {"str", "str[]", "str[n]", "f32[,]"}


@dataclass(frozen=True)
class CommandSignature:
    """The signature of one Nanonis command: arguments and return values as (field, type code) pairs."""

    name: str
    args: tuple[tuple[str, str], ...] = ()
    returns: tuple[tuple[str, str], ...] = ()
    doc: str = ""

    @property
    def arg_types(self) -> tuple[str, ...]:
        """Type codes of the arguments."""
        return tuple(t for _, t in self.args)

    @property
    def return_types(self) -> tuple[str, ...]:
        """Type codes of the return values."""
        return tuple(t for _, t in self.returns)


_TIMING = (
    ("z_averaging_s", "f32"),
    ("z_offset_m", "f32"),
    ("initial_settling_s", "f32"),
    ("max_slew_rate_V_per_s", "f32"),
    ("settling_s", "f32"),
    ("integration_s", "f32"),
    ("end_settling_s", "f32"),
    ("z_control_s", "f32"),
)
_PROPS_HEAD = (("save_all", "u16"), ("sweeps", "i32"), ("backward", "u16"), ("points", "i32"))
_ADV_PROPS = (("reset_bias", "u16"), ("z_ctrl_hold", "u16"), ("record_final_z", "u16"), ("lockin_run", "u16"))
_FRAME = (("center_x_m", "f32"), ("center_y_m", "f32"), ("width_m", "f32"), ("height_m", "f32"), ("angle_deg", "f32"))

COMMANDS: dict[str, CommandSignature] = {
    c.name: c
    for c in (
        CommandSignature("Bias.Set", (("bias_V", "f32"),), doc="set the tip-sample bias (V)"),
        CommandSignature("Bias.Get", returns=(("bias_V", "f32"),), doc="bias (V)"),
        CommandSignature("Current.Get", returns=(("current_A", "f32"),), doc="tunnelling current (A)"),
        CommandSignature("ZCtrl.OnOffSet", (("on", "u32"),), doc="Z controller off (0) / on (1)"),
        CommandSignature("ZCtrl.OnOffGet", returns=(("on", "u32"),), doc="Z controller state"),
        CommandSignature(
            "ZCtrl.SetpntSet", (("setpoint", "f32"),), doc="Z controller set-point (A for current feedback)"
        ),
        CommandSignature("ZCtrl.SetpntGet", returns=(("setpoint", "f32"),), doc="Z controller set-point"),
        CommandSignature("ZCtrl.ZPosGet", returns=(("z_m", "f32"),), doc="Z position (m)"),
        CommandSignature(
            "FolMe.XYPosSet",
            (("x_m", "f64"), ("y_m", "f64"), ("wait_end_of_move", "u32")),
            doc="move the tip (m)",
        ),
        CommandSignature(
            "FolMe.XYPosGet", (("wait_newest", "u32"),), (("x_m", "f64"), ("y_m", "f64")), doc="tip x, y (m)"
        ),
        CommandSignature(
            "BiasSpectr.ChsSet",
            (("indexes", "i32[]"),),
            doc="recorded channels: signal indexes 0-127 (Signals-Manager slots 0-23 before R11798)",
        ),
        CommandSignature(
            "BiasSpectr.ChsGet",
            returns=(("indexes", "i32[]"), ("names", "str[n]")),
            doc="recorded channels: indexes and names (names counted by the index array)",
        ),
        CommandSignature("BiasSpectr.Open", doc="open the bias spectroscopy module"),
        CommandSignature("BiasSpectr.Stop", doc="stop the sweep in progress"),
        CommandSignature("BiasSpectr.StatusGet", returns=(("running", "u32"),), doc="0 not running, 1 running"),
        CommandSignature(
            "BiasSpectr.AdvPropsSet",
            _ADV_PROPS,
            doc="advanced properties; 0 = no change, 1 on, 2 off",
        ),
        CommandSignature(
            "BiasSpectr.AdvPropsGet",
            returns=_ADV_PROPS,
            doc="advanced properties; 0 off, 1 on",
        ),
        CommandSignature(
            "Util.VersionGet",
            returns=(("product_line", "str"), ("version", "str"), ("host_release", "u32"), ("rt_release", "u32")),
            doc="software version and releases (not in releases before R11798)",
        ),
        CommandSignature(
            "Signals.InSlotsGet",
            returns=(("names", "str[]"), ("indexes", "i32[]")),
            doc="the 24 Signals-Manager slots: signal names and their indexes 0-127",
        ),
        CommandSignature("BiasSpectr.LimitsSet", (("start_V", "f32"), ("end_V", "f32")), doc="sweep limits (V)"),
        CommandSignature(
            "BiasSpectr.LimitsGet", returns=(("start_V", "f32"), ("end_V", "f32")), doc="sweep limits (V)"
        ),
        CommandSignature(
            "BiasSpectr.PropsSet",
            (
                ("save_all", "u16"),
                ("sweeps", "i32"),
                ("backward", "u16"),
                ("points", "i32"),
                ("z_offset_m", "f32"),
                ("autosave", "u16"),
                ("show_save_dialog", "u16"),
            ),
            doc="sweep properties; 0 = no change (u16 flags: 1 on, 2 off)",
        ),
        CommandSignature(
            "BiasSpectr.PropsGet",
            returns=(
                *_PROPS_HEAD,
                ("parameters", "str[]"),
                ("fixed_parameters", "str[]"),
                ("autosave", "u16"),
                ("show_save_dialog", "u16"),
            ),
            doc="sweep properties and the names of the parameters Start returns",
        ),
        CommandSignature("BiasSpectr.TimingSet", _TIMING, doc="sweep timing (s, m, V/s)"),
        CommandSignature("BiasSpectr.TimingGet", returns=_TIMING, doc="sweep timing (s, m, V/s)"),
        CommandSignature(
            "BiasSpectr.Start",
            (("get_data", "u32"), ("save_base_name", "str")),
            (("channels", "str[]"), ("data", "f32[,]"), ("parameters", "f32[]")),
            doc="run one sweep; data rows are channels, columns points; parameters: fixed then others",
        ),
        CommandSignature("Scan.FrameSet", _FRAME, doc="scan frame (m, deg clockwise)"),
        CommandSignature("Scan.FrameGet", returns=_FRAME, doc="scan frame (m, deg clockwise)"),
        CommandSignature(
            "Signals.ValsGet",
            (("indexes", "i32[]"), ("wait_newest", "u32")),
            (("values", "f32[]"),),
            doc="present values of signals 0-127",
        ),
        CommandSignature("Signals.NamesGet", returns=(("names", "str[]"),), doc="names of signals 0-127"),
    )
}

#: The layouts that differ before R11798 (protocol document of July 2021): ChsGet returns only
#: the indexes (slots), PropsGet lists the channel names and has no autosave/dialog flags.
OLD_COMMANDS: dict[str, CommandSignature] = {
    c.name: c
    for c in (
        CommandSignature("BiasSpectr.ChsGet", returns=(("indexes", "i32[]"),), doc="recorded Signals-Manager slots"),
        CommandSignature(
            "BiasSpectr.PropsGet",
            returns=(
                *_PROPS_HEAD,
                ("channels", "str[]"),
                ("parameters", "str[]"),
                ("fixed_parameters", "str[]"),
            ),
            doc="sweep properties, channel names and parameter names",
        ),
    )
}


@dataclass(frozen=True)
class Header:
    """A decoded frame header."""

    name: str
    body_size: int
    send_response: bool


# -- header -----------------------------------------------------------------------------------
def encode_header(name: str, body_size: int, *, send_response: bool = True) -> bytes:
    """40-byte header: name padded to 32 bytes with NUL, int32 body size, uint16 flag, padding."""
    raw = name.encode("ascii")
    if len(raw) > 32:
        raise ValueError(f"command name {name!r} longer than 32 bytes")
    return HEADER.pack(raw, body_size, int(send_response), 0)


def decode_header(data: bytes) -> Header:
    """Parse a 40-byte header; InstrumentReplyError if malformed."""
    if len(data) != HEADER_SIZE:
        raise InstrumentReplyError(INSTRUMENT, f"header of {len(data)} bytes, expected {HEADER_SIZE}")
    raw, size, flag, _ = HEADER.unpack(data)
    name_bytes = raw.split(b"\0", 1)[0]
    try:
        name = name_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise InstrumentReplyError(INSTRUMENT, f"header command name is not ASCII: {name_bytes!r}") from None
    if not name or any(b != 0 for b in raw[len(name_bytes) :]):
        raise InstrumentReplyError(INSTRUMENT, f"malformed header command field {raw!r}")
    if size < 0:
        raise InstrumentReplyError(INSTRUMENT, f"negative body size {size} in header of {name}")
    return Header(name, size, bool(flag))


# -- typed values -----------------------------------------------------------------------------
def _encode_one(code: str, value: Any) -> bytes:
    if code in _SCALARS:
        return _SCALARS[code].pack(value)
    if code == "str":
        raw = str(value).encode("utf-8")
        return _I32.pack(len(raw)) + raw
    if code in _ARRAYS:
        arr = np.ascontiguousarray(value, dtype=_ARRAYS[code])
        if arr.ndim != 1:
            raise ValueError(f"{code} needs a 1D array, got shape {arr.shape}")
        return _I32.pack(arr.size) + arr.tobytes()
    if code in ("str[]", "str[n]"):
        items = [_encode_one("str", s) for s in value]
        blob = b"".join(items)
        return _I32.pack(len(blob)) + (_I32.pack(len(items)) if code == "str[]" else b"") + blob
    if code == "f32[,]":
        arr = np.ascontiguousarray(value, dtype=">f4")
        if arr.ndim != 2:
            raise ValueError(f"f32[,] needs a 2D array, got shape {arr.shape}")
        return struct.pack(">ii", *arr.shape) + arr.tobytes()
    raise ValueError(f"unknown Nanonis type code {code!r}; known: {sorted(TYPES)}")


def encode_values(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """Pack ``values`` by their type codes into a body (big-endian)."""
    if len(types) != len(values):
        raise ValueError(f"{len(values)} values for {len(types)} type codes")
    try:
        return b"".join(_encode_one(t, v) for t, v in zip(types, values, strict=True))
    except struct.error as exc:
        raise ValueError(f"value out of range for its Nanonis type: {exc}") from None


class _Reader:
    """Cursor over a body; every short read is an InstrumentReplyError naming ``what``."""

    def __init__(self, body: bytes, what: str, offset: int = 0) -> None:
        self.body = memoryview(body)
        self.pos = offset
        self.what = what

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.body):
            raise InstrumentReplyError(
                INSTRUMENT,
                f"{self.what}: body too short for {field} ({n} bytes at offset {self.pos}, body {len(self.body)})",
            )
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def count(self, field: str) -> int:
        n: int = _I32.unpack(self.take(4, field))[0]
        if n < 0:
            raise InstrumentReplyError(INSTRUMENT, f"{self.what}: negative size {n} for {field}")
        return n

    def string(self, field: str) -> str:
        raw = bytes(self.take(self.count(field), field))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InstrumentReplyError(INSTRUMENT, f"{self.what}: {field} is not UTF-8 text: {raw[:40]!r}") from None

    def _counted_strings(self, field: str, n: int) -> tuple[str, ...]:
        # The document (R13742, BiasSpectr.ChsGet) sends the size then the n strings; SPECS' own
        # client 1.0.9 reads a count between them. Accept whichever layout adds up to the size.
        size = self.count(field)
        for skip in (0, 4):
            fit = _strings_at(self.body, self.pos + skip, n)
            if (
                fit is not None
                and fit[0] == size
                and (skip == 0 or _I32.unpack(self.body[self.pos : self.pos + 4])[0] == n)
            ):
                self.pos += skip
                return tuple(self.string(f"{field}[{i}]") for i in range(n))
        raise InstrumentReplyError(
            INSTRUMENT, f"{self.what}: {field} declares {size} bytes for {n} strings; they do not fit"
        )

    def value(self, code: str, field: str, count: int = 0) -> Any:
        if code in _SCALARS:
            s = _SCALARS[code]
            return s.unpack(self.take(s.size, field))[0]
        if code == "str":
            return self.string(field)
        if code in _ARRAYS:
            dt = _ARRAYS[code]
            n = self.count(field)
            native = np.int32 if code == "i32[]" else np.float32
            return np.frombuffer(self.take(n * dt.itemsize, field), dtype=dt).astype(native)
        if code == "str[n]":
            return self._counted_strings(field, count)
        if code == "str[]":
            size = self.count(field)
            n = self.count(field)
            start = self.pos
            items = tuple(self.string(f"{field}[{i}]") for i in range(n))
            if self.pos - start != size:
                raise InstrumentReplyError(
                    INSTRUMENT,
                    f"{self.what}: {field} declares {size} bytes but its {n} strings take {self.pos - start}",
                )
            return items
        if code == "f32[,]":
            rows, cols = self.count(field), self.count(field)
            raw = self.take(rows * cols * 4, field)
            return np.frombuffer(raw, dtype=">f4").astype(np.float32).reshape(rows, cols)
        raise ValueError(f"unknown Nanonis type code {code!r}; known: {sorted(TYPES)}")


def _strings_at(body: memoryview, pos: int, n: int) -> tuple[int, int] | None:
    """(bytes taken, end) of ``n`` size-prefixed strings at ``pos``, None if they do not fit."""
    start = pos
    for _ in range(n):
        if pos + 4 > len(body):
            return None
        size = _I32.unpack(body[pos : pos + 4])[0]
        if size < 0 or pos + 4 + size > len(body):
            return None
        pos += 4 + size
    return pos - start, pos


def decode_values(types: Sequence[str], body: bytes, *, what: str, fields: Sequence[str] = ()) -> tuple[list[Any], int]:
    """Unpack values by type codes from the start of ``body``; returns (values, bytes used)."""
    r = _Reader(body, what)
    names = list(fields) or [f"value {i}" for i in range(len(types))]
    values: list[Any] = []
    for t, f in zip(types, names, strict=True):
        # "str[n]" strings are counted by the array before them
        values.append(r.value(t, f, len(values[-1]) if t == "str[n]" and values else 0))
    return values, r.pos


# -- requests and responses -------------------------------------------------------------------
def signature(name: str, *, old: bool = False) -> CommandSignature:
    """The signature of command ``name`` (``old``: as releases before R11798 define it).

    KeyError names the known commands.
    """
    if old and name in OLD_COMMANDS:
        return OLD_COMMANDS[name]
    try:
        return COMMANDS[name]
    except KeyError:
        raise KeyError(f"Nanonis command {name!r} is not in the table; known: {sorted(COMMANDS)}") from None


def encode_request(name: str, *args: Any, send_response: bool = True) -> bytes:
    """A whole request frame (header + body) for a table command."""
    cmd = signature(name)
    body = encode_values(cmd.arg_types, args)
    return encode_header(name, len(body), send_response=send_response) + body


def decode_request(cmd: CommandSignature, body: bytes) -> dict[str, Any]:
    """The arguments of a request body by field name; InstrumentReplyError if malformed."""
    values, used = decode_values(cmd.arg_types, body, what=f"{cmd.name} request", fields=[f for f, _ in cmd.args])
    if used != len(body):
        raise InstrumentReplyError(INSTRUMENT, f"{cmd.name} request: {len(body) - used} unexpected trailing bytes")
    return dict(zip((f for f, _ in cmd.args), values, strict=True))


def encode_error(status: int = 0, description: str = "") -> bytes:
    """The error section that ends every response body."""
    raw = description.encode("utf-8")
    return ERROR_HEAD.pack(status, len(raw)) + raw


def encode_response(
    name: str, values: Sequence[Any] | None = None, *, status: int = 0, description: str = "", old: bool = False
) -> bytes:
    """A whole response frame: header, return values (table types), error section.

    With ``values=None`` every return value is its type's zero (0, "", empty array), which is
    what the controller sends beside a set error section; clients then read the error.
    """
    types = signature(name, old=old).return_types
    if values is None:
        values = [_ZERO[t] for t in types]
    body = encode_values(types, values) + encode_error(status, description)
    return encode_header(name, len(body), send_response=False) + body


_ZERO: dict[str, Any] = {
    "f32": 0.0,
    "f64": 0.0,
    "i32": 0,
    "u16": 0,
    "u32": 0,
    "str": "",
    "i32[]": (),
    "f32[]": (),
    "str[]": (),
    "str[n]": (),
    "f32[,]": np.zeros((0, 0), np.float32),
}


def encode_error_response(name: str, status: int, description: str) -> bytes:
    """A response carrying only the error section (unknown command, controller refusal)."""
    body = encode_error(status, description)
    return encode_header(name, len(body), send_response=False) + body


def check_error_section(name: str, body: bytes, offset: int) -> None:
    """Parse the error section at ``offset``; ControllerError if set, InstrumentReplyError if malformed."""
    r = _Reader(body, f"{name} response")
    r.pos = offset
    status, size = ERROR_HEAD.unpack(r.take(ERROR_HEAD.size, "error section"))
    if size < 0:
        raise InstrumentReplyError(INSTRUMENT, f"{name} response: negative error description size {size}")
    description = bytes(r.take(size, "error description")).decode("utf-8", errors="replace")
    if r.pos != len(body):
        raise InstrumentReplyError(
            INSTRUMENT, f"{name} response: {len(body) - r.pos} unexpected bytes after the error section"
        )
    if status != 0 or description:
        raise ControllerError(INSTRUMENT, description or f"error status {status}", command=name, code=status)


def decode_response(name: str, header: Header, body: bytes, *, old: bool = False) -> dict[str, Any]:
    """Return values of a response by field name.

    ``old`` decodes the layouts of releases before R11798 (:data:`OLD_COMMANDS`).

    Raises
    ------
    InstrumentReplyError
        Wrong command in the header, wrong size, or a body that does not parse.
    ControllerError
        The controller's error section is set (its message is in the exception).
    """
    if header.name != name:
        raise InstrumentReplyError(
            INSTRUMENT, f"reply is for {header.name!r}, expected {name!r}; connection out of step"
        )
    if header.body_size != len(body):
        raise InstrumentReplyError(INSTRUMENT, f"{name}: body of {len(body)} bytes, header says {header.body_size}")
    cmd = signature(name, old=old)
    # An error reply may carry no return values; look for a bare error section first.
    if len(body) >= ERROR_HEAD.size:
        status, size = ERROR_HEAD.unpack_from(body, 0)
        if status != 0 and ERROR_HEAD.size + size == len(body):
            check_error_section(name, body, 0)
    values, used = decode_values(cmd.return_types, body, what=f"{name} response", fields=[f for f, _ in cmd.returns])
    check_error_section(name, body, used)
    return dict(zip((f for f, _ in cmd.returns), values, strict=True))
