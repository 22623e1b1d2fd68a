"""``stslive theory``: every theory quantity of PHYSICS.md from the paper's inputs or yours.

Each quantity is computed by :mod:`stslive.live.theory` from the inputs below (CODATA constants);
beside it stands the value the paper quotes, where it quotes one, and the relative difference
(computed - paper) / paper. Nothing is tuned: a difference is a finding about the paper's
arithmetic or rounding, not an error to hide.

Usage: ``stslive theory [--json] [--set KEY=VALUE ...]``

Input keys (``--set``; defaults are the paper's inputs)

=========================  ========  ==========================================================
key                        default   meaning
=========================  ========  ==========================================================
r_sq_max_ohm               6800      R_sq(max) just above Tc, ohm; Eqs. (1), (B3), (C9)
r_sq_normal_ohm            7000      normal-state R_sq, ohm; Ginzburg number, Tc0/Tc
hbar_omega0_eV             10        plasma energy hbar omega_0, eV; Eqs. (1), (B3)
bias_mV                    10        bias V at which alpha is taken, mV; Eqs. (1), (2), (B3)
diffusion_cm2_s            0.5       diffusion constant D, cm^2/s
mean_free_path_nm          0.5       elastic mean free path l, nm; tau = l^2 / 3D
l_alpha_nm                 18        correlation length of alpha (and delta_rho), nm; Eq. (2)
sigma_alpha                0.028     measured std of the alpha map; Eq. (2) -> sigma_rho
hbar_omega_D_K             300       Debye energy hbar omega_D, K; Eqs. (3), (C9)
gap_K                      12        gap Delta(0) inside the log-cube of Eqs. (3), (C9), K
gap_meV                    1.2       mean measured gap <Delta>, meV; xi(0), Delta/kTc
tc_K                       3.8       measured critical temperature Tc, K
thickness_nm               2.1       film thickness d, nm; transverse Thouless energy
=========================  ========  ==========================================================

An unknown key or a value that is not a positive number is a ``ConfigError`` naming the keys.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from stslive.drivers.errors import ConfigError
from stslive.live import theory as th


class InputKey(NamedTuple):
    """One ``--set`` key: its default (the paper's input), display unit and meaning."""

    default: float
    unit: str
    doc: str


#: The ``--set`` keys; the module docstring table mirrors this (a test checks it).
INPUTS: dict[str, InputKey] = {
    "r_sq_max_ohm": InputKey(6800.0, "ohm", "R_sq(max) just above Tc; Eqs. (1), (B3), (C9)"),
    "r_sq_normal_ohm": InputKey(7000.0, "ohm", "normal-state R_sq; Ginzburg number, Tc0/Tc"),
    "hbar_omega0_eV": InputKey(10.0, "eV", "plasma energy hbar omega_0; Eqs. (1), (B3)"),
    "bias_mV": InputKey(10.0, "mV", "bias V at which alpha is taken; Eqs. (1), (2), (B3)"),
    "diffusion_cm2_s": InputKey(0.5, "cm^2/s", "diffusion constant D"),
    "mean_free_path_nm": InputKey(0.5, "nm", "elastic mean free path l; tau = l^2 / 3D"),
    "l_alpha_nm": InputKey(18.0, "nm", "correlation length of alpha (and delta_rho); Eq. (2)"),
    "sigma_alpha": InputKey(0.028, "", "measured std of the alpha map; Eq. (2) -> sigma_rho"),
    "hbar_omega_D_K": InputKey(300.0, "K", "Debye energy hbar omega_D; Eqs. (3), (C9)"),
    "gap_K": InputKey(12.0, "K", "gap Delta(0) inside the log-cube of Eqs. (3), (C9)"),
    "gap_meV": InputKey(1.2, "meV", "mean measured gap <Delta>; xi(0), Delta/kTc"),
    "tc_K": InputKey(3.8, "K", "measured critical temperature Tc"),
    "thickness_nm": InputKey(2.1, "nm", "film thickness d; transverse Thouless energy"),
}


class Quantity(NamedTuple):
    """One computed quantity beside the paper's quoted value (``None`` where it quotes none)."""

    key: str
    label: str
    value: float
    unit: str
    paper: float | None
    equation: str
    note: str = ""

    @property
    def rel_diff(self) -> float | None:
        """(value - paper) / paper, or ``None`` without a paper value."""
        return None if self.paper is None else (self.value - self.paper) / self.paper


def parse_overrides(pairs: Iterable[str]) -> dict[str, float]:
    """The inputs: defaults updated by ``KEY=VALUE`` strings.

    Raises
    ------
    ConfigError
        For a malformed pair, an unknown key or a value that is not a finite positive number.
    """
    values = {key: spec.default for key, spec in INPUTS.items()}
    valid = ", ".join(INPUTS)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE. Valid keys: {valid}.")
        if key not in INPUTS:
            raise ConfigError(f"--set: unknown key {key!r}. Valid keys: {valid}.")
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text!r}: not a number. Give a positive number in {INPUTS[key].unit or 'units of 1'}.") from None
        if not (math.isfinite(number) and number > 0.0):
            raise ConfigError(f"--set {key}={text}: must be a finite number > 0 ({INPUTS[key].doc}).")
        values[key] = number
    return values


