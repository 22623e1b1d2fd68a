"""Fuzz: run-stream ``decode`` on random and mutated frames raises MalformedMessage or succeeds.

Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 200); a long campaign:
``STSLIVE_FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz -q -p no:cacheprovider --hypothesis-show-statistics``.
"""

from __future__ import annotations

import json
import os

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.acquisition.formats.codec import MalformedMessage
from stslive.acquisition.formats.documents import (
    ArraySpec,
    DescriptorDoc,
    EventDoc,
    FailedPixelDoc,
    HeartbeatDoc,
    StartDoc,
    StopDoc,
    decode,
    encode,
)

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)


def _valid_docs() -> list:
    run = "r" * 32
    spectra = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 12)
    spectra[1, -1] = np.nan
    return [
        StartDoc(
            run_uid=run,
            uid=run,
            seq=0,
            grid={"nx": 3, "ny": 2, "width_m": 1e-8},
            channel_names=("Bias (V)", "Current (A)"),
            channel_units=("V", "A"),
            n_points=12,
            setpoint_sets=({"id": 0, "sweep_start_V": -0.01},),
            instruments={"stm": "mock"},
            software_version="1",
            metadata={"nested": {"a": [1, 2.5, None]}},
        ),
        DescriptorDoc(
            run_uid=run,
            seq=1,
            data_keys={
                "spectra": ArraySpec(dtype="<f4", shape=(2, 12), labels=("Bias (V)", "Current (A)"), units=("V", "A"))
            },
        ),
        EventDoc(
            run_uid=run,
            seq=2,
            descriptor_uid="d" * 32,
            ix=1,
            iy=0,
            x_m=1e-9,
            y_m=2e-9,
            setpoint_set_id=0,
            timestamps={"t_start": 1.7e9},
            temperature_before_K=1.5,
            temperature_after_K=None,
            arrays={"spectra": spectra, "flags": np.arange(3, dtype="<i4")},
        ),
        FailedPixelDoc(
            run_uid=run, seq=3, ix=2, iy=1, x_m=0.0, y_m=0.0, setpoint_set_id=0, reason="timeout", attempts=3
        ),
        HeartbeatDoc(run_uid=run, seq=4, state="paused", last_run_uid=run, last_seq=3, message="temperature"),
        StopDoc(run_uid=run, seq=5, exit_status="success", counts={"event": 1}),
    ]


VALID_FRAMES = [encode(d, header_format=fmt) for d in _valid_docs() for fmt in ("json", "msgpack")]
COUNTS: dict[str, int] = {}


def _check(frames: list[bytes], what: str) -> None:
    """decode() either returns a document or raises MalformedMessage with a message; nothing else."""
    COUNTS[what] = COUNTS.get(what, 0) + 1
    try:
        doc = decode(frames)
    except MalformedMessage as exc:
        assert exc.reason and str(exc)
        return
    encode(doc)  # a document decode accepted is one encode can send again


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20),  # msgpack's int range
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=10,
)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_frames(frames: list[bytes]) -> None:
    _check(frames, "random frames")


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_header_bytes(frames: list[bytes], data: st.DataObject) -> None:
    header = bytearray(frames[1])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(header) - 1))
        header[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(header)))
    _check([frames[0], bytes(header[: cut or len(header)]), *frames[2:]], "mutated header bytes")


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_header_fields(frames: list[bytes], data: st.DataObject) -> None:
    """Valid syntax, hostile content: fields replaced, removed or added with any JSON-like value."""
    header = json.loads(frames[1]) if frames[1][:1] == b"{" else msgpack.unpackb(frames[1])
    keys = sorted(header)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        key = data.draw(st.sampled_from(keys)) if action != "add" else data.draw(st.text(max_size=8))
        if action == "delete":
            header.pop(key, None)
        else:
            header[key] = data.draw(json_values)
    packed = (
        msgpack.packb(header, use_bin_type=True) if data.draw(st.booleans()) else json.dumps(header).encode()
    )  # json.dumps writes NaN/Infinity tokens: must be refused
    _check([frames[0], packed, *frames[2:]], "mutated header fields")


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_frames(frames: list[bytes], data: st.DataObject) -> None:
    """Topic swapped, array frames cut, extended, dropped or added."""
    out = list(frames)
    choice = data.draw(st.sampled_from(["topic", "cut", "extend", "drop", "add", "inf"]))
    if choice == "topic":
        out[0] = data.draw(st.sampled_from([f[0] for f in VALID_FRAMES] + [b"", b"stslive.run.x"]))
    elif choice in ("cut", "extend") and len(out) > 2:
        i = data.draw(st.integers(2, len(out) - 1))
        out[i] = (
            out[i][: data.draw(st.integers(0, len(out[i])))]
            if choice == "cut"
            else out[i] + data.draw(st.binary(min_size=1, max_size=9))
        )
    elif choice == "drop" and len(out) > 2:
        out.pop()
    elif choice == "inf" and len(out) > 2:
        out[2] = np.full(len(out[2]) // 4, np.inf, dtype="<f4").tobytes()
    else:
        out.append(data.draw(st.binary(max_size=64)))
    _check(out, f"mutated frames ({choice})")


def test_bombs_are_refused() -> None:
    """Named regressions of the worst headers: deep nesting, huge sizes, pickle."""
    import pickle

    topic = VALID_FRAMES[0][0]
    for header in (
        b"{" + b'"a":[' * 100_000,
        b"[" * 100_000,
        pickle.dumps({"schema": "stslive.run"}),
        b"\xdf\xff\xff\xff\xff",
        b"{}" + b" " * (300 * 1024),
    ):
        with pytest.raises(MalformedMessage):
            decode([topic, header])
    ev = next(f for f in VALID_FRAMES if f[0].endswith(b"event"))
    head = json.loads(ev[1])
    head["arrays"][0]["shape"] = [2**40, 2**40]
    with pytest.raises(MalformedMessage, match="shape"):
        decode([ev[0], json.dumps(head).encode(), *ev[2:]])


def test_zz_report_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nfuzz stream decode: {sum(COUNTS.values())} inputs tried: {dict(sorted(COUNTS.items()))}")
