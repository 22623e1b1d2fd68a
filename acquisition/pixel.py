"""The per-pixel procedure: move, settle, set-point, sweep, read, temperatures, feedback back on.

Contract: :meth:`PixelProcedure.measure` does, for one pixel, through the instrument Protocols
(so the real drivers and the simulated lab are interchangeable): configure the set when it
changed (sweep, lock-in, feedback on, bias, set-point: values persist in the controller, so
they are not re-sent per pixel), move the tip with the feedback on, wait ``move_settle_s``,
read z, sweep, read the lock-in status and the temperature. On any failure the feedback is
switched back on before the error propagates. ``during_sweep`` work runs on this thread between
sending the sweep request and reading its reply when the controller offers that
(:class:`SweepsBeside`), else before the sweep. With an external lock-in (:class:`LockInWiring`)
a set's ``lockin_amplitude_Vrms`` is the modulation at the junction: the lock-in's sine output is
that times the bias divider, and the controller input carrying the lock-in's X output is
archived as dI/dV in A/V (``"Input 2 (V)"`` becomes ``"Input 2 (A/V)"``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stslive.acquisition.config import didv_channel_name
from stslive.acquisition.formats.runmodel import PixelMeta, SetpointSet
from stslive.acquisition.plans import PlanPoint
from stslive.drivers.errors import (
    ControllerError,
    InstrumentConnectionError,
    InstrumentError,
    InstrumentReplyError,
    InstrumentTimeout,
    SafetyLimitError,
)
from stslive.drivers.protocols import (
    LockIn,
    LockInStatus,
    SpectroscopyConfig,
    SpectroscopyTiming,
    SpectrumData,
    StmController,
    Thermometer,
)

log = logging.getLogger(__name__)

#: Name of the archive channel holding the measured sweep signal (row 0 of every spectrum).
BIAS_ROW = "Bias (V)"

#: Bits of the recorded ``lockin_status`` (PixelMeta), decoded from the LockIn protocol's status.
LOCKIN_STATUS_BITS = {"input_overload": 1, "reserve_overload": 2, "output_overload": 4, "unlocked": 8, "errors": 16}

#: archive failure code per error class (first match wins; 9 = any other instrument error).
FAILURE_CODES: tuple[tuple[type[InstrumentError], int], ...] = (
    (InstrumentTimeout, 1),
    (InstrumentConnectionError, 2),
    (SafetyLimitError, 5),
    (ControllerError, 3),
    (InstrumentReplyError, 4),
)


def failure_code(exc: InstrumentError) -> int:
    """Archive failure code of an instrument error (see :data:`FAILURE_CODES`, default 9)."""
    return next((code for cls, code in FAILURE_CODES if isinstance(exc, cls)), 9)


def status_bits(status: LockInStatus) -> int:
    """The :class:`LockInStatus` as the bit field stored in ``PixelMeta.lockin_status``."""
    return sum(bit for name, bit in LOCKIN_STATUS_BITS.items() if getattr(status, name))


@runtime_checkable
class SweepsBeside(Protocol):
    """A controller that can run work on the calling thread while it sweeps."""

    def run_spectrum_beside(self, work: Callable[[], None]) -> tuple[SpectrumData, bool]:
        """The sweep with ``work()`` run meanwhile; (spectrum, True if ``work`` ended before the reply)."""
        ...


@dataclass(frozen=True)
class LockInWiring:
    """How an external lock-in is wired (SI units; the ``[instruments.lockin]`` keys).

    Parameters
    ----------
    output_channel
        Controller input carrying the lock-in's X output, e.g. ``"Input 2 (V)"``; ``""``: not wired.
    output_full_scale_V
        Voltage at that output for a full-scale X (10 V on the SR830/SR860).
    preamp_gain_V_per_A
        Current amplifier gain between the junction and the lock-in input (V/A).
    bias_divider
        Sine output / modulation at the junction (1000 for a 1:1000 divider).
    harmonic
        Detection harmonic sent to the lock-in.
    """

    output_channel: str = ""
    output_full_scale_V: float = 10.0
    preamp_gain_V_per_A: float = 1e9
    bias_divider: float = 1.0
    harmonic: int = 1

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> LockInWiring:
        """From a checked ``[instruments.lockin]`` table."""
        return cls(
            str(table["output_channel"]),
            float(table["output_full_scale_V"]),
            float(table["preamp_gain_V_per_A"]),
            float(table["bias_divider"]),
            int(table["harmonic"]),
        )

    @property
    def archived_channel(self) -> str:
        """The archive name of the wired input: its unit replaced by A/V (``"Input 2 (A/V)"``)."""
        return didv_channel_name(self.output_channel)

    def archive_name(self, channel: str) -> str:
        """A recorded channel's archive name (only the wired input changes)."""
        return self.archived_channel if self.output_channel and channel == self.output_channel else channel

    def sine_output_Vrms(self, junction_Vrms: float) -> float:
        """The lock-in sine output (V rms) that gives ``junction_Vrms`` at the junction."""
        return junction_Vrms * self.bias_divider

    def didv_per_volt(self, sp: SetpointSet) -> float:
        """dI/dV (A/V) per volt at the wired input under set ``sp``.

        ``V_in = full_scale x X / sensitivity`` and ``X = gain x I_ac``, so
        ``dI/dV = I_ac / V_mod = V_in x sensitivity / (full_scale x gain x V_mod)``, all rms.
        """
        return sp.lockin_sensitivity_V / (
            self.output_full_scale_V * self.preamp_gain_V_per_A * sp.lockin_amplitude_Vrms
        )

    def metadata(self, sets: Sequence[SetpointSet]) -> dict[str, Any]:
        """What the start document and the archive record of the wiring and the conversion per set."""
        return {
            "source_channel": self.output_channel,
            "archived_channel": self.archived_channel,
            "output_full_scale_V": self.output_full_scale_V,
            "preamp_gain_V_per_A": self.preamp_gain_V_per_A,
            "bias_divider": self.bias_divider,
            "harmonic": self.harmonic,
            "modulation": "lockin_amplitude_Vrms of each set is the modulation at the junction (V rms)",
            "didv_A_per_V_per_input_V": {
                str(sp.id): self.didv_per_volt(sp) for sp in sets if sp.lockin_amplitude_Vrms > 0
            },
        }


