"""Every exception class of stslive pickles with its fields and message (the Dask path ships them)."""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from stslive.drivers.errors import ControllerError, InstrumentTimeout

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("drivers", "acquisition", "live", "mocks")

# A sample value per annotation of a constructor parameter; anything else gets a string.
_SAMPLES: dict[str, Any] = {"int": -7, "float": 2.5, "bool": True}


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":  # importing it would run the console script
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(("stslive", *parts)))
    return names


def _exception_classes() -> list[type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for name in _module_names():
        module: ModuleType = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [classes[k] for k in sorted(classes)]


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance with a distinct value for every constructor parameter, optional ones included."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except ValueError:  # a builtin signature: the class takes a message
        parameters = []
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = _SAMPLES.get(str(p.annotation), f"{p.name} of {cls.__name__}")
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    if not args and not kwargs:
        args = [f"message of {cls.__name__}"]
    return cls(*args, **kwargs)


EXCEPTIONS = _exception_classes()


def test_every_exception_class_is_found() -> None:
    found = {cls.__name__ for cls in EXCEPTIONS}
    # the root, one of each constructor shape, and the ones outside drivers/errors.py
    assert {"StsliveError", "InstrumentTimeout", "ControllerError", "FileFormatError", "ServiceError"} <= found
    assert {"MalformedMessage", "CommandRefused", "EsrRefusal", "LockInWarning"} <= found


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_round_trips_through_pickle(cls: type[BaseException]) -> None:
    error = _instance(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)


def test_fields_survive_and_the_builtin_base_still_catches() -> None:
    copy = pickle.loads(pickle.dumps(ControllerError("nanonis", "refused", command="Bias.Set", code=-2)))
    assert (copy.instrument, copy.detail, copy.command, copy.code) == ("nanonis", "Bias.Set: refused", "Bias.Set", -2)
    timeout = pickle.loads(pickle.dumps(InstrumentTimeout("sr830", "no reply in 5 s")))
    assert isinstance(timeout, TimeoutError) and str(timeout) == "sr830: no reply in 5 s"
