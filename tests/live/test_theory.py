"""Theory of paper Sec. III / App. B, C and the ``stslive theory`` command.

Values are asserted against numbers computed by hand from the paper's *inputs*; where the
paper's quoted figure differs, a test pins the difference so a change of it is noticed:

| quantity                     | computed  | paper | difference |
|------------------------------|-----------|-------|------------|
| alpha, Eq. (1)               | 0.28962   | 0.29  | -0.1 %     |
| eV / (hbar D / l_alpha^2)    | 98.45     | 70    | +40.6 %    |
| sigma_rho, Eq. (2)           | 0.9895 kO | 1.1   | -10.0 %    |
| sigma_Delta/<Delta>, Eq. (3) | 0.0678    | 0.074 | -8.3 %     |
|   same with sigma_rho = 1.1k | 0.0754    | 0.074 | +1.9 %     |
| C9 at 6.8 kOhm               | 0.4661    | 0.55  | -15.3 %    |
| Tc0/Tc                       | 1.469     | 1.4   | +5.0 %     |
| hbar/tau                     | 0.395 eV  | 0.33  | +19.7 %    |
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.cli import theory as theory_cli
from stslive.drivers.errors import AnalysisError, ConfigError
from stslive.live import theory as th
from stslive.live.theory import TheoryConstants, predicted_gap_spread, sheet_resistance_sigma

R_Q = 25812.807459304513  # h/e^2, exact since the 2019 SI redefinition
EQ2 = {"bias_V": 0.01, "diffusion_m2_s": 0.5e-4, "l_alpha_m": 18e-9}
LOG3 = {"hbar_omega_D_K": 300.0, "gap_K": 12.0}


def rel(value: float, reference: float) -> float:
    return (value - reference) / reference


def test_resistance_quantum_is_codata_exact() -> None:
    assert th.resistance_quantum_ohm() == pytest.approx(R_Q, rel=1e-12)


def test_eq1_alpha_for_paper_inputs() -> None:
    alpha = float(th.aa_exponent(6800.0, bias_V=0.01))
    assert alpha == pytest.approx(6800.0 / (2 * math.pi * R_Q) * math.log(1000.0), rel=1e-12)
    assert alpha == pytest.approx(0.289621, abs=1e-6)
    assert rel(alpha, 0.29) == pytest.approx(-0.0013, abs=0.0005)  # paper: 0.29


def test_eq1_vectorised_sign_blind_and_float32() -> None:
    r = np.array([3000.0, 6800.0], dtype=np.float32)
    alpha = th.aa_exponent(r, bias_V=-0.01)
    assert alpha.dtype == np.float32 and alpha.shape == (2,)
    np.testing.assert_allclose(alpha[1], 0.28962146, rtol=1e-6)
    grid = th.aa_exponent(6800.0, bias_V=np.array([[0.005], [0.03]]))
    assert grid.shape == (2, 1) and grid[0, 0] > grid[1, 0]  # alpha falls with the energy scale


def test_eq1_refuses_zero_bias() -> None:
    with pytest.raises(AnalysisError, match="non-zero"):
        th.aa_exponent(6800.0, bias_V=np.array([0.01, 0.0]))


def test_eq2_energy_ratio_and_sigma_rho_against_paper() -> None:
    ratio = float(th.diffusive_energy_ratio(**EQ2))
    # e V l^2 / (hbar D) by hand: 0.01 eV * (18e-9 m)^2 / (6.582119569e-16 eV s * 5e-5 m^2/s)
    assert ratio == pytest.approx(0.01 * 18e-9**2 / (6.582119569e-16 * 5e-5), rel=1e-8)
    assert rel(ratio, 70.0) == pytest.approx(0.406, abs=0.002)  # paper's ~70 is 41 % below
    sigma_rho = float(th.sheet_resistance_shift(0.028, **EQ2))
    assert sigma_rho == pytest.approx(0.028 * 2 * math.pi * R_Q / math.log(ratio), rel=1e-12)
    assert rel(sigma_rho, 1100.0) == pytest.approx(-0.100, abs=0.002)  # paper 1.1 kOhm
    with_paper_ratio = 0.028 * 2 * math.pi * R_Q / math.log(70.0)
    assert with_paper_ratio == pytest.approx(1069.0, abs=1.0)  # paper's 1.1 kOhm follows from its 70


def test_eq2_shift_and_inverse_round_trip() -> None:
    rho = np.linspace(-3000, 3000, 7, dtype=np.float32)
    alpha = th.aa_exponent_shift(rho, **EQ2)
    assert alpha.dtype == np.float32
    np.testing.assert_allclose(th.sheet_resistance_shift(alpha, **EQ2), rho, rtol=1e-5, atol=1e-3)
    assert np.all(np.diff(alpha) > 0)  # more resistive -> larger exponent at eV >> hbar D/l^2


def test_eq2_inverse_refuses_non_diffusive_regime() -> None:
    with pytest.raises(AnalysisError, match="ratio"):
        th.sheet_resistance_shift(0.01, bias_V=1e-5, diffusion_m2_s=5e-5, l_alpha_m=18e-9)


def test_eq3_gap_dispersion() -> None:
    from_computed = abs(float(th.gap_relative_shift(th.sheet_resistance_shift(0.028, **EQ2), **LOG3)))
    from_paper_rho = abs(float(th.gap_relative_shift(1100.0, **LOG3)))
    assert from_paper_rho == pytest.approx(1100.0 / (6 * math.pi * R_Q) * math.log(25.0) ** 3, rel=1e-12)
    assert from_computed == pytest.approx(0.06782, abs=5e-5)
    assert rel(from_computed, 0.074) == pytest.approx(-0.083, abs=0.002)
    assert rel(from_paper_rho, 0.074) == pytest.approx(0.019, abs=0.002)
    assert float(th.gap_relative_shift(1000.0, **LOG3)) < 0  # resistive regions have smaller gaps


def test_c9_against_paper() -> None:
    c9 = abs(float(th.gap_suppression_low_momentum(6800.0, **LOG3)))
    assert c9 == pytest.approx(0.46611, abs=1e-5)
    assert rel(c9, 0.55) == pytest.approx(-0.153, abs=0.002)


def test_b3_derivative_equals_eq1_and_vanishes_at_hbar_over_tau() -> None:
    tau = float(th.elastic_scattering_time_s(mean_free_path_m=0.5e-9, diffusion_m2_s=5e-5))
    energies = np.array([0.002, 0.005, 0.01, 0.03, 0.1])
    from_action = th.aa_exponent_from_action(energies, r_sq_ohm=6800.0, tau_s=tau)
    np.testing.assert_allclose(from_action, th.aa_exponent(6800.0, bias_V=energies), rtol=1e-7)
    assert float(th.action_homogeneous(th.HBAR_EV_S / tau, r_sq_ohm=6800.0, tau_s=tau)) == pytest.approx(0.0, abs=1e-12)
    dos = th.dos_suppression(energies, r_sq_ohm=6800.0, tau_s=tau)
    assert np.all(np.diff(dos) > 0) and np.all(dos < 1)  # the AA dip deepens towards low energy


def test_lengths_times_and_ratios() -> None:
    xi = float(th.coherence_length_m(diffusion_m2_s=5e-5, gap_eV=1.2e-3))
    assert xi == pytest.approx(math.sqrt(6.582119569e-16 * 5e-5 / 1.2e-3), rel=1e-8)
    assert rel(xi, 5.2e-9) == pytest.approx(0.0071, abs=0.001)
    tau = float(th.elastic_scattering_time_s(mean_free_path_m=0.5e-9, diffusion_m2_s=5e-5))
    assert tau == pytest.approx(0.25e-18 / 1.5e-4, rel=1e-12)
    assert th.HBAR_EV_S / tau == pytest.approx(0.3949, abs=1e-4)  # paper: 0.33 eV
    assert pytest.approx(1.764, abs=1e-3) == th.BCS_GAP_RATIO
    assert float(th.gap_to_tc_ratio(gap_eV=1.2e-3, tc_K=3.8)) == pytest.approx(3.6646, abs=1e-4)


def test_ginzburg_number_and_tc0() -> None:
    gi = float(th.ginzburg_number(7000.0))
    assert gi == pytest.approx(math.pi * 7000.0 / (8 * R_Q), rel=1e-12)
    ratio = float(th.mean_field_tc_ratio(7000.0))
    assert ratio == pytest.approx(1 / (1 - 3 * gi), rel=1e-12)
    assert rel(ratio, 1.4) == pytest.approx(0.0497, abs=0.001)
    with pytest.raises(AnalysisError, match="21.9"):
        th.mean_field_tc_ratio(25000.0)


def test_resistance_and_gap_maps() -> None:
    alpha = np.array([[0.30, 0.35], [np.nan, 0.40]], dtype=np.float32)
    rho = th.resistance_map_from_alpha(alpha, **EQ2)
    assert rho.dtype == np.float32 and np.isnan(rho[1, 0])
    assert np.nanmean(rho) == pytest.approx(0.0, abs=1e-2)
    expected = (0.40 - 0.35) * 2 * math.pi * R_Q / math.log(th.diffusive_energy_ratio(**EQ2))
    assert float(rho[1, 1]) == pytest.approx(expected, rel=1e-4)
    gap = th.gap_map_from_resistance(rho, mean_gap_eV=1.2e-3, **LOG3)
    assert gap.dtype == np.float32 and gap[0, 0] > 1.2e-3 > gap[1, 1]  # anti-correlation
    with pytest.raises(AnalysisError):
        th.resistance_map_from_alpha(np.full((2, 2), np.nan), **EQ2)


# -- stslive theory --------------------------------------------------------------------------------
def test_every_input_key_documented_in_docstring_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    doc = theory_cli.__doc__ or ""
    for key, spec in theory_cli.INPUTS.items():
        assert f"{key} " in doc and f"{spec.default:g}" in doc
    with pytest.raises(SystemExit):
        main(["theory", "--help"])
    out = capsys.readouterr().out
    assert all(key in out for key in theory_cli.INPUTS)


def test_cli_json_defaults_match_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_key = {q["key"]: q for q in doc["quantities"]}
    assert by_key["alpha_eq1"]["value"] == pytest.approx(float(th.aa_exponent(6800.0, bias_V=0.01)))
    assert by_key["alpha_eq1"]["paper"] == 0.29
    assert by_key["energy_ratio"]["rel_diff"] == pytest.approx(0.406, abs=0.002)
    assert by_key["s_homo"]["paper"] is None and by_key["s_homo"]["rel_diff"] is None
    assert doc["inputs"]["bias_V"] == {"value": 0.01, "unit": "V"}


def test_cli_set_overrides_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "--set", "r_sq_max_ohm=3400", "--set", "bias_V=0.01"]) == 0
    out = capsys.readouterr().out
    assert "AA exponent alpha(V)" in out and "0.1448" in out  # half the resistance, half the exponent


@pytest.mark.parametrize(
    ("pair", "match"),
    [("nope=1", "unknown key 'nope'"), ("bias_V", "KEY=VALUE"), ("bias_V=ten", "not a number"), ("gap_K=0", "> 0")],
)
def test_cli_bad_overrides(pair: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        theory_cli.parse_overrides([pair])
    if "unknown" in match or "KEY=VALUE" in match:
        assert "r_sq_max_ohm" in str(info.value)  # names the valid keys


def test_cli_bad_override_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "--set", "nope=1"]) == 1
    assert "Valid keys" in capsys.readouterr().err


def test_theory_helpers_refuse_or_nan_outside_their_domain() -> None:
    c = TheoryConstants()
    assert math.isnan(sheet_resistance_sigma(0.02, math.nan, constants=c))
    assert math.isnan(sheet_resistance_sigma(0.02, 0.1e-9, constants=c))  # eV < hbar D / l^2: Eq. (2) invalid
    assert math.isnan(predicted_gap_spread(1000.0, math.nan, constants=c))
    assert TheoryConstants.from_assignments({"diffusion_m2_s": "4e-5"}).diffusion_m2_s == 4e-5
    with pytest.raises(AnalysisError, match="known"):
        TheoryConstants.from_assignments({"D": "1"})
    with pytest.raises(AnalysisError, match="> 0"):
        TheoryConstants(bias_V=-1.0)
