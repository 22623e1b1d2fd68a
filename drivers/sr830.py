"""Stanford Research SR830 and SR860 lock-in amplifiers over VISA (a ``LockIn``).

Contract: a table driver (:class:`~stslive.drivers.scpi.Setting` rows from the manuals: SR830
ch. 5, SR860 ch. 4) over GPIB, a GPIB-Ethernet bridge (``VisaSettings.bridge``) or RS232 (CR
replies); :func:`open_lockin` sends ``OUTX`` for the interface in use before any query. A value
that is not in range or not a table entry, or a harmonic x frequency beyond the model's
detection limit, raises :class:`~stslive.drivers.errors.SafetyLimitError` and nothing is sent
(:meth:`~stslive.drivers.scpi.Setting.nearest_at_least` rounds explicitly); every set is followed
by ``*ESR?`` so a refused command raises :class:`~stslive.drivers.errors.ControllerError` at
once. Status comes from ``LIAS?``/``ERRS?`` (SR830) or ``CUROVLDSTAT?`` (SR860) plus ``*ESR?``;
bits it does not decode are reported by number, never dropped. PyMeasure's drivers are not
wrapped: they truncate out-of-table values silently and its SR860 sensitivity table is reversed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from stslive.drivers.errors import ConfigError, ControllerError, InstrumentReplyError, LockInOverload, SafetyLimitError
from stslive.drivers.protocols import LockInReading, LockInStatus
from stslive.drivers.scpi import Setting, TextSession, parse_floats, parse_int
from stslive.drivers.srs_tables import (
    SR830_SENSITIVITIES,
    SR830_TIME_CONSTANTS,
    SR860_SENSITIVITIES,
    SR860_TIME_CONSTANTS,
)
from stslive.drivers.visa import VisaSession, VisaSettings

log = logging.getLogger(__name__)

# SR830 LIA status byte (LIAS?), manual p. 5-20.
LIAS_INPUT_OVERLOAD = 1 << 0
LIAS_FILTER_OVERLOAD = 1 << 1  # time-constant filter = dynamic reserve overload
LIAS_OUTPUT_OVERLOAD = 1 << 2
LIAS_UNLOCK = 1 << 3
LIAS_RANGE_CHANGE = 1 << 4
LIAS_TC_CHANGE = 1 << 5
LIAS_TRIGGER = 1 << 6
# SR830 error status byte (ERRS?): bit -> name.
ERRS_NAMES: Mapping[int, str] = MappingProxyType(
    {
        1: "battery backup failed",
        2: "RAM memory error",
        4: "ROM memory error",
        5: "GPIB fast data transfer aborted",
        6: "DSP error",
        7: "math error",
    }
)
# IEEE 488.2 standard event status (*ESR?), both models: bit -> name.
ESR_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0: "input queue overflow",
        2: "query error (output queue overflow)",
        4: "execution error (parameter out of range or not allowed)",
        5: "command error (unknown command or bad syntax)",
    }
)
# SR860 current overload status (CUROVLDSTAT?).
CUROVLD_CH1_OUTPUT = 1 << 0
CUROVLD_CH2_OUTPUT = 1 << 1
CUROVLD_UNLOCK = 1 << 3
CUROVLD_INPUT = 1 << 4


class LockInWarning(UserWarning):
    """The lock-in reports a condition worth knowing that does not invalidate the reading
    by itself (reference unlock, detection range or time constant changed by the instrument)."""


def esr_error_names(esr: int) -> tuple[str, ...]:
    """Names of the error bits set in a ``*ESR?`` byte (power-on and request bits are not errors)."""
    return tuple(ESR_NAMES[b] for b in sorted(ESR_NAMES) if esr >> b & 1)


def _bits(byte: int, names: Mapping[int, str]) -> tuple[str, ...]:
    return tuple(names.get(b, f"status bit {b}") for b in range(16) if byte >> b & 1)


@dataclass(frozen=True)
class LockInModel:
    """What differs between the SR830 and the SR860: the command table and the status decoding.

    Parameters
    ----------
    name
        Model name as ``*IDN?`` prints it (``"SR830"``).
    settings
        Command table, by setting name.
    snap_query
        Query returning ``X, Y`` (and ``R, theta`` where the model allows four parameters).
    max_detection_hz
        Highest harmonic x reference frequency (Hz) the model detects at.
    """

    name: str
    settings: Mapping[str, Setting]
    snap_query: str
    max_detection_hz: float

    def decode_status(self, replies: Mapping[str, int]) -> LockInStatus:
        """Decode the status registers read with :attr:`status_queries` into a LockInStatus."""
        esr_errors = esr_error_names(replies["*ESR?"])
        if self.name == "SR830":
            lias, errs = replies["LIAS?"], replies["ERRS?"]
            if lias & (LIAS_RANGE_CHANGE | LIAS_TC_CHANGE):
                log.info("sr830: the instrument changed its detection range or time constant (LIAS %d)", lias)
            return LockInStatus(
                input_overload=bool(lias & LIAS_INPUT_OVERLOAD),
                reserve_overload=bool(lias & LIAS_FILTER_OVERLOAD),
                output_overload=bool(lias & LIAS_OUTPUT_OVERLOAD),
                unlocked=bool(lias & LIAS_UNLOCK),
                errors=_bits(errs, ERRS_NAMES) + esr_errors,
            )
        cur = replies["CUROVLDSTAT?"]
        known = CUROVLD_CH1_OUTPUT | CUROVLD_CH2_OUTPUT | CUROVLD_UNLOCK | CUROVLD_INPUT
        unknown = tuple(f"CUROVLDSTAT bit {b}" for b in range(16) if (cur & ~known) >> b & 1)
        return LockInStatus(
            input_overload=bool(cur & CUROVLD_INPUT),
            output_overload=bool(cur & (CUROVLD_CH1_OUTPUT | CUROVLD_CH2_OUTPUT)),
            unlocked=bool(cur & CUROVLD_UNLOCK),
            errors=unknown + esr_errors,
        )

    @property
    def status_queries(self) -> tuple[str, ...]:
        """The registers :meth:`decode_status` needs (reading LIAS/ERRS/ESR clears them)."""
        if self.name == "SR830":
            return ("LIAS?", "ERRS?", "*ESR?")
        return ("CUROVLDSTAT?", "*ESR?")


def _table(*settings: Setting) -> Mapping[str, Setting]:
    return MappingProxyType({s.name: s for s in settings})


SR830 = LockInModel(
    name="SR830",
    snap_query="SNAP? 1,2,3,4",  # SNAP? takes 2 to 6 parameters, counted from 1 (manual p. 5-15)
    max_detection_hz=102e3,
    settings=_table(
        Setting("frequency", "FREQ?", "FREQ {:.6e}", "float", "Hz", "reference frequency", bounds=(1e-3, 102e3)),
        Setting("amplitude", "SLVL?", "SLVL {:.4f}", "float", "V", "sine output amplitude (rms)", bounds=(0.004, 5.0)),
        Setting("phase", "PHAS?", "PHAS {:.3f}", "float", "deg", "reference phase shift", bounds=(-360.0, 729.99)),
        Setting("harmonic", "HARM?", "HARM {:d}", "int", "1", "detection harmonic", bounds=(1, 19999)),
        Setting(
            "time_constant",
            "OFLT?",
            "OFLT {:d}",
            "index",
            "s",
            "output filter time constant",
            values=SR830_TIME_CONSTANTS,
        ),
        Setting(
            "sensitivity", "SENS?", "SENS {:d}", "index", "V", "full-scale sensitivity", values=SR830_SENSITIVITIES
        ),
    ),
)

SR860 = LockInModel(
    name="SR860",
    snap_query="SNAP? 0,1",  # SNAP? takes 2 or 3 parameters, counted from 0: R and theta follow from X, Y
    max_detection_hz=500e3,
    settings=_table(
        Setting("frequency", "FREQ?", "FREQ {:.6e}", "float", "Hz", "reference frequency", bounds=(1e-3, 500e3)),
        Setting("amplitude", "SLVL?", "SLVL {:.6e}", "float", "V", "sine output amplitude (rms)", bounds=(1e-9, 2.0)),
        Setting("phase", "PHAS?", "PHAS {:.6f}", "float", "deg", "reference phase shift", bounds=(-360000.0, 360000.0)),
        Setting("harmonic", "HARM?", "HARM {:d}", "int", "1", "detection harmonic", bounds=(1, 99)),
        Setting(
            "time_constant",
            "OFLT?",
            "OFLT {:d}",
            "index",
            "s",
            "output filter time constant",
            values=SR860_TIME_CONSTANTS,
        ),
        Setting(
            "sensitivity", "SCAL?", "SCAL {:d}", "index", "V", "full-scale sensitivity", values=SR860_SENSITIVITIES
        ),
    ),
)

MODELS: Mapping[str, LockInModel] = MappingProxyType({"SR830": SR830, "SR860": SR860})


class SrsLockIn:
    """An SR830 or SR860 on a text session; implements the ``LockIn`` protocol.

    Parameters
    ----------
    session
        The text session (a :class:`~stslive.drivers.visa.VisaSession`, or a test fake).
    model
        :data:`SR830` or :data:`SR860`.
    verify_sets
        Query ``*ESR?`` after every set and raise ControllerError if the instrument refused it
        (one extra round trip, ~0.1 ms on a socket).

    Use :func:`open_lockin` to connect; it checks ``*IDN?`` against the model.
    """

    def __init__(self, session: TextSession, model: LockInModel, *, verify_sets: bool = True) -> None:
        self.session = session
        self.model = model
        self.verify_sets = verify_sets

    # -- generic table access -----------------------------------------------------------------
    def get(self, name: str) -> float:
        """Read setting ``name`` of the command table (SI units)."""
        setting = self._setting(name)
        return setting.decode(self.session.instrument, self.session.query(setting.query))

    def set(self, name: str, value: float) -> None:
        """Set ``name``; SafetyLimitError (nothing sent) if out of range or not a table value.

        A frequency or harmonic whose product with the present harmonic or frequency exceeds the
        model's detection limit (SR830: 102 kHz) is refused before sending: the instrument would
        clamp the harmonic without saying so.
        """
        setting = self._setting(name)
        command = setting.encode(self.session.instrument, value)
        if name in ("frequency", "harmonic"):
            other = self.get("harmonic" if name == "frequency" else "frequency")
            self.check_detection(value if name == "frequency" else other, other if name == "frequency" else value)
        self.session.write(command)
        if self.verify_sets:
            self._raise_if_refused(setting.set_format or name)

    def check_detection(self, frequency_hz: float, harmonic: float) -> None:
        """SafetyLimitError unless ``harmonic x frequency_hz`` is within the model's detection limit."""
        if harmonic * frequency_hz > self.model.max_detection_hz:
            raise SafetyLimitError(
                self.session.instrument,
                f"harmonic {harmonic:g} x frequency {frequency_hz:g} Hz = {harmonic * frequency_hz:g} Hz exceeds the "
                f"{self.model.name}'s {self.model.max_detection_hz:g} Hz; nothing was sent",
            )

    def _setting(self, name: str) -> Setting:
        try:
            return self.model.settings[name]
        except KeyError:
            raise KeyError(f"{self.model.name} has no setting {name!r}; known: {sorted(self.model.settings)}") from None

    def _raise_if_refused(self, what: str) -> None:
        esr = parse_int(self.session.instrument, self.session.query("*ESR?"), what="*ESR?")
        refused = esr_error_names(esr)
        if refused:
            raise ControllerError(self.session.instrument, "; ".join(refused), command=what.split()[0], code=esr)

    # -- LockIn protocol ----------------------------------------------------------------------
    def identity(self) -> str:
        """The ``*IDN?`` line (maker, model, serial, firmware)."""
        return self.session.query("*IDN?")

    def get_frequency(self) -> float:
        """Reference frequency (Hz)."""
        return self.get("frequency")

    def set_frequency(self, hertz: float) -> None:
        """Set the reference frequency (Hz)."""
        self.set("frequency", hertz)

    def get_amplitude(self) -> float:
        """Sine output amplitude (V rms)."""
        return self.get("amplitude")

    def set_amplitude(self, volts_rms: float) -> None:
        """Set the sine output amplitude (V rms)."""
        self.set("amplitude", volts_rms)

    def get_time_constant(self) -> float:
        """Output filter time constant (s)."""
        return self.get("time_constant")

    def set_time_constant(self, seconds: float) -> None:
        """Set the time constant (s); must be a table value (see module docstring)."""
        self.set("time_constant", seconds)

    def get_harmonic(self) -> int:
        """Detection harmonic."""
        return int(self.get("harmonic"))

    def set_harmonic(self, harmonic: int) -> None:
        """Set the detection harmonic (checked against the detection limit with the present frequency)."""
        self.set("harmonic", harmonic)

    def get_sensitivity(self) -> float:
        """Full-scale sensitivity (V)."""
        return self.get("sensitivity")

    def set_sensitivity(self, full_scale: float) -> None:
        """Set the full-scale sensitivity (V); must be a table value."""
        self.set("sensitivity", full_scale)

    def read(self) -> LockInReading:
        """X, Y, R (V) and theta (deg) from one ``SNAP?``, i.e. sampled at the same instant.

        Where ``SNAP?`` returns only X and Y (SR860), R and theta are computed from them.
        """
        count = self.model.snap_query.count(",") + 1
        values = parse_floats(
            self.session.instrument, self.session.query(self.model.snap_query), what=self.model.snap_query, count=count
        )
        x, y = values[0], values[1]
        r, theta = values[2:] if count == 4 else (math.hypot(x, y), math.degrees(math.atan2(y, x)))
        return LockInReading(x=x, y=y, r=r, theta_deg=theta)

    def status(self) -> LockInStatus:
        """Read (and thereby clear) the status registers in one compound query and decode them.

        One line ``LIAS?;ERRS?;*ESR?`` (SR860: ``CUROVLDSTAT?;*ESR?``) is one round trip instead
        of one per register; both manuals allow several queries on a line (SR830 p. 5-2, SR860
        ch. 4) and the session returns the answers joined by ``;``.
        """
        queries = self.model.status_queries
        message = ";".join(queries)
        answers = self.session.query(message).split(";")
        if len(answers) != len(queries):
            raise InstrumentReplyError(
                self.session.instrument,
                f"{message!r} answered {len(answers)} value(s) {answers!r}, expected {len(queries)}; "
                "check the lock-in model and that nothing else talks to it",
            )
        replies = {q: parse_int(self.session.instrument, a, what=q) for q, a in zip(queries, answers, strict=False)}
        return self.model.decode_status(replies)

    def check(self) -> LockInStatus:
        """:meth:`status`, raising on what makes readings worthless.

        Raises
        ------
        LockInOverload
            Input, reserve or output overload: reduce the signal or raise the sensitivity/reserve.
        ControllerError
            The instrument reports errors (hardware or refused commands).

        A reference unlock is issued as a :class:`LockInWarning`.
        """
        status = self.status()
        if status.overloaded:
            kinds = [
                k
                for k, on in (
                    ("input", status.input_overload),
                    ("reserve", status.reserve_overload),
                    ("output", status.output_overload),
                )
                if on
            ]
            raise LockInOverload(
                self.session.instrument,
                f"{' and '.join(kinds)} overload; raise the sensitivity (full scale) or lower the signal, "
                "then retake the reading",
            )
        if status.errors:
            raise ControllerError(self.session.instrument, "; ".join(status.errors), command="status")
        if status.unlocked:
            warnings.warn(
                f"{self.model.name}: reference unlocked; readings are not phase-locked", LockInWarning, stacklevel=2
            )
        return status

    def settings(self) -> dict[str, float]:
        """Every readable setting of the table, by name (SI units)."""
        return {name: self.get(name) for name in self.model.settings}

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        self.session.close()

    def __enter__(self) -> SrsLockIn:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def model_from_identity(identity: str) -> LockInModel:
    """The model named by an ``*IDN?`` line (``Stanford_Research_Systems,SR830,s/n...,ver...``).

    Raises
    ------
    ControllerError
        If the line names no supported model (wrong address, or another instrument).
    """
    fields = [f.strip() for f in identity.split(",")]
    name = fields[1] if len(fields) >= 2 else ""
    if name in MODELS:
        return MODELS[name]
    raise ControllerError(
        "lockin", f"*IDN? answered {identity!r}, not an SR830/SR860; check the lock-in address", command="*IDN?"
    )


