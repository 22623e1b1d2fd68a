"""Preflight: every set-point set against the limits and the instruments' ranges, before any motion.

Contract: :func:`setpoint_findings` checks a run config's sets against ``[instruments.nanonis.limits]``,
the lock-in model's ranges (frequency, harmonic x frequency, sine output = junction amplitude x
bias divider, time constant and sensitivity tables) and the lock-in wiring, from the config alone;
:class:`~stslive.acquisition.config.RunConfig` refuses a config with an error finding.
:func:`connect_findings` checks what only the connected instruments know (the recorded signals
exist, every plan point lies in the scan frame, the lock-in's model) and is run when the
instruments are opened, before the first move. :func:`estimate_run` gives the run time
(pixels x sweep + moves + settling). :func:`preflight` bundles them for ``stslive scan --check``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.drivers.errors import ConfigError, InstrumentError, SafetyLimitError, StsliveError
from stslive.drivers.limits import SafetyLimits
from stslive.drivers.sr830 import MODELS, LockInModel

if TYPE_CHECKING:  # config imports this module for the load-time checks; plans import config
    from stslive.acquisition.config import RunConfig
    from stslive.acquisition.pixel import Instruments
    from stslive.acquisition.plans import Plan


@dataclass(frozen=True)
class Finding:
    """One preflight result: ``level`` error (the run cannot start), note or ok; where; what."""

    level: Literal["error", "note", "ok"]
    where: str
    text: str

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _lockin_models(table: Mapping[str, Any]) -> list[LockInModel]:
    model = str(table.get("model", "") or "")
    return [MODELS[model]] if model in MODELS else list(MODELS.values())


def _lockin_problem(model: LockInModel, sp: SetpointSet, harmonic: int, divider: float) -> str | None:
    """Why ``model`` cannot take set ``sp`` (None if it can)."""
    s = model.settings
    checks: list[tuple[str, float]] = [
        ("frequency", sp.lockin_frequency_Hz),
        ("amplitude", sp.lockin_amplitude_Vrms * divider),
        ("harmonic", harmonic),
        ("time_constant", sp.lockin_time_constant_s),
        ("sensitivity", sp.lockin_sensitivity_V),
    ]
    for name, value in checks:
        try:
            s[name].encode(model.name, value)
        except SafetyLimitError as exc:
            what = " (sine output = lockin_amplitude_Vrms x bias_divider)" if name == "amplitude" else ""
            return f"{exc.detail}{what}"
    if harmonic * sp.lockin_frequency_Hz > model.max_detection_hz:
        return (
            f"harmonic {harmonic} x {sp.lockin_frequency_Hz:g} Hz exceeds the {model.name}'s "
            f"{model.max_detection_hz:g} Hz detection limit"
        )
    return None


def setpoint_findings(
    instruments: Mapping[str, Mapping[str, Any]], channels: Sequence[str], sets: Sequence[SetpointSet]
) -> list[Finding]:
    """Check every set against the limits, the lock-in's ranges and its wiring (config only)."""
    out: list[Finding] = []
    try:
        limits = SafetyLimits.from_mapping(instruments.get("nanonis", {}).get("limits", {}))
    except ConfigError as exc:
        return [Finding("error", "instruments.nanonis.limits", str(exc))]
    lockin = instruments.get("lockin")
    for sp in sets:
        where = f"setpoint_set[{sp.id}]"
        biases = (
            ("bias set-point", sp.bias_setpoint_V),
            ("sweep start", sp.sweep_start_V),
            ("sweep end", sp.sweep_end_V),
        )
        for what, volts in biases:
            try:
                limits.check_bias(volts, what=what)
            except SafetyLimitError as exc:
                out.append(Finding("error", where, exc.detail.split("; nothing was sent")[0]))
        try:
            limits.check_setpoint(sp.current_setpoint_A)
        except SafetyLimitError as exc:
            out.append(Finding("error", where, exc.detail.split("; nothing was sent")[0]))
        if sp.lockin_amplitude_Vrms > 0 and sp.lockin_frequency_Hz <= 0:
            out.append(Finding("error", where, "lockin_amplitude_Vrms is set but lockin_frequency_Hz is 0; give both"))
            continue
        if sp.lockin_amplitude_Vrms <= 0 or lockin is None:
            continue
        divider = float(lockin.get("bias_divider", 1.0))
        harmonic = int(lockin.get("harmonic", 1))
        reasons = [_lockin_problem(m, sp, harmonic, divider) for m in _lockin_models(lockin)]
        if all(reasons):
            out.append(Finding("error", where, f"the lock-in cannot take it: {'; '.join(r for r in reasons if r)}"))
    if lockin is not None:
        out += _wiring_findings(lockin, channels, sets)
    if not any(f.is_error for f in out):
        out.append(Finding("ok", "setpoint_set", f"{len(sets)} set(s) within the limits and the instruments' ranges"))
    return out


