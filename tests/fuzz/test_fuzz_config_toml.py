"""Fuzz: the config TOML loader on random bytes, mutated valid files and hostile values.

Anything must load or raise ConfigError (a StsliveError) with a message.
Examples per test: ``STSLIVE_FUZZ_EXAMPLES`` (default 150).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stslive.acquisition.config import RunConfig
from stslive.drivers.errors import ConfigError

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)

EXAMPLE = (Path(__file__).resolve().parents[2] / "acquisition" / "example_run.toml").read_bytes()
LINES = EXAMPLE.split(b"\n")
TMP = Path(tempfile.mkdtemp(prefix="stslive-fuzz-config-"))
toml_values = st.sampled_from(
    [
        b"0",
        b"-1",
        b"1e400",
        b"nan",
        b"inf",
        b'"x"',
        b"[]",
        b"{}",
        b"true",
        b'[1, "a"]',
        b"99999999999999999999",
        b"1979-05-27T07:32:00Z",
        b'"\\u0000"',
        b"{ a = { b = 1 } }",
    ]
)


def _load(raw: bytes) -> None:
    path = TMP / "run.toml"
    path.write_bytes(raw)
    try:
        RunConfig.from_toml(path)
    except ConfigError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    _load(raw)


@FUZZ
@given(st.data())
def test_mutated_values(data: st.DataObject) -> None:
    lines = list(LINES)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if b"=" in lines[i] and data.draw(st.booleans()):
            lines[i] = lines[i].split(b"=", 1)[0] + b"= " + data.draw(toml_values)
        else:
            del lines[i]
    _load(b"\n".join(lines))


@FUZZ
@given(st.data())
def test_flipped_bytes(data: st.DataObject) -> None:
    raw = bytearray(EXAMPLE)
    for _ in range(data.draw(st.integers(1, 5))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _load(bytes(raw))


def test_regression_non_utf8_file_is_a_config_error() -> None:
    """Found by this fuzzing: a file that is not UTF-8 raised UnicodeDecodeError."""
    path = TMP / "latin1.toml"
    path.write_bytes(EXAMPLE + b"\n# \xe9\xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        RunConfig.from_toml(path)
