"""Open the run's instruments from the ``[instruments]`` tables of a run config.

Contract: :func:`open_instruments` connects the controller and, when configured, the lock-in
and the thermometer, checking each identity; whatever was opened is closed again if a later
instrument fails.
"""

from __future__ import annotations

from stslive.acquisition.config import RunConfig
from stslive.acquisition.pixel import Instruments
from stslive.drivers.lakeshore import open_thermometer
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.visa import VisaSettings

_VISA_KEYS = ("resource", "timeout_s", "open_timeout_s", "reconnect_attempts", "reconnect_delay_s", "backend")


def open_instruments(config: RunConfig) -> Instruments:
    """Connect to the controller and, if configured, the lock-in and the thermometer.

    Each driver checks the identity of what answers; whatever was opened is closed again if a
    later instrument fails, so no session leaks.
    """
    tables = config.instruments
    opened: list[object] = []
    try:
        nanonis = dict(tables["nanonis"])
        controller = NanonisController.from_config(nanonis)
        opened.append(controller)
        controller.identity()
        lockin = thermometer = None
        if "lockin" in tables:
            table = tables["lockin"]
            lockin = open_lockin(_visa(table), model=table["model"] or None)
            opened.append(lockin)
        if "thermometer" in tables:
            table = tables["thermometer"]
            thermometer = open_thermometer(_visa(table), channel=table["channel"])
            opened.append(thermometer)
    except BaseException:
        for inst in reversed(opened):
            inst.close()  # type: ignore[attr-defined]
        raise
    return Instruments(controller, lockin, thermometer)


def _visa(table: dict[str, object]) -> VisaSettings:
    return VisaSettings.from_mapping({k: table[k] for k in _VISA_KEYS if k in table})
