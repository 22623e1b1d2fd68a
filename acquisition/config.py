"""The run configuration (TOML): instruments, plan, set-point sets, stream, suspender, retries.

Contract: one file describes one run; :meth:`RunConfig.from_toml` checks every key (an unknown
key or a bad value is a :class:`~stslive.drivers.errors.ConfigError` naming ``[section]`` and the
key) and :meth:`RunConfig.to_dict` gives the canonical form stored in the archive, accepted back
by :meth:`RunConfig.from_dict`. Exactly one of ``[grid]``, ``[line]`` or ``[points]`` gives the
positions; one or more ``[[setpoint_set]]`` tables (keys of
:class:`~stslive.acquisition.formats.runmodel.SetpointSet`, equal ``n_points`` in all) the
set-points; ``[instruments.nanonis.limits]`` takes the keys of
:class:`~stslive.drivers.nanonis.SafetyLimits`. ``acquisition/example_run.toml`` is a complete
example.

Keys (SI units; "required" has no default):
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stslive.acquisition.formats.runmodel import GridGeometry, SetpointSet
from stslive.acquisition.preflight import setpoint_findings
from stslive.acquisition.stop_rule import DEFAULTS as STOP
from stslive.acquisition.stop_rule import StopRule
from stslive.drivers.errors import ConfigError
from stslive.drivers.protocols import CURRENT_CHANNEL, LOCKIN_X_CHANNEL
from stslive.drivers.tomlfile import check_keys, read_toml

_REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One configuration key: its type name, default (``_REQUIRED`` if none) and meaning."""

    type: str
    default: Any
    doc: str


_VISA = {
    "resource": Key("str", _REQUIRED, "VISA resource string, e.g. TCPIP::127.0.0.1::6501::SOCKET or GPIB0::8::INSTR"),
    "timeout_s": Key("float", 5.0, "I/O timeout of one exchange (s)"),
    "open_timeout_s": Key("float", 5.0, "timeout for opening the connection (s)"),
    "reconnect_attempts": Key("int", 2, "reopen attempts after a lost connection (0 = never)"),
    "reconnect_delay_s": Key("float", 0.1, "first delay between reopen attempts (s), doubling"),
    "backend": Key("str", "@py", "pyvisa backend: @py (pyvisa-py) or '' (system VISA)"),
}
#: Keys of the text instruments (lock-in, thermometer) beyond the VISA ones.
_TEXT = {
    "read_termination": Key(
        "str", "", "reply termination; '' = the driver's (SR830: CR on RS232, LF on GPIB; LakeShore: CR LF)"
    ),
    "write_termination": Key("str", "", "request termination; '' = LF"),
    "bridge": Key(
        "str",
        "",
        "GPIB-Ethernet/USB bridge opened first, e.g. PRLGX-TCPIP::192.168.1.20::1234::INTFC; resource is then "
        "GPIB::<address>::INSTR; '' = none",
    ),
}

