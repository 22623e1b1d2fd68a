"""The SR830 and SR860 command sets as the simulated lock-ins execute them, from the manuals.

Contract: :func:`execute` runs one command (``header``, query?, arguments) against a
:class:`LockInSettings` and returns the reply text, the changed settings, or raises
:class:`~stslive.mocks.line_server.EsrRefusal` with the ``*ESR?`` bit the real instrument sets:
bit 5 (CMD) for an unknown command or a wrong number of parameters, bit 4 (EXE) for a parameter
out of range. A refused command changes nothing and gets no reply. Ranges, rounding and indices
follow the SR830 manual (ch. 5: FREQ 1 mHz-102 kHz with harmonic x f <= 102 kHz, HARM clamped
to the largest allowed value, SLVL 4 mV-5 V in 2 mV steps, SENS 0-26 ascending, OFLT 0-19,
OUTP?/SNAP? parameters counted from 1, SNAP? 2 to 6 of them, OUTX) and the SR860 manual (ch. 4:
FREQ to 500 kHz, SLVL 1 nV-2 V, SCAL 0-27 descending, OFLT 0-21, OUTP?/SNAP? counted from 0 or
named, SNAP? 2 or 3 of them, no OUTX). Written independently of :mod:`stslive.drivers.sr830`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from stslive.mocks.line_server import ESR_COMMAND_ERROR, ESR_EXECUTION_ERROR, EsrRefusal

#: SR830 SENS i -> full scale (V), 2 nV .. 1 V ascending in 1-2-5 steps (27 entries).
SR830_SENS = tuple(m * 10.0**e for e in range(-9, 1) for m in (2, 5, 10))[:27]
#: SR860 SCAL i -> full scale (V), 1 V .. 1 nV descending (28 entries).
SR860_SCAL = tuple(m * 10.0**e for e in range(0, -10, -1) for m in (1, 0.5, 0.2))[:28]
#: SR830 OFLT 0-19: 10 us .. 30 ks; the SR860 starts two steps lower (1 us, 3 us), 22 entries.
SR830_OFLT = tuple(m * 10.0**e for e in range(-5, 5) for m in (1, 3))
SR860_OFLT = (1e-6, 3e-6, *SR830_OFLT)

LIAS_INPUT_OVERLOAD = 1 << 0  # SR830 LIAS? bit 0: input or amplifier overload
LIAS_OUTPUT_OVERLOAD = 1 << 2  # bit 2: output overload
CUROVLD_CH1_OUTPUT = 1 << 0  # SR860 CUROVLDSTAT? bit 0: CH1 output scale
CUROVLD_INPUT = 1 << 4  # bit 4: input range

#: SR860 OUTP?/SNAP? parameters by index (0-16); a name or its leading letters is accepted too.
_SR860_NAMES: tuple[str, ...] = ("X", "Y", "R", "THETA", "IN1", "IN2", "IN3", "IN4", "XNOISE", "YNOISE")
_SR860_NAMES += ("OUT1", "OUT2", "PHASE", "SAMP", "LEVEL", "FINT", "FEXT")


@dataclass(frozen=True)
class LockInSettings:
    """A consistent copy of the lock-in state (SI units) for the lab to read.

    ``bias_divider`` is the attenuation between the sine output and the tip bias (a 1:1000
    divider is usual), so the modulation the junction sees is ``amplitude_v / bias_divider``
    (V rms). ``outx`` is the SR830's output interface (0 RS232, 1 GPIB).
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
    outx: int = 1

    @property
    def modulation_at_bias_v_rms(self) -> float:
        """Bias modulation at the junction (V rms) = sine output / divider."""
        return self.amplitude_v / self.bias_divider

    @property
    def max_detection_hz(self) -> float:
        """Highest harmonic x frequency (Hz) of the model."""
        return 102e3 if self.model == "SR830" else 500e3


def _number(args: list[str], count: int = 1) -> list[float]:
    if len(args) != count:
        raise EsrRefusal(ESR_COMMAND_ERROR)
    try:
        return [float(a) for a in args]
    except ValueError:
        raise EsrRefusal(ESR_COMMAND_ERROR) from None


def _index(args: list[str], size: int) -> int:
    (value,) = _number(args)
    if value != int(value) or not 0 <= value < size:
        raise EsrRefusal(ESR_EXECUTION_ERROR)
    return int(value)


def _in(value: float, low: float, high: float) -> float:
    if not low <= value <= high:
        raise EsrRefusal(ESR_EXECUTION_ERROR)
    return value


def _fmt(value: float) -> str:
    return f"{value:.6g}" if value == 0 or 1e-4 <= abs(value) < 1e6 else f"{value:.6e}"


def _outputs(s: LockInSettings) -> dict[str, float]:
    return {
        "X": s.x_v,
        "Y": s.y_v,
        "R": math.hypot(s.x_v, s.y_v),
        "THETA": math.degrees(math.atan2(s.y_v, s.x_v)),
        "FREQ": s.frequency_hz,
        "SAMP": s.amplitude_v,
        "PHASE": s.phase_deg,
    }