def evaluate(inputs: Mapping[str, float]) -> list[Quantity]:
    """Every theory quantity of PHYSICS.md for ``inputs`` (keys of :data:`INPUTS`, display units)."""
    v = {key: float(inputs[key]) for key in INPUTS}
    bias_V = v["bias_mV"] * 1e-3
    diffusion = v["diffusion_cm2_s"] * 1e-4
    l_alpha = v["l_alpha_nm"] * 1e-9
    gap_eV = v["gap_meV"] * 1e-3
    tau = float(th.elastic_scattering_time_s(mean_free_path_m=v["mean_free_path_nm"] * 1e-9, diffusion_m2_s=diffusion))
    b3 = {"r_sq_ohm": v["r_sq_max_ohm"], "hbar_omega0_eV": v["hbar_omega0_eV"], "tau_s": tau}
    eq2 = {"bias_V": bias_V, "diffusion_m2_s": diffusion, "l_alpha_m": l_alpha}
    log3 = {"hbar_omega_D_K": v["hbar_omega_D_K"], "gap_K": v["gap_K"]}
    sigma_rho = float(th.sheet_resistance_shift(v["sigma_alpha"], **eq2))
    three_gi_ratio = float(th.mean_field_tc_ratio(v["r_sq_normal_ohm"]))
    return [
        Quantity("r_q", "resistance quantum R_Q = h/e^2", th.resistance_quantum_ohm() / 1e3, "kOhm", 25.8, "CODATA"),
        Quantity("alpha_eq1", "AA exponent alpha(V)", float(th.aa_exponent(v["r_sq_max_ohm"], bias_V=bias_V, hbar_omega0_eV=v["hbar_omega0_eV"])), "", 0.29, "(1)", "measured mean 0.35"),
        Quantity("alpha_b3", "alpha(eV) = -dS_homo/dlnE", float(th.aa_exponent_from_action(bias_V, **b3)), "", 0.29, "(B3)", "must equal Eq. (1)"),
        Quantity("s_homo", "S_homo(eV)", float(th.action_homogeneous(bias_V, **b3)), "", None, "(B3)"),
        Quantity("dos_ratio", "nu(eV)/nu_0 = exp(-S_homo)", float(th.dos_suppression(bias_V, **b3)), "", None, "(B3)"),
        Quantity("tau", "elastic scattering time tau = l^2/3D", tau * 1e15, "fs", 1.7, "Sec. II"),
        Quantity("hbar_over_tau", "hbar/tau", th.HBAR_EV_S / tau, "eV", 0.33, "Sec. III A"),
        Quantity("xi0", "coherence length xi(0) = sqrt(hbar D/Delta)", float(th.coherence_length_m(diffusion_m2_s=diffusion, gap_eV=gap_eV)) * 1e9, "nm", 5.2, "Sec. II"),
        Quantity("energy_ratio", "eV / (hbar D / l_alpha^2)", float(th.diffusive_energy_ratio(**eq2)), "", 70.0, "(2)"),
        Quantity("sigma_rho", "sigma_rho from sigma_alpha", sigma_rho / 1e3, "kOhm", 1.1, "(2)"),
        Quantity("sigma_rho_rel", "sigma_rho / R_sq(max)", sigma_rho / v["r_sq_max_ohm"], "", 0.16, "(2)"),
        Quantity("log_cube", "ln^3(hbar omega_D / Delta)", float(th.log_cube_factor(**log3)), "", None, "(3)"),
        Quantity("sigma_delta_rel", "predicted sigma_Delta/<Delta>", abs(float(th.gap_relative_shift(sigma_rho, **log3))), "", 0.074, "(3)", "measured 0.057"),
        Quantity("c9", "|delta_Delta_low / Delta_1| at rho = R_sq(max)", abs(float(th.gap_suppression_low_momentum(v["r_sq_max_ohm"], **log3))), "", 0.55, "(C9)"),
        Quantity("q_debye", "q_D = sqrt(omega_D / D)", float(th.debye_momentum_per_m(hbar_omega_D_K=v["hbar_omega_D_K"], diffusion_m2_s=diffusion)) * 1e-9, "1/nm", 1.0, "Sec. III B"),
        Quantity("thouless_transverse", "hbar D (pi/d)^2", float(th.transverse_thouless_energy_K(diffusion_m2_s=diffusion, thickness_m=v["thickness_nm"] * 1e-9)), "K", 950.0, "App. C 1"),
        Quantity("gap_in_K", "<Delta> in kelvin (gap_meV / k_B)", gap_eV / th.K_B_EV_PER_K, "K", 12.0, "(3)", "paper uses 12 K in the log-cube"),
        Quantity("ginzburg", "Gi = (e^2/16 hbar) R_sq", float(th.ginzburg_number(v["r_sq_normal_ohm"])), "", None, "Sec. IV"),
        Quantity("tc0_over_tc", "Tc0/Tc from (Tc0-Tc)/Tc0 = 3 Gi", three_gi_ratio, "", 1.4, "Sec. IV"),
        Quantity("gap_over_kTc", "Delta(0)/(k_B Tc)", float(th.gap_to_tc_ratio(gap_eV=gap_eV, tc_K=v["tc_K"])), "", 3.7, "Sec. IV", f"BCS {th.BCS_GAP_RATIO:.3f}"),
    ]