@dataclass(frozen=True)
class Instruments:
    """The run's instruments; the lock-in and the thermometer are optional; ``wiring`` says how
    an external lock-in reaches the controller and the junction."""

    controller: StmController
    lockin: LockIn | None = None
    thermometer: Thermometer | None = None
    wiring: LockInWiring = LockInWiring()

    def identities(self) -> dict[str, str]:
        """Instrument name -> identity line (one round trip each)."""
        out = {"nanonis": self.controller.identity()}
        if self.lockin is not None:
            out["lockin"] = self.lockin.identity()
        if self.thermometer is not None:
            out["thermometer"] = self.thermometer.identity()
        return out

    def temperature(self) -> float:
        """Sample temperature (K), NaN without a thermometer."""
        return math.nan if self.thermometer is None else float(self.thermometer.temperature())

    def close(self) -> None:
        for inst in (self.thermometer, self.lockin, self.controller):
            if inst is not None:
                inst.close()


@dataclass(frozen=True)
class MeasuredPixel:
    """One measured pixel: spectra ``(channel, point)`` float32, metadata, time in the sweep call (s).

    ``sweep_call_s`` is the time of the controller's sweep call, less the work done beside it
    unless that work provably ended while the controller was still sweeping.
    """

    spectra: np.ndarray
    meta: PixelMeta
    sweep_call_s: float