def _parameter(model: str, arg: str, s: LockInSettings) -> float:
    """One OUTP?/SNAP? parameter: SR830 1 X, 2 Y, 3 R, 4 theta, 9 frequency; SR860 0.. or a name."""
    values = _outputs(s)
    if model == "SR830":
        table = {1: "X", 2: "Y", 3: "R", 4: "THETA", 9: "FREQ"}
        try:
            return values[table[int(arg)]]
        except (ValueError, KeyError):
            raise EsrRefusal(ESR_EXECUTION_ERROR) from None
    token = arg.strip().upper()
    if token.isdigit() and int(token) < len(_SR860_NAMES):
        token = _SR860_NAMES[int(token)]
    match = next((n for n in _SR860_NAMES if n.startswith(token) and token), None)
    if match is None:
        raise EsrRefusal(ESR_EXECUTION_ERROR)
    return values.get({"FINT": "FREQ", "FEXT": "FREQ"}.get(match, match), 0.0)


def _set_frequency(s: LockInSettings, value: float) -> LockInSettings:
    low, high = 1e-3, (102e3 if s.model == "SR830" else 500e3)
    _in(value, low, high)
    if value * s.harmonic > s.max_detection_hz:
        raise EsrRefusal(ESR_EXECUTION_ERROR)
    # "rounded to 5 digits or 0.0001 Hz, whichever is greater" (SR860: 6 digits or 0.1 mHz)
    digits = 5 if s.model == "SR830" else 6
    step = max(10.0 ** (math.floor(math.log10(value)) - digits + 1), 1e-4)
    return replace(s, frequency_hz=float(f"{round(value / step) * step:.{digits}g}"))


def _set_harmonic(s: LockInSettings, value: float) -> LockInSettings:
    top = 19999 if s.model == "SR830" else 99
    if value != int(value):
        raise EsrRefusal(ESR_EXECUTION_ERROR)
    _in(value, 1, top)
    # "If i x f > 102 kHz the harmonic is set to the largest i with i x f <= 102 kHz": clamped
    return replace(s, harmonic=max(1, min(int(value), int(s.max_detection_hz // s.frequency_hz))))


def execute(s: LockInSettings, header: str, query: bool, args: list[str]) -> tuple[str | None, LockInSettings]:
    """Run one command; (reply or None, new settings). Raises EsrRefusal as the instrument refuses."""
    sr830 = s.model == "SR830"
    sens, oflt = (SR830_SENS, SR830_OFLT) if sr830 else (SR860_SCAL, SR860_OFLT)
    sens_header = "SENS" if sr830 else "SCAL"
    if header == "FREQ":
        return (_fmt(s.frequency_hz), s) if query and not args else (None, _set_frequency(s, *_number(args)))
    if header == "HARM":
        return (str(s.harmonic), s) if query and not args else (None, _set_harmonic(s, *_number(args)))
    if header == "SLVL":
        if query and not args:
            return _fmt(s.amplitude_v), s
        (value,) = _number(args)
        if sr830:
            return None, replace(s, amplitude_v=round(_in(value, 0.004, 5.0) / 0.002) * 0.002)
        return None, replace(s, amplitude_v=round(_in(value, 1e-9, 2.0), 9))
    if header == "PHAS":
        if query and not args:
            return _fmt(s.phase_deg), s
        (value,) = _number(args)
        limit = (-360.0, 729.99) if sr830 else (-360000.0, 360000.0)
        wrapped = (_in(value, *limit) + 180.0) % 360.0 - 180.0
        return None, replace(s, phase_deg=round(wrapped, 2) if sr830 else wrapped)
    if header in (sens_header, "OFLT"):
        table = sens if header == sens_header else oflt
        field = "sensitivity_v" if header == sens_header else "time_constant_s"
        if query and not args:
            return str(_nearest(table, getattr(s, field))), s
        value = table[_index(args, len(table))]
        if header == sens_header:
            return None, replace(s, sensitivity_v=value)
        return None, replace(s, time_constant_s=value)
    if header == "OUTX" and sr830:
        if query and not args:
            return str(s.outx), s
        return None, replace(s, outx=_index(args, 2))
    if header == "OUTP" and query:
        if len(args) != 1:
            raise EsrRefusal(ESR_COMMAND_ERROR)
        return _fmt(_parameter(s.model, args[0], s)), s
    if header == "SNAP" and query:
        if not 2 <= len(args) <= (6 if sr830 else 3):
            raise EsrRefusal(ESR_COMMAND_ERROR)
        return ",".join(_fmt(_parameter(s.model, a, s)) for a in args), s
    raise EsrRefusal(ESR_COMMAND_ERROR)


def _nearest(table: tuple[float, ...], value: float) -> int:
    return min(range(len(table)), key=lambda i: abs(math.log(table[i] / value)))


def initial(model: str, **values: Any) -> LockInSettings:
    """Power-on settings of a model (SR830 or SR860), with ``values`` changed."""
    if model not in ("SR830", "SR860"):
        raise ValueError(f"model must be 'SR830' or 'SR860', got {model!r}")
    return LockInSettings(model=model, **values)
