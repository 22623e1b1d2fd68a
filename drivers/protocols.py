"""What acquisition needs from the instruments, as ``typing.Protocol`` capabilities.

Contract: acquisition codes against :class:`StmController`, :class:`LockIn` and
:class:`Thermometer`, never a concrete driver, so the real drivers and test doubles are
interchangeable. Every quantity is SI (V, A, m, s, Hz, K); every method is an instrument round
trip that may raise :class:`~stslive.drivers.errors.InstrumentError`. The frozen dataclasses
here are the values those calls exchange; they do no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

# Nanonis channel names as the Signals Manager reports them; acquisition selects by these names.
BIAS_CHANNEL = "Bias (V)"
CURRENT_CHANNEL = "Current (A)"
LOCKIN_X_CHANNEL = "LI Demod 1 X (A)"
LOCKIN_Y_CHANNEL = "LI Demod 1 Y (A)"


@dataclass(frozen=True)
class ScanFrame:
    """The scan frame of the STM: the only region the tip may be moved to.

    Parameters
    ----------
    center_x_m, center_y_m
        Frame centre (m).
    width_m, height_m
        Frame size (m), both > 0.
    angle_deg
        Rotation of the frame (degrees, clockwise as Nanonis defines it).
    """

    center_x_m: float
    center_y_m: float
    width_m: float
    height_m: float
    angle_deg: float = 0.0

    def contains(self, x_m: float, y_m: float, *, tolerance_m: float = 1e-12) -> bool:
        """True if the point (m) lies inside the (rotated) frame, edges included.

        The point is rotated into the frame coordinates, ``u = R(angle) (p - c)``, then
        ``|u_x| <= w/2`` and ``|u_y| <= h/2`` within ``tolerance_m``.
        """
        a = math.radians(self.angle_deg)
        dx, dy = x_m - self.center_x_m, y_m - self.center_y_m
        # Nanonis angles are clockwise, hence the sign of the rotation.
        u = dx * math.cos(a) - dy * math.sin(a)
        v = dx * math.sin(a) + dy * math.cos(a)
        return abs(u) <= self.width_m / 2 + tolerance_m and abs(v) <= self.height_m / 2 + tolerance_m


@dataclass(frozen=True)
class SpectroscopyTiming:
    """Bias-spectroscopy timing (s) and Z handling, as Nanonis ``BiasSpectr.TimingSet`` takes it."""

    settling_s: float = 1e-3
    integration_s: float = 1e-3
    initial_settling_s: float = 0.0
    end_settling_s: float = 0.0
    z_averaging_s: float = 0.0
    z_offset_m: float = 0.0
    z_control_s: float = 0.0
    max_slew_rate_V_per_s: float = 1e3

    def sweep_time_s(self, points: int) -> float:
        """Nominal duration of one sweep (s): ``t = t_init + points (t_settle + t_int) + t_end``."""
        return self.initial_settling_s + points * (self.settling_s + self.integration_s) + self.end_settling_s


@dataclass(frozen=True)
class SpectroscopyConfig:
    """Everything a bias sweep needs.

    Parameters
    ----------
    channels
        Names of the recorded channels (e.g. ``("Current (A)", "LI Demod 1 X (A)")``); the
        sweep signal ``"Bias (V)"`` always comes first in the returned data.
    start_V, stop_V
        Sweep limits (V).
    points
        Number of points per sweep (>= 2).
    timing
        Settle/integration times.
    backward
        Also record the backward sweep.
    z_controller_hold
        Keep Z fixed (feedback open) during the sweep; the driver restores the previous
        feedback state afterwards.
    """

    channels: tuple[str, ...]
    start_V: float
    stop_V: float
    points: int
    timing: SpectroscopyTiming = field(default_factory=SpectroscopyTiming)
    backward: bool = False
    z_controller_hold: bool = True


@dataclass(frozen=True)
class SpectrumData:
    """One recorded bias sweep.

    Parameters
    ----------
    channels
        Channel names, in the row order of ``data``.
    data
        ``float32`` array shaped ``(channel, point)`` in the units the names state.
    parameters
        The fixed parameters and parameters Nanonis returns with the sweep (float32).
    """

    channels: tuple[str, ...]
    data: npt.NDArray[np.float32]
    parameters: npt.NDArray[np.float32]

    def channel(self, name: str) -> npt.NDArray[np.float32]:
        """The row of ``data`` recorded for ``name``; KeyError names the available channels."""
        try:
            return self.data[self.channels.index(name)]
        except ValueError:
            raise KeyError(f"channel {name!r} not recorded; recorded: {list(self.channels)}") from None


@dataclass(frozen=True)
class LockInReading:
    """One lock-in reading: X, Y, R in the input unit (V or A), theta in degrees."""

    x: float
    y: float
    r: float
    theta_deg: float


@dataclass(frozen=True)
class LockInStatus:
    """Decoded lock-in status bits; ``overloaded`` is true if any overload bit is set."""

    input_overload: bool = False
    output_overload: bool = False
    reserve_overload: bool = False
    unlocked: bool = False
    errors: tuple[str, ...] = ()

    @property
    def overloaded(self) -> bool:
        """True if the readings are not data (any input/reserve/output overload)."""
        return self.input_overload or self.output_overload or self.reserve_overload


@runtime_checkable
class StmController(Protocol):
    """The STM controller (Nanonis): bias, current, tip, feedback, spectroscopy, scan frame."""

    def identity(self) -> str:
        """A line naming the controller and where it is reached."""
        ...

    def get_bias(self) -> float:
        """Tip-sample bias (V)."""
        ...

    def set_bias(self, volts: float) -> None:
        """Set the bias (V); raises SafetyLimitError outside the configured bounds."""
        ...

    def get_current(self) -> float:
        """Tunnelling current (A)."""
        ...

    def get_tip_position(self) -> tuple[float, float]:
        """Tip x, y (m)."""
        ...

    def move_tip(self, x_m: float, y_m: float, *, wait: bool = True) -> None:
        """Move the tip to x, y (m); raises SafetyLimitError outside the scan frame."""
        ...

    def get_feedback(self) -> bool:
        """True if the Z controller (constant-current feedback) is on."""
        ...

    def set_feedback(self, on: bool) -> None:
        """Switch the Z controller on or off."""
        ...

    def get_setpoint(self) -> float:
        """Current set-point (A)."""
        ...

    def set_setpoint(self, amperes: float) -> None:
        """Set the current set-point (A); raises SafetyLimitError outside the bounds."""
        ...

    def get_z(self) -> float:
        """Z piezo position (m)."""
        ...

    def get_scan_frame(self) -> ScanFrame:
        """The scan frame (m)."""
        ...

    def set_scan_frame(self, frame: ScanFrame) -> None:
        """Set the scan frame (m)."""
        ...

    def configure_spectroscopy(self, config: SpectroscopyConfig) -> None:
        """Send channels, limits, points and timing of the bias sweep."""
        ...

    def get_spectroscopy_channels(self) -> tuple[str, ...]:
        """Names of the channels the bias sweep records."""
        ...

    def run_spectrum(self) -> SpectrumData:
        """Run one bias sweep at the current tip position and return the data.

        The feedback state from before the call is restored even when the sweep fails.
        """
        ...

    def read_signals(self, names: tuple[str, ...]) -> dict[str, float]:
        """Present values of the named signals (their own units)."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...