class PixelProcedure:
    """Measures single pixels with the run's instruments.

    Parameters
    ----------
    instruments
        Controller, optional lock-in and thermometer.
    channels
        Controller signals recorded by the sweep; spectra rows are :data:`BIAS_ROW` then these.
    move_settle_s
        Wait after each tip move (s).
    sleep, clock
        Injectable for tests (``time.sleep``, ``time.time``).
    """

    def __init__(
        self,
        instruments: Instruments,
        *,
        channels: Sequence[str],
        move_settle_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.instruments = instruments
        self.channels = tuple(channels)
        self.wiring = instruments.wiring
        self.channel_names = (BIAS_ROW, *(self.wiring.archive_name(c) for c in self.channels))
        self.move_settle_s = move_settle_s
        self._sleep, self._clock = sleep, clock
        self._configured: int | None = None

    def invalidate(self) -> None:
        """Forget the configured set (after a reconnect the instrument may have been reset)."""
        self._configured = None

    def configure(self, sp: SetpointSet) -> None:
        """Send the set's sweep, lock-in and set-point to the instruments (feedback on)."""
        ctl, lockin = self.instruments.controller, self.instruments.lockin
        ctl.configure_spectroscopy(
            SpectroscopyConfig(
                channels=self.channels,
                start_V=sp.sweep_start_V,
                stop_V=sp.sweep_end_V,
                points=sp.n_points,
                timing=SpectroscopyTiming(
                    settling_s=0.0, integration_s=sp.integration_s, initial_settling_s=sp.settle_s
                ),
                z_controller_hold=sp.feedback_hold,
            )
        )
        if lockin is not None and sp.lockin_amplitude_Vrms > 0:
            self._tune(lockin, sp.lockin_frequency_Hz)
            lockin.set_amplitude(self.wiring.sine_output_Vrms(sp.lockin_amplitude_Vrms))
            lockin.set_time_constant(sp.lockin_time_constant_s)
            lockin.set_sensitivity(sp.lockin_sensitivity_V)
            lockin.status()  # read-and-clear, so the first pixel's status is its own
        ctl.set_feedback(True)
        ctl.set_bias(sp.bias_setpoint_V)
        ctl.set_setpoint(sp.current_setpoint_A)
        self._configured = sp.id

    def _tune(self, lockin: LockIn, frequency_Hz: float) -> None:
        """Frequency and harmonic, in the order that keeps their product in range at every step."""
        set_harmonic = getattr(lockin, "set_harmonic", None)
        if set_harmonic is None:
            lockin.set_frequency(frequency_Hz)
            return
        try:
            lockin.set_frequency(frequency_Hz)
        except SafetyLimitError:  # the new frequency times the present harmonic is too high
            set_harmonic(self.wiring.harmonic)
            lockin.set_frequency(frequency_Hz)
        else:
            set_harmonic(self.wiring.harmonic)

    def stop_sweep(self) -> bool:
        """Stop the sweep in progress (abort); callable from another thread. False if the
        controller cannot, or the module did not report idle in time."""
        stop = getattr(self.instruments.controller, "stop_sweep", None)
        if stop is None:
            return False
        try:
            return bool(stop())
        except InstrumentError as exc:
            log.error("the sweep could not be stopped: %s", exc)
            return False

    def measure(
        self,
        point: PlanPoint,
        sp: SetpointSet,
        *,
        temperature_before_K: float,
        during_sweep: Callable[[], None] | None = None,
    ) -> MeasuredPixel:
        """Measure one pixel with set ``sp``; InstrumentError on failure (feedback back on).

        ``during_sweep`` (optional) runs once while the controller sweeps (see the module notes);
        it is not called if the pixel fails before the sweep request was sent. An error it raises
        propagates once the sweep has ended.
        """
        ctl = self.instruments.controller
        t_start = self._clock()
        try:
            if self._configured != sp.id:
                self.configure(sp)
            ctl.move_tip(point.x_m, point.y_m, wait=True)
            if self.move_settle_s > 0:
                self._sleep(self.move_settle_s)
            z = ctl.get_z()
            spectrum, t_sweep_start, t_sweep_end, sweep_call_s = self._sweep(during_sweep)
            status = self.instruments.lockin.status() if self.instruments.lockin is not None else LockInStatus()
            temperature_after = self.instruments.temperature()
        except InstrumentError:
            self._restore_feedback()
            raise
        spectra = self._rows(spectrum.data, spectrum.channels, sp.n_points)
        if self.wiring.output_channel in self.channels:
            spectra[1 + self.channels.index(self.wiring.output_channel)] *= np.float32(self.wiring.didv_per_volt(sp))
        meta = PixelMeta(
            x_m=point.x_m,
            y_m=point.y_m,
            setpoint_set_id=sp.id,
            t_start=t_start,
            t_sweep_start=t_sweep_start,
            t_sweep_end=t_sweep_end,
            t_end=self._clock(),
            temperature_before_K=temperature_before_K,
            temperature_after_K=temperature_after,
            z_m=z,
            lockin_status=status_bits(status),
            lockin_overload=status.overloaded,
        )
        return MeasuredPixel(spectra, meta, sweep_call_s)

    def _sweep(self, during_sweep: Callable[[], None] | None) -> tuple[SpectrumData, float, float, float]:
        """(spectrum, call start, call end, sweep_call_s), with ``during_sweep`` run meanwhile."""
        ctl = self.instruments.controller
        if during_sweep is not None and not isinstance(ctl, SweepsBeside):
            during_sweep()  # no overlap possible: the work goes first
            during_sweep = None
        if during_sweep is None or not isinstance(ctl, SweepsBeside):
            t0 = self._clock()
            spectrum = ctl.run_spectrum()
            t1 = self._clock()
            return spectrum, t0, t1, t1 - t0
        work_s = 0.0

        def timed_work() -> None:
            nonlocal work_s
            w0 = self._clock()
            try:
                during_sweep()
            finally:
                work_s = self._clock() - w0

        t0 = self._clock()
        spectrum, hidden = ctl.run_spectrum_beside(timed_work)
        t1 = self._clock()
        # work that may have outlasted the sweep counts as overhead, all of it (an upper bound)
        return spectrum, t0, t1, (t1 - t0) if hidden else (t1 - t0) - work_s

    def _rows(self, data: np.ndarray, names: Sequence[str], n_points: int) -> np.ndarray:
        if data.ndim != 2 or data.shape[1] != n_points:
            raise InstrumentReplyError(
                "nanonis",
                f"sweep returned data of shape {data.shape}, expected "
                f"(channels, {n_points}); check the sweep configuration",
            )
        names = list(names)
        missing = [c for c in self.channels if c not in names]
        if missing:
            raise InstrumentReplyError(
                "nanonis",
                f"sweep did not record {missing} (recorded {names}); "
                "check run.channels against the controller's signals",
            )
        # Row 0 is the sweep signal itself whatever the controller calls it ("Bias calc (V)").
        rows = [0, *(names.index(c) for c in self.channels)]
        return np.ascontiguousarray(data[rows], dtype=np.float32)

    def _restore_feedback(self) -> None:
        try:
            self.instruments.controller.set_feedback(True)
        except InstrumentError as exc:  # the original error matters more; this one is logged
            log.error("feedback could not be switched back on after a failed pixel: %s", exc)
        self._configured = None
