"""The parameters of the simulated NbN film and of its tip (SI units, energies in eV).

:class:`FilmParams` defines a film completely (the same parameters give bit-identical maps and
spectra); :class:`TipState` changes the tip for fault injection. Both refuse invalid values with
:class:`~stslive.drivers.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import ConfigError
from stslive.drivers.tomlfile import check_keys

__all__ = ["FilmParams", "TipState"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FilmParams:
    """Everything that defines a simulated film. SI units, energies in eV.

    Sources: "paper" = the reference paper (docs/physics.md), "reference" = the reference
    measurement conditions of the analysis, "chosen" = a modelling choice documented here.

    Attributes
    ----------
    ny, nx
        Grid size in pixels (paper: 250 x 300).
    pixel_m
        Pixel pitch (paper: one spectrum per nm^2 -> 1e-9 m).
    seed
        Seed of every random stream of the film.
    temperature_K
        Sample temperature (paper: 0.3 K).
    bias_start_V, bias_end_V, n_points
        Default sweep (reference: 1601 points over -40..+40 mV; sweep direction follows start->end).
    v_set_V, i_set_A
        Spectroscopy set-point (paper: -10 mV, 150 pA). ``i_set_A`` is the set-point *magnitude*;
        the current has the sign of the bias (I = C int_0^{eV} G, C > 0), so
        I(v_set_V) = sign(v_set_V) * i_set_A.
    current_noise_A
        rms Gaussian noise of each I(V) sample (reference: 0.5 pA).
    modulation_Vrms
        Lock-in bias modulation, rms (chosen: 50 uV rms = 71 uV amplitude, below the 0.1 meV
        scale of the coherence peaks and the usual choice at 300 mK; it broadens by ~k_B T).
    lockin_noise_A
        rms Gaussian noise of each lock-in X sample (chosen: 0.1 pA. A current-noise density of
        ~30 fA/sqrt(Hz), which gives the 0.5 pA of the I(V) channel in its ~280 Hz bandwidth, seen
        through a lock-in equivalent noise bandwidth of ~11 Hz, i.e. a ~7 ms time constant at
        24 dB/oct: the lock-in trades sweep time for a cleaner dI/dV).
    r_sq_ohm
        Mean sheet resistance (paper: 6.8 kOhm); delta_rho is the deviation from it.
    sigma_rho_ohm
        Standard deviation of delta_rho (paper: 1.1 kOhm, inferred via Eq. (2)).
    l_rho_m
        1/e correlation length of delta_rho, covariance sigma^2 exp(-r^2/l^2) (paper: l_alpha =
        18 nm); also the l_alpha of Eq. (2).
    alpha_mean
        Mean AA exponent of the background model (paper: measured mean 0.35).
    aa_bias_V
        Bias at which Eq. (2) is evaluated (paper: 10 mV).
    diffusion_m2_s
        Diffusion constant D (paper: 0.5 cm^2/s) for Eq. (2) and xi = sqrt(hbar D / Delta).
    delta_mean_eV
        Mean gap <Delta> (paper: 1.2 meV).
    hbar_omega_D_K, gap_eq3_K
        Debye energy and Delta(0) in the log-cube of Eq. (3) (paper: 300 K and 12 K; note
        1.2 meV is 13.9 K, the paper's Eq. (3) input is 12 K and is kept as stated).
    gap_smoothing_xi
        Standard deviation of the Gaussian smoothing of the Eq. (3) gap map, in units of xi(0)
        (chosen: 2 xi = 10.4 nm; the gap cannot vary on scales below a few xi, and this makes
        l_Delta = sqrt(l_rho^2 + 4 s^2) ~ 28 nm > l_alpha, the paper's 27 vs 18 nm).
    dynes_gamma_eV
        Dynes broadening Gamma (chosen: 0.1 meV ~ 0.08 Delta: suppressed coherence peaks of a
        2 nm film, and in-gap states from pair breaking, zero-bias DOS
        Gamma / sqrt(Gamma^2 + Delta^2) ~ 0.08; the paper attributes its in-gap states to
        paramagnetic defects, which is what a Dynes rate describes).
    aa_saturation_eV
        E_sat of the AA background ((E^2 + E_sat^2)/E_sat^2)^(alpha/2) (chosen: = <Delta>; the
        paper's background "saturates below about Delta").
    dos_slope_per_eV
        s of the asymmetry factor 1 + s E (chosen: 1 /eV, +-3 % at +-30 mV: "slight asymmetry ...
        probably from a non-constant tip DOS").
    grain_diameter_m, grain_height_m
        (min, max) of the topography's crystallites (paper: 2-5 nm; chosen heights 0.1-0.3 nm).
    energy_step_eV
        Largest step of the fine convolution grid (chosen: 12.5 uV = Gamma/8 ~ k_B T/2 at 0.3 K;
        a quarter of the default 50 uV sweep step so bias points are grid points).
    """

    ny: int
    nx: int
    pixel_m: float = 1e-9
    seed: int = 0
    temperature_K: float = 0.3
    bias_start_V: float = -0.04
    bias_end_V: float = 0.04
    n_points: int = 1601
    v_set_V: float = -0.010
    i_set_A: float = 150e-12
    current_noise_A: float = 0.5e-12
    modulation_Vrms: float = 50e-6
    lockin_noise_A: float = 0.1e-12
    r_sq_ohm: float = 6800.0
    sigma_rho_ohm: float = 1100.0
    l_rho_m: float = 18e-9
    alpha_mean: float = 0.35
    aa_bias_V: float = 0.010
    diffusion_m2_s: float = 0.5e-4
    delta_mean_eV: float = 1.2e-3
    hbar_omega_D_K: float = 300.0
    gap_eq3_K: float = 12.0
    gap_smoothing_xi: float = 2.0
    dynes_gamma_eV: float = 0.1e-3
    aa_saturation_eV: float = 1.2e-3
    dos_slope_per_eV: float = 1.0
    grain_diameter_m: tuple[float, float] = (2e-9, 5e-9)
    grain_height_m: tuple[float, float] = (0.1e-9, 0.3e-9)
    energy_step_eV: float = 12.5e-6

    def __post_init__(self) -> None:
        for name in ("ny", "nx", "n_points", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"film parameter {name} must be an integer, got {value!r}.")
        if self.ny < 1 or self.nx < 1 or self.n_points < 3 or self.seed < 0:
            raise ConfigError("film needs ny, nx >= 1, n_points >= 3 and seed >= 0; fix the grid or seed.")
        positive = (
            "pixel_m",
            "temperature_K",
            "i_set_A",
            "r_sq_ohm",
            "l_rho_m",
            "diffusion_m2_s",
            "delta_mean_eV",
            "hbar_omega_D_K",
            "gap_eq3_K",
            "dynes_gamma_eV",
            "aa_saturation_eV",
            "energy_step_eV",
            "aa_bias_V",
        )
        non_negative = ("current_noise_A", "modulation_Vrms", "lockin_noise_A", "sigma_rho_ohm", "gap_smoothing_xi")
        for name in positive + non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                bound = "> 0" if name in positive else ">= 0"
                raise ConfigError(f"film parameter {name} must be finite and {bound}, got {value!r}.")
        if self.bias_start_V == self.bias_end_V or self.v_set_V == 0:
            raise ConfigError("the sweep needs bias_start_V != bias_end_V and a non-zero v_set_V.")
        if not math.isfinite(self.alpha_mean) or not math.isfinite(self.dos_slope_per_eV):
            raise ConfigError("alpha_mean and dos_slope_per_eV must be finite.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FilmParams:
        """Parameters from a mapping (CLI/TOML); unknown keys are refused with the known ones.

        Values are converted to the field's type: int (no fraction, no bool), float (not bool),
        or a pair of floats.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        check_keys(values, known, what="film parameter", error=ConfigError)
        converted: dict[str, Any] = {}
        for key, value in values.items():
            kind = known[key].type
            try:
                if kind == "int":
                    if isinstance(value, bool) or int(value) != value:
                        raise ValueError(value)
                    converted[key] = int(value)
                elif kind == "float":
                    if isinstance(value, bool):
                        raise ValueError(value)
                    converted[key] = float(value)
                else:
                    pair = tuple(float(v) for v in value)
                    if len(pair) != 2:
                        raise ValueError(value)
                    converted[key] = pair
            except (TypeError, ValueError):
                raise ConfigError(f"film parameter {key} = {value!r} is not a valid {kind}.") from None
        return cls(**converted)

    def default_bias_V(self) -> FloatArray:
        """The default sweep, ``np.linspace(bias_start_V, bias_end_V, n_points)`` in V."""
        return np.linspace(self.bias_start_V, self.bias_end_V, self.n_points)


@dataclass(frozen=True)
class TipState:
    """State of the tip, for fault injection (tip changes).

    Attributes
    ----------
    dos_factor
        Multiplies both channels *after* the set-point normalisation: the junction conductance
        changed after the feedback loop was opened (a tip change mid-spectrum). 1 = healthy tip.
        (A factor before the normalisation would cancel exactly: the set-point absorbs it.)
    extra_slope_per_eV
        Added to the film's asymmetry slope s of the DOS factor 1 + s E (a tip whose DOS tilted).
    """

    dos_factor: float = 1.0
    extra_slope_per_eV: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dos_factor) and self.dos_factor >= 0 and math.isfinite(self.extra_slope_per_eV)):
            raise ConfigError(f"TipState needs a finite dos_factor >= 0 and a finite slope, got {self!r}.")