#: OUTX argument per interface (SR830 manual: replies go to the interface OUTX selects).
OUTX = MappingProxyType({"rs232": 0, "gpib": 1})


def interface_of(resource: str, interface: str = "") -> str:
    """The bus the lock-in is on: ``interface`` if given, else ``"rs232"`` for ASRL resources and
    ``"gpib"`` for the rest (GPIB, a Prologix bridge's GPIB resource, a raw bridge socket)."""
    if interface:
        if interface not in OUTX:
            raise ConfigError(f"lockin interface = {interface!r}: use 'gpib' or 'rs232' ('' = from the resource)")
        return interface
    return "rs232" if resource.upper().startswith("ASRL") else "gpib"


def open_lockin(
    settings: VisaSettings, *, model: str | None = None, verify_sets: bool = True, interface: str = ""
) -> SrsLockIn:
    """Connect to an SR830/SR860, make it reply on this interface and check its identity.

    Parameters
    ----------
    settings
        Resource string (``GPIB0::8::INSTR``; ``ASRL/dev/ttyUSB0::INSTR``; a GPIB resource with
        ``bridge = "PRLGX-TCPIP::host::1234::INTFC"``; or ``TCPIP::host::port::SOCKET`` for a
        raw bridge or serial device server), timeouts (s) and reconnect policy from the run
        config. Termination when unset: replies end with CR on RS232, LF on GPIB (SR830 manual
        p. 5-2); requests end with LF.
    model
        ``"SR830"`` or ``"SR860"`` to insist on; ``None`` accepts what ``*IDN?`` reports.
    verify_sets
        See :class:`SrsLockIn`.
    interface
        ``"gpib"`` or ``"rs232"``; ``""`` derives it from the resource (:func:`interface_of`).
        Unless the model is configured as SR860, ``OUTX`` for it is sent before any query; the
        status registers are cleared (``*CLS``) after identification.

    Raises
    ------
    InstrumentConnectionError, InstrumentTimeout
        The instrument cannot be reached (on RS232 also: wrong baud rate or termination).
    ControllerError
        Something else answered, or another model than ``model``.
    """
    if model is not None and model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    bus = interface_of(settings.resource, interface)
    text = dataclasses.replace(
        settings,
        read_termination=settings.read_termination or ("\r" if bus == "rs232" else "\n"),
        write_termination=settings.write_termination or "\n",
    )
    session = VisaSession(text, instrument="sr830")
    try:
        if model != "SR860":  # the SR860 has no OUTX; an SR830 answers nothing until it is right
            session.write(f"OUTX {OUTX[bus]}")
        found = model_from_identity(session.query("*IDN?"))
        if model is not None and found.name != model:
            raise ControllerError(
                "sr830", f"{settings.resource} is an {found.name}, not the configured {model}", command="*IDN?"
            )
        # an OUTX an SR860 refused, or old latched bits: start clean; the query makes sure the
        # instrument has executed *CLS before the caller reads any status
        session.query("*CLS;*ESR?")
    except BaseException:
        session.close()
        raise
    session.separate_replies = found.name == "SR830"  # SR830 manual p. 5-2; the SR860 joins with ';'
    return SrsLockIn(session, found, verify_sets=verify_sets)
