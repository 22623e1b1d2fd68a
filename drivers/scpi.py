"""Declarative command tables for text (SCPI-like) instruments, reply parsers, and a replay session.

Contract: a :class:`Setting` row (query, set format, kind, range or table of values, unit, doc)
encodes and decodes one setting of an SR830/SR860 or LakeShore 372, after PyMeasure's
``Instrument.control`` but never rounding silently: a value the instrument cannot take raises
:class:`~stslive.drivers.errors.SafetyLimitError` before anything is sent, a reply that is not a
number raises :class:`~stslive.drivers.errors.InstrumentReplyError`. Drivers talk to a
:class:`TextSession` (:class:`stslive.drivers.visa.VisaSession` in production, the recorded
:class:`RecordedSession` in tests).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, Self

from stslive.drivers.errors import InstrumentReplyError, SafetyLimitError

if TYPE_CHECKING:  # visa imports pyvisa; the tables and parsers must load without it
    from stslive.drivers.visa import VisaSettings

# One number as instruments print it: sign, digits, optional fraction and exponent.
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# Relative tolerance when matching a float against a table entry (tables hold 1-2-5 / 1-3 steps).
_TABLE_RTOL = 1e-6


def parse_float(instrument: str, reply: str, *, what: str) -> float:
    """Parse one finite decimal number from an instrument reply.

    Raises
    ------
    InstrumentReplyError
        If ``reply`` is not exactly one number (garbage, empty, ``nan``, several fields).
    """
    text = reply.strip()
    if not _NUMBER.match(text):
        raise InstrumentReplyError(
            instrument, f"reply to {what} is not a number: {reply!r}; check the instrument's output settings"
        )
    value = float(text)
    if not math.isfinite(value):  # '1e999' matches the pattern but overflows to inf
        raise InstrumentReplyError(instrument, f"reply to {what} overflows a float: {reply[:40]!r}")
    return value


def parse_int(instrument: str, reply: str, *, what: str) -> int:
    """Parse one integer (the instrument prints indices and status bytes as plain integers)."""
    text = reply.strip()
    # 30 digits is far beyond any register; longer strings would also hit int()'s 4300-digit limit
    if not re.fullmatch(r"[+-]?\d{1,30}", text):
        raise InstrumentReplyError(instrument, f"reply to {what} is not an integer: {reply[:60]!r}")
    return int(text)


def parse_floats(instrument: str, reply: str, *, what: str, count: int) -> tuple[float, ...]:
    """Parse ``count`` comma-separated numbers (``SNAP?``-style replies)."""
    fields = reply.strip().split(",")
    if len(fields) != count:
        raise InstrumentReplyError(
            instrument, f"reply to {what} should hold {count} comma-separated numbers, got {reply!r}"
        )
    return tuple(parse_float(instrument, f, what=what) for f in fields)


@dataclass(frozen=True)
class Setting:
    """One instrument setting in a command table.

    Parameters
    ----------
    name
        Python-facing name (``"frequency"``).
    query
        Query string (``"FREQ?"``).
    set_format
        ``str.format`` template with ``{}`` for the encoded value (``"FREQ {:.6e}"``); ``None``
        for read-only settings.
    kind
        ``"float"``: the value travels as a number; ``"int"``: as an integer; ``"index"``: the
        instrument takes the position of the value in ``values`` (sensitivity, time constant).
    unit
        SI unit of the Python-facing value (``"Hz"``, ``"V"``, ``"s"``).
    doc
        One line, shown by ``stslive instruments`` and in errors.
    bounds
        Inclusive ``(low, high)`` for ``"float"`` and ``"int"`` settings.
    values
        The table for ``"index"`` settings, in instrument index order.
    """

    name: str
    query: str
    set_format: str | None
    kind: Literal["float", "int", "index"]
    unit: str
    doc: str
    bounds: tuple[float, float] | None = None
    values: tuple[float, ...] = field(default=())

    def encode(self, instrument: str, value: float) -> str:
        """The command that sets ``value``; raises SafetyLimitError if the instrument cannot take it."""
        if self.set_format is None:
            raise SafetyLimitError(instrument, f"{self.name} is read-only ({self.doc})")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SafetyLimitError(instrument, f"{self.name} must be a finite number of {self.unit}, got {value!r}")
        if self.kind == "index":
            return self.set_format.format(self.index_of(instrument, float(value)))
        assert self.bounds is not None, f"setting {self.name} of kind {self.kind} needs bounds"
        low, high = self.bounds
        if not low <= value <= high:
            raise SafetyLimitError(
                instrument,
                f"{self.name} = {value:g} {self.unit} outside {low:g}..{high:g} {self.unit}; nothing was sent",
            )
        if self.kind == "int":
            if int(value) != value:
                raise SafetyLimitError(instrument, f"{self.name} must be an integer, got {value!r}")
            return self.set_format.format(int(value))
        return self.set_format.format(float(value))

    def decode(self, instrument: str, reply: str) -> float:
        """The Python-facing value of a query reply; raises InstrumentReplyError on garbage."""
        if self.kind == "float":
            return parse_float(instrument, reply, what=self.query)
        number = parse_int(instrument, reply, what=self.query)
        if self.kind == "int":
            return number
        if not 0 <= number < len(self.values):
            raise InstrumentReplyError(
                instrument,
                f"reply to {self.query} = {number} is not an index into the {len(self.values)}-entry {self.name} table",
            )
        return self.values[number]

    def index_of(self, instrument: str, value: float) -> int:
        """Position of ``value`` in the table (relative tolerance 1e-6), else SafetyLimitError."""
        for i, candidate in enumerate(self.values):
            if math.isclose(value, candidate, rel_tol=_TABLE_RTOL):
                return i
        raise SafetyLimitError(
            instrument,
            f"{self.name} = {value:g} {self.unit} is not a table value; use one of "
            f"{', '.join(f'{v:g}' for v in self.values)} (see nearest_at_least()); nothing was sent",
        )

    def nearest_at_least(self, value: float) -> float:
        """Smallest table value >= ``value`` (explicit rounding, for callers that want it).

        Raises
        ------
        ValueError
            If ``value`` exceeds the largest table entry.
        """
        candidates = [v for v in self.values if v >= value * (1 - _TABLE_RTOL)]
        if not candidates:
            raise ValueError(f"{self.name}: {value:g} {self.unit} exceeds the largest value {max(self.values):g}")
        return min(candidates)


class TextSession(Protocol):
    """What a text driver needs from its connection.

    :class:`stslive.drivers.visa.VisaSession` provides it (typed errors, bounded reconnect,
    timeouts from config); tests pass a recorded-exchange fake.
    """

    instrument: str

    def query(self, message: str) -> str: ...

    def write(self, message: str) -> None: ...

    def close(self) -> None: ...


def with_text_termination(settings: VisaSettings, termination: str = "\n") -> VisaSettings:
    """``settings`` with ``termination`` wherever read/write termination is unset (text protocols)."""
    return dataclasses.replace(
        settings,
        read_termination=settings.read_termination if settings.read_termination is not None else termination,
        write_termination=settings.write_termination if settings.write_termination is not None else termination,
    )


class RecordedSession:
    """A :class:`TextSession` that replays recorded exchanges; a context manager that checks all were used.

    After PyMeasure's ``expected_protocol``: ``exchanges`` is the list of ``(sent, reply)``
    pairs in order, ``reply`` being ``None`` for a write. A message other than the next one
    recorded raises AssertionError naming the step; leaving the ``with`` block with exchanges
    unused raises AssertionError listing them (unless another exception is already on its way).
    """

    def __init__(self, exchanges: Sequence[tuple[str, str | None]], *, instrument: str = "sr830") -> None:
        self.instrument = instrument
        self._exchanges = list(exchanges)
        self._step = 0
        self.closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.assert_done()

    def _next(self, message: str, *, is_query: bool) -> str | None:
        if self._step >= len(self._exchanges):
            raise AssertionError(f"unexpected {'query' if is_query else 'write'} {message!r}: no exchange left")
        sent, reply = self._exchanges[self._step]
        if sent != message or (reply is not None) != is_query:
            raise AssertionError(f"step {self._step}: expected {sent!r} -> {reply!r}, got {message!r}")
        self._step += 1
        return reply

    def query(self, message: str) -> str:
        reply = self._next(message, is_query=True)
        assert reply is not None
        return reply

    def write(self, message: str) -> None:
        self._next(message, is_query=False)

    def close(self) -> None:
        self.closed = True

    def assert_done(self) -> None:
        """Every recorded exchange was used."""
        if self._step != len(self._exchanges):
            raise AssertionError(
                f"{len(self._exchanges) - self._step} exchange(s) unused: {self._exchanges[self._step :]}"
            )
