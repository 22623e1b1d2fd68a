"""The simulated lab: one thread-safe state behind every simulated instrument.

Contract: :class:`MockLab` holds the STM controller's state, the lock-in and thermometer states,
the film that produces spectra at the tip, the speed factor and the fault plan. The film is
centred on the origin: pixel ``(iy, ix)`` sits at ``x = (ix - (nx - 1)/2) pixel_m``,
``y = (iy - (ny - 1)/2) pixel_m``; the tip reads the nearest pixel, clipped at the edge. A sweep
takes the Nanonis time ``t_init + points (t_settle + t_int) + t_end`` divided by ``speed`` (0 or
inf: no waiting); moves are instantaneous. With the feedback on, spectra are normalised to
``I(V_set) = I_set`` of the last regulated state. Faults: ``feedback_fail`` scales the reached
current, ``tip_change`` changes the tip, ``temperature_excursion`` warms the sample.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import ConfigError, ControllerError
from stslive.drivers.protocols import (
    CURRENT_CHANNEL,
    LOCKIN_X_CHANNEL,
    LOCKIN_Y_CHANNEL,
    ScanFrame,
    SpectroscopyTiming,
)
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.film import Film, FilmParams, FilmSpectra, TipState, make_film
from stslive.mocks.ls372_server import ThermometerState
from stslive.mocks.sr830_server import LockInSettings, LockInState

# The sweep signal as Nanonis names it in the data a sweep returns.
SWEEP_CHANNEL = "Bias calc (V)"
#: The controller input wired to the external lock-in's X output (CH1 OUTPUT, +-10 V full scale).
EXTERNAL_LOCKIN_CHANNEL = "Input 2 (V)"
#: Voltage at the lock-in's CH1 OUTPUT for a full-scale X (SR830/SR860 rear panel, V).
LOCKIN_OUTPUT_FULL_SCALE_V = 10.0
#: The controller's bias output spans +-10 V (the analog outputs of a Nanonis real-time controller).
#: A bias or sweep limit outside it (or not a number) is refused with an error here: the hardware
#: cannot apply it, and the film model cannot simulate it (a 1e30 V bias asked for a grid of 1e34
#: samples).
BIAS_OUTPUT_RANGE_V = 10.0
#: Real-time cycle of the controller (20 kHz): sweep times are whole numbers of it.
RT_PERIOD_S = 50e-6

# The signals the simulated controller knows (Signals.NamesGet); the simulation uses the same
# list for the 24 Signals-Manager slots that BiasSpectr.ChsSet indexes (a real controller maps
# slots to signals with Signals.InSlotsGet, which nanonis-spm 1.0.9 does not expose).
SIGNAL_NAMES: tuple[str, ...] = (
    CURRENT_CHANNEL,
    "Bias (V)",
    "Z (m)",
    "X (m)",
    "Y (m)",
    LOCKIN_X_CHANNEL,
    LOCKIN_Y_CHANNEL,
    EXTERNAL_LOCKIN_CHANNEL,
)
#: The Signals-Manager slots of a controller older than R11798 (``BiasSpectr.ChsSet`` indexes
#: slots there): slot i holds signal ``SLOT_SIGNALS[i]``, deliberately not the identity so that a
#: client mixing slots and signal indexes records the wrong channels.
SLOT_SIGNALS: tuple[int, ...] = (1, 0, 2, 5, 6, 7, 3, 4)

FIXED_PARAMETERS = ("Sweep Start", "Sweep End")
PARAMETERS = (
    "X (m)",
    "Y (m)",
    "Z (m)",
    "Z offset (m)",
    "Settling time (s)",
    "Integration time (s)",
    "Z-Ctrl hold",
    "Final Z (m)",
)

# Tunnelling decay constant (1/m) for a ~4 eV barrier, I ~ exp(-2 kappa z): sets Z(I_set).
KAPPA_PER_M = 1.0e10
_Z_REFERENCE_CURRENT_A = 1e-9
# Gain of the current amplifier between the junction and the external lock-in input (V/A),
# a usual 1e9 V/A STM preamplifier.
PREAMP_GAIN_V_PER_A = 1e9


@dataclass
class StmState:
    """The simulated Nanonis controller's settings (SI units). Guarded by the lab lock."""

    x_m: float = 0.0
    y_m: float = 0.0
    bias_V: float = -0.010
    feedback_on: bool = True
    setpoint_A: float = 150e-12
    regulated_bias_V: float = -0.010
    regulated_setpoint_A: float = 150e-12
    frozen_z_m: float = 0.0
    frame: ScanFrame = field(default_factory=lambda: ScanFrame(0.0, 0.0, 1e-8, 1e-8))
    channel_slots: tuple[int, ...] = (0,)
    start_V: float = -0.04
    end_V: float = 0.04
    points: int = 1601
    sweeps: int = 1
    backward: bool = False
    z_offset_m: float = 0.0
    timing: SpectroscopyTiming = field(default_factory=SpectroscopyTiming)
    # Advanced properties of the bias spectroscopy module. Reset Bias starts Off: the bias then
    # stays where the sweep ended, and a Z controller switched on there regulates at that bias.
    reset_bias: bool = False
    z_controller_hold: bool = True
    record_final_z: bool = False
    lockin_run: bool = False
    sweeping: bool = False


