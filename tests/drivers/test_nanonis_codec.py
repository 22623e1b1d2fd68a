"""The Nanonis frame codec: round trips, byte identity with the official client, typed errors."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import ControllerError, InstrumentReplyError

nanonis_spm = pytest.importorskip("nanonis_spm")


class _CaptureConnection:
    """Stands in for the official client's socket: keeps what it sends, answers a canned frame."""

    def __init__(self, reply: bytes) -> None:
        self.sent = b""
        self._reply = reply

    def send(self, data: bytes) -> None:
        self.sent += bytes(data)

    def recv(self, n: int) -> bytes:
        out, self._reply = self._reply[:n], self._reply[n:]
        return out

    def settimeout(self, t: float) -> None:
        pass


# Official client method and its arguments -> our table command with the same arguments.
OFFICIAL_CALLS: list[tuple[str, str, tuple[Any, ...]]] = [
    ("Bias_Set", "Bias.Set", (-0.25,)),
    ("Bias_Get", "Bias.Get", ()),
    ("Current_Get", "Current.Get", ()),
    ("ZCtrl_OnOffSet", "ZCtrl.OnOffSet", (1,)),
    ("ZCtrl_OnOffGet", "ZCtrl.OnOffGet", ()),
    ("ZCtrl_SetpntSet", "ZCtrl.SetpntSet", (1.5e-10,)),
    ("ZCtrl_SetpntGet", "ZCtrl.SetpntGet", ()),
    ("ZCtrl_ZPosGet", "ZCtrl.ZPosGet", ()),
    ("FolMe_XYPosSet", "FolMe.XYPosSet", (1.25e-9, -3.5e-9, 1)),
    ("FolMe_XYPosGet", "FolMe.XYPosGet", (1,)),
    ("BiasSpectr_ChsSet", "BiasSpectr.ChsSet", ([0, 5, 2],)),
    ("BiasSpectr_ChsGet", "BiasSpectr.ChsGet", ()),
    ("BiasSpectr_LimitsSet", "BiasSpectr.LimitsSet", (-0.04, 0.04)),
    ("BiasSpectr_LimitsGet", "BiasSpectr.LimitsGet", ()),
    ("BiasSpectr_PropsSet", "BiasSpectr.PropsSet", (0, 1, 2, 1601, 0.0, 2, 2)),
    ("BiasSpectr_PropsGet", "BiasSpectr.PropsGet", ()),
    ("BiasSpectr_TimingSet", "BiasSpectr.TimingSet", (0.1, 0.0, 0.05, 10.0, 1e-3, 2e-3, 0.0, 0.2)),
    ("BiasSpectr_TimingGet", "BiasSpectr.TimingGet", ()),
    ("BiasSpectr_Start", "BiasSpectr.Start", (1, "pixel_000")),
    ("Scan_FrameSet", "Scan.FrameSet", (0.0, 1e-9, 3e-8, 2e-8, 15.0)),
    ("Scan_FrameGet", "Scan.FrameGet", ()),
    ("Signals_ValsGet", "Signals.ValsGet", ([0, 3], 0)),
    ("Signals_NamesGet", "Signals.NamesGet", ()),
    ("BiasSpectr_Open", "BiasSpectr.Open", ()),
    ("BiasSpectr_Stop", "BiasSpectr.Stop", ()),
    ("BiasSpectr_StatusGet", "BiasSpectr.StatusGet", ()),
    ("BiasSpectr_AdvPropsSet", "BiasSpectr.AdvPropsSet", (1, 2, 0, 0)),
    ("BiasSpectr_AdvPropsGet", "BiasSpectr.AdvPropsGet", ()),
]

# Where the protocol document (R13742) and SPECS' client 1.0.9 disagree, our table follows the
# document: ChsGet sends the names' byte size and then the names (the client also reads a
# count), PropsGet sends no channel names and ends with the autosave flags (the client decodes
# the layout of R10862). The client cannot parse these replies; our decoder reads both
# ChsGet layouts (test_chs_get_names_with_or_without_a_count). StatusGet: the client's wrapper
# declares no return value.
DOCUMENT_NOT_CLIENT = {"BiasSpectr.ChsGet", "BiasSpectr.PropsGet", "BiasSpectr.StatusGet"}

