"""A simulated SR830 (or SR860) lock-in on a TCP socket, as seen behind a GPIB-Ethernet bridge.

The real driver reaches it through pyvisa-py (``TCPIP::127.0.0.1::PORT::SOCKET``) and has no
code path of its own for it. Lines are ``\\n`` terminated; several commands may share a line
separated by ``;`` as on the real instrument. Their replies follow the manuals: the SR830 answers
each query of such a line on its own terminated line (SR830 manual p. 5-2), the SR860 answers
them in one line separated by ``;`` (SR860 manual ch. 4). The replies to one line are sent in
one write with ``TCP_NODELAY`` set. Like the real SR830, a query the instrument cannot execute gets *no* reply
and sets a bit of the standard event status register (``*ESR?`` bit 4 execution error, bit 5
command error); the driver checks ``*ESR?`` after every set.

State lives in a :class:`LockInState` that the mock lab shares: the lab writes the demodulated
signal (``set_signal``) and reads the modulation amplitude and time constant to broaden the
simulated spectra; the overload flag may be set by the lab or by a ``lockin_overload`` fault.

Faults (``FaultPlan.on_command("sr830", header)``, header such as ``"OUTP"`` or ``"*IDN"``):
``delay`` (reply late by ``delay_s``), ``no_reply`` (command dropped), ``connection_drop`` (the
socket is closed), ``error_reply`` (execution-error bit set, no reply, command not executed).

Benchmark (not a test): ``python -m stslive.mocks.sr830_server`` prints p50/p99 round trips of
driver calls through pyvisa-py on loopback (measured on the 2-core dev VM under load ~3:
``FREQ?`` ~80-150 us p50, ``SNAP?`` ~95 us p50; under load ~7, ``status()`` as one compound
line 141 us p50 against 256 us for its three registers queried one by one).
"""

from __future__ import annotations

import abc
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from stslive.drivers.scpi import Setting
from stslive.drivers.sr830 import (
    CUROVLD_CH1_OUTPUT,
    CUROVLD_INPUT,
    LIAS_INPUT_OVERLOAD,
    LIAS_OUTPUT_OVERLOAD,
    MODELS,
)
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.tcp import TcpServerBase

log = logging.getLogger(__name__)

ESR_EXECUTION_ERROR = 1 << 4
ESR_COMMAND_ERROR = 1 << 5


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


S = TypeVar("S")


class InstrumentState(Generic[S]):
    """Thread-safe holder of a text instrument's frozen settings and its ``*ESR?`` register.

    The server threads and the mock lab read and change the settings concurrently; holding one
    frozen dataclass swapped under a lock gives every reader a consistent copy without copying.

    Parameters
    ----------
    settings
        The initial frozen settings (a dataclass instance).
    """

    def __init__(self, settings: S) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._esr = 0

    def snapshot(self) -> S:
        """The present settings, as one consistent frozen copy."""
        with self._lock:
            return self._settings

    def update(self, **changes: Any) -> S:
        """Change fields of the settings atomically; returns the new snapshot."""
        with self._lock:
            self._settings = replace(self._settings, **changes)  # type: ignore[type-var]
            return self._settings

    def flag_esr(self, bits: int) -> None:
        """Set standard-event status bits (command/execution error)."""
        with self._lock:
            self._esr |= bits

    def take_esr(self) -> int:
        """Read and clear ``*ESR?``, as the instrument does."""
        with self._lock:
            esr, self._esr = self._esr, 0
            return esr


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


# -- a threaded line server shared by the text-protocol mocks ----------------------------------
_HEADER = re.compile(r"^\s*(\*?[A-Za-z]+)(\?)?\s*(.*?)\s*$")


def split_command(command: str) -> tuple[str, bool, list[str]]:
    """``"OUTP? 1"`` -> (``"OUTP"``, True, [``"1"``]); header upper-cased, arguments stripped."""
    match = _HEADER.match(command)
    if match is None:
        return command.strip().upper(), False, []
    header, query, rest = match.groups()
    args = [a.strip() for a in rest.split(",")] if rest else []
    return header.upper(), query is not None, args


class CommandRefused(Exception):
    """Raised by a handler when the simulated instrument would refuse a command."""

    def __init__(self, esr_bits: int) -> None:
        super().__init__(esr_bits)
        self.esr_bits = esr_bits


