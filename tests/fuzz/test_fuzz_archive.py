"""Fuzz: the archive reader on random bytes, truncated / bit-flipped archives and wrong layouts.

Opening and reading everything (flags, metadata, set-point sets, failures, log, documents,
spectra, sample) must work or raise a StsliveError (ArchiveError for damage) with a message.
Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 100).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.acquisition.formats.archive import ArchiveWriter, open_archive
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.acquisition.replay import open_replay
from stslive.drivers.errors import ArchiveError, StsliveError

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(90 + EXAMPLES // 5)

TMP = Path(tempfile.mkdtemp(prefix="stslive-fuzz-archive-"))


def _valid_archive() -> Path:
    path = TMP / "valid.h5"
    geo = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=1e-8, height_m=1e-8, nx=3, ny=2)
    sp = SetpointSet(
        id=0,
        name="s",
        bias_setpoint_V=-0.01,
        current_setpoint_A=1e-10,
        sweep_start_V=-0.01,
        sweep_end_V=0.01,
        n_points=8,
    )
    with ArchiveWriter.create(
        path,
        geometry=geo,
        channel_names=["Bias (V)", "Current (A)"],
        n_points=8,
        setpoint_sets=[sp],
        start_doc={"instruments": {"stm": "mock"}},
        swmr=False,
    ) as w:
        for k, (iy, ix) in enumerate([(0, 0), (0, 1), (1, 2)]):
            w.write_pixel(
                iy,
                ix,
                np.full((2, 8), k, np.float32),
                PixelMeta(
                    x_m=0.0, y_m=0.0, setpoint_set_id=0, t_start=k, t_sweep_start=k, t_sweep_end=k, t_end=k + 0.5
                ),
            )
        w.record_failure(1, 0, "timeout", code=2, attempts=3, setpoint_set_id=0)
        w.append_log("stop", exit_status="success")
    return path


VALID_PATH = _valid_archive()
VALID = VALID_PATH.read_bytes()
with h5py.File(VALID_PATH, "r") as _f:
    NODES: list[str] = []
    _f.visit(NODES.append)


def _exercise(path: Path) -> None:
    try:
        with open_archive(path) as ar:
            ar.measured, ar.failed, ar.failure_codes, ar.pixel_meta, ar.failures, ar.log
            ar.setpoint_sets, ar.documents, ar.topography, ar.ground_truth, ar.ground_truth_units
            for _ in ar.iter_blocks(rows=1):
                pass
            ar.first_unmeasured()
        with open_replay(path) as source:  # the replay view reads every pixel's metadata too
            for _ in source.events():
                pass
    except StsliveError as exc:
        assert str(exc)


def _write(raw: bytes, name: str = "f.h5") -> Path:
    path = TMP / name
    path.write_bytes(raw)
    return path


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(raw: bytes, hdf5_signature: bool) -> None:
    _exercise(_write((b"\x89HDF\r\n\x1a\n" if hdf5_signature else b"") + raw))


@FUZZ
@given(st.integers(0, len(VALID) - 1))
def test_truncated(cut: int) -> None:
    _exercise(_write(VALID[:cut]))


@FUZZ
@given(st.data())
def test_bit_flips(data: st.DataObject) -> None:
    """Flips anywhere, and (half the time) in the first 4 kB where the superblock and B-trees sit."""
    raw = bytearray(VALID)
    span = data.draw(st.sampled_from([len(raw), min(4096, len(raw))]))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, span - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _exercise(_write(bytes(raw)))


replacement = st.sampled_from(
    [
        np.zeros(3),
        np.zeros((2, 3), np.int8),
        np.array(["x", "y"], dtype=object),
        np.zeros((7, 7, 7)),
        np.frombuffer(b'{"id": "zero"}\n', np.uint8),
        np.frombuffer(b"[1,2]\n{not json\n", np.uint8),
        np.frombuffer(b'{"iy": 99, "ix": -5, "reason": 3}\n', np.uint8),
        np.array(1.5),
    ]
)


@FUZZ
@given(st.data())
def test_wrong_layout(data: st.DataObject) -> None:
    """Valid HDF5, wrong content: nodes deleted, datasets replaced by others, attributes changed."""
    path = TMP / "layout.h5"
    shutil.copyfile(VALID_PATH, path)
    with h5py.File(path, "r+") as f:
        for _ in range(data.draw(st.integers(1, 3))):
            node = data.draw(st.sampled_from(NODES))
            if node not in f:
                continue
            action = data.draw(st.sampled_from(["delete", "replace", "attr"]))
            if action == "attr":
                key = data.draw(st.sampled_from(["stslive_archive_version", "nx", "width_m", "order", "run_uid"]))
                target = f[node] if data.draw(st.booleans()) else f
                target.attrs[key] = data.draw(st.sampled_from([b"x", -1, 2.5e300, "serpentine", 2]))
                continue
            del f[node]
            if action == "replace":
                f.create_dataset(node, data=data.draw(replacement))
    _exercise(path)


def test_regression_hdf5_without_our_layout_is_an_archive_error() -> None:
    path = TMP / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(ArchiveError, match="not an stslive archive"):
        open_archive(path)


def test_regression_damaged_text_datasets_are_archive_errors() -> None:
    """Found by this fuzzing: a bad failure log raised JSONDecodeError/KeyError, not ArchiveError."""
    for content in (b"[1,2]\n{not json\n", b'{"id": "zero"}\n'):
        path = TMP / "text.h5"
        shutil.copyfile(VALID_PATH, path)
        with h5py.File(path, "r+") as f:
            del f["entry/failures"]
            f.create_dataset("entry/failures", data=np.frombuffer(content, np.uint8))
        if b"not json" in content:
            with open_archive(path) as ar, pytest.raises(ArchiveError, match="damaged"):
                ar.failures
        with pytest.raises(ArchiveError, match="failure log record|damaged"):
            open_replay(path)
        with h5py.File(path, "r+") as f:  # the file was closed again on every error path
            f.attrs["probe"] = 1
