"""Shared fixtures: the reference Nanonis files and an offscreen Qt platform."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "nanonis-grid-kpfm-20x20.3ds").is_file():
        pytest.skip(f"reference Nanonis files not found in {SHARED_DATA}")
    return SHARED_DATA


# CI (CI=true) replays the same fuzz examples every run, so a red CI is reproducible on any machine;
# local runs and long campaigns (STSLIVE_FUZZ_EXAMPLES) keep exploring new inputs.
from hypothesis import settings as _hypothesis_settings  # noqa: E402  (test extra)

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    _hypothesis_settings.load_profile("ci")
