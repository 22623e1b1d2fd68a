"""The shared table readers: unknown and missing keys are named, in the caller's error type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.drivers.tomlfile import check_keys, dataclass_from_mapping


@dataclass(frozen=True)
class _Table:
    points: int
    step_V: float = 5e-5


def test_builds_the_dataclass_with_defaults():
    assert dataclass_from_mapping(_Table, {"points": 3}, what="t") == _Table(points=3, step_V=5e-5)


def test_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"\[sweep\]: unknown key\(s\) \['step'\]; known keys: \['points', 'step_V'\]"
    ):
        dataclass_from_mapping(_Table, {"points": 3, "step": 1}, what="[sweep]")


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['points'\]"):
        dataclass_from_mapping(_Table, {}, what="[sweep]")


def test_the_callers_error_type_is_raised():
    with pytest.raises(AnalysisError, match="kernel option"):
        check_keys({"x": 1}, ["y"], what="kernel option", error=AnalysisError)
    check_keys({"y": 1}, ["y"], what="kernel option")  # known keys pass