SAMPLE_VALUES: dict[str, list[Any]] = {
    "Bias.Get": [-0.25],
    "Current.Get": [1.5e-10],
    "ZCtrl.OnOffGet": [1],
    "ZCtrl.SetpntGet": [1.5e-10],
    "ZCtrl.ZPosGet": [-2.5e-10],
    "FolMe.XYPosGet": [1.25e-9, -3.5e-9],
    "BiasSpectr.ChsGet": [np.array([0, 5], np.int32), ("Current (A)", "LI Demod 1 X (A)")],
    "BiasSpectr.LimitsGet": [-0.04, 0.04],
    "BiasSpectr.PropsGet": [0, 1, 0, 1601, ("X (m)", "Y (m)"), ("Sweep Start", "Sweep End"), 0, 0],
    "BiasSpectr.StatusGet": [1],
    "BiasSpectr.AdvPropsGet": [1, 1, 0, 0],
    "Util.VersionGet": ["Nanonis SPM Control Software", "Generic 5", 13632, 13632],
    "Signals.InSlotsGet": [("Current (A)", "Bias (V)"), np.array([0, 24], np.int32)],
    "BiasSpectr.TimingGet": [0.1, 0.0, 0.05, 10.0, 1e-3, 2e-3, 0.0, 0.2],
    "BiasSpectr.Start": [
        ("Bias calc (V)", "Current (A)", "LI Demod 1 X (A)"),
        np.arange(15, dtype=np.float32).reshape(3, 5) * 1e-3,
        np.array([-0.04, 0.04, 1e-9], np.float32),
    ],
    "Scan.FrameGet": [0.0, 1e-9, 3e-8, 2e-8, 15.0],
    "Signals.ValsGet": [np.array([1.5e-10, 2.0], np.float32)],
    "Signals.NamesGet": [("Current (A)", "Bias (V)", "Z (m)")],
}


@pytest.mark.parametrize(("method", "name", "args"), OFFICIAL_CALLS, ids=[c[1] for c in OFFICIAL_CALLS])
def test_request_bytes_equal_official_client(method: str, name: str, args: tuple[Any, ...]) -> None:
    reply = codec.encode_response(name, SAMPLE_VALUES.get(name, []))
    conn = _CaptureConnection(reply)
    try:
        getattr(nanonis_spm.Nanonis(conn), method)(*[list(a) if isinstance(a, list) else a for a in args])
    except (struct.error, IndexError):  # its decoding of the document's reply (see DOCUMENT_NOT_CLIENT)
        assert name in DOCUMENT_NOT_CLIENT
    assert conn.sent == codec.encode_request(name, *args)


@pytest.mark.parametrize(
    "name", sorted(set(SAMPLE_VALUES) - DOCUMENT_NOT_CLIENT - {"Util.VersionGet", "Signals.InSlotsGet"})
)
def test_official_client_parses_our_responses(name: str) -> None:
    method, _, args = next(c for c in OFFICIAL_CALLS if c[1] == name)
    values = SAMPLE_VALUES[name]
    conn = _CaptureConnection(codec.encode_response(name, values))
    error, _raw, parsed = getattr(nanonis_spm.Nanonis(conn), method)(
        *[list(a) if isinstance(a, list) else a for a in args]
    )
    assert error == ""
    flat = _flatten_official(parsed)
    expected = _flatten_ours(values)
    assert len(flat) == len(expected)
    for got, want in zip(flat, expected, strict=True):
        if isinstance(want, str):
            assert got == want
        else:
            assert np.allclose(np.asarray(got, float), np.asarray(want, float), rtol=1e-6)


def _flatten_ours(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, tuple):
            out += [len(v), *v]  # the official parse lists the count then the strings
        elif isinstance(v, np.ndarray) and v.ndim == 2:
            out += [v.shape[0], v.shape[1], *v.ravel()]
        elif isinstance(v, np.ndarray):
            out += [v.size, *v]
        else:
            out.append(v)
    return out


def _flatten_official(parsed: list[Any]) -> list[Any]:
    out: list[Any] = []
    skip_size = False
    for i, v in enumerate(parsed):
        if isinstance(v, list) and v and isinstance(v[0], str):
            out += v
        elif isinstance(v, list):
            out += [x[0] for x in v]
        elif isinstance(v, np.ndarray):
            out += list(v.ravel())
        else:
            # string arrays come as (byte size, count, list): drop the byte size
            nxt = parsed[i + 2] if i + 2 < len(parsed) else None
            if not skip_size and isinstance(nxt, list) and nxt and isinstance(nxt[0], str):
                skip_size = True
                continue
            skip_size = False
            out.append(v)
    return out


@pytest.mark.parametrize("name", sorted(codec.COMMANDS))
def test_response_round_trip(name: str) -> None:
    cmd = codec.COMMANDS[name]
    values = SAMPLE_VALUES.get(name, [])
    assert len(values) == len(cmd.returns)
    frame = codec.encode_response(name, values)
    header = codec.decode_header(frame[: codec.HEADER_SIZE])
    assert header.name == name and header.body_size == len(frame) - codec.HEADER_SIZE
    decoded = codec.decode_response(name, header, frame[codec.HEADER_SIZE :])
    for (field, code), want in zip(cmd.returns, values, strict=True):
        got = decoded[field]
        if code in ("str[]", "str[n]"):
            assert got == tuple(want)
        elif code == "str":
            assert got == want
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6)
            if code in ("f32[,]", "f32[]"):
                assert got.dtype == np.float32


