"""Scriptable fault injection for the simulated lab, and the ground truth of what fired.

Contract: a :class:`FaultPlan` holds :class:`Fault` s (a TOML file or a list) and answers the
simulated instruments: ``on_command(instrument, command)`` on every request gives the
*transport* fault to apply to it (connection drop, delay, no reply, error reply);
``active(kind, spectrum=n)`` the *state* fault that holds over a window of spectra (lock-in
overload, temperature excursion, tip change, feedback failure). The plan counts spectra: the
lab calls :meth:`FaultPlan.begin_spectrum`/:meth:`FaultPlan.end_spectrum` around each
``BiasSpectr.Start``, and everything after sweep ``n-1`` ended up to the end of sweep ``n``
belongs to spectrum ``n`` (0-based). Each fault that acts is recorded once per spectrum in
:attr:`FaultPlan.fired`, the truth the analyser's flags are scored against.

TOML layout (one ``[[fault]]`` table per fault)::

    [[fault]]
    kind = "no_reply"            # a FaultKind value
    instrument = "nanonis"       # nanonis | sr830 | ls372 | sample
    command = "BiasSpectr.Start" # transport faults: the command name to act on
    at_call = 3                  # the 3rd call of that command (1-based) ...
    # from_spectrum = 5          # ... or a window of spectra, to_spectrum exclusive
    # to_spectrum = 7
    params = { delay_s = 2.0 }   # kind-specific, see PARAMS
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from stslive.drivers.errors import ConfigError
from stslive.drivers.tomlfile import check_keys, read_toml


class FaultKind(StrEnum):
    """What goes wrong."""

    CONNECTION_DROP = "connection_drop"
    DELAY = "delay"
    NO_REPLY = "no_reply"
    ERROR_REPLY = "error_reply"
    LOCKIN_OVERLOAD = "lockin_overload"
    TEMPERATURE_EXCURSION = "temperature_excursion"
    TIP_CHANGE = "tip_change"
    FEEDBACK_FAIL = "feedback_fail"


INSTRUMENTS = ("nanonis", "sr830", "ls372", "sample")

TRANSPORT_KINDS = frozenset({FaultKind.CONNECTION_DROP, FaultKind.DELAY, FaultKind.NO_REPLY, FaultKind.ERROR_REPLY})

# Where a state fault acts when the file does not say.
DEFAULT_INSTRUMENT = {
    FaultKind.LOCKIN_OVERLOAD: "sr830",
    FaultKind.TEMPERATURE_EXCURSION: "ls372",
    FaultKind.TIP_CHANGE: "sample",
    FaultKind.FEEDBACK_FAIL: "nanonis",
}

# kind -> {param: (type, required, default, meaning)}; anything else is a ConfigError.
PARAMS: dict[FaultKind, dict[str, tuple[type, bool, Any, str]]] = {
    FaultKind.CONNECTION_DROP: {},
    FaultKind.DELAY: {
        "delay_s": (float, True, None, "extra reply latency (s)"),
        "every_call": (bool, False, False, "delay every matching call, not only the first per spectrum"),
    },
    FaultKind.NO_REPLY: {},
    FaultKind.ERROR_REPLY: {
        "message": (str, False, "simulated controller error", "the controller's error text"),
        "code": (int, False, 1, "error code (the Nanonis simulation always sends status 1, as its protocol defines)"),
    },
    FaultKind.LOCKIN_OVERLOAD: {},
    FaultKind.TEMPERATURE_EXCURSION: {
        "kelvin": (float, True, None, "temperature rise above base (K)"),
    },
    FaultKind.TIP_CHANGE: {
        "factor": (float, False, 0.6, "multiplies the tip DOS/normalisation (dimensionless)"),
        "extra_slope_per_eV": (float, False, 0.0, "added asymmetry slope of the tip DOS (1/eV)"),
    },
    FaultKind.FEEDBACK_FAIL: {
        "factor": (float, False, 0.5, "current reached / set-point current (dimensionless)"),
    },
}

FAULT_KEYS = ("kind", "instrument", "command", "from_spectrum", "to_spectrum", "at_call", "params")


@dataclass(frozen=True)
class Fault:
    """One scripted fault.

    Parameters
    ----------
    kind
        What goes wrong.
    instrument
        ``"nanonis"``, ``"sr830"``, ``"ls372"`` or ``"sample"``.
    command
        For transport faults: the command it acts on (Nanonis name such as ``"Bias.Set"`` or the
        SCPI header such as ``"OUTP"``); ``None`` or ``"*"`` matches every command.
    from_spectrum, to_spectrum
        Window of spectrum indices (0-based, ``to_spectrum`` exclusive, ``None`` = open end).
    at_call
        The n-th call (1-based) of ``command`` on ``instrument``; a single shot.
    params
        Kind-specific values (see :data:`PARAMS`), defaults filled in.
    """

    kind: FaultKind
    instrument: str
    command: str | None = None
    from_spectrum: int | None = None
    to_spectrum: int | None = None
    at_call: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            kind = FaultKind(self.kind)
        except ValueError:
            raise ConfigError(
                f"fault 'kind' = {self.kind!r} unknown; use one of {[k.value for k in FaultKind]}"
            ) from None
        object.__setattr__(self, "kind", kind)
        if self.instrument not in INSTRUMENTS:
            raise ConfigError(f"fault 'instrument' = {self.instrument!r} unknown; use one of {INSTRUMENTS}")
        for key in ("from_spectrum", "to_spectrum", "at_call"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"fault '{key}' = {value!r} must be a non-negative integer")
        if self.at_call is not None and self.at_call < 1:
            raise ConfigError("fault 'at_call' counts calls from 1; give at_call >= 1")
        if self.from_spectrum is not None and self.to_spectrum is not None and self.to_spectrum <= self.from_spectrum:
            raise ConfigError(
                f"fault 'to_spectrum' ({self.to_spectrum}) must exceed 'from_spectrum' ({self.from_spectrum})"
            )
        if kind in TRANSPORT_KINDS:
            if self.at_call is None and self.from_spectrum is None:
                raise ConfigError(f"fault {kind.value}: give 'at_call' or 'from_spectrum' to say when it acts")
        else:
            if self.from_spectrum is None:
                raise ConfigError(f"fault {kind.value}: give 'from_spectrum' (state faults hold over spectra)")
            if self.at_call is not None:
                raise ConfigError(f"fault {kind.value}: 'at_call' applies to transport faults only")
        object.__setattr__(self, "params", MappingProxyType(_checked_params(kind, self.params)))

    def covers(self, spectrum: int) -> bool:
        """True if ``spectrum`` lies in the window (a fault with no window covers none)."""
        if self.from_spectrum is None or spectrum < self.from_spectrum:
            return False
        return self.to_spectrum is None or spectrum < self.to_spectrum

    def matches(self, instrument: str, command: str) -> bool:
        """True if this fault targets ``command`` on ``instrument``."""
        return self.instrument == instrument and self.command in (None, "*", command)

    @classmethod
    def from_mapping(cls, entry: Mapping[str, Any], *, where: str = "fault") -> Fault:
        """Build from a TOML table / dict; unknown or mistyped keys raise ConfigError naming them."""
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a table of keys {FAULT_KEYS}, got {type(entry).__name__}")
        check_keys(entry, FAULT_KEYS, what=where)
        if "kind" not in entry:
            raise ConfigError(f"{where}: missing key 'kind'")
        try:
            kind = FaultKind(entry["kind"])
        except ValueError:
            raise ConfigError(
                f"{where}: 'kind' = {entry['kind']!r} unknown; use one of {[k.value for k in FaultKind]}"
            ) from None
        instrument = entry.get("instrument", DEFAULT_INSTRUMENT.get(kind))
        if instrument is None:
            raise ConfigError(f"{where}: missing key 'instrument' (one of {INSTRUMENTS})")
        command = entry.get("command")
        if command is not None and not isinstance(command, str):
            raise ConfigError(f"{where}: 'command' must be a string, got {command!r}")
        params = entry.get("params", {})
        try:
            return cls(
                kind=kind,
                instrument=instrument,
                command=command,
                from_spectrum=entry.get("from_spectrum"),
                to_spectrum=entry.get("to_spectrum"),
                at_call=entry.get("at_call"),
                params=params,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _checked_params(kind: FaultKind, params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise ConfigError(f"fault {kind.value}: 'params' must be a table, got {params!r}")
    spec = PARAMS[kind]
    check_keys(params, spec, what=f"fault {kind.value} params")
    out: dict[str, Any] = {}
    for name, (typ, required, default, meaning) in spec.items():
        if name not in params:
            if required:
                raise ConfigError(f"fault {kind.value}: missing params key '{name}' ({meaning})")
            out[name] = default
            continue
        value = params[name]
        ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"fault {kind.value}: params '{name}' = {value!r} must be {typ.__name__} ({meaning})")
        out[name] = value
    return out


@dataclass(frozen=True)
class FiredFault:
    """One fault acting on one spectrum: the ground truth for scoring flags.

    ``time`` is ``time.time()`` (s since the epoch) of the first action on that spectrum.
    """

    kind: FaultKind
    instrument: str
    spectrum: int
    time: float
    detail: str


class FaultPlan:
    """A thread-safe set of faults plus the spectrum counter and the record of what fired.

    Parameters
    ----------
    faults
        The faults, in priority order (the first matching one acts).
    clock
        Wall clock for the records (injectable for tests).
    """

    def __init__(self, faults: Iterable[Fault] = (), *, clock: Any = time.time) -> None:
        self._faults: tuple[Fault, ...] = tuple(faults)
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._spectrum = 0
        self._fired: list[FiredFault] = []
        self._fired_keys: set[tuple[int, int]] = set()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_list(cls, entries: Iterable[Mapping[str, Any] | Fault]) -> FaultPlan:
        """From dicts (as in the TOML file) or ready :class:`Fault` s."""
        faults = [
            e if isinstance(e, Fault) else Fault.from_mapping(e, where=f"fault[{i}]") for i, e in enumerate(entries)
        ]
        return cls(faults)

    @classmethod
    def from_toml(cls, path: str | Path) -> FaultPlan:
        """Read a fault file (``[[fault]]`` tables); errors name the file and the key."""
        path = Path(path)
        doc = read_toml(path, what="fault file", option="--faults")
        check_keys(doc, ("fault",), what=f"fault file {path} (one [[fault]] table per fault)")
        entries = doc.get("fault", [])
        if not isinstance(entries, list):
            raise ConfigError(f"fault file {path}: 'fault' must be an array of tables ([[fault]])")
        try:
            return cls.from_list(entries)
        except ConfigError as exc:
            raise ConfigError(f"fault file {path}: {exc}") from None

    # -- queries ------------------------------------------------------------------------------
    @property
    def faults(self) -> tuple[Fault, ...]:
        """The scripted faults."""
        return self._faults

    @property
    def spectrum(self) -> int:
        """Index of the spectrum being prepared or swept (= number of sweeps completed so far)."""
        with self._lock:
            return self._spectrum

    def begin_spectrum(self) -> int:
        """A ``BiasSpectr.Start`` begins; returns its 0-based index (= :attr:`spectrum`)."""
        with self._lock:
            return self._spectrum

    def end_spectrum(self) -> int:
        """The sweep is over (done or failed); later commands belong to the next spectrum."""
        with self._lock:
            self._spectrum += 1
            return self._spectrum

    def on_command(self, instrument: str, command: str) -> Fault | None:
        """Count one call of ``command`` and return the transport fault to apply to it, if any.

        A fault with ``at_call`` acts on exactly that call; one with a window acts on the first
        matching call of each spectrum in the window (every call if ``params['every_call']``).
        Calls of ``BiasSpectr.Start`` belong to the spectrum they start.
        """
        with self._lock:
            self._calls[(instrument, command)] += 1
            n = self._calls[(instrument, command)]
            for i, fault in enumerate(self._faults):
                if fault.kind not in TRANSPORT_KINDS or not fault.matches(instrument, command):
                    continue
                if fault.at_call is not None:
                    if n != fault.at_call:
                        continue
                elif not fault.covers(self._spectrum) or (
                    (i, self._spectrum) in self._fired_keys and not fault.params.get("every_call", False)
                ):
                    continue
                self._record(i, fault, f"{command} call {n}")
                return fault
            return None

    def calls(self, instrument: str, command: str) -> int:
        """How many times ``command`` was seen on ``instrument``."""
        with self._lock:
            return self._calls[(instrument, command)]

    def active(self, kind: FaultKind | str, *, spectrum: int) -> Fault | None:
        """The state fault of ``kind`` that holds for ``spectrum``, if any (recorded as fired)."""
        kind = FaultKind(kind)
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.kind is kind and fault.covers(spectrum):
                    if (i, spectrum) not in self._fired_keys:
                        self._record(i, fault, _describe(fault), spectrum=spectrum)
                    return fault
            return None

    @property
    def fired(self) -> list[FiredFault]:
        """Copy of the records, in firing order."""
        with self._lock:
            return list(self._fired)

    def fired_spectra(self, kind: FaultKind | str) -> set[int]:
        """Spectrum indices on which a fault of ``kind`` acted."""
        kind = FaultKind(kind)
        return {f.spectrum for f in self.fired if f.kind is kind}

    def _record(self, index: int, fault: Fault, detail: str, *, spectrum: int | None = None) -> None:
        # caller holds the lock
        spectrum = self._spectrum if spectrum is None else spectrum
        key = (index, spectrum)
        if key in self._fired_keys and fault.kind in TRANSPORT_KINDS:
            detail += " (repeat)"
        self._fired_keys.add(key)
        self._fired.append(
            FiredFault(
                kind=fault.kind, instrument=fault.instrument, spectrum=spectrum, time=self._clock(), detail=detail
            )
        )


def _describe(fault: Fault) -> str:
    params = ", ".join(f"{k}={v}" for k, v in fault.params.items())
    return f"{fault.instrument} {fault.kind.value}" + (f" ({params})" if params else "")
