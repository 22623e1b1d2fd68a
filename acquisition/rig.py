"""Open the run's instruments from the ``[instruments]`` tables of a run config, then preflight them.

Contract: :func:`open_instruments` connects the controller and, when configured, the lock-in
and the thermometer, checking each identity, then runs the connect-time preflight
(:func:`~stslive.acquisition.preflight.connect_findings`: recorded signals, plan inside the scan
frame, the lock-in model's ranges) before anything moves; whatever was opened is closed again if
a later instrument or the preflight fails.
"""

from __future__ import annotations

from typing import Any

from stslive.acquisition.config import RunConfig
from stslive.acquisition.pixel import Instruments, LockInWiring
from stslive.acquisition.plans import plan_from_config
from stslive.acquisition.preflight import PreflightReport, connect_findings
from stslive.drivers.lakeshore import open_thermometer
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.visa import VisaSettings

_VISA_KEYS = ("resource", "timeout_s", "open_timeout_s", "reconnect_attempts", "reconnect_delay_s", "backend")
_TEXT_KEYS = ("read_termination", "write_termination", "bridge")


def open_instruments(config: RunConfig, *, preflight: bool = True) -> Instruments:
    """Connect to the controller and, if configured, the lock-in and the thermometer.

    Each driver checks the identity of what answers; with ``preflight`` the connect-time checks
    run next and a failure raises :class:`~stslive.drivers.errors.ConfigError` listing them.
    Whatever was opened is closed again on any failure, so no session leaks.
    """
    tables = config.instruments
    opened: list[Any] = []
    try:
        nanonis = {k: v for k, v in tables["nanonis"].items() if not (k == "stop_resource" and not v)}
        controller = NanonisController.from_config(nanonis)
        opened.append(controller)
        controller.identity()
        lockin = thermometer = None
        wiring = LockInWiring()
        if "lockin" in tables:
            table = tables["lockin"]
            lockin = open_lockin(visa_settings(table), model=table["model"] or None, interface=table["interface"])
            opened.append(lockin)
            wiring = LockInWiring.from_config(table)
        if "thermometer" in tables:
            table = tables["thermometer"]
            thermometer = open_thermometer(visa_settings(table), channel=table["channel"])
            opened.append(thermometer)
        instruments = Instruments(controller, lockin, thermometer, wiring)
        if preflight:
            PreflightReport(connect_findings(config, plan_from_config(config), instruments)).raise_if_failed()
    except BaseException:
        for inst in reversed(opened):
            inst.close()
        raise
    return instruments


def visa_settings(table: dict[str, Any]) -> VisaSettings:
    """VisaSettings of a text instrument's table ('' for a termination or bridge = the driver's default)."""
    text = {k: table[k] for k in _TEXT_KEYS if table.get(k)}
    return VisaSettings.from_mapping({**{k: table[k] for k in _VISA_KEYS if k in table}, **text})
