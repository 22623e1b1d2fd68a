"""The results stream on the one codec: old senders still understood, the stricter rules enforced."""

from __future__ import annotations

import json
import math
import pickle

import msgpack
import numpy as np
import pytest

from stslive.acquisition.formats.codec import MalformedMessage
from stslive.live import results_io as rio

# A ``pixels`` message as the results codec wrote it before it became a user of the shared codec
# (JSON with ", " / ": " separators): viewers must keep reading what older analysers send.
OLD_PIXELS = [
    b"pixels",
    b'{"schema": "stslive.results", "version": 1, "kind": "pixels", "n": 2, "arrays": [{"name": "iy", '
    b'"dtype": "<i4", "shape": [2]}, {"name": "ix", "dtype": "<i4", "shape": [2]}, {"name": "delta_eV", '
    b'"dtype": "<f4", "shape": [2]}, {"name": "flags", "dtype": "<u4", "shape": [2]}]}',
    b"\x00\x00\x00\x00\x01\x00\x00\x00",
    b"\x02\x00\x00\x00\x03\x00\x00\x00",
    b"o\x12\x83:\x00\x00\xc0\x7f",
    b"\x01\x00\x00\x00\x00\x00\x00\x00",
]


def _columns() -> dict[str, np.ndarray]:
    return {"iy": np.array([0, 1]), "ix": np.array([2, 3]), "delta_eV": np.array([1e-3, np.nan]), "flags": [1, 0]}


def test_old_frames_decode_to_what_the_new_encoder_sends() -> None:
    old = rio.decode_message(OLD_PIXELS)
    new_frames = rio.encode_message(*rio.pixels_message(_columns()))
    new = rio.decode_message(new_frames)
    assert old[:2] == new[:2] == ("pixels", {"schema": "stslive.results", "version": 1, "kind": "pixels", "n": 2})
    assert old[2].keys() == new[2].keys()
    for name in old[2]:
        np.testing.assert_array_equal(old[2][name], new[2][name])
        assert old[2][name].dtype == new[2][name].dtype
    assert new_frames[2:] == OLD_PIXELS[2:]  # the array frames are byte for byte the same
    assert json.loads(new_frames[1]) == json.loads(OLD_PIXELS[1])  # the header says the same, compactly


def test_stricter_rules_where_the_two_codecs_disagreed() -> None:
    topic, header = OLD_PIXELS[0], json.loads(OLD_PIXELS[1])
    cases = {
        # NaN tokens in a JSON header (the old results decoder accepted them)
        "nonfinite": [topic, OLD_PIXELS[1].replace(b'"n": 2', b'"n": NaN'), *OLD_PIXELS[2:]],
        # msgpack headers belong to the run stream only
        "header": [topic, msgpack.packb(header), *OLD_PIXELS[2:]],
        # the run stream's header limit (the results codec allowed 1 MiB)
        "oversize": [topic, json.dumps({**header, "pad": "x" * 300_000}).encode(), *OLD_PIXELS[2:]],
        # a duplicated array name used to overwrite silently
        "field (duplicate)": [
            topic,
            json.dumps({**header, "arrays": [header["arrays"][0]] * 2 + header["arrays"][2:]}).encode(),
            *OLD_PIXELS[2:],
        ],
        # sizes must be integers, not strings that int() happens to parse
        "field (size)": [
            topic,
            json.dumps({**header, "arrays": [{**header["arrays"][0], "shape": ["2"]}, *header["arrays"][1:]]}).encode(),
            *OLD_PIXELS[2:],
        ],
    }
    for reason, frames in cases.items():
        with pytest.raises(MalformedMessage) as info:
            rio.decode_message(frames)
        assert info.value.reason == reason.split()[0], (reason, str(info.value))
    with pytest.raises(MalformedMessage, match="without its 'arrays'"):
        rio.decode_message([topic, json.dumps({k: v for k, v in header.items() if k != "arrays"}).encode()])


def test_inf_in_a_map_still_travels() -> None:
    """Results maps may hold inf (visibility over a zero background); only the run stream refuses it."""
    columns = {"iy": np.array([0]), "ix": np.array([0]), "visibility": np.array([math.inf])}
    _, _, arrays = rio.decode_message(rio.encode_message(*rio.pixels_message(columns)))
    assert np.isinf(arrays["visibility"][0])


def test_malformed_message_pickles_with_its_reason() -> None:
    exc = MalformedMessage("dtype", "array 'x': dtype '|O' not allowed")
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.reason, back.detail, str(back)) == (MalformedMessage, exc.reason, exc.detail, str(exc))
