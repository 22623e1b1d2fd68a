"""``stslive theory``: every theory quantity of docs/physics.md from the paper's inputs or yours.

Each quantity is computed by :mod:`stslive.live.theory` from the inputs below (CODATA constants);
beside it stands the value the paper quotes, where it quotes one, and the relative difference
(computed - paper) / paper. Nothing is tuned: a difference is a finding about the paper's
arithmetic or rounding, not an error to hide.

Usage: ``stslive theory [--json] [--set KEY=VALUE ...]``

Input keys (``--set``; SI units, as ``stslive analyse --set`` spells them; defaults are the paper's
inputs). ``gap_K``, the gap inside the log-cube, follows ``gap_eV`` (``gap_eV / k_B``) when only
``gap_eV`` is set: the paper's own pair (12 K beside 1.2 meV = 13.9 K) is kept only while neither is.

=========================  ========  ==========================================================
key                        default   meaning
=========================  ========  ==========================================================
r_sq_max_ohm               6800      R_sq(max) just above Tc, ohm; Eqs. (1), (B3), (C9)
r_sq_normal_ohm            7000      normal-state R_sq, ohm; Ginzburg number, Tc0/Tc
hbar_omega0_eV             10        plasma energy hbar omega_0, eV; Eqs. (1), (B3)
bias_V                     0.01      bias V at which alpha is taken, V; Eqs. (1), (2), (B3)
diffusion_m2_s             5e-05     diffusion constant D, m^2/s
mean_free_path_m           5e-10     elastic mean free path l, m; tau = l^2 / 3D
l_alpha_m                  1.8e-08   correlation length of alpha (and delta_rho), m; Eq. (2)
sigma_alpha                0.028     measured std of the alpha map; Eq. (2) -> sigma_rho
hbar_omega_D_K             300       Debye energy hbar omega_D, K; Eqs. (3), (C9)
gap_K                      12        gap Delta(0) inside the log-cube of Eqs. (3), (C9), K
gap_eV                     0.0012    mean measured gap <Delta>, eV; xi(0), Delta/kTc
tc_K                       3.8       measured critical temperature Tc, K
thickness_m                2.1e-09   film thickness d, m; transverse Thouless energy
=========================  ========  ==========================================================

An unknown key or a value that is not a positive number is a ``ConfigError`` naming the keys; a
key of the old display-unit spelling (``bias_mV=10``) is refused with its SI spelling and value.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from stslive.acquisition.cli.common import parse_assignments
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
    "bias_V": InputKey(0.01, "V", "bias V at which alpha is taken; Eqs. (1), (2), (B3)"),
    "diffusion_m2_s": InputKey(5e-5, "m^2/s", "diffusion constant D"),
    "mean_free_path_m": InputKey(5e-10, "m", "elastic mean free path l; tau = l^2 / 3D"),
    "l_alpha_m": InputKey(1.8e-8, "m", "correlation length of alpha (and delta_rho); Eq. (2)"),
    "sigma_alpha": InputKey(0.028, "", "measured std of the alpha map; Eq. (2) -> sigma_rho"),
    "hbar_omega_D_K": InputKey(300.0, "K", "Debye energy hbar omega_D; Eqs. (3), (C9)"),
    "gap_K": InputKey(12.0, "K", "gap Delta(0) inside the log-cube of Eqs. (3), (C9); follows gap_eV"),
    "gap_eV": InputKey(1.2e-3, "eV", "mean measured gap <Delta>; xi(0), Delta/kTc"),
    "tc_K": InputKey(3.8, "K", "measured critical temperature Tc"),
    "thickness_m": InputKey(2.1e-9, "m", "film thickness d; transverse Thouless energy"),
}

#: Keys of the old display-unit spelling -> (SI key, factor to SI); refused with the SI spelling.
RENAMED: dict[str, tuple[str, float]] = {
    "bias_mV": ("bias_V", 1e-3),
    "diffusion_cm2_s": ("diffusion_m2_s", 1e-4),
    "mean_free_path_nm": ("mean_free_path_m", 1e-9),
    "l_alpha_nm": ("l_alpha_m", 1e-9),
    "gap_meV": ("gap_eV", 1e-3),
    "thickness_nm": ("thickness_m", 1e-9),
}

#: Inputs derived from another when only that other is set: key -> (source key, rule).
FOLLOWS: dict[str, tuple[str, Callable[[float], float]]] = {
    "gap_K": ("gap_eV", lambda gap_eV: gap_eV / th.K_B_EV_PER_K),
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
    """The inputs: defaults updated by ``KEY=VALUE`` strings, then the inputs that follow them.

    An input of :data:`FOLLOWS` not set itself is derived from its source when the source is set
    (``gap_eV=1.5e-3`` alone makes ``gap_K`` 17.4 K).

    Raises
    ------
    ConfigError
        For a malformed pair, an unknown key, a key of the old spelling (:data:`RENAMED`; the
        message gives the SI spelling) or a value that is not a finite positive number.
    """
    pairs = list(pairs)
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key.strip() in RENAMED:
            new, factor = RENAMED[key.strip()]
            try:
                hint = f"--set {new}={float(text) * factor:g}"
            except ValueError:
                hint = f"--set {new}=VALUE"
            raise ConfigError(f"--set {pair}: the keys are in SI units, as analyse --set spells them: {hint}")
    values = {key: spec.default for key, spec in INPUTS.items()}
    given = parse_assignments(pairs, known=INPUTS)
    for key, text in given.items():
        try:
            number = float(text)
        except ValueError:
            unit = INPUTS[key].unit or "units of 1"
            raise ConfigError(f"--set {key}={text!r}: not a number. Give a positive number in {unit}.") from None
        if not (math.isfinite(number) and number > 0.0):
            raise ConfigError(f"--set {key}={text}: must be a finite number > 0 ({INPUTS[key].doc}).")
        values[key] = number
    for key, (source, rule) in FOLLOWS.items():
        if source in given and key not in given:
            values[key] = rule(values[source])
    return values


def evaluate(inputs: Mapping[str, float]) -> list[Quantity]:
    """Every theory quantity of docs/physics.md for ``inputs`` (keys of :data:`INPUTS`, display units)."""
    v = {key: float(inputs[key]) for key in INPUTS}
    bias_V, gap_eV, diffusion = v["bias_V"], v["gap_eV"], v["diffusion_m2_s"]
    r_max, r_normal = v["r_sq_max_ohm"], v["r_sq_normal_ohm"]
    tau = float(th.elastic_scattering_time_s(mean_free_path_m=v["mean_free_path_m"], diffusion_m2_s=diffusion))
    b3 = {"r_sq_ohm": r_max, "hbar_omega0_eV": v["hbar_omega0_eV"], "tau_s": tau}
    eq2 = {"bias_V": bias_V, "diffusion_m2_s": diffusion, "l_alpha_m": v["l_alpha_m"]}
    log3 = {"hbar_omega_D_K": v["hbar_omega_D_K"], "gap_K": v["gap_K"]}
    alpha = float(th.aa_exponent(r_max, bias_V=bias_V, hbar_omega0_eV=v["hbar_omega0_eV"]))
    sigma_rho = float(th.sheet_resistance_shift(v["sigma_alpha"], **eq2))
    xi_m = float(th.coherence_length_m(diffusion_m2_s=diffusion, gap_eV=gap_eV))
    q_d = float(th.debye_momentum_per_m(hbar_omega_D_K=v["hbar_omega_D_K"], diffusion_m2_s=diffusion))
    thouless = float(th.transverse_thouless_energy_K(diffusion_m2_s=diffusion, thickness_m=v["thickness_m"]))
    Q = Quantity
    return [
        Q("r_q", "resistance quantum R_Q = h/e^2", th.resistance_quantum_ohm() / 1e3, "kOhm", 25.8, "CODATA"),
        Q("alpha_eq1", "AA exponent alpha(V)", alpha, "", 0.29, "(1)", "measured mean 0.35"),
        Q(
            "alpha_b3",
            "alpha(eV) = -dS_homo/dlnE",
            float(th.aa_exponent_from_action(bias_V, **b3)),
            "",
            0.29,
            "(B3)",
            "must equal Eq. (1)",
        ),
        Q("s_homo", "S_homo(eV)", float(th.action_homogeneous(bias_V, **b3)), "", None, "(B3)"),
        Q("dos_ratio", "nu(eV)/nu_0 = exp(-S_homo)", float(th.dos_suppression(bias_V, **b3)), "", None, "(B3)"),
        Q("tau", "elastic scattering time tau = l^2/3D", tau * 1e15, "fs", 1.7, "Sec. II"),
        Q("hbar_over_tau", "hbar/tau", th.HBAR_EV_S / tau, "eV", 0.33, "Sec. III A"),
        Q("xi0", "coherence length xi(0) = sqrt(hbar D/Delta)", xi_m * 1e9, "nm", 5.2, "Sec. II"),
        Q("energy_ratio", "eV / (hbar D / l_alpha^2)", float(th.diffusive_energy_ratio(**eq2)), "", 70.0, "(2)"),
        Q("sigma_rho", "sigma_rho from sigma_alpha", sigma_rho / 1e3, "kOhm", 1.1, "(2)"),
        Q("sigma_rho_rel", "sigma_rho / R_sq(max)", sigma_rho / r_max, "", 0.16, "(2)"),
        Q(
            "log_cube",
            "ln^3(hbar omega_D / Delta)",
            float(th.log_cube_factor(**log3)),
            "",
            None,
            "(3)",
            f"Delta = gap_K = {v['gap_K']:.3g} K",
        ),
        Q(
            "sigma_delta_rel",
            "predicted sigma_Delta/<Delta>",
            abs(float(th.gap_relative_shift(sigma_rho, **log3))),
            "",
            0.074,
            "(3)",
            "measured 0.057",
        ),
        Q(
            "c9",
            "|delta_Delta_low / Delta_1| at rho = R_sq(max)",
            abs(float(th.gap_suppression_low_momentum(r_max, **log3))),
            "",
            0.55,
            "(C9)",
        ),
        Q("q_debye", "q_D = sqrt(omega_D / D)", q_d * 1e-9, "1/nm", 1.0, "Sec. III B"),
        Q("thouless_transverse", "hbar D (pi/d)^2", thouless, "K", 950.0, "App. C 1"),
        Q(
            "gap_in_K",
            "<Delta> in kelvin (gap_eV / k_B)",
            gap_eV / th.K_B_EV_PER_K,
            "K",
            12.0,
            "(3)",
            "paper uses 12 K in the log-cube",
        ),
        Q("ginzburg", "Gi = (e^2/16 hbar) R_sq", float(th.ginzburg_number(r_normal)), "", None, "Sec. IV"),
        Q(
            "tc0_over_tc",
            "Tc0/Tc from (Tc0-Tc)/Tc0 = 3 Gi",
            float(th.mean_field_tc_ratio(r_normal)),
            "",
            1.4,
            "Sec. IV",
        ),
        Q(
            "gap_over_kTc",
            "Delta(0)/(k_B Tc)",
            float(th.gap_to_tc_ratio(gap_eV=gap_eV, tc_K=v["tc_K"])),
            "",
            3.7,
            "Sec. IV",
            f"BCS {th.BCS_GAP_RATIO:.3f}",
        ),
    ]


def format_table(quantities: Iterable[Quantity]) -> str:
    """A plain-text table: quantity, value, unit, paper value, relative difference, equation, note."""
    rows = [("quantity", "value", "unit", "paper", "diff", "eq.", "note")]
    for q in quantities:
        paper = "-" if q.paper is None else f"{q.paper:.4g}"
        diff = "-" if q.rel_diff is None else f"{q.rel_diff:+.1%}"
        rows.append((q.label, f"{q.value:.4g}", q.unit, paper, diff, q.equation, q.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in rows)


def _keys_help() -> str:
    return (
        "input keys (--set KEY=VALUE; defaults are the paper's inputs):\n"
        + "\n".join(f"  {key:<20} {spec.default:<8g} {spec.unit:<7} {spec.doc}" for key, spec in INPUTS.items())
        + "\n(SI units; gap_K follows gap_eV when only gap_eV is set)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive theory``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _keys_help()
    parser.add_argument("--json", action="store_true", help="print inputs and quantities as JSON")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
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
