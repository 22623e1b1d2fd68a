"""A simulated LakeShore 372 on a TCP socket (as its Ethernet port 7777), for the real driver.

Contract: replies end in ``\\r\\n`` like the instrument's; commands may end in ``\\n`` or
``\\r\\n`` and share a line separated by ``;``, but only the last query of a line is answered
(Lake Shore's manuals for this family: "The instrument will respond only to the last query it
receives"). Each input reads the base temperature of :class:`ThermometerState` plus its offset,
any excursion the lab sets and any ``temperature_excursion`` fault of the present spectrum.
Transport faults and refused commands act as in :mod:`stslive.mocks.line_server`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.line_server import (
    ESR_COMMAND_ERROR,
    ESR_EXECUTION_ERROR,
    EsrRefusal,
    InstrumentState,
    LineServer,
)

#: The 372's inputs (manual, ch. 6): the control input A and the scanner's measurement inputs 1-16.
INPUTS: tuple[str, ...] = ("A", *(str(n) for n in range(1, 17)))


@dataclass(frozen=True)
class ThermometerSettings:
    """A consistent copy of the thermometer state.

    Parameters
    ----------
    base_k
        Base temperature of every input (K).
    excursion_k
        Extra temperature the lab imposes now (K), on top of fault excursions.
    channel_offsets_k
        Per-input offsets (K) so inputs read differently (e.g. ``{"A": 0.0, "2": 0.05}``).
    scanner_channel, autoscan
        The scanner position (1..16) and autoscan flag.
    ohm_per_kelvin
        Slope of the simulated resistance thermometer, ``R = R0 + slope (T - base)`` around
        ``resistance0_ohm``; only ``RDGR?`` uses it.
    resistance0_ohm
        Sensor resistance at base temperature (ohm).
    """

    base_k: float = 0.3
    excursion_k: float = 0.0
    channel_offsets_k: dict[str, float] = field(default_factory=dict)
    scanner_channel: int = 1
    autoscan: bool = False
    ohm_per_kelvin: float = -2.0e4
    resistance0_ohm: float = 1.5e4


class ThermometerState(InstrumentState[ThermometerSettings]):
    """Thread-safe thermometer state shared by the LS372 server and the mock lab.

    Parameters
    ----------
    faults
        The plan consulted for ``temperature_excursion`` at the plan's present spectrum.
    **initial
        Initial :class:`ThermometerSettings` fields.
    """

    def __init__(self, *, faults: FaultPlan | None = None, **initial: Any) -> None:
        super().__init__(ThermometerSettings(**initial))
        self.faults = faults

    def temperature(self, channel: str = "A") -> float:
        """Temperature the input reads now (K): base + offset + excursion + active fault excursion."""
        s = self.snapshot()
        kelvin = s.base_k + s.channel_offsets_k.get(channel, 0.0) + s.excursion_k
        plan = self.faults
        if plan is not None:
            fault = plan.active(FaultKind.TEMPERATURE_EXCURSION, spectrum=plan.spectrum)
            if fault is not None:
                kelvin += float(fault.params["kelvin"])
        return kelvin

    def resistance(self, channel: str = "A") -> float:
        """Sensor resistance (ohm) for :meth:`temperature` on a linearised curve."""
        s = self.snapshot()
        return s.resistance0_ohm + s.ohm_per_kelvin * (self.temperature(channel) - s.base_k)


class LS372Server(LineServer):
    """Simulated LakeShore 372 over TCP (see the module docstring).

    Parameters
    ----------
    state
        The shared :class:`ThermometerState`; a fresh one at 0.3 K by default (it consults
        ``faults`` for excursions when created here).
    host, port, faults
        As for :class:`~stslive.mocks.line_server.LineServer`.
    """

    def __init__(
        self,
        state: ThermometerState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        serial: str = "LSA3721",
    ) -> None:
        self.state: ThermometerState = state if state is not None else ThermometerState(faults=faults)
        super().__init__(
            "ls372",
            self.state,
            identity=f"LSCI,MODEL372,{serial},1.4",
            host=host,
            port=port,
            faults=faults,
            reply_termination="\r\n",
        )

    def reply_lines(self, replies: list[str]) -> list[str]:
        return replies[-1:]  # only the last query of a line is answered (module docstring)

    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        if header in ("KRDG", "RDGR", "RDGST") and is_query:
            channel = self._channel(args)
            if header == "KRDG":
                return f"{self.state.temperature(channel):+.6E}"
            if header == "RDGR":
                return f"{self.state.resistance(channel):+.6E}"
            return "000"
        if header == "SCAN":
            return self._scan(is_query, args)
        raise EsrRefusal(ESR_COMMAND_ERROR)

    @staticmethod
    def _channel(args: list[str]) -> str:
        if len(args) != 1 or args[0].upper() not in INPUTS:
            raise EsrRefusal(ESR_EXECUTION_ERROR)
        return args[0].upper()

    def _scan(self, is_query: bool, args: list[str]) -> str | None:
        if is_query:
            s = self.state.snapshot()
            return f"{s.scanner_channel:02d},{int(s.autoscan)}"
        if len(args) != 2 or not all(a.isdigit() for a in args):
            raise EsrRefusal(ESR_COMMAND_ERROR)
        channel, autoscan = int(args[0]), int(args[1])
        if not 1 <= channel <= 16 or autoscan not in (0, 1):
            raise EsrRefusal(ESR_EXECUTION_ERROR)
        self.state.update(scanner_channel=channel, autoscan=bool(autoscan))
        return None
