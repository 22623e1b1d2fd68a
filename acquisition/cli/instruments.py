"""``stslive instruments``: check a lab before a long run.

Connects to each instrument given (STM controller, lock-in, thermometer), prints its identity
and present settings, and exits non-zero naming every instrument that failed. All given
instruments are checked even when one fails, so one run shows everything that needs fixing.

``--config RUN.toml`` reads the ``[instruments]`` tables of a run config
(``[instruments.nanonis]``, ``[instruments.lockin]``, ``[instruments.thermometer]`` with all their
keys: terminations, bridge, interface, model), or a short table of resources::

    [instruments]
    stm = "TCPIP::192.168.1.10::6501::SOCKET"
    lockin = "GPIB0::8::INSTR"
    thermometer = { resource = "TCPIP::192.168.1.30::7777::SOCKET", channel = "A" }

Command-line resources override the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stslive.acquisition.config import parse_section
from stslive.drivers.errors import ConfigError, StsliveError
from stslive.drivers.lakeshore import open_thermometer
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.tomlfile import read_toml
from stslive.drivers.visa import VisaSettings

ROLES = ("stm", "lockin", "thermometer")
_TABLE_KEYS = {"resource", "timeout_s", "channel"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive instruments``."""
    parser.add_argument("--stm", metavar="RESOURCE", help="Nanonis controller, e.g. TCPIP::127.0.0.1::6501::SOCKET")
    parser.add_argument("--lockin", metavar="RESOURCE", help="SR830/SR860 lock-in, e.g. GPIB0::8::INSTR")
    parser.add_argument("--thermometer", metavar="RESOURCE", help="LakeShore 372, e.g. TCPIP::host::7777::SOCKET")
    parser.add_argument(
        "--thermometer-channel", default=None, help="LakeShore input of the sample: A or 1..16 (default A)"
    )
    parser.add_argument("--config", type=Path, metavar="RUN.toml", help="take resources from its [instruments] table")
    parser.add_argument("--timeout", type=float, default=None, help="reply timeout per instrument (s, default 3)")
    parser.add_argument(
        "--visa-backend",
        default="@py",
        help="pyvisa backend: '@py' (pyvisa-py, default) or '' for the system VISA (GPIB)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def read_instruments_table(path: Path) -> dict[str, dict[str, Any]]:
    """The ``[instruments]`` table of a run config, normalised to role -> {resource, ...}.

    A run config's ``[instruments.nanonis]`` becomes the ``stm`` role; its tables are checked
    with the run config's own key table (an unknown key names ``section.key``).
    """
    doc = read_toml(path, what="config", option="--config")
    table = doc.get("instruments")
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: no [instruments] table; add one with stm/lockin/thermometer resources")
    if "nanonis" in table:  # the run config format
        unknown = sorted(set(table) - {"nanonis", "lockin", "thermometer"})
        if unknown:
            raise ConfigError(f"config {path}: [instruments] has unknown table(s) {unknown}")
        try:
            return {
                "stm" if name == "nanonis" else name: parse_section(f"instruments.{name}", entry)
                for name, entry in table.items()
            }
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None
    unknown = sorted(set(table) - set(ROLES))
    if unknown:
        raise ConfigError(f"config {path}: [instruments] has unknown key(s) {unknown}; allowed: {list(ROLES)}")
    out: dict[str, dict[str, Any]] = {}
    for role, entry in table.items():
        if isinstance(entry, str):
            entry = {"resource": entry}
        if not isinstance(entry, dict) or "resource" not in entry:
            raise ConfigError(f"config {path}: instruments.{role} must be a resource string or a table with 'resource'")
        bad = sorted(set(entry) - _TABLE_KEYS)
        if bad:
            raise ConfigError(
                f"config {path}: instruments.{role} has unknown key(s) {bad}; allowed: {sorted(_TABLE_KEYS)}"
            )
        out[role] = dict(entry)
    return out


def _settings(entry: Mapping[str, Any], args: argparse.Namespace) -> VisaSettings:
    timeout = args.timeout if args.timeout is not None else float(entry.get("timeout_s", 3.0))
    text = {k: entry[k] for k in ("read_termination", "write_termination", "bridge") if entry.get(k)}
    return VisaSettings(
        str(entry["resource"]),
        timeout_s=timeout,
        open_timeout_s=timeout,
        reconnect_attempts=0,
        backend=args.visa_backend,
        **text,
    )


def check_stm(entry: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Identity, bias (V), current set-point (A) and feedback of the Nanonis controller."""

    stm = NanonisController(_settings(entry, args), release=int(entry.get("release", 0)))
    try:
        return {
            "identity": stm.identity(),
            "release": stm.release().describe(),
            "bias_V": stm.get_bias(),
            "setpoint_A": stm.get_setpoint(),
            "feedback": stm.get_feedback(),
        }
    finally:
        stm.close()


def check_lockin(entry: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Identity, frequency (Hz), amplitude (V rms), time constant (s), sensitivity (V), status."""

    model = str(entry.get("model", "") or "") or None
    with open_lockin(_settings(entry, args), model=model, interface=str(entry.get("interface", ""))) as lockin:
        status = lockin.status()
        return {
            "identity": lockin.identity(),
            "frequency_Hz": lockin.get_frequency(),
            "amplitude_Vrms": lockin.get_amplitude(),
            "time_constant_s": lockin.get_time_constant(),
            "sensitivity_V": lockin.get_sensitivity(),
            "overloaded": status.overloaded,
            "unlocked": status.unlocked,
            "errors": list(status.errors),
        }


def check_thermometer(entry: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Identity, temperature (K) of the sample input, scanner channel."""
    channel = args.thermometer_channel or entry.get("channel", "A")
    with open_thermometer(_settings(entry, args), channel=channel) as thermometer:
        scanner, autoscan = thermometer.scanner_channel()
        return {
            "identity": thermometer.identity(),
            "channel": thermometer.channel,
            "temperature_K": thermometer.temperature(),
            "scanner_channel": scanner,
            "autoscan": autoscan,
        }


CHECKS: dict[str, Callable[[Mapping[str, Any], argparse.Namespace], dict[str, Any]]] = {
    "stm": check_stm,
    "lockin": check_lockin,
    "thermometer": check_thermometer,
}


def _text(role: str, report: Mapping[str, Any]) -> str:
    head = f"{role:<12}{report['resource']}"
    if not report["ok"]:
        return f"{head}\n{'':<12}FAILED: {report['error']}"
    lines = [head, f"{'':<12}{report['identity']}"]
    if role == "stm":
        lines.append(
            f"{'':<12}bias {report['bias_V'] * 1e3:.3f} mV, set-point {report['setpoint_A'] * 1e12:.1f} pA, "
            f"feedback {'on' if report['feedback'] else 'off'}"
        )
    elif role == "lockin":
        flags = ", OVERLOAD" if report["overloaded"] else ""
        flags += ", reference unlocked" if report["unlocked"] else ""
        flags += f", errors: {'; '.join(report['errors'])}" if report["errors"] else ""
        lines.append(
            f"{'':<12}frequency {report['frequency_Hz']:g} Hz, amplitude {report['amplitude_Vrms'] * 1e3:g} mV rms, "
            f"time constant {report['time_constant_s']:g} s, sensitivity {report['sensitivity_V']:g} V{flags}"
        )
    else:
        lines.append(
            f"{'':<12}temperature {report['temperature_K']:.4f} K (input {report['channel']}), "
            f"scanner on channel {report['scanner_channel']}{' (autoscan)' if report['autoscan'] else ''}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Check each instrument; 0 if all answered, 1 if any failed (each failure named on stderr)."""
    entries = read_instruments_table(args.config) if args.config is not None else {}
    for role in ROLES:
        resource = getattr(args, role)
        if resource is not None:
            entries[role] = {**entries.get(role, {}), "resource": resource}
    if not entries:
        raise ConfigError("no instrument given; use --stm, --lockin, --thermometer or --config RUN.toml")
    reports: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        if role not in entries:
            continue
        report: dict[str, Any] = {"resource": entries[role]["resource"]}
        try:
            report.update(CHECKS[role](entries[role], args), ok=True)
        except StsliveError as exc:  # reported per instrument; the others are still checked
            report.update(ok=False, error=str(exc), error_type=type(exc).__name__)
        reports[role] = report
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n".join(_text(role, report) for role, report in reports.items()))
    failed = [role for role, report in reports.items() if not report["ok"]]
    for role in failed:
        print(
            f"stslive instruments: {role} at {reports[role]['resource']} failed: {reports[role]['error']}",
            file=sys.stderr,
        )
    return 1 if failed else 0
