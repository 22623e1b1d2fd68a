"""The LakeShore 372 AC resistance bridge / temperature controller over VISA (a ``Thermometer``).

Contract: ``*IDN?``, ``KRDG? <input>`` (K), ``RDGR? <input>`` (ohm), ``RDGST? <input>`` (status
bits) and ``SCAN?``/``SCAN <ch>,<autoscan>`` (372 manual ch. 6); ``<input>`` is ``A`` or
``1``..``16``; replies end in ``\r\n`` on every interface. A reading whose status bits are set
(over/under range, excitation overload) or that reads 0 K (no curve) is not a temperature:
:meth:`LakeShore372.temperature` raises :class:`~stslive.drivers.errors.ControllerError` naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType, TracebackType

from stslive.drivers.errors import ControllerError, InstrumentReplyError, SafetyLimitError
from stslive.drivers.scpi import TextSession, parse_float, parse_int, with_text_termination
from stslive.drivers.visa import VisaSession, VisaSettings

INSTRUMENT = "ls372"
#: ``RDGST?`` bits (372 manual, RDGST? command).
READING_STATUS: Mapping[int, str] = MappingProxyType(
    {
        0: "current source overload",
        1: "voltage common-mode overload",
        2: "voltage mixer overload",
        3: "voltage differential overload",
        4: "resistance over range",
        5: "resistance under range",
        6: "temperature over range",
        7: "temperature under range",
    }
)
CHANNELS: tuple[str, ...] = ("A", *tuple(str(c) for c in range(1, 17)))


def check_channel(channel: str | int) -> str:
    """The input as the instrument names it (``"A"`` or ``"1"``..``"16"``), else SafetyLimitError."""
    name = str(channel).strip().upper()
    if name not in CHANNELS:
        raise SafetyLimitError(INSTRUMENT, f"input {channel!r} does not exist; use 'A' (control input) or 1..16")
    return name


class LakeShore372:
    """A LakeShore 372 reading one input; implements the ``Thermometer`` protocol.

    Parameters
    ----------
    session
        The text session (:class:`~stslive.drivers.visa.VisaSession` or a test fake).
    channel
        The input that carries the sample thermometer: ``"A"`` or 1..16.
    """

    def __init__(self, session: TextSession, *, channel: str | int) -> None:
        self.session = session
        self.channel = check_channel(channel)

    def identity(self) -> str:
        """The ``*IDN?`` line (``LSCI,MODEL372,<serial>,<firmware>``)."""
        return self.session.query("*IDN?")

    def reading_status(self, channel: str | int | None = None) -> tuple[str, ...]:
        """Names of the ``RDGST?`` bits set for ``channel`` (default: the configured one)."""
        name = self.channel if channel is None else check_channel(channel)
        bits = parse_int(INSTRUMENT, self.session.query(f"RDGST? {name}"), what=f"RDGST? {name}")
        if not 0 <= bits < 256:
            raise InstrumentReplyError(INSTRUMENT, f"RDGST? {name} = {bits} is not a status byte")
        return tuple(READING_STATUS[b] for b in range(8) if bits >> b & 1)

    def temperature(self) -> float:
        """Temperature of the configured input (K), ``KRDG?``.

        Raises
        ------
        ControllerError
            The reading status has bits set (over/under range, overload): the number the
            instrument would print is not a temperature. Check the sensor wiring and excitation.
        """
        problems = self.reading_status()
        if problems:
            raise ControllerError(INSTRUMENT, f"input {self.channel}: {'; '.join(problems)}", command="KRDG?")
        kelvin = parse_float(INSTRUMENT, self.session.query(f"KRDG? {self.channel}"), what=f"KRDG? {self.channel}")
        if kelvin <= 0:
            raise ControllerError(
                INSTRUMENT,
                f"input {self.channel} reads {kelvin} K: no calibration curve assigned; assign one (INCRV)",
                command="KRDG?",
            )
        return kelvin

    def resistance(self) -> float:
        """Sensor resistance of the configured input (ohm), ``RDGR?``."""
        return parse_float(INSTRUMENT, self.session.query(f"RDGR? {self.channel}"), what=f"RDGR? {self.channel}")

    def scanner_channel(self) -> tuple[int, bool]:
        """(channel 1..16 the scanner is on, autoscan on?), ``SCAN?``."""
        reply = self.session.query("SCAN?")
        fields = reply.split(",")
        if len(fields) != 2:
            raise InstrumentReplyError(INSTRUMENT, f"reply to SCAN? should be '<channel>,<autoscan>', got {reply!r}")
        channel = parse_int(INSTRUMENT, fields[0], what="SCAN?")
        autoscan = parse_int(INSTRUMENT, fields[1], what="SCAN?")
        if not 1 <= channel <= 16 or autoscan not in (0, 1):
            raise InstrumentReplyError(INSTRUMENT, f"reply to SCAN? out of range: {reply!r}")
        return channel, bool(autoscan)

    def set_scanner_channel(self, channel: int, *, autoscan: bool = False) -> None:
        """Switch the scanner to ``channel`` (1..16); readings settle after the pause time."""
        if check_channel(channel) == "A":
            raise SafetyLimitError(INSTRUMENT, "the scanner selects inputs 1..16; 'A' is not scanned")
        self.session.write(f"SCAN {int(channel)},{int(autoscan)}")

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        self.session.close()

    def __enter__(self) -> LakeShore372:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_thermometer(settings: VisaSettings, *, channel: str | int) -> LakeShore372:
    """Connect to a LakeShore 372 and check its identity.

    Parameters
    ----------
    settings
        Resource (``TCPIP::host::7777::SOCKET``, ``GPIB0::12::INSTR``, ``ASRL3::INSTR``),
        timeouts (s) and reconnect policy from the run config; termination defaults to ``\\r\\n``.
    channel
        Input of the sample thermometer: ``"A"`` or 1..16.

    Raises
    ------
    ControllerError
        Another instrument answered ``*IDN?``.
    """
    name = check_channel(channel)
    session = VisaSession(with_text_termination(settings, "\r\n"), instrument=INSTRUMENT)
    try:
        identity = session.query("*IDN?")
        if "MODEL372" not in identity.upper():
            raise ControllerError(
                INSTRUMENT,
                f"*IDN? answered {identity!r}, not a LakeShore 372; check the thermometer address",
                command="*IDN?",
            )
    except BaseException:
        session.close()
        raise
    return LakeShore372(session, channel=name)
