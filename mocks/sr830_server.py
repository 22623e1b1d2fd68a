"""A simulated SR830 (or SR860) lock-in on a TCP socket, as seen behind a GPIB-Ethernet bridge.

Contract: the real driver reaches it through pyvisa-py (``TCPIP::127.0.0.1::PORT::SOCKET``).
Lines and ``;``-separated commands as in :mod:`stslive.mocks.line_server`; the SR830 answers each
query of a line on its own line (SR830 manual p. 5-2), the SR860 joins them with ``;`` (SR860
manual ch. 4). A command it cannot execute gets no reply and sets ``*ESR?`` bit 4 (execution
error) or 5 (command error). :class:`LockInState` is shared with the mock lab, which writes the
demodulated signal and reads the modulation; a ``lockin_overload`` fault sets the overload bits.
Transport faults act on the command header (``"OUTP"``, ``"*IDN"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from stslive.drivers.scpi import Setting
from stslive.drivers.sr830 import (
    CUROVLD_CH1_OUTPUT,
    CUROVLD_INPUT,
    LIAS_INPUT_OVERLOAD,
    LIAS_OUTPUT_OVERLOAD,
    MODELS,
)
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.line_server import (
    ESR_COMMAND_ERROR,
    ESR_EXECUTION_ERROR,
    EsrRefusal,
    InstrumentState,
    LineServer,
)


@dataclass(frozen=True)
class LockInSettings:
    """A consistent copy of the lock-in state (SI units) for the lab to read.

    ``bias_divider`` is the attenuation between the sine output and the tip bias (a 1:1000
    divider is usual), so the modulation the junction sees is
    ``amplitude_v / bias_divider`` (V rms).
    """

    model: str = "SR830"
    frequency_hz: float = 1000.0
    amplitude_v: float = 1.0
    phase_deg: float = 0.0
    harmonic: int = 1
    time_constant_s: float = 0.1
    sensitivity_v: float = 1.0
    bias_divider: float = 1000.0
    x_v: float = 0.0
    y_v: float = 0.0
    overload: bool = False

    @property
    def modulation_at_bias_v_rms(self) -> float:
        """Bias modulation at the junction (V rms) = sine output / divider."""
        return self.amplitude_v / self.bias_divider


class LockInState(InstrumentState[LockInSettings]):
    """Thread-safe lock-in state shared by the SR830 server and the mock lab.

    Parameters
    ----------
    model
        ``"SR830"`` or ``"SR860"``.
    **initial
        Initial values of :class:`LockInSettings` fields.
    """

    def __init__(self, model: str = "SR830", **initial: Any) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
        super().__init__(LockInSettings(model=model, **initial))
        self._lias_latched = 0

    def set_signal(self, x_v: float, y_v: float) -> None:
        """The demodulated signal the lock-in now sees (V); written by the lab per point.

        A signal above full scale latches the output-overload bit (SR830) until read, as a
        transient overload during a sweep must still show at the next status query.
        """
        with self._lock:
            self._settings = replace(self._settings, x_v=float(x_v), y_v=float(y_v))
            self._lias_latched |= self._present_bits(overload=False)

    def set_overload(self, on: bool) -> None:
        """Hold (or release) an input overload; on the SR830 the bit latches until read."""
        with self._lock:
            self._settings = replace(self._settings, overload=bool(on))
            self._lias_latched |= self._present_bits(overload=False)

    def take_overload_bits(self, *, overload: bool) -> int:
        """Read the overload bits in the model's layout (``LIAS?`` / ``CUROVLDSTAT?``).

        ``overload`` adds an input overload from outside the state (a fault window). The SR830
        reports what latched since the last read plus the present condition and clears the
        latch; the SR860's register is the present condition only.
        """
        with self._lock:
            now = self._present_bits(overload=overload)
            if self._settings.model == "SR830":
                bits, self._lias_latched = self._lias_latched | now, 0
                return bits
            return now

    def _present_bits(self, *, overload: bool) -> int:
        # caller holds the lock
        s = self._settings
        input_overload = overload or s.overload
        output_overload = max(abs(s.x_v), abs(s.y_v)) > s.sensitivity_v
        if s.model == "SR830":
            return (LIAS_INPUT_OVERLOAD if input_overload else 0) | (LIAS_OUTPUT_OVERLOAD if output_overload else 0)
        return (CUROVLD_INPUT if input_overload else 0) | (CUROVLD_CH1_OUTPUT if output_overload else 0)

    def clear(self) -> None:
        """``*CLS``: clear the status registers."""
        with self._lock:
            self._esr = 0
            self._lias_latched = 0


# -- the SR830 / SR860 ---------------------------------------------------------------------------
# Which LockInSettings field each table setting lives in.
_FIELDS = {
    "frequency": "frequency_hz",
    "amplitude": "amplitude_v",
    "phase": "phase_deg",
    "harmonic": "harmonic",
    "time_constant": "time_constant_s",
    "sensitivity": "sensitivity_v",
}


class SR830Server(LineServer):
    """Simulated SR830/SR860 lock-in over TCP (see the module docstring).

    Parameters
    ----------
    state
        The shared :class:`LockInState` (a fresh SR830 by default).
    host, port, faults
        As for :class:`~stslive.mocks.line_server.LineServer`.
    serial
        Serial number printed by ``*IDN?``.
    """

    def __init__(
        self,
        state: LockInState | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        serial: str = "s/n86001",
    ) -> None:
        self.state: LockInState = state if state is not None else LockInState()
        self.model = MODELS[self.state.snapshot().model]
        identity = f"Stanford_Research_Systems,{self.model.name},{serial},ver1.07"
        super().__init__("sr830", self.state, identity=identity, host=host, port=port, faults=faults)
        self._by_header = {s.query.rstrip("?"): s for s in self.model.settings.values()}
        self._outputs = _output_table(self.model.name)

    def reply_lines(self, replies: list[str]) -> list[str]:
        # SR860 manual ch. 4 "Command Syntax": several queries on one line are answered as one
        # semicolon-separated string; the SR830 answers each on its own line (LineServer).
        if self.model.name == "SR860":
            return [";".join(replies)]
        return replies

    def _overloaded(self) -> bool:
        plan = self.faults
        return plan is not None and plan.active(FaultKind.LOCKIN_OVERLOAD, spectrum=plan.spectrum) is not None

    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        s = self.state.snapshot()
        if header == "*CLS" and not is_query:
            self.state.clear()
            return None
        if header in self._by_header:
            return self._setting(self._by_header[header], s, is_query, args)
        if header == "OUTP" and is_query and len(args) == 1:
            return _fmt(self._output(s, args[0]))
        if header == "SNAP" and is_query and 2 <= len(args) <= 6:
            return ",".join(_fmt(self._output(s, a)) for a in args)
        status_query = {"SR830": "LIAS", "SR860": "CUROVLDSTAT"}[s.model]
        if header == status_query and is_query and not args:
            return str(self.state.take_overload_bits(overload=self._overloaded()))
        if header == "ERRS" and is_query and not args and s.model == "SR830":
            return "0"
        raise EsrRefusal(ESR_COMMAND_ERROR)

    def _output(self, s: LockInSettings, arg: str) -> float:
        try:
            return self._outputs[int(arg)](s)
        except (ValueError, KeyError):
            raise EsrRefusal(ESR_EXECUTION_ERROR) from None

    def _setting(self, setting: Setting, s: LockInSettings, is_query: bool, args: list[str]) -> str | None:
        name = _FIELDS[setting.name]
        value = getattr(s, name)
        if is_query:
            if args:
                raise EsrRefusal(ESR_COMMAND_ERROR)
            if setting.kind == "index":
                return str(setting.values.index(value))
            return str(int(value)) if setting.kind == "int" else _fmt(value)
        if len(args) != 1:
            raise EsrRefusal(ESR_COMMAND_ERROR)
        try:
            number = float(args[0])
        except ValueError:
            raise EsrRefusal(ESR_COMMAND_ERROR) from None
        if setting.kind == "index":
            if number != int(number) or not 0 <= number < len(setting.values):
                raise EsrRefusal(ESR_EXECUTION_ERROR)
            self.state.update(**{name: setting.values[int(number)]})
            return None
        assert setting.bounds is not None
        if not setting.bounds[0] <= number <= setting.bounds[1] or (setting.kind == "int" and number != int(number)):
            raise EsrRefusal(ESR_EXECUTION_ERROR)
        self.state.update(**{name: int(number) if setting.kind == "int" else number})
        return None


def _output_table(model: str) -> dict[int, Callable[[LockInSettings], float]]:
    x: Callable[[LockInSettings], float] = lambda s: s.x_v
    y: Callable[[LockInSettings], float] = lambda s: s.y_v
    r: Callable[[LockInSettings], float] = lambda s: math.hypot(s.x_v, s.y_v)
    theta: Callable[[LockInSettings], float] = lambda s: math.degrees(math.atan2(s.y_v, s.x_v))
    if model == "SR830":  # SNAP?/OUTP? parameters 1..4 = X, Y, R, theta; 9 = reference frequency
        return {1: x, 2: y, 3: r, 4: theta, 9: lambda s: s.frequency_hz}
    return {0: x, 1: y, 2: r, 3: theta}  # SR860 counts from 0


def _fmt(value: float) -> str:
    return f"{value:.6e}"