def format_table(quantities: Iterable[Quantity]) -> str:
    """A plain-text table: quantity, value, unit, paper value, relative difference, equation, note."""
    rows = [("quantity", "value", "unit", "paper", "diff", "eq.", "note")]
    for q in quantities:
        paper = "-" if q.paper is None else f"{q.paper:.4g}"
        diff = "-" if q.rel_diff is None else f"{q.rel_diff:+.1%}"
        rows.append((q.label, f"{q.value:.4g}", q.unit, paper, diff, q.equation, q.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _keys_help() -> str:
    return "input keys (--set KEY=VALUE; defaults are the paper's inputs):\n" + "\n".join(
        f"  {key:<20} {spec.default:<8g} {spec.unit:<7} {spec.doc}" for key, spec in INPUTS.items()
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive theory``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _keys_help()
    parser.add_argument("--json", action="store_true", help="print inputs and quantities as JSON")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one input (repeatable); keys below",
    )


def run(args: argparse.Namespace) -> int:
    """Print the theory table (or JSON) for the paper's inputs with ``--set`` overrides."""
    inputs = parse_overrides(args.overrides)
    quantities = evaluate(inputs)
    if args.json:
        doc = {
            "inputs": {key: {"value": inputs[key], "unit": spec.unit} for key, spec in INPUTS.items()},
            "quantities": [{**q._asdict(), "rel_diff": q.rel_diff} for q in quantities],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(quantities))
    return 0