#: section -> key -> Key. ``instruments.lockin`` and ``instruments.thermometer`` are optional.
RUN_CONFIG_KEYS: dict[str, dict[str, Key]] = {
    "run": {
        "name": Key("str", "", "free label of the run, stored in the start document"),
        "sample": Key("str", "", "sample description"),
        "operator": Key("str", "", "who runs it"),
        "setpoint_mode": Key(
            "str",
            "single",
            "'single': every pixel uses the active set (changeable by the "
            "'set' command); 'alternate': pixel k of the plan uses set k mod n_sets",
        ),
        "channels": Key(
            "list[str]",
            [CURRENT_CHANNEL, LOCKIN_X_CHANNEL],
            "controller signals recorded by each sweep (archive channels are 'Bias (V)' then these)",
        ),
        "move_settle_s": Key("float", 0.0, "wait after moving the tip, feedback on (s)"),
        "move_settle_per_nm_s": Key(
            "float", 0.0, "more wait per nm of the move, for piezo creep after long jumps (s/nm); 0 = none"
        ),
        "tip_speed_m_per_s": Key(
            "float", 100e-9, "Follow-Me speed of the tip (m/s); used only to estimate the run time"
        ),
        "retries": Key("int", 2, "extra attempts of a pixel after an instrument error"),
        "max_consecutive_failures": Key("int", 3, "failed pixels in a row after which the run pauses"),
        "heartbeat_s": Key("float", 1.0, "heartbeat period while paused (s)"),
    },
    "instruments.nanonis": {
        **_VISA,
        "limits": Key("table", {}, "safety limits (SafetyLimits keys)"),
        "stop_resource": Key(
            "str",
            "",
            "second connection used to stop a sweep on abort (a real controller serves one client per port: "
            "give another of its ports, e.g. TCPIP::host::6502::SOCKET); '' = resource",
        ),
        "release": Key("int", 0, "controller RT engine release; 0 = ask it (Util.VersionGet) at connect"),
    },
    "instruments.lockin": {
        **_VISA,
        **_TEXT,
        "model": Key("str", "", "'SR830' or 'SR860' to insist on; '' accepts either"),
        "interface": Key("str", "", "'gpib' or 'rs232' (sets OUTX and the reply termination); '' = from resource"),
        "harmonic": Key("int", 1, "detection harmonic (harmonic x frequency <= 102 kHz on an SR830)"),
        "output_channel": Key(
            "str",
            "",
            "controller input carrying the lock-in's X output (CH1 OUTPUT), e.g. 'Input 2 (V)'; it must be in "
            "run.channels and is archived as dI/dV in A/V ('Input 2 (A/V)'); '' = not wired",
        ),
        "output_full_scale_V": Key("float", 10.0, "voltage at the lock-in output for a full-scale X (V)"),
        "preamp_gain_V_per_A": Key("float", 1e9, "current amplifier gain between junction and lock-in input (V/A)"),
        "bias_divider": Key(
            "float",
            1.0,
            "attenuation between the lock-in sine output and the junction (1000 for 1:1000); the sine output "
            "sent is setpoint_set.lockin_amplitude_Vrms x bias_divider",
        ),
    },
    "instruments.thermometer": {
        **_VISA,
        **_TEXT,
        "channel": Key("str", "A", "LakeShore 372 input of the sample: A or 1..16"),
    },
    "grid": {
        "centre_x_m": Key("float", 0.0, "grid centre x (m)"),
        "centre_y_m": Key("float", 0.0, "grid centre y (m)"),
        "width_m": Key("float", _REQUIRED, "grid width (m)"),
        "height_m": Key("float", _REQUIRED, "grid height (m)"),
        "nx": Key("int", _REQUIRED, "pixels per row"),
        "ny": Key("int", _REQUIRED, "rows"),
        "angle_deg": Key("float", 0.0, "rotation, counter-clockwise (deg)"),
        "order": Key(
            "str",
            "raster",
            "'raster', 'serpentine' or 'progressive' (a coarse lattice first, then refinements: the whole frame early)",
        ),
    },
    "line": {
        "start_x_m": Key("float", _REQUIRED, "first point x (m)"),
        "start_y_m": Key("float", _REQUIRED, "first point y (m)"),
        "end_x_m": Key("float", _REQUIRED, "last point x (m)"),
        "end_y_m": Key("float", _REQUIRED, "last point y (m)"),
        "n": Key("int", _REQUIRED, "number of points (>= 2), evenly spaced, ends included"),
    },
    "points": {
        "x_m": Key("list[float]", _REQUIRED, "x of every point (m), in visiting order"),
        "y_m": Key("list[float]", _REQUIRED, "y of every point (m), same length"),
    },
    "stream": {
        "pub": Key(
            "str", "tcp://127.0.0.1:5556", "ZeroMQ PUB endpoint of the run stream (loopback unless stream.keys is set)"
        ),
        "push": Key("str", "", "ZeroMQ PUSH endpoint for a consumer that must not drop; '' = none"),
        "control": Key("str", "tcp://127.0.0.1:5557", "ZeroMQ REP endpoint of the control socket; '' = none"),
        "header_format": Key("str", "json", "'json' or 'msgpack' stream headers"),
        "keys": Key(
            "str",
            "",
            "CURVE key directory made by 'stslive keys' (relative to the working directory); "
            "set: pub/push admit viewer and controller keys, control only controller keys, and the "
            "endpoints may be beyond loopback; '' = no keys, loopback only",
        ),
    },
    "stop": {
        "results": Key("str", STOP["results"], "the analyser's results endpoint the stop rule reads; '' = no rule"),
        "figures": Key("list[str]", STOP["figures"], "figures whose 90 % intervals must be narrow"),
        "max_relative_width": Key("float", STOP["max_relative_width"], "largest (high - low) / |estimate|"),
        "action": Key("str", STOP["action"], "'stop' (exit success) or 'pause' (for the operator) when met"),
        "min_pixels": Key("int", STOP["min_pixels"], "not before this many pixels were analysed"),
    },
    "suspender": {
        "enabled": Key("bool", False, "pause while the temperature is outside [min_K, max_K]"),
        "min_K": Key("float", 0.0, "lower edge of the allowed band (K)"),
        "max_K": Key("float", 1.0, "upper edge of the allowed band (K)"),
        "hold_s": Key("float", 5.0, "the temperature must stay in the band this long before resuming (s)"),
        "poll_s": Key("float", 0.5, "thermometer read period while suspended (s)"),
    },
}

