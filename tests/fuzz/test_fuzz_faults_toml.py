"""Fuzz: the faults TOML loader on random bytes, mutated valid files and hostile values.

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

from stslive.drivers.errors import ConfigError
from stslive.mocks.faults import FaultKind, FaultPlan

EXAMPLES = int(os.environ.get("STSLIVE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)

TMP = Path(tempfile.mkdtemp(prefix="stslive-fuzz-faults-"))
keys = st.sampled_from(["kind", "instrument", "command", "from_spectrum", "to_spectrum", "at_call", "params", "x"])
values = st.one_of(
    st.sampled_from([k.value for k in FaultKind]),
    st.integers(-5, 10**20),
    st.floats(),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(
        st.sampled_from(["seconds", "status", "message", "factor", "x"]),
        st.one_of(st.integers(), st.floats(), st.text(max_size=5)),
        max_size=3,
    ),
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _load(raw: bytes) -> None:
    path = TMP / "faults.toml"
    path.write_bytes(raw)
    try:
        FaultPlan.from_toml(path)
    except ConfigError as exc:
        assert str(exc)


@FUZZ
@given(st.lists(st.dictionaries(keys, values, max_size=6), max_size=3))
def test_fault_tables(tables: list[dict[str, object]]) -> None:
    text = "".join("[[fault]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in t.items()) for t in tables)
    _load(text.encode())


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    _load(raw)


def test_regression_non_utf8_file_is_a_config_error() -> None:
    """Found by this fuzzing: a fault file that is not UTF-8 raised UnicodeDecodeError."""
    path = TMP / "latin1.toml"
    path.write_bytes(b'[[fault]]\nkind = "timeout" # \xe9\xff\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        FaultPlan.from_toml(path)
