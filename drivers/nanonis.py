"""The Nanonis controller as an :class:`~stslive.drivers.protocols.StmController`, in SI units.

Contract: frames from :mod:`stslive.drivers.nanonis_codec` over a pyvisa
``TCPIP::host::port::SOCKET`` session (:class:`~stslive.drivers.visa.VisaSession`). Nothing is
sent that violates the :class:`SafetyLimits` (bias and sweep limits, set-point magnitude) or
leaves the scan frame (:class:`~stslive.drivers.errors.SafetyLimitError`). The release is read
once (``Util.VersionGet``, :mod:`~stslive.drivers.nanonis_release`) and decides how channels are
selected. Configuring a sweep also sets the module's advanced properties (Reset Bias on, the
module's Z-controller hold as configured) and reads them and the timing back. After every sweep,
also a failed or stopped one, the set-point bias is set explicitly before the feedback state
found before the sweep is restored, so the tip never regulates at the sweep's last bias.
:meth:`NanonisController.stop_sweep` stops a sweep from a second connection (the first one is
busy until the sweep ends). The scan frame is cached (one round trip less per pixel, assuming
nobody changes it on the Nanonis screen during a run) and re-read when older than
``frame_max_age_s``, after a reconnect or a frame set, and before refusing or after the
controller refused a move. :meth:`NanonisController.run_spectrum_beside` runs the caller's work
on the calling thread between sending ``BiasSpectr.Start`` and reading its reply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from pyvisa.resources import MessageBasedResource

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.beside import Beside
from stslive.drivers.errors import (
    ConfigError,
    ControllerError,
    InstrumentError,
    InstrumentReplyError,
    InstrumentTimeout,
    SafetyLimitError,
    SweepStopped,
)
from stslive.drivers.limits import SafetyLimits
from stslive.drivers.nanonis_release import ControllerRelease
from stslive.drivers.protocols import ScanFrame, SpectroscopyConfig, SpectrumData
from stslive.drivers.visa import VisaSession, VisaSettings

log = logging.getLogger(__name__)

INSTRUMENT = codec.INSTRUMENT

__all__ = ["ControllerRelease", "NanonisController", "SafetyLimits"]

# Nanonis u16 flags of the Set commands: 0 = no change, 1 = on, 2 = off.
_NO_CHANGE, _ON, _OFF = 0, 1, 2
#: Longest wait (s) for Util.VersionGet at connect: an older controller may not answer it at all.
VERSION_PROBE_TIMEOUT_S = 2.0


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
    stop_settings
        How :meth:`stop_sweep` reaches the controller on a second connection (a real controller
        serves one client per TCP port: give another of its ports); default: ``settings``.
    release
        The controller's RT engine release if known; 0 asks it with ``Util.VersionGet``.
    """

    def __init__(
        self,
        settings: VisaSettings,
        *,
        limits: SafetyLimits | None = None,
        session: VisaSession | None = None,
        frame_max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        stop_settings: VisaSettings | None = None,
        release: int = 0,
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
        self._stop_settings = stop_settings if stop_settings is not None else settings
        self._stop_session: VisaSession | None = None
        self._stop_requested = threading.Event()
        self._release = None if release == 0 else ControllerRelease(rt_release=int(release))
        self._slots: tuple[str, ...] | None = None
        self._bias_setpoint_V: float | None = None  # the last bias set: restored after every sweep

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> NanonisController:
        """From a config table: VisaSettings keys, optional ``limits`` sub-table, ``stop_resource``
        (second connection for :meth:`stop_sweep`, '' = the same resource) and ``release``
        (0 = ask the controller)."""
        table = dict(table)
        limits = SafetyLimits.from_mapping(table.pop("limits", {}))
        stop_resource = str(table.pop("stop_resource", "") or "")
        release = table.pop("release", 0)
        settings = VisaSettings.from_mapping(table)
        stop = VisaSettings.from_mapping({**table, "resource": stop_resource}) if stop_resource else None
        return cls(settings, limits=limits, stop_settings=stop, release=int(release))

    # -- transport ----------------------------------------------------------------------------
    def call(
        self,
        name: str,
        *args: Any,
        idempotent: bool = True,
        timeout_s: float | None = None,
        beside: Beside | None = None,
        session: VisaSession | None = None,
    ) -> dict[str, Any]:
        """Send one table command and return its values by field name.

        ``beside`` runs once between sending the request and reading the reply (its errors are
        kept in it, not raised here). ``session`` is another connection to use (:meth:`stop_sweep`).

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
        session = self._session if session is None else session
        old = self._release is not None and self._release.uses_slots

        def exchange(resource: MessageBasedResource) -> tuple[codec.Header, bytes]:
            # reading resource.timeout is a VISA attribute query: only when it is to be changed
            previous = resource.timeout if timeout_s is not None else None
            if timeout_s is not None:
                resource.timeout = timeout_s * 1000
            try:
                resource.write_raw(request)
                if beside is not None:
                    beside.run(resource)
                header = codec.decode_header(session.read_exact(resource, codec.HEADER_SIZE))
                return header, session.read_exact(resource, header.body_size)
            finally:
                if previous is not None:
                    resource.timeout = previous

        try:
            header, body = session.transaction(exchange, what=name, idempotent=idempotent)
            return codec.decode_response(name, header, body, old=old)
        except InstrumentReplyError:
            session.reset()
            raise

    def identity(self) -> str:
        """``"Nanonis controller at <resource>: <release>; <n> signals"``."""
        release = self.release().describe()
        return f"Nanonis controller at {self.settings.resource}: {release}; {len(self.signal_names())} signals"

    def release(self) -> ControllerRelease:
        """The controller's release (``Util.VersionGet`` once, then cached).

        A controller that answers the probe with an error, or not within
        :data:`VERSION_PROBE_TIMEOUT_S`, predates the command (R11798) and is taken for an older
        release; the connection is reopened after a probe that went unanswered.
        """
        if self._release is None:
            probe_s = min(self.settings.timeout_s, VERSION_PROBE_TIMEOUT_S)
            try:
                v = self.call("Util.VersionGet", timeout_s=probe_s)
                self._release = ControllerRelease.from_reply(v)
            except (ControllerError, InstrumentTimeout) as exc:
                log.info("nanonis: Util.VersionGet not answered (%s); an older release, channels by slot", exc)
                self._release = ControllerRelease.older()
        return self._release

    def close(self) -> None:
        """Close the sessions; safe to call twice."""
        self._session.close()
        if self._stop_session is not None:
            self._stop_session.close()

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
        """Set the bias (V) inside the safety limits; it is the bias restored after each sweep."""
        self.limits.check_bias(volts)
        self.call("Bias.Set", volts)
        self._bias_setpoint_V = float(volts)

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

    def slot_names(self) -> tuple[str, ...]:
        """Names of the signals in the 24 Signals-Manager slots (read once, then cached)."""
        if self._slots is None:
            self._slots = tuple(self.call("Signals.InSlotsGet")["names"])
        return self._slots

    def channel_index(self, name: str) -> int:
        """The index ``BiasSpectr.ChsSet`` takes for a signal: its slot before R11798, else its index."""
        if not self.release().uses_slots:
            return self.signal_index(name)
        slots = self.slot_names()
        if name not in slots:
            raise ConfigError(
                f"nanonis: {name!r} is in no Signals-Manager slot (this release records only slotted signals); "
                f"slotted: {list(slots)}; assign it a slot in the Signals Manager"
            )
        return slots.index(name)

    def read_signals(self, names: tuple[str, ...]) -> dict[str, float]:
        """Present values of the named signals (their own units)."""
        indexes = np.array([self.signal_index(n) for n in names], dtype=np.int32)
        values = self.call("Signals.ValsGet", indexes, 0)["values"]
        if len(values) != len(names):
            raise InstrumentReplyError(INSTRUMENT, f"Signals.ValsGet returned {len(values)} values for {len(names)}")
        return {n: float(v) for n, v in zip(names, values, strict=True)}

    # -- spectroscopy -------------------------------------------------------------------------
    def configure_spectroscopy(self, config: SpectroscopyConfig) -> None:
        """Open the module; send channels, limits, properties, timing and advanced properties.

        Reset Bias is switched on and the module's Z-controller hold set to
        ``config.z_controller_hold``, then both are read back (ControllerError if the controller
        did not take them). The timing is read back too: the controller rounds times to whole
        real-time cycles, and the Start timeout uses what it will really do.
        """
        self.limits.check_bias(config.start_V, what="sweep start")
        self.limits.check_bias(config.stop_V, what="sweep end")
        if config.points < 2:
            raise ConfigError(f"nanonis: a sweep needs >= 2 points, got {config.points}")
        indexes = np.array([self.channel_index(n) for n in config.channels], dtype=np.int32)
        t = config.timing
        hold = _ON if config.z_controller_hold else _OFF
        self.call("BiasSpectr.Open")
        self.call("BiasSpectr.ChsSet", indexes)
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
        self.call("BiasSpectr.AdvPropsSet", _ON, hold, _NO_CHANGE, _NO_CHANGE)
        adv = self.call("BiasSpectr.AdvPropsGet")
        if adv["reset_bias"] != 1 or adv["z_ctrl_hold"] != int(config.z_controller_hold):
            raise ControllerError(
                INSTRUMENT,
                f"the bias spectroscopy module kept Reset Bias = {adv['reset_bias']}, Z-Controller Hold = "
                f"{adv['z_ctrl_hold']} (asked 1, {int(config.z_controller_hold)}); check its Advanced settings",
                command="BiasSpectr.AdvPropsGet",
            )
        timing = self.call("BiasSpectr.TimingGet")
        sweep = timing["initial_settling_s"] + config.points * (timing["settling_s"] + timing["integration_s"])
        self._sweep_time_s = (sweep + timing["end_settling_s"]) * (2 if config.backward else 1)
        self._hold = config.z_controller_hold

    def get_spectroscopy_channels(self) -> tuple[str, ...]:
        """Names of the channels the sweep records."""
        v = self.call("BiasSpectr.ChsGet")
        if self.release().uses_slots:
            slots = self.slot_names()
            return tuple(slots[i] for i in v["indexes"])
        return tuple(v["names"])

    @contextlib.contextmanager
    def feedback_restored(self, bias_V: float | None = None) -> Iterator[bool]:
        """Within the block bias and feedback may change; on exit the state found on entry returns.

        On exit ``bias_V`` (if given) is set first, then the feedback state found on entry.
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
                self._restore(before, bias_V)
            except InstrumentError as restore_exc:
                log.error("nanonis: bias/feedback NOT restored after a failed sweep: %s", restore_exc)
                exc.add_note(f"feedback could not be restored to {'on' if before else 'off'}: {restore_exc}")
            raise
        finally:
            if not failed:
                self._restore(before, bias_V)

    def _restore(self, before: bool, bias_V: float | None) -> None:
        # The bias goes back first: with Reset Bias off (or a stopped sweep) the controller is
        # still at the sweep's last bias, and a Z controller switched on there moves the tip.
        # Set unconditionally: one round trip, where reading the state first took one or two.
        if bias_V is not None:
            self.call("Bias.Set", bias_V)
        self.set_feedback(before)

    def run_spectrum(self) -> SpectrumData:
        """One bias sweep at the present tip position (``BiasSpectr.Start`` with data).

        With ``z_controller_hold`` the feedback is opened for the sweep; after it, even when it
        fails, the set-point bias (the last :meth:`set_bias`, else the bias read before the
        sweep) is set and the feedback restored. The Start timeout is the I/O timeout plus
        ``sweep_margin`` times the sweep time. Start is not repeated after a lost connection
        (the sweep may have run): InstrumentConnectionError. A sweep ended by
        :meth:`stop_sweep` raises :class:`~stslive.drivers.errors.SweepStopped` once bias and
        feedback are back.
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
        beside = Beside(work)
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

    def stop_sweep(self, *, timeout_s: float | None = None) -> bool:
        """Stop the sweep in progress from a second connection; callable from any thread.

        Sends ``BiasSpectr.Stop`` and polls ``BiasSpectr.StatusGet`` until the module reports
        not running (at most ``timeout_s``, default the I/O timeout). The thread waiting in
        :meth:`run_spectrum` then restores bias and feedback and raises SweepStopped; a stop
        requested before the next sweep starts prevents it. Returns True once the module is idle.
        """
        self._stop_requested.set()
        if self._stop_session is None:
            self._stop_session = VisaSession(self._stop_settings, instrument=INSTRUMENT)
        deadline = time.monotonic() + (self.settings.timeout_s if timeout_s is None else timeout_s)
        self.call("BiasSpectr.Stop", session=self._stop_session)
        while self.call("BiasSpectr.StatusGet", session=self._stop_session)["running"]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run_spectrum(self, beside: Beside | None) -> SpectrumData:
        timeout = self.settings.timeout_s + self.limits.sweep_margin * self._sweep_time_s
        bias = self._bias_setpoint_V if self._bias_setpoint_V is not None else self.get_bias()
        with self.feedback_restored(bias):
            if self._stop_requested.is_set():
                self._stop_requested.clear()
                raise SweepStopped(INSTRUMENT, "stopped on request before the sweep started; no data")
            if self._hold:
                self.set_feedback(False)
            v = self.call("BiasSpectr.Start", 1, "", idempotent=False, timeout_s=timeout, beside=beside)
        if self._stop_requested.is_set():
            self._stop_requested.clear()
            raise SweepStopped(INSTRUMENT, "the sweep was stopped on request; its data are incomplete and not kept")
        channels, data = tuple(v["channels"]), v["data"]
        if data.shape[0] != len(channels):
            raise InstrumentReplyError(
                INSTRUMENT, f"BiasSpectr.Start returned {data.shape[0]} data rows for {len(channels)} channels"
            )
        return SpectrumData(channels=channels, data=data, parameters=v["parameters"])
