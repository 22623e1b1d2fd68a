"""Declared header fields: a dataclass field carries the check of its header value.

A document type declares each field once, with :func:`declared`; :func:`header_fields` and
:func:`from_header` derive the header keys, their order and their validation from that one
declaration. Checks are ``check(value, name) -> value`` and raise
:class:`~stslive.acquisition.formats.codec.MalformedMessage` (reason ``field``, ``nonfinite`` or
``header``) for anything that is not the plain data the field admits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from stslive.acquisition.formats.codec import MalformedMessage

Validator: TypeAlias = Callable[[Any, str], Any]

#: Deepest nesting of free-form header data (set-point sets, metadata).
MAX_DEPTH = 16
_CHECK = "stslive.check"
_SCHEMES: dict[tuple[type, frozenset[str]], tuple[frozenset[str], tuple[tuple[str, Validator], ...]]] = {}


def declared(check: Validator, *, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose header value ``check`` validates (the field's one declaration)."""
    return dataclasses.field(default=default, default_factory=factory, metadata={_CHECK: check})


def header_fields(cls: type) -> tuple[tuple[str, Validator], ...]:
    """``(name, check)`` of the declared fields of dataclass ``cls``, in declaration order."""
    return _scheme(cls)[1]


def _scheme(
    cls: type, envelope: frozenset[str] = frozenset()
) -> tuple[frozenset[str], tuple[tuple[str, Validator], ...]]:
    """The keys a header of ``cls`` holds (its fields and ``envelope``) and its ``(field, check)`` pairs."""
    # built once per type: every event is validated, and rebuilding this per event cost a tenth of the decode
    scheme = _SCHEMES.get((cls, envelope))
    if scheme is None:
        checks = tuple((f.name, f.metadata[_CHECK]) for f in dataclasses.fields(cls) if _CHECK in f.metadata)
        scheme = _SCHEMES[(cls, envelope)] = (frozenset(name for name, _ in checks) | envelope, checks)
    return scheme


def from_header(cls: type, data: Any, what: str, *, envelope: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Checked keyword values for ``cls`` from header map ``data``.

    ``data`` must hold exactly the declared fields (plus the ``envelope`` keys, which are not
    returned); ``what`` names the map in error messages.
    """
    expected, checks = _scheme(cls, envelope)
    if not isinstance(data, Mapping):
        raise fail(what, "a map", data)
    if data.keys() != expected:
        keys = set(data)
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        raise MalformedMessage("field", f"{what}: missing fields {missing}, unexpected fields {extra}")
    return {name: check(data[name], name) for name, check in checks}


def to_plain(value: Any) -> Any:
    """A field value as plain header data: tuples become lists, declared dataclasses maps."""
    if value is None or isinstance(value, str | int | float):  # most values: return before the slower checks
        return value
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: to_plain(getattr(value, name)) for name, _ in header_fields(type(value))}
    return value


# -- checks ------------------------------------------------------------------------------------
def fail(name: str, what: str, value: Any) -> MalformedMessage:
    """The error for field ``name`` holding ``value`` where ``what`` belongs."""
    return MalformedMessage("field", f"field {name!r} must be {what}, got {repr(value)[:80]}")


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise fail(name, "a string", value)
    return value


def optional(check: Validator) -> Validator:
    """``check``, or None passed through (an unknown optional value)."""

    def maybe(value: Any, name: str) -> Any:
        return None if value is None else check(value, name)

    return maybe


def integer(minimum: int | None = None) -> Validator:
    """An int (never a bool: a flag where a count belongs is a producer bug), >= ``minimum``."""

    def check(value: Any, name: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(name, "an integer", value)
        if minimum is not None and value < minimum:
            raise fail(name, f"an integer >= {minimum}", value)
        return value

    return check


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise fail(name, "true or false", value)
    return value


def number(value: Any, name: str) -> float:
    """A finite number (header numbers are finite; an unknown value is null, see :func:`optional`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(name, "a number", value)
    if not math.isfinite(value):
        raise MalformedMessage(
            "nonfinite", f"field {name!r} is {value!r}; header numbers must be finite (use null for unknown)"
        )
    return float(value)


def texts(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise fail(name, "a list of strings", value)
    return tuple(text(v, f"{name}[{i}]") for i, v in enumerate(value))


def plain(value: Any, name: str, depth: int = 0) -> Any:
    """Free-form JSON-like data (maps with string keys, lists, str, finite numbers, bool, null)."""
    if depth > MAX_DEPTH:
        raise MalformedMessage("header", f"field {name!r} nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return number(value, name)
    if isinstance(value, list | tuple):
        return [plain(v, f"{name}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {text(k, f"{name} key"): plain(v, f"{name}.{k}", depth + 1) for k, v in value.items()}
    raise fail(name, "plain data (maps, lists, strings, numbers)", value)


def plain_map(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(name, "a map", value)
    return plain(value, name)


def map_of(check: Validator, what: str) -> Validator:
    """A map with string keys whose values pass ``check`` (``what`` describes the map)."""

    def checked(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(name, what, value)
        return {text(k, f"{name} key"): check(v, f"{name}.{k}") for k, v in value.items()}

    return checked


def list_of_maps(value: Any, name: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list | tuple):
        raise fail(name, "a list of maps", value)
    return tuple(plain_map(v, f"{name}[{i}]") for i, v in enumerate(value))


def one_of(*allowed: str) -> Validator:
    def choice(value: Any, name: str) -> str:
        if value not in allowed:
            raise fail(name, f"one of {', '.join(allowed)}", value)
        return value

    return choice