@runtime_checkable
class LockIn(Protocol):
    """A lock-in amplifier (SR830/SR860) providing the dI/dV modulation and demodulation."""

    def identity(self) -> str:
        """The instrument's identification line (``*IDN?``)."""
        ...

    def get_frequency(self) -> float:
        """Reference frequency (Hz)."""
        ...

    def set_frequency(self, hertz: float) -> None:
        """Set the reference frequency (Hz)."""
        ...

    def get_amplitude(self) -> float:
        """Sine output (modulation) amplitude (V rms)."""
        ...

    def set_amplitude(self, volts_rms: float) -> None:
        """Set the modulation amplitude (V rms)."""
        ...

    def get_time_constant(self) -> float:
        """Time constant (s)."""
        ...

    def set_time_constant(self, seconds: float) -> None:
        """Set the time constant (s); the driver picks the instrument's table value or raises."""
        ...

    def get_sensitivity(self) -> float:
        """Full-scale sensitivity (V or A)."""
        ...

    def set_sensitivity(self, full_scale: float) -> None:
        """Set the sensitivity (V or A); table value or raises."""
        ...

    def read(self) -> LockInReading:
        """X, Y, R, theta read in one snapshot."""
        ...

    def status(self) -> LockInStatus:
        """Decoded overload/error status."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...


@runtime_checkable
class Thermometer(Protocol):
    """A temperature controller/bridge (LakeShore 372)."""

    def identity(self) -> str:
        """The instrument's identification line (``*IDN?``)."""
        ...

    def temperature(self) -> float:
        """Sample temperature (K)."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...
