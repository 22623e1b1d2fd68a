"""Fuzz: the .dat reader (one file and a folder of them) on mutated, truncated and random input.

Reading everything (spectra, sweep, parameters, conditions, the analysis view ``open_spectra``
and a replay's start document) must work or raise a StsliveError with a message.
Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 150).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.acquisition.formats.nanonis_dat import open_dat
from stslive.acquisition.formats.recording import open_spectra
from stslive.acquisition.replay import open_replay
from stslive.drivers.errors import StsliveError

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 5)

HEADER = [
    "Experiment\tbias spectroscopy\t",
    "Date\t04.08.2015 08:49:41\t",
    "X (m)\t-19.4904E-9\t",
    "Y (m)\t-73.1801E-9\t",
    "Z (m)\t-13.4867E-9\t",
    "Final Z (m)\tN/A\t",
    "Bias>Bias (V)\t10E-3\t",
    "Current>Current (A)\t150E-12\t",
    "Lock-in>Modulated signal\tBias (V)\t",
    "Lock-in>Amplitude\t100E-6\t",
    "Bias Spectroscopy>Lock-In run\tTRUE\t",
    "Temperature 1>Temperature 1 (K)\t1.2E+0\t",
]
COLUMNS = "Bias calc (V)\tCurrent (A)\tCurrent [bwd] (A)\tLI Demod 1 X (A)\tCurrent (A) [filt]"
ROWS = [
    "\t".join(f"{v:.6E}" for v in (b, b * 1e-8, b * 1.1e-8, 1e-12 + b * 1e-10, b * 1e-8))
    for b in np.linspace(-0.01, 0.01, 12)
]
VALID = "\r\n".join([*HEADER, "", "[DATA]", COLUMNS, *ROWS]).encode("latin-1") + b"\r\n"
LINES = VALID.split(b"\r\n")
TMP = Path(tempfile.mkdtemp(prefix="stslive-fuzz-dat-"))


def _exercise(raw: bytes, *, second: bytes | None = None) -> None:
    folder = TMP / "set"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "a.dat").write_bytes(raw)
    if second is not None:
        (folder / "b.dat").write_bytes(second)
    target = folder if second is not None else folder / "a.dat"
    try:
        with open_dat(target) as points:
            block = points.read_block()
            assert block.shape == (1, points.nx, len(points.channel_names), points.n_points)
            for name in points.parameter_names:
                points.parameter(name)
            points.sweep_axes()
            points.conditions(amplitude_convention="peak")
        with open_spectra(target) as source:
            for _ in source.iter_blocks():
                pass
            assert source.conditions is not None
        with open_replay(target) as replay:
            list(replay.events())
    except StsliveError as exc:
        assert str(exc)


header_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "N/A", "NaN", "Inf", "-1", "1E+400", "TRUE", "OFF", "Z (m)", "0"]),
)


@FUZZ
@given(st.data())
def test_mutated_lines(data: st.DataObject) -> None:
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["value", "delete", "duplicate", "cell"]))
        if action == "value":
            key = lines[i].split(b"\t", 1)[0]
            lines[i] = key + b"\t" + data.draw(header_values).encode("latin-1", "replace") + b"\t"
        elif action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        else:
            cells = lines[i].split(b"\t")
            cells[data.draw(st.integers(0, len(cells) - 1))] = data.draw(header_values).encode("latin-1", "replace")
            lines[i] = b"\t".join(cells)
    _exercise(b"\r\n".join(lines))


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=40), st.booleans())
def test_truncated_or_extended(cut: int, tail: bytes, as_set: bool) -> None:
    _exercise(VALID[:cut] + tail, second=VALID if as_set else None)


@FUZZ
@given(st.data())
def test_flipped_bytes(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 10))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _exercise(bytes(raw), second=VALID if data.draw(st.booleans()) else None)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _exercise(raw)


def test_valid_sample_reads() -> None:
    """The fuzzed template itself is read whole (a fuzz of a file that never parses tests nothing)."""
    (TMP / "v.dat").write_bytes(VALID)
    with open_spectra(TMP / "v.dat") as source:
        assert source.current_channel == "Current (A)" and source.lockin_channel == "LI Demod 1 X (A)"
        assert source.n_points == 12 and source.conditions.temperature_K == 1.2
