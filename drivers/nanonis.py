"""The Nanonis controller as an :class:`~stslive.drivers.protocols.StmController`, in SI units.

Contract: frames from :mod:`stslive.drivers.nanonis_codec` over a pyvisa
``TCPIP::host::port::SOCKET`` session (:class:`~stslive.drivers.visa.VisaSession`). Nothing is
sent that violates the :class:`SafetyLimits` (bias and sweep limits, set-point magnitude) or
leaves the scan frame (:class:`~stslive.drivers.errors.SafetyLimitError`). A sweep with
``z_controller_hold`` restores the feedback state it found, also when it fails. The scan frame
is cached (one round trip less per pixel, assuming nobody changes it on the Nanonis screen
during a run) and re-read when older than ``frame_max_age_s``, after a reconnect or a frame set,
and before refusing or after the controller refused a move.
:meth:`NanonisController.run_spectrum_beside` runs the caller's work on the calling thread
between sending ``BiasSpectr.Start`` and reading its reply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from pyvisa.resources import MessageBasedResource

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import ConfigError, InstrumentError, InstrumentReplyError, SafetyLimitError
from stslive.drivers.protocols import ScanFrame, SpectroscopyConfig, SpectrumData
from stslive.drivers.tomlfile import check_keys
from stslive.drivers.visa import VisaSession, VisaSettings, underlying_socket

log = logging.getLogger(__name__)

INSTRUMENT = codec.INSTRUMENT

# Nanonis u16 flags in BiasSpectr.PropsSet: 0 = no change, 1 = on, 2 = off.
_ON, _OFF = 1, 2


@dataclass(frozen=True)
class SafetyLimits:
    """Bounds a lab sets so that a wrong config cannot crash the tip.

    Parameters
    ----------
    bias_min_V, bias_max_V
        Allowed bias (V), also for both sweep limits.
    setpoint_min_A, setpoint_max_A
        Allowed set-point magnitude ``|I_set|`` (A).
    sweep_margin
        The Start timeout is ``timeout_s + sweep_margin * nominal sweep time``.
    """

    bias_min_V: float = -1.0
    bias_max_V: float = 1.0
    setpoint_min_A: float = 1e-12
    setpoint_max_A: float = 5e-9
    sweep_margin: float = 2.0

    def __post_init__(self) -> None:
        if not self.bias_min_V < self.bias_max_V:
            raise ConfigError(f"limits: bias_min_V ({self.bias_min_V}) must be < bias_max_V ({self.bias_max_V})")
        if not 0 <= self.setpoint_min_A < self.setpoint_max_A:
            raise ConfigError("limits: need 0 <= setpoint_min_A < setpoint_max_A")
        if not self.sweep_margin >= 1:
            raise ConfigError(f"limits: sweep_margin ({self.sweep_margin}) must be >= 1")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> SafetyLimits:
        """From a config table (V, A); unknown keys and values that are not numbers raise ConfigError naming them."""
        check_keys(table, (f.name for f in fields(cls)), what="limits")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"limits: {key} = {value!r} must be a number")
        return cls(**{k: float(v) for k, v in table.items()})

    def check_bias(self, volts: float, *, what: str = "bias") -> None:
        """SafetyLimitError unless ``bias_min_V <= volts <= bias_max_V``."""
        if not (math.isfinite(volts) and self.bias_min_V <= volts <= self.bias_max_V):
            raise SafetyLimitError(
                INSTRUMENT,
                f"{what} {volts!r} V outside the safety limits [{self.bias_min_V}, {self.bias_max_V}] V; "
                "nothing was sent (change [limits] in the config if this is intended)",
            )

    def check_setpoint(self, amperes: float) -> None:
        """SafetyLimitError unless ``setpoint_min_A <= |amperes| <= setpoint_max_A``."""
        if not (math.isfinite(amperes) and self.setpoint_min_A <= abs(amperes) <= self.setpoint_max_A):
            raise SafetyLimitError(
                INSTRUMENT,
                f"set-point {amperes!r} A outside the safety limits |I| in [{self.setpoint_min_A}, "
                f"{self.setpoint_max_A}] A; nothing was sent",
            )


class NanonisController:
    """Nanonis SPM controller over its TCP programming interface.

    Parameters
    ----------
    settings
        VISA resource (``TCPIP::host::port::SOCKET``), timeouts, reconnect policy.
    limits
        Safety limits.
    session
        An existing session (tests inject one over a replay resource); made from ``settings``
        by default.
    frame_max_age_s
        The cached scan frame is re-read from the controller when older than this (s); 0
        re-reads it before every move.
    clock
        Monotonic clock for the frame's age (s); injectable for tests.
    """

    def __init__(
        self,
        settings: VisaSettings,
        *,
        limits: SafetyLimits | None = None,
        session: VisaSession | None = None,
        frame_max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.read_termination is not None or settings.write_termination is not None:
            raise ConfigError("nanonis: the binary protocol needs read/write termination unset (None)")
        if not frame_max_age_s >= 0:
            raise ConfigError(f"nanonis: frame_max_age_s = {frame_max_age_s!r} must be >= 0 seconds")
        self.settings = settings
        self.limits = limits if limits is not None else SafetyLimits()
        self._session = session if session is not None else VisaSession(settings, instrument=INSTRUMENT)
        self.frame_max_age_s = float(frame_max_age_s)
        self._clock = clock
        # (frame, clock time read, session reconnect count when read); None: read it next time
        self._frame: tuple[ScanFrame, float, int] | None = None
        self._signal_names: tuple[str, ...] | None = None
        self._sweep_time_s = 0.0
        self._hold = True

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> NanonisController:
        """From a config table: VisaSettings keys plus an optional ``limits`` sub-table."""
        table = dict(table)
        limits = SafetyLimits.from_mapping(table.pop("limits", {}))
        return cls(VisaSettings.from_mapping(table), limits=limits)

    # -- transport ----------------------------------------------------------------------------
    def call(
        self,
        name: str,
        *args: Any,
        idempotent: bool = True,
        timeout_s: float | None = None,
        beside: _Beside | None = None,
    ) -> dict[str, Any]:
        """Send one table command and return its values by field name.

        ``beside`` runs once between sending the request and reading the reply (its errors are
        kept in it, not raised here).

        Raises
        ------
        ControllerError
            The controller answered with its error section set.
        InstrumentReplyError
            The reply did not parse (the connection is reset to get back in step).
        InstrumentTimeout, InstrumentConnectionError
            From the transport.
        """
        request = codec.encode_request(name, *args)

        def exchange(resource: MessageBasedResource) -> tuple[codec.Header, bytes]:
            # reading resource.timeout is a VISA attribute query: only when it is to be changed
            previous = resource.timeout if timeout_s is not None else None
            if timeout_s is not None:
                resource.timeout = timeout_s * 1000
            try:
                resource.write_raw(request)
                if beside is not None:
                    beside.run(resource)
                header = codec.decode_header(self._session.read_exact(resource, codec.HEADER_SIZE))
                return header, self._session.read_exact(resource, header.body_size)
            finally:
                if previous is not None:
                    resource.timeout = previous

        try:
            header, body = self._session.transaction(exchange, what=name, idempotent=idempotent)
            return codec.decode_response(name, header, body)
        except InstrumentReplyError:
            self._session.reset()
            raise

    def identity(self) -> str:
        """``"Nanonis controller at <resource> (<n> signals)"``."""
        return f"Nanonis controller at {self.settings.resource} ({len(self.signal_names())} signals)"

    def close(self) -> None:
        """Close the session; safe to call twice."""
        self._session.close()

    def __enter__(self) -> NanonisController:
        self._session.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bias, current, feedback --------------------------------------------------------------
    def get_bias(self) -> float:
        """Bias (V)."""
        return float(self.call("Bias.Get")["bias_V"])

    def set_bias(self, volts: float) -> None:
        """Set the bias (V) inside the safety limits."""
        self.limits.check_bias(volts)
        self.call("Bias.Set", volts)

    def get_current(self) -> float:
        """Tunnelling current (A)."""
        return float(self.call("Current.Get")["current_A"])

    def get_feedback(self) -> bool:
        """True if the Z controller is on."""
        return bool(self.call("ZCtrl.OnOffGet")["on"])

    def set_feedback(self, on: bool) -> None:
        """Switch the Z controller on or off."""
        self.call("ZCtrl.OnOffSet", int(bool(on)))

    def get_setpoint(self) -> float:
        """Current set-point (A)."""
        return float(self.call("ZCtrl.SetpntGet")["setpoint"])

    def set_setpoint(self, amperes: float) -> None:
        """Set the current set-point (A) inside the safety limits."""
        self.limits.check_setpoint(amperes)
        self.call("ZCtrl.SetpntSet", amperes)

    def get_z(self) -> float:
        """Z position (m)."""
        return float(self.call("ZCtrl.ZPosGet")["z_m"])

    # -- tip and frame ------------------------------------------------------------------------
    def get_tip_position(self) -> tuple[float, float]:
        """Tip x, y (m)."""
        v = self.call("FolMe.XYPosGet", 0)
        return float(v["x_m"]), float(v["y_m"])

    def move_tip(self, x_m: float, y_m: float, *, wait: bool = True) -> None:
        """Move the tip to x, y (m); SafetyLimitError outside the controller's scan frame.

        The frame is the cached one (see the module notes); a target outside it is checked again
        against a fresh reading before it is refused, and a move the controller refuses drops
        the cache.
        """
        if not (math.isfinite(x_m) and math.isfinite(y_m)):
            raise SafetyLimitError(INSTRUMENT, f"tip target ({x_m!r}, {y_m!r}) m is not finite; nothing was sent")
        frame, fresh = self._cached_frame()
        if not frame.contains(x_m, y_m, tolerance_m=1e-12):
            if not fresh:
                frame = self.get_scan_frame()
            if not frame.contains(x_m, y_m, tolerance_m=1e-12):
                raise SafetyLimitError(
                    INSTRUMENT,
                    f"tip target ({x_m:.6g}, {y_m:.6g}) m lies outside the scan frame {frame}; nothing was sent",
                )
        try:
            self.call("FolMe.XYPosSet", x_m, y_m, int(wait))
        except InstrumentError:
            self._frame = None  # a refused or lost move: trust nothing cached about the frame
            raise

    def get_scan_frame(self) -> ScanFrame:
        """The scan frame (m, deg), read from the controller (and cached for :meth:`move_tip`)."""
        v = self.call("Scan.FrameGet")
        frame = ScanFrame(
            float(v["center_x_m"]),
            float(v["center_y_m"]),
            float(v["width_m"]),
            float(v["height_m"]),
            float(v["angle_deg"]),
        )
        self._frame = (frame, self._clock(), self._session.reconnects)
        return frame

    def _cached_frame(self) -> tuple[ScanFrame, bool]:
        """(frame, True if it was just read from the controller)."""
        if self._frame is not None:
            frame, read_at, reconnects = self._frame
            # a dropped session (timeout, reset) reconnects on the next exchange: read afresh there
            same_session = self._session.is_open and reconnects == self._session.reconnects
            if same_session and self._clock() - read_at < self.frame_max_age_s:
                return frame, False
        return self.get_scan_frame(), True

    def set_scan_frame(self, frame: ScanFrame) -> None:
        """Set the scan frame (m, deg); width and height must be > 0. The next move re-reads it."""
        if not (frame.width_m > 0 and frame.height_m > 0):
            raise SafetyLimitError(INSTRUMENT, f"scan frame {frame} needs width and height > 0")
        try:
            self.call(
                "Scan.FrameSet", frame.center_x_m, frame.center_y_m, frame.width_m, frame.height_m, frame.angle_deg
            )
        finally:
            self._frame = None  # also if the set failed half-way: the controller's frame is unknown

    # -- signals ------------------------------------------------------------------------------
    def signal_names(self) -> tuple[str, ...]:
        """Names of the controller's signals by index (read once, then cached)."""
        if self._signal_names is None:
            self._signal_names = tuple(self.call("Signals.NamesGet")["names"])
        return self._signal_names

    def signal_index(self, name: str) -> int:
        """Index of a signal by name; ConfigError naming the available ones."""
        names = self.signal_names()
        try:
            return names.index(name)
        except ValueError:
            raise ConfigError(f"nanonis: no signal named {name!r}; available: {list(names)}") from None

    def read_signals(self, names: tuple[str, ...]) -> dict[str, float]:
        """Present values of the named signals (their own units)."""
        indexes = np.array([self.signal_index(n) for n in names], dtype=np.int32)
        values = self.call("Signals.ValsGet", indexes, 0)["values"]
        if len(values) != len(names):
            raise InstrumentReplyError(INSTRUMENT, f"Signals.ValsGet returned {len(values)} values for {len(names)}")
        return {n: float(v) for n, v in zip(names, values, strict=True)}

    # -- spectroscopy -------------------------------------------------------------------------
    def configure_spectroscopy(self, config: SpectroscopyConfig) -> None:
        """Send channels, limits, properties and timing of the bias sweep.

        The channels are selected by signal index (the simulated controller's Signals-Manager
        slots equal the signal indexes; on a real controller check ``Signals.InSlotsGet``).
        """
        self.limits.check_bias(config.start_V, what="sweep start")
        self.limits.check_bias(config.stop_V, what="sweep end")
        if config.points < 2:
            raise ConfigError(f"nanonis: a sweep needs >= 2 points, got {config.points}")
        slots = np.array([self.signal_index(n) for n in config.channels], dtype=np.int32)
        t = config.timing
        self.call("BiasSpectr.ChsSet", slots)
        self.call("BiasSpectr.LimitsSet", config.start_V, config.stop_V)
        self.call(
            "BiasSpectr.PropsSet", 0, 1, _ON if config.backward else _OFF, config.points, t.z_offset_m, _OFF, _OFF
        )
        self.call(
            "BiasSpectr.TimingSet",
            t.z_averaging_s,
            t.z_offset_m,
            t.initial_settling_s,
            t.max_slew_rate_V_per_s,
            t.settling_s,
            t.integration_s,
            t.end_settling_s,
            t.z_control_s,
        )
        self._sweep_time_s = t.sweep_time_s(config.points) * (2 if config.backward else 1)
        self._hold = config.z_controller_hold

    def get_spectroscopy_channels(self) -> tuple[str, ...]:
        """Names of the channels the sweep records."""
        return tuple(self.call("BiasSpectr.ChsGet")["names"])

    @contextlib.contextmanager
    def feedback_restored(self) -> Iterator[bool]:
        """Within the block the feedback may change; on exit the state found on entry is restored.

        Yields the entry state. If restoring fails while another error is propagating, the
        restore failure is logged and attached as a note, and the first error propagates.
        """
        before = self.get_feedback()
        failed = False
        try:
            yield before
        except BaseException as exc:
            failed = True
            try:
                self._restore_feedback(before)
            except InstrumentError as restore_exc:
                log.error("nanonis: feedback NOT restored after a failed sweep: %s", restore_exc)
                exc.add_note(f"feedback could not be restored to {'on' if before else 'off'}: {restore_exc}")
            raise
        finally:
            if not failed:
                self._restore_feedback(before)

    def _restore_feedback(self, before: bool) -> None:
        # Set unconditionally: one round trip, where reading the state first and setting it
        # only if it differs took one or two (ZCtrl.OnOffSet to the present state changes nothing).
        self.set_feedback(before)

    def run_spectrum(self) -> SpectrumData:
        """One bias sweep at the present tip position (``BiasSpectr.Start`` with data).

        With ``z_controller_hold`` the feedback is opened for the sweep and restored after it,
        even when the sweep fails. The Start timeout is the I/O timeout plus
        ``sweep_margin`` times the nominal sweep time. Start is not repeated after a lost
        connection (the sweep may have run): InstrumentConnectionError.
        """
        return self._run_spectrum(None)

    def run_spectrum_beside(self, work: Callable[[], None]) -> tuple[SpectrumData, bool]:
        """:meth:`run_spectrum`, running ``work()`` on this thread while the controller sweeps.

        Returns the spectrum and whether ``work`` ended before the reply started to arrive (it
        then cost the sweep nothing; False also when that cannot be told). ``work`` runs at most
        once, after Start was sent; not at all if the sweep fails before that (the caller does it
        then). An error from ``work`` is raised after the sweep's reply was read, so the
        feedback is restored and the connection stays in step; if the sweep failed too, that
        error is attached as a note.
        """
        beside = _Beside(work)
        try:
            spectrum = self._run_spectrum(beside)
        except BaseException as exc:
            if beside.error is None:
                raise
            beside.error.add_note(f"the sweep failed as well: {type(exc).__name__}: {exc}")
            raise beside.error from exc
        if beside.error is not None:
            raise beside.error
        return spectrum, beside.hidden

    def _run_spectrum(self, beside: _Beside | None) -> SpectrumData:
        timeout = self.settings.timeout_s + self.limits.sweep_margin * self._sweep_time_s
        with self.feedback_restored():
            if self._hold:
                self.set_feedback(False)
            v = self.call("BiasSpectr.Start", 1, "", idempotent=False, timeout_s=timeout, beside=beside)
        channels, data = tuple(v["channels"]), v["data"]
        if data.shape[0] != len(channels):
            raise InstrumentReplyError(
                INSTRUMENT, f"BiasSpectr.Start returned {data.shape[0]} data rows for {len(channels)} channels"
            )
        return SpectrumData(channels=channels, data=data, parameters=v["parameters"])


class _Beside:
    """Work run once inside an exchange, between request and reply; keeps its error for later."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.ran = False
        self.hidden = False  # ended before any reply byte was there
        self.error: BaseException | None = None

    def run(self, resource: MessageBasedResource) -> None:
        if self.ran:  # a repeated exchange does not repeat the work
            return
        self.ran = True
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001  raised by run_spectrum_beside once the sweep has ended
            self.error = exc
            return
        sock = underlying_socket(resource)
        self.hidden = sock is not None and not select.select([sock], [], [], 0)[0]
