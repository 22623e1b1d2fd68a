"""Theory linking the AA exponent, the local sheet resistance and the gap (paper Sec. III, App. B, C).

Pure functions of their inputs with CODATA constants (``scipy.constants``), vectorised (float32
stays float32 where the coefficient is a Python float); units are in the argument names. Nothing
is tuned to a figure the paper quotes. :class:`TheoryConstants` holds the inputs of Eqs. (2), (3)
beyond the maps. Equations (R_Q = h/e^2; derivations in docs/physics.md):

=====  ==========================================================================================
(1)    alpha(V) = R_sq / (2 pi R_Q) ln(hbar omega_0 / eV)
(2)    delta_alpha(r, V) = delta_rho(r) / (2 pi R_Q) ln(eV / (hbar D / l_alpha^2))
(3)    delta_Delta(r) / <Delta> = - delta_rho(r) / (6 pi R_Q) ln^3(hbar omega_D / Delta(0))
(B3)   S_homo(E) = R_sq / (4 pi R_Q) (ln^2(omega_0 / E) - ln^2(omega_0 tau)),  alpha = -dS/dlnE
(C9)   delta_Delta_low / Delta_1 = - rho / (6 pi R_Q) ln^3(omega_D / Delta)
=====  ==========================================================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import constants as C

from stslive.drivers.errors import AnalysisError
from stslive.drivers.tomlfile import check_keys

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.floating]

#: Boltzmann constant in eV/K (CODATA via scipy.constants).
K_B_EV_PER_K: float = C.k / C.e
#: Reduced Planck constant in eV s.
HBAR_EV_S: float = C.hbar / C.e
#: BCS weak-coupling ratio Delta(0) / (k_B Tc) = pi / exp(Euler gamma).
BCS_GAP_RATIO: float = float(np.pi / np.exp(np.euler_gamma))


def resistance_quantum_ohm() -> float:
    """Resistance quantum R_Q = h / e^2 in ohm (CODATA, ~25 812.807 ohm)."""
    return float(C.h / C.e**2)


def _weak(value: FloatArray) -> FloatArray | float:
    """A 0-d result as a Python float, so multiplying a float32 map by it keeps float32 (NEP 50)."""
    return float(value) if np.ndim(value) == 0 else value


def _positive(name: str, value: ArrayLike) -> FloatArray:
    """``value`` as a float array, refusing anything not strictly positive and finite."""
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise AnalysisError(f"{name} must be finite and > 0 everywhere; got {value!r}. Pass a positive value.")
    return arr


def _bias_energy_eV(bias_V: ArrayLike) -> FloatArray:
    """Energy scale e|V| in eV of a bias in volts; zero bias has no AA exponent."""
    arr = np.asarray(bias_V)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    energy = np.abs(arr)
    if not np.all(np.isfinite(energy) & (energy > 0)):
        raise AnalysisError(f"bias_V must be finite and non-zero; got {bias_V!r}. The AA exponent needs |V| > 0.")
    return energy


def aa_exponent(r_sq_ohm: ArrayLike, *, bias_V: ArrayLike, hbar_omega0_eV: float = 10.0) -> FloatArray:
    """Altshuler-Aronov exponent of a homogeneous film, paper Eq. (1).

    alpha(V) = R_sq / (2 pi R_Q) * ln(hbar omega_0 / e|V|)

    Parameters
    ----------
    r_sq_ohm
        Sheet resistance R_sq in ohm.
    bias_V
        Bias voltage V in volt (the energy scale is e|V|; sign ignored).
    hbar_omega0_eV
        Plasma energy hbar omega_0 in eV (paper: 10 eV).

    Returns
    -------
    numpy.ndarray
        The dimensionless exponent alpha (paper: 0.29 for 6.8 kOhm, 10 mV).
    """
    energy = _bias_energy_eV(bias_V)
    omega0 = float(_positive("hbar_omega0_eV", hbar_omega0_eV))
    r_sq = np.asarray(r_sq_ohm)
    return r_sq * _weak(np.log(omega0 / energy) / (2.0 * np.pi * resistance_quantum_ohm()))


def diffusive_energy_ratio(*, bias_V: ArrayLike, diffusion_m2_s: ArrayLike, l_alpha_m: ArrayLike) -> FloatArray:
    """Ratio of the bias energy to the Thouless energy of the correlation length, eV / (hbar D / l_alpha^2).

    The argument of the logarithm of paper Eq. (2) (paper: ~70 for V = 10 mV, D = 0.5 cm^2/s,
    l_alpha = 18 nm).

    Parameters
    ----------
    bias_V
        Bias voltage in volt (sign ignored).
    diffusion_m2_s
        Diffusion constant D in m^2/s (0.5 cm^2/s = 5e-5 m^2/s).
    l_alpha_m
        Correlation length of the resistance fluctuations in metres.

    Returns
    -------
    numpy.ndarray
        e|V| l_alpha^2 / (hbar D), dimensionless.
    """
    energy = _bias_energy_eV(bias_V)
    d = _positive("diffusion_m2_s", diffusion_m2_s)
    length = _positive("l_alpha_m", l_alpha_m)
    return energy * length**2 / (HBAR_EV_S * d)


def aa_exponent_shift(
    delta_rho_ohm: ArrayLike, *, bias_V: ArrayLike, diffusion_m2_s: ArrayLike, l_alpha_m: ArrayLike
) -> FloatArray:
    """Local shift of the AA exponent from a local sheet-resistance shift, paper Eq. (2).

    delta_alpha(r, V) = delta_rho(r) / (2 pi R_Q) * ln(eV / (hbar D / l_alpha^2))

    Parameters
    ----------
    delta_rho_ohm
        Local sheet-resistance deviation delta_rho(r) = rho(r) - R_sq in ohm.
    bias_V, diffusion_m2_s, l_alpha_m
        As in :func:`diffusive_energy_ratio` (V, m^2/s, m).

    Returns
    -------
    numpy.ndarray
        delta_alpha, dimensionless, shaped like ``delta_rho_ohm`` broadcast with the others.
    """
    log_ratio = np.log(diffusive_energy_ratio(bias_V=bias_V, diffusion_m2_s=diffusion_m2_s, l_alpha_m=l_alpha_m))
    return np.asarray(delta_rho_ohm) * _weak(log_ratio / (2.0 * np.pi * resistance_quantum_ohm()))


def sheet_resistance_shift(
    delta_alpha: ArrayLike, *, bias_V: ArrayLike, diffusion_m2_s: ArrayLike, l_alpha_m: ArrayLike
) -> FloatArray:
    """Local sheet-resistance shift from an AA-exponent shift: paper Eq. (2) inverted.

    delta_rho(r) = 2 pi R_Q delta_alpha(r) / ln(eV / (hbar D / l_alpha^2))

    Parameters
    ----------
    delta_alpha
        Deviation of the AA exponent from its mean, dimensionless.
    bias_V, diffusion_m2_s, l_alpha_m
        As in :func:`diffusive_energy_ratio` (V, m^2/s, m).

    Returns
    -------
    numpy.ndarray
        delta_rho in ohm.

    Raises
    ------
    AnalysisError
        If eV <= hbar D / l_alpha^2: the logarithm is <= 0 and Eq. (2) does not apply (the paper's
        regime is E >> D / l_alpha^2).
    """
    ratio = diffusive_energy_ratio(bias_V=bias_V, diffusion_m2_s=diffusion_m2_s, l_alpha_m=l_alpha_m)
    if np.any(ratio <= 1.0):
        raise AnalysisError(
            "Eq. (2) needs eV > hbar D / l_alpha^2 (diffusive_energy_ratio > 1); "
            f"got ratio {np.min(ratio):.3g}. Use a larger bias or correlation length."
        )
    return np.asarray(delta_alpha) * _weak(2.0 * np.pi * resistance_quantum_ohm() / np.log(ratio))


def log_cube_factor(*, hbar_omega_D_K: ArrayLike, gap_K: ArrayLike) -> FloatArray:
    """ln^3(hbar omega_D / Delta), the Finkelstein log-cube of paper Eqs. (3) and (C9).

    Parameters
    ----------
    hbar_omega_D_K
        Debye energy in kelvin (paper: 300 K).
    gap_K
        Gap Delta(0) in kelvin (paper: 12 K).
    """
    return np.log(_positive("hbar_omega_D_K", hbar_omega_D_K) / _positive("gap_K", gap_K)) ** 3


def gap_relative_shift(delta_rho_ohm: ArrayLike, *, hbar_omega_D_K: ArrayLike, gap_K: ArrayLike) -> FloatArray:
    """Relative local gap shift from a local sheet-resistance shift, paper Eq. (3).

    delta_Delta(r) / <Delta> = - delta_rho(r) / (6 pi R_Q) * ln^3(hbar omega_D / Delta(0))

    Parameters
    ----------
    delta_rho_ohm
        Local sheet-resistance deviation in ohm.
    hbar_omega_D_K
        Debye energy in kelvin (paper: 300 K).
    gap_K
        Mean gap Delta(0) in kelvin (paper: 12 K).

    Returns
    -------
    numpy.ndarray
        delta_Delta / <Delta>, dimensionless (negative where the film is more resistive).
    """
    factor = log_cube_factor(hbar_omega_D_K=hbar_omega_D_K, gap_K=gap_K)
    return -np.asarray(delta_rho_ohm) * _weak(factor / (6.0 * np.pi * resistance_quantum_ohm()))


def gap_suppression_low_momentum(rho_ohm: ArrayLike, *, hbar_omega_D_K: ArrayLike, gap_K: ArrayLike) -> FloatArray:
    """Low-momentum gap suppression of a homogeneous film, paper Eq. (C9).

    delta_Delta_low / Delta_1 = - rho / (6 pi R_Q) * ln^3(omega_D / Delta)

    Same algebra as Eq. (3) with the full sheet resistance rho instead of a deviation; the paper
    quotes the magnitude (~0.55 for rho = 6.8 kOhm, 300 K, 12 K). Returns the signed value.

    Parameters
    ----------
    rho_ohm
        Sheet resistance in ohm.
    hbar_omega_D_K, gap_K
        Debye energy and gap in kelvin.
    """
    return gap_relative_shift(rho_ohm, hbar_omega_D_K=hbar_omega_D_K, gap_K=gap_K)


def action_homogeneous(
    energy_eV: ArrayLike, *, r_sq_ohm: float, hbar_omega0_eV: float = 10.0, tau_s: float
) -> FloatArray:
    """Tunnelling-DOS suppression exponent S_homo(E) of a homogeneous film, paper Eq. (B3).

    S_homo(E) = R_sq / (4 pi R_Q) * (ln^2(hbar omega_0 / E) - ln^2(omega_0 tau)),
    nu(E) = nu_0 exp(-S_homo(E)); S vanishes at E = hbar / tau.

    Parameters
    ----------
    energy_eV
        Energy E in eV (> 0).
    r_sq_ohm
        Sheet resistance in ohm.
    hbar_omega0_eV
        Plasma energy in eV.
    tau_s
        Elastic scattering time in seconds.

    Returns
    -------
    numpy.ndarray
        S_homo, dimensionless.
    """
    energy = _positive("energy_eV", energy_eV)
    omega0 = float(_positive("hbar_omega0_eV", hbar_omega0_eV))
    omega0_tau = omega0 * float(_positive("tau_s", tau_s)) / HBAR_EV_S
    prefactor = r_sq_ohm / (4.0 * np.pi * resistance_quantum_ohm())
    return prefactor * (np.log(omega0 / energy) ** 2 - np.log(omega0_tau) ** 2)


def aa_exponent_from_action(
    energy_eV: ArrayLike, *, r_sq_ohm: float, hbar_omega0_eV: float = 10.0, tau_s: float
) -> FloatArray:
    """alpha(E) = -dS_homo/dlnE from paper Eq. (B3), by central differences in ln E.

    Analytically this is Eq. (1), R_sq / (2 pi R_Q) ln(hbar omega_0 / E); it is computed here by
    differentiating :func:`action_homogeneous` numerically (step 1e-4 in ln E, error ~1e-9) so
    the two equations check each other instead of being the same line of code twice.

    Parameters
    ----------
    energy_eV
        Energy E in eV (> 0).
    r_sq_ohm, hbar_omega0_eV, tau_s
        As in :func:`action_homogeneous`.
    """
    energy = _positive("energy_eV", energy_eV).astype(np.float64)
    step = 1e-4
    kw = {"r_sq_ohm": r_sq_ohm, "hbar_omega0_eV": hbar_omega0_eV, "tau_s": tau_s}
    upper = action_homogeneous(energy * np.exp(step), **kw)
    lower = action_homogeneous(energy * np.exp(-step), **kw)
    return -(upper - lower) / (2.0 * step)


def dos_suppression(energy_eV: ArrayLike, *, r_sq_ohm: float, hbar_omega0_eV: float = 10.0, tau_s: float) -> FloatArray:
    """nu(E) / nu_0 = exp(-S_homo(E)), paper Eq. (B3) and below."""
    return np.exp(-action_homogeneous(energy_eV, r_sq_ohm=r_sq_ohm, hbar_omega0_eV=hbar_omega0_eV, tau_s=tau_s))


def coherence_length_m(*, diffusion_m2_s: ArrayLike, gap_eV: ArrayLike) -> FloatArray:
    """Dirty-limit coherence length xi(0) = sqrt(hbar D / Delta) in metres (paper: 5.2 nm).

    Parameters
    ----------
    diffusion_m2_s
        Diffusion constant in m^2/s.
    gap_eV
        Gap Delta in eV.
    """
    return np.sqrt(HBAR_EV_S * _positive("diffusion_m2_s", diffusion_m2_s) / _positive("gap_eV", gap_eV))


def elastic_scattering_time_s(*, mean_free_path_m: ArrayLike, diffusion_m2_s: ArrayLike) -> FloatArray:
    """Elastic scattering time tau = l^2 / (3 D) in seconds (paper: 1.7e-15 s for l = 0.5 nm).

    Parameters
    ----------
    mean_free_path_m
        Elastic mean free path l in metres.
    diffusion_m2_s
        Diffusion constant D in m^2/s.
    """
    return _positive("mean_free_path_m", mean_free_path_m) ** 2 / (3.0 * _positive("diffusion_m2_s", diffusion_m2_s))


def ginzburg_number(r_sq_ohm: ArrayLike) -> FloatArray:
    """2D Ginzburg number Gi = (e^2 / 16 hbar) R_sq, paper Sec. IV (= pi R_sq / (8 R_Q)).

    Parameters
    ----------
    r_sq_ohm
        Normal-state sheet resistance in ohm.
    """
    return np.asarray(r_sq_ohm) * (C.e**2 / (16.0 * C.hbar))


def mean_field_tc_ratio(r_sq_ohm: ArrayLike) -> FloatArray:
    """Tc0 / Tc from (Tc0 - Tc) / Tc0 = 3 Gi, paper Sec. IV (paper: ~1.4 for 7 kOhm).

    Tc0 / Tc = 1 / (1 - 3 Gi).

    Raises
    ------
    AnalysisError
        If 3 Gi >= 1 (the estimate has no meaning; R_sq >= 8 R_Q / (3 pi) ~ 21.9 kOhm).
    """
    three_gi = 3.0 * ginzburg_number(r_sq_ohm)
    if np.any(three_gi >= 1.0):
        raise AnalysisError(f"3 Gi = {np.max(three_gi):.3g} >= 1: the BKT estimate needs R_sq < 21.9 kOhm.")
    return 1.0 / (1.0 - three_gi)


def gap_to_tc_ratio(*, gap_eV: ArrayLike, tc_K: ArrayLike) -> FloatArray:
    """Delta(0) / (k_B Tc), dimensionless (paper: 3.7; BCS: 1.764).

    Parameters
    ----------
    gap_eV
        Gap Delta(0) in eV.
    tc_K
        Critical temperature in kelvin.
    """
    return _positive("gap_eV", gap_eV) / (K_B_EV_PER_K * _positive("tc_K", tc_K))


def resistance_map_from_alpha(
    alpha: ArrayLike, *, bias_V: float, diffusion_m2_s: float, l_alpha_m: float
) -> FloatArray:
    """Local sheet-resistance map delta_rho(r) from an AA-exponent map, paper Eq. (2) inverted.

    delta_rho(r) = 2 pi R_Q (alpha(r) - <alpha>) / ln(eV / (hbar D / l_alpha^2)), where <alpha>
    is the mean over the finite (measured) pixels; NaN pixels stay NaN.

    Parameters
    ----------
    alpha
        AA-exponent map, any shape.
    bias_V, diffusion_m2_s, l_alpha_m
        As in :func:`diffusive_energy_ratio`.

    Returns
    -------
    numpy.ndarray
        delta_rho in ohm, same shape (float32 stays float32).
    """
    arr = np.asarray(alpha)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not np.any(np.isfinite(arr)):
        raise AnalysisError("the alpha map has no finite pixel; analyse the spectra first.")
    deviation = arr - arr.dtype.type(np.nanmean(arr))
    return sheet_resistance_shift(deviation, bias_V=bias_V, diffusion_m2_s=diffusion_m2_s, l_alpha_m=l_alpha_m)


def gap_map_from_resistance(
    delta_rho_ohm: ArrayLike, *, mean_gap_eV: float, hbar_omega_D_K: float, gap_K: float
) -> FloatArray:
    """Predicted gap map Delta(r) = <Delta> (1 + delta_Delta/<Delta>) from a resistance map, paper Eq. (3).

    Parameters
    ----------
    delta_rho_ohm
        Local sheet-resistance deviation map in ohm (NaN stays NaN).
    mean_gap_eV
        <Delta> in eV, the mean the prediction is anchored to.
    hbar_omega_D_K, gap_K
        Debye energy and gap in kelvin for the log-cube.

    Returns
    -------
    numpy.ndarray
        Predicted Delta(r) in eV.
    """
    mean_gap = float(_positive("mean_gap_eV", mean_gap_eV))
    return mean_gap * (1.0 + gap_relative_shift(delta_rho_ohm, hbar_omega_D_K=hbar_omega_D_K, gap_K=gap_K))


def debye_momentum_per_m(*, hbar_omega_D_K: ArrayLike, diffusion_m2_s: ArrayLike) -> FloatArray:
    """q_D = sqrt(omega_D / D) in 1/m, paper Sec. III B (paper: ~1 nm^-1 for 300 K, 0.5 cm^2/s).

    Parameters
    ----------
    hbar_omega_D_K
        Debye energy in kelvin.
    diffusion_m2_s
        Diffusion constant in m^2/s.
    """
    omega_d_eV = K_B_EV_PER_K * _positive("hbar_omega_D_K", hbar_omega_D_K)
    return np.sqrt(omega_d_eV / (HBAR_EV_S * _positive("diffusion_m2_s", diffusion_m2_s)))


def transverse_thouless_energy_K(*, diffusion_m2_s: ArrayLike, thickness_m: ArrayLike) -> FloatArray:
    """Transverse Thouless energy hbar D (pi / d)^2 in kelvin, paper App. C 1 (paper: ~950 K).

    The film is 2D for the Finkelstein log-cube when this exceeds hbar omega_D.

    Parameters
    ----------
    diffusion_m2_s
        Diffusion constant in m^2/s.
    thickness_m
        Film thickness d in metres (paper: 2.1 nm).
    """
    wavenumber = np.pi / _positive("thickness_m", thickness_m)
    energy_eV = HBAR_EV_S * _positive("diffusion_m2_s", diffusion_m2_s) * wavenumber**2
    return energy_eV / K_B_EV_PER_K


@dataclass(frozen=True)
class TheoryConstants:
    """Inputs of paper Eqs. (2) and (3) beyond the measured maps (SI units, paper's values).

    Attributes
    ----------
    bias_V : float
        Bias at which Eq. (2) is evaluated, V (paper: V = 10 mV).
    diffusion_m2_s : float
        Diffusion constant D, m^2/s (paper: 0.5 cm^2/s = 5e-5 m^2/s).
    hbar_omega_D_K : float
        Debye energy hbar omega_D in kelvin, for the log-cube of Eq. (3) (paper: 300 K).
    """

    bias_V: float = 10e-3
    diffusion_m2_s: float = 0.5e-4
    hbar_omega_D_K: float = 300.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise AnalysisError(f"theory constant {f.name}={value!r} must be a finite number > 0 (SI units)")

    @classmethod
    def from_assignments(cls, assignments: Mapping[str, str | float]) -> TheoryConstants:
        """Constants from ``KEY=VALUE`` pairs (CLI ``--set``), converted to float; unknown keys list the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        check_keys(assignments, known, what="theory constant (SI units)", error=AnalysisError)
        values: dict[str, float] = {}
        for key, raw in assignments.items():
            try:
                values[key] = float(raw)
            except ValueError:
                raise AnalysisError(f"theory constant {key}={raw!r} is not a number; give e.g. {key}=1e-2") from None
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """The constants by name (SI units), as written to report.json."""
        return dataclasses.asdict(self)


def sheet_resistance_sigma(alpha_std: float, l_alpha_m: float, *, constants: TheoryConstants) -> float:
    """sigma_rho in ohm from the spread of alpha, paper Eq. (2) inverted.

    sigma_rho = 2 pi R_Q sigma_alpha / ln(eV / (hbar D / l_alpha^2)); NaN when alpha_std or
    l_alpha is not finite, or when eV <= hbar D / l_alpha^2 (Eq. (2) does not apply there).
    """
    if not (math.isfinite(alpha_std) and math.isfinite(l_alpha_m) and l_alpha_m > 0):
        return math.nan
    ratio = float(
        diffusive_energy_ratio(bias_V=constants.bias_V, diffusion_m2_s=constants.diffusion_m2_s, l_alpha_m=l_alpha_m)
    )
    if ratio <= 1.0:
        return math.nan
    return float(
        sheet_resistance_shift(
            alpha_std, bias_V=constants.bias_V, diffusion_m2_s=constants.diffusion_m2_s, l_alpha_m=l_alpha_m
        )
    )


def predicted_gap_spread(sigma_rho_ohm: float, mean_gap_eV: float, *, constants: TheoryConstants) -> float:
    """|delta_Delta| / <Delta> expected from sigma_rho, paper Eq. (3) with Delta(0) = the measured mean gap."""
    if not (math.isfinite(sigma_rho_ohm) and math.isfinite(mean_gap_eV) and mean_gap_eV > 0):
        return math.nan
    gap_K = mean_gap_eV / K_B_EV_PER_K
    if gap_K >= constants.hbar_omega_D_K:
        return math.nan
    return abs(float(gap_relative_shift(sigma_rho_ohm, hbar_omega_D_K=constants.hbar_omega_D_K, gap_K=gap_K)))