class LineServer(TcpServerBase):
    """Threaded TCP server for ``\\n``-terminated text instruments, with fault injection.

    Subclasses implement :meth:`execute` (one command -> reply line or None) and
    :meth:`refuse` (what the instrument does with a refused command).

    Parameters
    ----------
    instrument
        Name used for fault lookup (``"sr830"``, ``"ls372"``).
    host, port
        Where to listen; port 0 picks a free port (see :attr:`address`).
    faults
        The fault plan; ``None`` for a fault-free instrument.
    reply_termination
        Appended to every reply.
    """

    def __init__(
        self,
        instrument: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        reply_termination: str = "\n",
    ) -> None:
        super().__init__(instrument, host=host, port=port)
        self.faults = faults
        self.reply_termination = reply_termination

    # -- subclass interface ----------------------------------------------------------------
    @abc.abstractmethod
    def execute(self, header: str, is_query: bool, args: list[str]) -> str | None:
        """Run one command; return the reply line for a query. Raise CommandRefused to refuse."""

    def refuse(self, esr_bits: int) -> None:
        """Record a refused command in the instrument's status (default: nothing)."""

    def split(self, line: str) -> list[str]:
        """Commands on one received line (``;``-separated by default)."""
        return [c for c in line.split(";") if c.strip()]

    def reply_lines(self, replies: list[str]) -> list[str]:
        """The reply lines sent for the query replies of one received line, in order.

        Default (SR830 manual p. 5-2): "If multiple queries are sent on one command line ...
        the answers will be returned individually, each with a terminator."
        """
        return replies

    # -- per connection (TcpServerBase.serve) ---------------------------------------------
    def serve(self, conn: socket.socket) -> None:
        """Read ``\\n``-terminated lines and run their commands until the peer closes."""
        buffer = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode("ascii", errors="replace").strip("\r ")
                replies: list[str] = []
                for command in self.split(line):
                    keep_open, reply = self._serve_command(command)
                    if not keep_open:
                        return
                    if reply is not None:
                        replies.append(reply)
                if replies:  # all reply lines of one command line in one write
                    conn.sendall("".join(r + self.reply_termination for r in self.reply_lines(replies)).encode("ascii"))

    def _serve_command(self, command: str) -> tuple[bool, str | None]:
        """Handle one command: (False, None) when the connection is to be closed, else the reply."""
        header, is_query, args = split_command(command)
        fault = self.faults.on_command(self.instrument, header) if self.faults is not None else None
        if fault is not None:
            log.info("%s: fault %s on %r", self.instrument, fault.kind.value, command)
            if fault.kind is FaultKind.CONNECTION_DROP:
                return False, None
            if fault.kind is FaultKind.NO_REPLY:
                return True, None
            if fault.kind is FaultKind.ERROR_REPLY:
                self.refuse(ESR_EXECUTION_ERROR)
                return True, None
            if fault.kind is FaultKind.DELAY:
                time.sleep(float(fault.params["delay_s"]))
        try:
            return True, self.execute(header, is_query, args)
        except CommandRefused as refused:
            log.info("%s: refused %r", self.instrument, command)
            self.refuse(refused.esr_bits)
            return True, None


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
        As for :class:`LineServer`.
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
        super().__init__("sr830", host=host, port=port, faults=faults)
        self.state = state if state is not None else LockInState()
        self.serial = serial
        self.model = MODELS[self.state.snapshot().model]
        self._by_header = {s.query.rstrip("?"): s for s in self.model.settings.values()}
        self._outputs = _output_table(self.model.name)

    def refuse(self, esr_bits: int) -> None:
        self.state.flag_esr(esr_bits)

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
        if header == "*IDN" and is_query:
            return f"Stanford_Research_Systems,{s.model},{self.serial},ver1.07"
        if header == "*ESR" and is_query:
            return str(self.state.take_esr())
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
        raise CommandRefused(ESR_COMMAND_ERROR)

    def _output(self, s: LockInSettings, arg: str) -> float:
        try:
            return self._outputs[int(arg)](s)
        except (ValueError, KeyError):
            raise CommandRefused(ESR_EXECUTION_ERROR) from None

    def _setting(self, setting: Setting, s: LockInSettings, is_query: bool, args: list[str]) -> str | None:
        name = _FIELDS[setting.name]
        value = getattr(s, name)
        if is_query:
            if args:
                raise CommandRefused(ESR_COMMAND_ERROR)
            if setting.kind == "index":
                return str(setting.values.index(value))
            return str(int(value)) if setting.kind == "int" else _fmt(value)
        if len(args) != 1:
            raise CommandRefused(ESR_COMMAND_ERROR)
        try:
            number = float(args[0])
        except ValueError:
            raise CommandRefused(ESR_COMMAND_ERROR) from None
        if setting.kind == "index":
            if number != int(number) or not 0 <= number < len(setting.values):
                raise CommandRefused(ESR_EXECUTION_ERROR)
            self.state.update(**{name: setting.values[int(number)]})
            return None
        assert setting.bounds is not None
        if not setting.bounds[0] <= number <= setting.bounds[1] or (setting.kind == "int" and number != int(number)):
            raise CommandRefused(ESR_EXECUTION_ERROR)
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


def benchmark(*, queries: int = 3000, warmup: int = 200) -> dict[str, tuple[float, float]]:
    """Round trip (p50, p99 in microseconds) of driver calls against this server on loopback.

    The real driver through pyvisa-py (``@py``), one fresh server; numbers depend on machine
    load. Run ``python -m stslive.mocks.sr830_server``.
    """
    import statistics

    from stslive.drivers.sr830 import open_lockin
    from stslive.drivers.visa import VisaSettings

    results: dict[str, tuple[float, float]] = {}
    with SR830Server() as server, open_lockin(VisaSettings(server.resource, timeout_s=2.0)) as lockin:
        calls: dict[str, Callable[[], object]] = {
            "FREQ? (get_frequency)": lockin.get_frequency,
            "SNAP? 1,2,3,4 (read)": lockin.read,
            "OFLT 5 + *ESR? (set_time_constant)": lambda: lockin.set_time_constant(3e-3),
            "LIAS?;ERRS?;*ESR? (status, one compound line)": lockin.status,
        }
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            samples = []
            for _ in range(queries):
                t0 = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t0) * 1e6)
            cuts = statistics.quantiles(samples, n=100)
            results[name] = (cuts[49], cuts[98])
    return results


if __name__ == "__main__":
    for label, (p50, p99) in benchmark().items():
        print(f"{label}: p50 {p50:.0f} us, p99 {p99:.0f} us")