@dataclass(frozen=True)
class Sweep:
    """What one ``BiasSpectr.Start`` returns."""

    index: int
    channels: tuple[str, ...]
    data: npt.NDArray[np.float32]
    parameters: npt.NDArray[np.float32]
    duration_s: float


def check_bias(volts: float, *, command: str) -> None:
    """ControllerError unless ``volts`` is a number within :data:`BIAS_OUTPUT_RANGE_V`."""
    if not abs(volts) <= BIAS_OUTPUT_RANGE_V:  # NaN fails too
        raise ControllerError(
            "nanonis", f"bias {volts!r} V outside the output range +-{BIAS_OUTPUT_RANGE_V:g} V", command=command
        )


class MockLab:
    """Shared state of the simulated lab.

    Parameters
    ----------
    film
        A ``stslive.mocks.film.Film`` (``make_film(FilmParams(...))``).
    speed
        Time scale: 1 = real time, 10 = ten times faster, 0 or ``inf`` = no waiting.
    faults
        Fault plan (empty by default).
    lockin, thermometer
        The lock-in / thermometer states of the SR830 and LakeShore simulations; created with
        their defaults when not given.
    seed
        Seed of the measurement-noise generator (the film's own seed fixes the sample).
    sleep
        Sleep function for the sweep time (injectable for tests); by default the sweep waits on
        the stop request of :meth:`stop_sweep`, so ``BiasSpectr.Stop`` ends it early.
    """

    def __init__(
        self,
        film: Film,
        *,
        speed: float = 1.0,
        faults: FaultPlan | None = None,
        lockin: LockInState | None = None,
        thermometer: ThermometerState | None = None,
        seed: int = 0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not (speed >= 0):
            raise ConfigError(f"speed = {speed!r} must be >= 0 (0 or inf: as fast as possible)")
        self.film = film
        self.speed = float(speed)
        self.faults = faults if faults is not None else FaultPlan()
        self.lockin = lockin if lockin is not None else _default_lockin_state(film)
        self.thermometer = thermometer if thermometer is not None else _default_thermometer_state(film, self.faults)
        self._sleep = sleep
        self._stop = threading.Event()
        self._rng = np.random.default_rng(seed)
        self.lock = threading.RLock()
        p = film.params
        self.ny, self.nx, self.pixel_m = int(p.ny), int(p.nx), float(p.pixel_m)
        self.stm = StmState(
            bias_V=float(p.v_set_V),
            setpoint_A=float(p.i_set_A),
            regulated_bias_V=float(p.v_set_V),
            regulated_setpoint_A=float(p.i_set_A),
            frame=ScanFrame(0.0, 0.0, self.nx * self.pixel_m, self.ny * self.pixel_m),
            start_V=float(p.bias_start_V),
            end_V=float(p.bias_end_V),
            points=int(p.n_points),
        )
        self.stm.frozen_z_m = self._regulated_z(0, 0)

    # -- construction helpers -----------------------------------------------------------------
    @classmethod
    def from_seed(cls, *, seed: int = 0, ny: int = 32, nx: int = 32, **kwargs: Any) -> MockLab:
        """A lab over a fresh film ``make_film(FilmParams(ny, nx, seed=seed))``."""
        return cls(make_film(FilmParams(ny=ny, nx=nx, seed=seed)), seed=seed, **kwargs)

    # -- geometry -----------------------------------------------------------------------------
    def pixel_of(self, x_m: float, y_m: float) -> tuple[int, int]:
        """Nearest film pixel ``(iy, ix)`` to the point (m), clipped to the film."""
        ix = round(x_m / self.pixel_m + (self.nx - 1) / 2)
        iy = round(y_m / self.pixel_m + (self.ny - 1) / 2)
        return min(max(iy, 0), self.ny - 1), min(max(ix, 0), self.nx - 1)

    def position_of(self, iy: int, ix: int) -> tuple[float, float]:
        """Tip x, y (m) of film pixel ``(iy, ix)``."""
        return (ix - (self.nx - 1) / 2) * self.pixel_m, (iy - (self.ny - 1) / 2) * self.pixel_m

    # -- conditions ---------------------------------------------------------------------------
    def temperature_K(self, *, spectrum: int | None = None) -> float:
        """Sample temperature (K): base plus any ``temperature_excursion`` fault for the spectrum."""
        spectrum = self.faults.spectrum if spectrum is None else spectrum
        t = self.thermometer.snapshot()
        base = float(t.base_k) + float(t.excursion_k)
        fault = self.faults.active(FaultKind.TEMPERATURE_EXCURSION, spectrum=spectrum)
        return base + (float(fault.params["kelvin"]) if fault else 0.0)

    def modulation_Vrms(self) -> float:
        """Bias modulation at the junction (V rms): lock-in sine output / bias divider."""
        return float(self.lockin.snapshot().modulation_at_bias_v_rms)

    def _feed_lockin(self, lockin_x_A: float) -> None:
        # The SR830 sees the current amplifier's output, so its X is in volts.
        self.lockin.set_signal(lockin_x_A * PREAMP_GAIN_V_PER_A, 0.0)

    def _reached_fraction(self, spectrum: int) -> float:
        fault = self.faults.active(FaultKind.FEEDBACK_FAIL, spectrum=spectrum)
        return float(fault.params["factor"]) if fault else 1.0

    def _tip(self, spectrum: int) -> TipState | None:
        fault = self.faults.active(FaultKind.TIP_CHANGE, spectrum=spectrum)
        if fault is None:
            return None
        return TipState(
            dos_factor=float(fault.params["factor"]), extra_slope_per_eV=float(fault.params["extra_slope_per_eV"])
        )

    def _regulated_z(self, iy: int, ix: int) -> float:
        # I = I0 exp(-2 kappa z)  =>  z = ln(I0 / I_set) / (2 kappa), on top of the topography.
        topo = float(np.asarray(self.film.topography_m)[iy, ix])
        return topo + math.log(_Z_REFERENCE_CURRENT_A / self.stm.regulated_setpoint_A) / (2 * KAPPA_PER_M)

    # -- STM operations (called by the Nanonis server) ----------------------------------------
    def set_bias(self, volts: float) -> None:
        """Apply a bias (V); with the feedback on, the tip re-regulates at it (ControllerError outside the range)."""
        check_bias(volts, command="Bias.Set")
        with self.lock:
            self.stm.bias_V = float(volts)
            if self.stm.feedback_on:
                self.stm.regulated_bias_V = self.stm.bias_V

    def set_setpoint(self, amperes: float) -> None:
        """Set the current set-point (A); must be > 0 (current feedback on |I|)."""
        if not amperes > 0:
            raise ControllerError("nanonis", f"set-point {amperes!r} A must be > 0", command="ZCtrl.SetpntSet")
        with self.lock:
            self.stm.setpoint_A = float(amperes)
            if self.stm.feedback_on:
                self.stm.regulated_setpoint_A = self.stm.setpoint_A

    def set_feedback(self, on: bool) -> None:
        """Switch the Z controller; switching on re-regulates at the present bias and set-point."""
        with self.lock:
            if on and not self.stm.feedback_on:
                self.stm.regulated_bias_V = self.stm.bias_V
                self.stm.regulated_setpoint_A = self.stm.setpoint_A
            if not on and self.stm.feedback_on:
                self.stm.frozen_z_m = self.z_m()
            self.stm.feedback_on = bool(on)

    def move_tip(self, x_m: float, y_m: float) -> None:
        """Move the tip (m); refused outside the scan frame, as the controller would."""
        with self.lock:
            if not self.stm.frame.contains(x_m, y_m):
                raise ControllerError(
                    "nanonis", f"target ({x_m:.4g}, {y_m:.4g}) m lies outside the scan frame", command="FolMe.XYPosSet"
                )
            self.stm.x_m, self.stm.y_m = float(x_m), float(y_m)

    def z_m(self) -> float:
        """Z (m): regulated height at the tip pixel, or the frozen height with the feedback off."""
        with self.lock:
            if not self.stm.feedback_on:
                return self.stm.frozen_z_m
            return self._regulated_z(*self.pixel_of(self.stm.x_m, self.stm.y_m))

    def point_values(self) -> tuple[float, float, float]:
        """Current (A), lock-in X and Y (A) at the present bias and tip position."""
        with self.lock:
            iy, ix = self.pixel_of(self.stm.x_m, self.stm.y_m)
            spectrum = self.faults.spectrum
            if self.stm.feedback_on and math.isclose(self.stm.bias_V, self.stm.regulated_bias_V):
                # Regulated exactly at this bias: the current is the set-point (unless failing).
                i = self.stm.setpoint_A * self._reached_fraction(spectrum)
                sign = math.copysign(1.0, self.stm.bias_V)
                current = sign * i
            else:
                current = float("nan")
            # the film integrates over a sweep of >= 2 points; the first is the present bias
            s = self._film_spectra(iy, ix, np.array([self.stm.bias_V, self.stm.bias_V + 1e-4]), spectrum)
        if math.isnan(current):
            current = float(s.current_A[..., 0])
        self._feed_lockin(float(s.lockin_x_A[..., 0]))
        # The film model has no quadrature response: Y is zero for an ideally phased lock-in.
        return current, float(s.lockin_x_A[..., 0]), 0.0

    def signal_values(self, indexes: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Values of signals by index into :data:`SIGNAL_NAMES`; ControllerError if out of range."""
        idx = np.asarray(indexes, dtype=int)
        bad = idx[(idx < 0) | (idx >= len(SIGNAL_NAMES))]
        if bad.size:
            raise ControllerError(
                "nanonis",
                f"signal index {int(bad[0])} out of range 0..{len(SIGNAL_NAMES) - 1}",
                command="Signals.ValsGet",
            )
        current, lix, liy = self.point_values()
        with self.lock:
            table = {
                CURRENT_CHANNEL: current,
                "Bias (V)": self.stm.bias_V,
                "Z (m)": self.z_m(),
                "X (m)": self.stm.x_m,
                "Y (m)": self.stm.y_m,
                LOCKIN_X_CHANNEL: lix,
                LOCKIN_Y_CHANNEL: liy,
                EXTERNAL_LOCKIN_CHANNEL: float(self.external_lockin_output_V(lix)),
            }
        return np.array([table[SIGNAL_NAMES[i]] for i in idx], dtype=np.float32)

    def set_channels(self, slots: npt.ArrayLike) -> None:
        """Select recorded channels by slot index; ControllerError if out of range."""
        slots_t = tuple(int(i) for i in np.asarray(slots).ravel())
        for i in slots_t:
            if not 0 <= i < len(SIGNAL_NAMES):
                raise ControllerError(
                    "nanonis", f"channel slot {i} out of range 0..{len(SIGNAL_NAMES) - 1}", command="BiasSpectr.ChsSet"
                )
        with self.lock:
            self.stm.channel_slots = slots_t

    def channel_names(self) -> tuple[str, ...]:
        """Names of the recorded channels (slot order)."""
        with self.lock:
            return tuple(SIGNAL_NAMES[i] for i in self.stm.channel_slots)

    def sweep_duration_s(self) -> float:
        """Wall time one sweep takes at this speed (s)."""
        with self.lock:
            nominal = self.stm.timing.sweep_time_s(self.stm.points) * self.stm.sweeps * (2 if self.stm.backward else 1)
        if self.speed == 0 or math.isinf(self.speed):
            return 0.0
        return nominal / self.speed

    def run_sweep(self) -> Sweep:
        """One bias sweep at the tip position (``BiasSpectr.Start``), waiting the sweep time.

        Rows: the sweep signal, then the recorded channels, then (backward sweep) the same
        channels named ``"... [bwd] (unit)"``, swept back.
        """
        index = self.faults.begin_spectrum()
        with self.lock:
            self._stop.clear()
            self.stm.sweeping = True
        try:
            return self._sweep(index)
        finally:
            with self.lock:
                self.stm.sweeping = False
            self.faults.end_spectrum()

    def stop_sweep(self) -> None:
        """``BiasSpectr.Stop``: end the sweep in progress at the point it reached (no-op if none)."""
        with self.lock:
            if self.stm.sweeping:
                self._stop.set()

    def _wait_sweep(self, duration: float) -> float:
        """Wait the sweep time (s) unless stopped; returns the fraction of the sweep done (0..1)."""
        if self._sleep is not None:
            self._sleep(duration)
            return 1.0
        t0 = time.monotonic()
        if not self._stop.wait(duration):
            return 1.0
        return min(1.0, (time.monotonic() - t0) / duration)

    def _end_of_sweep(self, st: StmState, bias: npt.NDArray[np.float64], done: int) -> None:
        """Bias and Z controller after a sweep, as the controller leaves them.

        The bias returns to its value before the sweep only with Reset Bias on; otherwise it
        stays at the last point swept (the sweep start after a backward sweep). A Z controller
        that is on re-regulates at that bias once the module's hold ends.
        """
        if st.reset_bias or done == 0:
            final = st.bias_V
        elif st.backward and done == bias.size:
            final = float(bias[0])
        else:
            final = float(bias[done - 1])
        with self.lock:
            self.stm.bias_V = final
            if self.stm.feedback_on:
                self.stm.regulated_bias_V = final

    def _sweep(self, index: int) -> Sweep:
        with self.lock:
            st = replace(self.stm)
            iy, ix = self.pixel_of(st.x_m, st.y_m)
            z = self.z_m()
        bias = np.linspace(st.start_V, st.end_V, st.points)
        names = tuple(SIGNAL_NAMES[i] for i in st.channel_slots)
        rows = [bias.astype(np.float32), *self._channel_rows(names, bias, iy, ix, z, st, index)]
        channels = [SWEEP_CHANNEL, *names]
        if st.backward:
            back = self._channel_rows(names, bias[::-1], iy, ix, z, st, index)
            rows += [r[::-1] for r in back]  # stored against the forward bias axis, as Nanonis does
            channels += [_bwd_name(n) for n in names]
        params = np.array(
            [
                st.start_V,
                st.end_V,
                st.x_m,
                st.y_m,
                z,
                st.z_offset_m,
                st.timing.settling_s,
                st.timing.integration_s,
                1.0,
                z,
            ],
            dtype=np.float32,
        )
        if LOCKIN_X_CHANNEL in names:
            self._feed_lockin(float(rows[1 + names.index(LOCKIN_X_CHANNEL)][-1]))
        duration = self.sweep_duration_s()
        fraction = self._wait_sweep(duration) if duration > 0 else (0.0 if self._stop.is_set() else 1.0)
        data = np.stack(rows).astype(np.float32)
        done = st.points if fraction >= 1.0 else int(fraction * st.points)
        if done < st.points:  # stopped: the points not reached are NaN, as in a stopped grid file
            data[1:, done:] = np.nan
        self._end_of_sweep(st, bias, done)
        return Sweep(index, tuple(channels), data, params, duration)

    # -- internals ----------------------------------------------------------------------------
    def _film_spectra(self, iy: int, ix: int, bias: npt.NDArray[np.float64], spectrum: int) -> FilmSpectra:
        with self.lock:
            v_set, i_set = self.stm.regulated_bias_V, self.stm.regulated_setpoint_A
            rng = np.random.default_rng(self._rng.integers(2**63))
        return self.film.spectra(
            iy,
            ix,
            bias_V=bias,
            temperature_K=self.temperature_K(spectrum=spectrum),
            v_set_V=v_set,
            i_set_A=i_set * self._reached_fraction(spectrum),
            modulation_Vrms=self.modulation_Vrms(),
            noise=True,
            rng=rng,
            tip=self._tip(spectrum),
        )

    def _channel_rows(
        self,
        names: tuple[str, ...],
        bias: npt.NDArray[np.float64],
        iy: int,
        ix: int,
        z: float,
        st: StmState,
        index: int,
    ) -> list[npt.NDArray[np.float32]]:
        sweeps = [self._film_spectra(iy, ix, bias, index) for _ in range(max(st.sweeps, 1))]
        current = np.mean([np.asarray(s.current_A, np.float64).reshape(-1) for s in sweeps], axis=0)
        lockin = np.mean([np.asarray(s.lockin_x_A, np.float64).reshape(-1) for s in sweeps], axis=0)
        source = {
            CURRENT_CHANNEL: current,
            "Bias (V)": bias,
            "Z (m)": np.full(bias.shape, z + st.z_offset_m),
            "X (m)": np.full(bias.shape, st.x_m),
            "Y (m)": np.full(bias.shape, st.y_m),
            LOCKIN_X_CHANNEL: lockin,
            LOCKIN_Y_CHANNEL: np.zeros_like(bias),  # the film model has no quadrature response
            EXTERNAL_LOCKIN_CHANNEL: self.external_lockin_output_V(lockin),
        }
        return [np.asarray(source[n], dtype=np.float32) for n in names]

    def external_lockin_output_V(self, lockin_x_A: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The external lock-in's CH1 OUTPUT (V) for a demodulated current ``lockin_x_A`` (A rms).

        The current amplifier gives ``I gain`` volts at the lock-in input; the output is
        ``10 V x X / sensitivity``, saturating a little beyond full scale like the real one.
        """
        sensitivity = float(self.lockin.snapshot().sensitivity_v)
        x_v = np.asarray(lockin_x_A, dtype=np.float64) * PREAMP_GAIN_V_PER_A
        return np.clip(LOCKIN_OUTPUT_FULL_SCALE_V * x_v / sensitivity, -10.9, 10.9)


def _bwd_name(name: str) -> str:
    head, sep, unit = name.rpartition(" (")
    return f"{head} [bwd] ({unit}" if sep else f"{name} [bwd]"


def _default_lockin_state(film: Film) -> LockInState:
    # Sine output such that the junction sees the film's default modulation.
    divider = LockInSettings().bias_divider
    return LockInState(amplitude_v=float(film.params.modulation_Vrms) * divider)


def _default_thermometer_state(film: Film, faults: FaultPlan) -> ThermometerState:
    return ThermometerState(faults=faults, base_k=float(film.params.temperature_K))