def test_request_round_trip_keeps_float64_positions() -> None:
    frame = codec.encode_request("FolMe.XYPosSet", 1.000000001e-9, -2e-9, 1)
    header = codec.decode_header(frame[:40])
    args = codec.decode_request(codec.COMMANDS["FolMe.XYPosSet"], frame[40:])
    assert header.send_response
    assert args == {"x_m": 1.000000001e-9, "y_m": -2e-9, "wait_end_of_move": 1}


def test_header_layout_is_big_endian_40_bytes() -> None:
    frame = codec.encode_request("Bias.Set", 0.5)
    assert frame[:32] == b"Bias.Set" + b"\0" * 24
    assert struct.unpack(">iHH", frame[32:40]) == (4, 1, 0)
    assert struct.unpack(">f", frame[40:]) == (0.5,)


def test_error_section_raises_controller_error_with_message() -> None:
    frame = codec.encode_response("Bias.Get", None, status=1, description="Bias module busy")
    with pytest.raises(ControllerError, match="Bias module busy") as info:
        codec.decode_response("Bias.Get", codec.decode_header(frame[:40]), frame[40:])
    assert info.value.code == 1 and info.value.command == "Bias.Get"


def test_bare_error_section_still_gives_the_controller_message() -> None:
    frame = codec.encode_error_response("BiasSpectr.Start", 1, "not allowed while scanning")
    with pytest.raises(ControllerError, match="not allowed while scanning"):
        codec.decode_response("BiasSpectr.Start", codec.decode_header(frame[:40]), frame[40:])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: f[:-3], "body of"),  # header size disagrees with the body
        (lambda f: f[:40] + f[40:44], "body of"),
        (lambda f: f[:32] + struct.pack(">i", len(f) - 36) + f[36:] + b"\0\0\0\0", "after the error section"),
    ],
    ids=["truncated", "short", "trailing"],
)
def test_malformed_response_is_reply_error(mutate: Any, match: str) -> None:
    frame = mutate(codec.encode_response("Bias.Get", [0.1]))
    header = codec.decode_header(frame[:40])
    with pytest.raises(InstrumentReplyError, match=match):
        codec.decode_response("Bias.Get", header, frame[40:])


def test_reply_for_another_command_is_reply_error() -> None:
    frame = codec.encode_response("Current.Get", [1e-10])
    with pytest.raises(InstrumentReplyError, match="out of step"):
        codec.decode_response("Bias.Get", codec.decode_header(frame[:40]), frame[40:])


def test_string_array_with_wrong_byte_size_is_reply_error() -> None:
    body = bytearray(codec.encode_response("Signals.NamesGet", [("Current (A)",)])[40:])
    body[0:4] = struct.pack(">i", 99)
    header = codec.Header("Signals.NamesGet", len(body), False)
    with pytest.raises(InstrumentReplyError, match="declares 99 bytes"):
        codec.decode_response("Signals.NamesGet", header, bytes(body))


def test_garbage_header_is_reply_error() -> None:
    with pytest.raises(InstrumentReplyError):
        codec.decode_header(b"\xff" * 40)
    with pytest.raises(InstrumentReplyError, match="header of 12 bytes"):
        codec.decode_header(b"Bias.Get\0\0\0\0")


@pytest.mark.parametrize("with_count", [False, True], ids=["document", "client-1.0.9"])
def test_chs_get_names_with_or_without_a_count(with_count: bool) -> None:
    names = [b"Current (A)", b"LI Demod 1 X (A)"]  # the first name is 11 bytes long, as is a count of 11
    items = b"".join(struct.pack(">i", len(n)) + n for n in names)
    body = struct.pack(">i2i", 2, 0, 5) + struct.pack(">i", len(items))
    body += (struct.pack(">i", 2) if with_count else b"") + items + struct.pack(">Ii", 0, 0)
    header = codec.Header("BiasSpectr.ChsGet", len(body), False)
    decoded = codec.decode_response("BiasSpectr.ChsGet", header, body)
    assert decoded["names"] == ("Current (A)", "LI Demod 1 X (A)") and list(decoded["indexes"]) == [0, 5]


def test_older_release_layouts_decode() -> None:
    frame = codec.encode_response("BiasSpectr.ChsGet", [np.array([3, 1], np.int32)], old=True)
    decoded = codec.decode_response("BiasSpectr.ChsGet", codec.decode_header(frame[:40]), frame[40:], old=True)
    assert list(decoded["indexes"]) == [3, 1] and "names" not in decoded