_PLAN_SECTIONS = ("grid", "line", "points")
_TOP = {"run", "instruments", "grid", "line", "points", "stream", "suspender", "stop", "setpoint_set"}
_INSTRUMENTS = {"nanonis", "lockin", "thermometer"}


def keys_table() -> str:
    """The reference table of every key (reStructuredText ``section.key | type | default | meaning``)."""
    rows = [("key", "type", "default", "meaning")]
    for section, keys in RUN_CONFIG_KEYS.items():
        for name, key in keys.items():
            default = "required" if key.default is _REQUIRED else repr(key.default)
            rows.append((f"{section}.{name}", key.type, default, key.doc))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = " ".join("=" * w for w in widths) + " " + "=" * 20
    lines = [rule, " ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=False)) + " " + rows[0][3], rule]
    lines += [" ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " " + r[3] for r in rows[1:]]
    return "\n".join([*lines, rule])


__doc__ = (__doc__ or "") + keys_table() + "\n"


def _check_value(where: str, key: Key, value: Any) -> Any:
    kind = key.type
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r} must be a finite number")
        return float(value)
    if kind == "table" and isinstance(value, Mapping):
        return dict(value)
    if kind.startswith("list[") and isinstance(value, list):
        item = Key(kind[5:-1], _REQUIRED, "")
        return [_check_value(f"{where}[{i}]", item, v) for i, v in enumerate(value)]
    raise ConfigError(f"{where} = {value!r} must be of type {kind}")


def parse_section(section: str, table: Any) -> dict[str, Any]:
    """Check ``table`` against :data:`RUN_CONFIG_KEYS` ``[section]``; defaults filled in.

    Raises
    ------
    ConfigError
        Naming ``section.key`` for an unknown key, a missing required key or a wrong type.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {type(table).__name__}")
    schema = RUN_CONFIG_KEYS[section]
    check_keys(table, schema, what=f"[{section}]")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        where = f"{section}.{name}"
        if name in table:
            out[name] = _check_value(where, key, table[name])
        elif key.default is _REQUIRED:
            raise ConfigError(f"{where} is required ({key.doc})")
        else:
            out[name] = list(key.default) if isinstance(key.default, list) else key.default
    return out


@dataclass(frozen=True)
class RunConfig:
    """A checked run configuration; build with :meth:`from_toml` or :meth:`from_dict`.

    Attributes hold the parsed sections (defaults filled in): ``run``, ``stream``, ``suspender``,
    ``instruments`` (name -> table, ``nanonis`` always present), ``plan_kind`` (``"grid"``,
    ``"line"`` or ``"points"``) with ``plan`` its table, and ``setpoint_sets``.
    """

    run: dict[str, Any]
    instruments: dict[str, dict[str, Any]]
    plan_kind: str
    plan: dict[str, Any]
    setpoint_sets: tuple[SetpointSet, ...]
    stream: dict[str, Any]
    suspender: dict[str, Any]
    source: str = field(default="", compare=False)
    stop: dict[str, Any] = field(default_factory=lambda: parse_section("stop", {}))

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """Read and check a TOML run file; ConfigError names the file and the key."""
        path = Path(path)
        doc = read_toml(path, what="run config", option="--config")
        try:
            return cls.from_dict(doc, source=str(path))
        except ConfigError as exc:
            raise ConfigError(f"run config {path}: {exc}") from None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "") -> RunConfig:
        """Check a parsed document (the TOML's tables as dicts)."""
        check_keys(doc, _TOP, what="top level")
        plans = [s for s in _PLAN_SECTIONS if s in doc]
        if len(plans) != 1:
            raise ConfigError(f"give exactly one of [grid], [line] or [points]; found {plans or 'none'}")
        plan_kind = plans[0]
        plan = parse_section(plan_kind, doc[plan_kind])
        if plan_kind == "grid":
            GridGeometry.from_dict(plan)  # validates sizes, counts and order, naming the key
        instruments_doc = doc.get("instruments", {})
        if not isinstance(instruments_doc, Mapping) or "nanonis" not in instruments_doc:
            raise ConfigError("instruments.nanonis is required (the STM controller's resource string)")
        check_keys(instruments_doc, _INSTRUMENTS, what="[instruments]")
        instruments = {name: parse_section(f"instruments.{name}", table) for name, table in instruments_doc.items()}
        sets_doc = doc.get("setpoint_set")
        if not isinstance(sets_doc, list) or not sets_doc:
            raise ConfigError("at least one [[setpoint_set]] table is required")
        sets = tuple(
            SetpointSet.from_dict(s) if isinstance(s, Mapping) else _not_table(i) for i, s in enumerate(sets_doc)
        )
        config = cls(
            run=parse_section("run", doc.get("run", {})),
            instruments=instruments,
            plan_kind=plan_kind,
            plan=plan,
            setpoint_sets=sets,
            stream=parse_section("stream", doc.get("stream", {})),
            suspender=parse_section("suspender", doc.get("suspender", {})),
            source=source,
            stop=parse_section("stop", doc.get("stop", {})),
        )
        config._check_consistency()
        return config

    def _check_consistency(self) -> None:
        ids = [s.id for s in self.setpoint_sets]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"setpoint_set.id values must be unique, got {ids}")
        points = {s.n_points for s in self.setpoint_sets}
        if len(points) != 1:
            raise ConfigError(
                f"setpoint_set.n_points must be equal in all sets of a run (archive axis), got {sorted(points)}"
            )
        run = self.run
        if run["setpoint_mode"] not in ("single", "alternate"):
            raise ConfigError(f"run.setpoint_mode = {run['setpoint_mode']!r} must be 'single' or 'alternate'")
        if not run["channels"] or len(set(run["channels"])) != len(run["channels"]):
            raise ConfigError(f"run.channels must be non-empty and unique, got {run['channels']}")
        for key in ("retries", "max_consecutive_failures"):
            if run[key] < (0 if key == "retries" else 1):
                raise ConfigError(f"run.{key} = {run[key]} is too small (retries >= 0, max_consecutive_failures >= 1)")
        StopRule.from_table(self.stop)  # its values, named stop.KEY
        for key in ("move_settle_s", "move_settle_per_nm_s", "heartbeat_s"):
            if run[key] < 0 or (key == "heartbeat_s" and run[key] == 0):
                raise ConfigError(f"run.{key} = {run[key]} must be >= 0 (heartbeat_s > 0)")
        if self.stream["header_format"] not in ("json", "msgpack"):
            raise ConfigError(f"stream.header_format = {self.stream['header_format']!r} must be 'json' or 'msgpack'")
        if not self.stream["pub"] and not self.stream["push"]:
            raise ConfigError("stream.pub and stream.push are both empty; give at least one endpoint")
        sus = self.suspender
        if sus["enabled"]:
            if "thermometer" not in self.instruments:
                raise ConfigError("suspender.enabled needs [instruments.thermometer]")
            if not 0 <= sus["min_K"] < sus["max_K"]:
                raise ConfigError(
                    f"suspender.min_K ({sus['min_K']}) must be >= 0 and < suspender.max_K ({sus['max_K']})"
                )
        if sus["hold_s"] < 0 or sus["poll_s"] <= 0:
            raise ConfigError("suspender.hold_s must be >= 0 and suspender.poll_s > 0 (s)")
        if self.plan_kind == "line" and self.plan["n"] < 2:
            raise ConfigError(f"line.n = {self.plan['n']} must be >= 2")
        if self.plan_kind == "points":
            xs, ys = self.plan["x_m"], self.plan["y_m"]
            if not xs or len(xs) != len(ys):
                raise ConfigError(
                    f"points.x_m and points.y_m must be non-empty and equally long ({len(xs)} vs {len(ys)})"
                )
        if run["tip_speed_m_per_s"] <= 0:
            raise ConfigError(f"run.tip_speed_m_per_s = {run['tip_speed_m_per_s']} must be > 0 (m/s)")
        problems = [f for f in setpoint_findings(self.instruments, run["channels"], self.setpoint_sets) if f.is_error]
        if problems:
            raise ConfigError("; ".join(str(f) for f in problems))

    @property
    def archive_channels(self) -> tuple[str, ...]:
        """Archive channel names: ``"Bias (V)"``, then ``run.channels`` with the wired lock-in
        input renamed to its dI/dV unit (``"Input 2 (V)"`` -> ``"Input 2 (A/V)"``)."""
        output = self.instruments.get("lockin", {}).get("output_channel", "")
        return ("Bias (V)", *(didv_channel_name(c) if output and c == output else c for c in self.run["channels"]))

    @property
    def n_points(self) -> int:
        """Points per sweep (equal in every set)."""
        return self.setpoint_sets[0].n_points

    def setpoint_set(self, set_id: int) -> SetpointSet:
        """The set with ``set_id``; ConfigError listing the ids when absent."""
        for s in self.setpoint_sets:
            if s.id == set_id:
                return s
        raise ConfigError(f"no set-point set with id {set_id}; ids are {[s.id for s in self.setpoint_sets]}")

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form (defaults filled in), accepted back by :meth:`from_dict`."""
        return {
            "run": dict(self.run),
            "instruments": {k: dict(v) for k, v in self.instruments.items()},
            self.plan_kind: dict(self.plan),
            "setpoint_set": [s.to_dict() for s in self.setpoint_sets],
            "stream": dict(self.stream),
            "suspender": dict(self.suspender),
            "stop": dict(self.stop),
        }

    def with_overrides(self, **sections: Mapping[str, Any]) -> RunConfig:
        """A copy with keys of some sections replaced, re-checked (CLI overrides, tests)."""
        doc = self.to_dict()
        for section, changes in sections.items():
            if section == "instruments":
                for name, table in changes.items():
                    doc["instruments"].setdefault(name, {}).update(table)
            else:
                doc.setdefault(section, {}).update(changes)
        return RunConfig.from_dict(doc, source=self.source)


def didv_channel_name(channel: str) -> str:
    """The archive name of a controller input archived as dI/dV: ``"Input 2 (V)"`` -> ``"Input 2 (A/V)"``."""
    head = channel.rpartition(" (")[0]
    return f"{head or channel} (A/V)"


def _not_table(index: int) -> SetpointSet:
    raise ConfigError(f"setpoint_set[{index}] must be a table ([[setpoint_set]])")
