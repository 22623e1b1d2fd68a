"""Fuzz: the .3ds reader on mutated headers, truncated bodies and random bytes.

Opening and reading everything (measured mask, every channel, parameters, sweep axis, and the
replay/analysis view ``open_spectra``) must work or raise a StsliveError with a message.
Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 150).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.acquisition.formats.nanonis3ds import HEADER_END, open_3ds, write_3ds
from stslive.acquisition.formats.recording import open_spectra
from stslive.acquisition.formats.runmodel import GridGeometry
from stslive.acquisition.replay import open_replay
from stslive.drivers.errors import NanonisFileError, StsliveError

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 5)


def _valid_grid(mls: bool = False) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.3ds"
        geo = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=1e-8, height_m=1e-8, nx=3, ny=2)
        spectra = np.random.default_rng(1).normal(size=(2, 3, 2, 8)).astype(np.float32)
        segments = [(-0.01, -0.002, 0.0, 0.0, 3), (-0.002, 0.002, 0.0, 0.0, 5), (0.002, 0.01, 0.0, 0.0, 2)]
        measured = np.array([[True, True, True], [True, False, False]])
        write_3ds(
            path,
            spectra=spectra,
            channel_names=["Current (A)", "LIX 1 omega (A)"],
            geometry=geo,
            sweep_start=-0.01,
            sweep_end=0.01,
            n_points=8,
            parameters={"Z (m)": np.zeros((2, 3))},
            measured=measured,
            header={"Bias>Bias (V)": "1E-2", "Current>Current (A)": "1E-10"},
            mls_segments=segments if mls else None,
        )
        return path.read_bytes()


VALID = _valid_grid()
MLS = _valid_grid(mls=True)
MLS_LINES = MLS[: MLS.index(HEADER_END)].split(b"\r\n")
SPLIT = VALID.index(HEADER_END)
LINES = VALID[:SPLIT].split(b"\r\n")
TMP = Path(tempfile.mkdtemp(prefix="stslive-fuzz-3ds-"))


def _exercise(raw: bytes) -> None:
    path = TMP / "f.3ds"
    path.write_bytes(raw)
    try:
        with open_3ds(path) as grid:
            assert grid.measured.shape == (grid.ny, grid.nx)
            for start in range(0, grid.ny, 2):
                block = grid.read_block(slice(start, min(grid.ny, start + 2)))
                assert block.dtype == np.float32
            for name in grid.parameter_names:
                grid.parameter(name)
            grid.nominal_sweep()
            grid.sweep_axes()
            grid.conditions(amplitude_convention="rms")
            grid.refresh()
        with open_spectra(path) as source:
            for _ in source.iter_blocks():
                pass
        with open_replay(path) as replay:
            list(replay.events())
    except StsliveError as exc:
        assert str(exc)


header_values = st.one_of(
    st.text(max_size=20),
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(
        [
            '"3 x 2"',
            '"0 x 2"',
            '"100000 x 100000"',
            '"a x b"',
            "1;2",
            "",
            "Linear",
            '"Bias (V)"',
            "-1",
            "nan",
            "1E+400",
            '"Current (A)"',
        ]
    ),
)


@FUZZ
@given(st.data())
def test_mutated_header_values(data: st.DataObject) -> None:
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        key = lines[i].split(b"=", 1)[0]
        if data.draw(st.booleans()):
            lines[i] = key + b"=" + data.draw(header_values).encode("latin-1", "replace")
        else:
            del lines[i]
    _exercise(b"\r\n".join(lines) + VALID[SPLIT:])


@FUZZ
@given(st.integers(0, len(VALID)), st.binary(max_size=40))
def test_truncated_or_extended(cut: int, tail: bytes) -> None:
    _exercise(VALID[:cut] + tail)


@FUZZ
@given(st.data())
def test_flipped_bytes(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 10))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _exercise(bytes(raw))


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _exercise(raw)


segment_values = st.one_of(
    st.sampled_from(["", "nan", "inf", "-1", "0", "1.5", "1E+9", "a", ";", ",,,,", "2;3", "-0.01,0.01,0,0"]),
    st.text(alphabet="0123456789,;.-E+", max_size=40),
)


@FUZZ
@given(st.data())
def test_mutated_mls_segment_table(data: st.DataObject) -> None:
    """Multi-segment grids: the segment table, Points and Filetype mutated."""
    lines = list(MLS_LINES)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from([k for k, line in enumerate(lines) if b"Segment" in line or b"Points" in line]))
        key = lines[i].split(b"=", 1)[0]
        value = data.draw(segment_values) if data.draw(st.booleans()) else data.draw(header_values)
        lines[i] = key + b"=" + value.encode("latin-1", "replace")
    _exercise(b"\r\n".join(lines) + MLS[MLS.index(HEADER_END) :])


@FUZZ
@given(st.integers(0, len(MLS)), st.binary(max_size=40))
def test_truncated_mls_grid(cut: int, tail: bytes) -> None:
    _exercise(MLS[:cut] + tail)


def test_mls_template_reads() -> None:
    path = TMP / "mls.3ds"
    path.write_bytes(MLS)
    with open_3ds(path) as grid:
        assert grid.mls_sweep is not None and grid.mls_sweep.size == 8
    with open_spectra(path) as source:
        assert source.resampled_from == 8 and source.n_points > 8


def test_regression_huge_grid_dim_is_refused_before_allocating() -> None:
    """A header claiming 10^10 points with no data must be refused, not allocated."""
    raw = VALID.replace(b'Grid dim="3 x 2"', b'Grid dim="100000 x 100000"')
    path = TMP / "huge.3ds"
    path.write_bytes(raw)
    with pytest.raises(NanonisFileError, match="Grid dim"):
        open_3ds(path)


def test_regression_unparsable_experiment_size_is_a_file_error() -> None:
    """Found by this fuzzing: 'Experiment size (bytes)=' raised a bare ValueError from int()."""
    raw = VALID.replace(b"Experiment size (bytes)=64", b"Experiment size (bytes)=")
    assert raw != VALID
    path = TMP / "size.3ds"
    path.write_bytes(raw)
    with pytest.raises(NanonisFileError, match="malformed grid header"):
        open_3ds(path)