def _wiring_findings(lockin: Mapping[str, Any], channels: Sequence[str], sets: Sequence[SetpointSet]) -> list[Finding]:
    out: list[Finding] = []
    where = "instruments.lockin"
    output = str(lockin.get("output_channel", "") or "")
    for key in ("output_full_scale_V", "preamp_gain_V_per_A", "bias_divider"):
        if not float(lockin.get(key, 1.0)) > 0:
            out.append(Finding("error", where, f"{key} = {lockin.get(key)!r} must be > 0"))
    if int(lockin.get("harmonic", 1)) < 1:
        out.append(Finding("error", where, f"harmonic = {lockin.get('harmonic')!r} must be >= 1"))
    if lockin.get("interface", "") not in ("", "gpib", "rs232"):
        out.append(Finding("error", where, f"interface = {lockin.get('interface')!r}: use 'gpib', 'rs232' or ''"))
    if not output:
        if any(c.upper().startswith("LI DEMOD") for c in channels):
            out.append(
                Finding(
                    "note",
                    where,
                    "run.channels record the controller's internal demodulator (LI Demod), not this lock-in; "
                    "wire its X output to an input and name it in output_channel to record it",
                )
            )
        return out
    if output not in channels:
        out.append(Finding("error", where, f"output_channel {output!r} is not in run.channels {list(channels)}"))
    if not output.endswith("(V)"):
        out.append(Finding("error", where, f"output_channel {output!r} must be a controller input in volts '(V)'"))
    silent = [sp.id for sp in sets if sp.lockin_amplitude_Vrms <= 0]
    if silent:
        out.append(Finding("error", where, f"output_channel is wired but sets {silent} have no lockin_amplitude_Vrms"))
    return out


def connect_findings(config: RunConfig, plan: Plan, instruments: Instruments) -> list[Finding]:
    """Check what the connected instruments know: signals, scan frame, the lock-in model's ranges."""
    out: list[Finding] = []
    ctl = instruments.controller
    channel_index = getattr(ctl, "channel_index", None)
    if channel_index is not None:
        for name in config.run["channels"]:
            try:
                channel_index(name)
            except (ConfigError, InstrumentError) as exc:
                out.append(Finding("error", "run.channels", str(exc)))
    frame = ctl.get_scan_frame()
    outside = [p for p in plan if not frame.contains(p.x_m, p.y_m)]
    if outside:
        p = outside[0]
        out.append(
            Finding(
                "error",
                config.plan_kind,
                f"{len(outside)} of {len(plan)} points lie outside the controller's scan frame "
                f"({frame.width_m * 1e9:.4g} x {frame.height_m * 1e9:.4g} nm about ({frame.center_x_m * 1e9:.4g}, "
                f"{frame.center_y_m * 1e9:.4g}) nm, {frame.angle_deg:g} deg), e.g. ({p.x_m * 1e9:.4g}, "
                f"{p.y_m * 1e9:.4g}) nm; enlarge the frame on the controller or move the plan",
            )
        )
    lockin_table = config.instruments.get("lockin")
    model = getattr(instruments.lockin, "model", None)
    if lockin_table is not None and isinstance(model, LockInModel):
        divider = float(lockin_table["bias_divider"])
        for sp in config.setpoint_sets:
            if sp.lockin_amplitude_Vrms > 0:
                reason = _lockin_problem(model, sp, int(lockin_table["harmonic"]), divider)
                if reason:
                    out.append(Finding("error", f"setpoint_set[{sp.id}]", f"the {model.name} cannot take it: {reason}"))
    if not any(f.is_error for f in out):
        out.append(Finding("ok", "instruments", "signals recorded, plan inside the scan frame, lock-in ranges"))
    return out


@dataclass(frozen=True)
class RunEstimate:
    """Estimated run time (s) and its parts."""

    pixels: int
    sweeps_s: float
    moves_s: float
    settling_s: float

    @property
    def total_s(self) -> float:
        return self.sweeps_s + self.moves_s + self.settling_s


def sweep_time_s(sp: SetpointSet) -> float:
    """Nominal sweep time of a set (s): initial settling + points x integration (as configured per pixel)."""
    return sp.settle_s + sp.n_points * sp.integration_s


def estimate_run(config: RunConfig, plan: Plan) -> RunEstimate:
    """pixels x sweep (of the set each pixel uses) + path / tip speed + pixels x move_settle_s."""
    n = len(plan)
    sets = config.setpoint_sets
    if config.run["setpoint_mode"] == "alternate":
        sweeps = sum(sweep_time_s(sets[k % len(sets)]) for k in range(n))
    else:
        sweeps = n * sweep_time_s(sets[0])
    xy = np.array([(p.x_m, p.y_m) for p in plan])
    path = float(np.hypot(*np.diff(xy, axis=0).T).sum()) if n > 1 else 0.0
    return RunEstimate(n, sweeps, path / config.run["tip_speed_m_per_s"], n * config.run["move_settle_s"])


@dataclass
class PreflightReport:
    """Findings and the run-time estimate; :meth:`text` prints them, :meth:`raise_if_failed` stops."""

    findings: list[Finding] = field(default_factory=list)
    estimate: RunEstimate | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    def raise_if_failed(self) -> None:
        """ConfigError listing every error finding (nothing has moved)."""
        if self.errors:
            raise ConfigError("preflight failed: " + "; ".join(str(f) for f in self.errors))

    def text(self) -> str:
        lines = [f"{f.level:<6}{f}" for f in self.findings]
        if self.estimate is not None:
            e = self.estimate
            lines.append(
                f"estimate {e.pixels} pixels: {_duration(e.total_s)} (sweeps {_duration(e.sweeps_s)}, "
                f"moves {_duration(e.moves_s)}, settling {_duration(e.settling_s)})"
            )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    h, rest = divmod(round(seconds), 3600)
    return f"{h} h {rest // 60:02d} min {rest % 60:02d} s" if h else f"{rest // 60} min {rest % 60:02d} s"


def preflight(config: RunConfig, plan: Plan, instruments: Instruments | None = None) -> PreflightReport:
    """Load-time findings (the config is already checked), connect-time ones with ``instruments``, estimate."""
    report = PreflightReport(
        setpoint_findings(config.instruments, config.run["channels"], config.setpoint_sets), estimate_run(config, plan)
    )
    if instruments is not None:
        try:
            report.findings += connect_findings(config, plan, instruments)
        except StsliveError as exc:
            report.findings.append(Finding("error", "instruments", str(exc)))
    return report
