"""Fixtures of the control-room screen tests (Qt is imported only by the tests that ask for it)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def window_factory() -> Iterator[Callable[..., Any]]:
    """Makes ControlRoomWindows and disposes of them (and their sources) while the interpreter runs."""
    from stslive.live.viewer.window import ControlRoomWindow, dispose, qt_app

    qt_app()
    made: list[ControlRoomWindow] = []

    def make(model: Any, source: Any = None, **kw: Any) -> ControlRoomWindow:
        w = ControlRoomWindow(model, source, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        dispose(w)
    made.clear()  # drop the wrappers while the interpreter runs
    gc.collect()
