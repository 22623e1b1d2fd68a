"""The "definition truth" of a simulated film: the paper's two definitions on noise-free dI/dV.

The analysis kernels are judged against these numbers, so they are the *definitions* applied to
the film's own noise-free conductance, not the model parameters Delta(r) and alpha(r):

* peak-to-peak gap: half the bias distance between the two coherence peaks of dI/dV
  (docs/physics.md, "Per-pixel quantities"), located on the fine convolution grid and refined by the
  vertex of the parabola through the maximum and its two neighbours;
* alpha: dI/dV = b |V|^alpha without offset, fitted by log-log least squares on 5..30 mV for
  V > 0 and V < 0 separately, alpha = mean of the two.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import AnalysisError

FloatArray = npt.NDArray[np.float64]

#: Search window for a coherence peak, as fractions of the pixel's model gap: wide enough for any
#: thermal/Dynes shift of the maximum, narrow enough to exclude the rising AA background, which at
#: 30 mV exceeds the coherence peaks.
PEAK_SEARCH = (0.5, 1.6)


def _peak_position(conductance: FloatArray, energies: FloatArray, lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Sub-grid position (eV) of the maximum of each row within [lo, hi] (per-row bounds)."""
    inside = (energies[None, :] >= lo[:, None]) & (energies[None, :] <= hi[:, None])
    masked = np.where(inside, conductance, -np.inf)
    j = np.argmax(masked, axis=-1)
    rows = np.arange(conductance.shape[0])
    if np.any(~inside[rows, j - 1]) or np.any(~inside[rows, np.minimum(j + 1, energies.size - 1)]):
        raise AnalysisError(
            "a coherence peak sits on the edge of its search window: the spectrum has no interior "
            "maximum near the model gap; check dynes_gamma_eV and temperature_K of the film."
        )
    left, mid, right = conductance[rows, j - 1], conductance[rows, j], conductance[rows, j + 1]
    curvature = left - 2.0 * mid + right
    offset = 0.5 * (left - right) / curvature
    step = energies[1] - energies[0]
    return energies[j] + offset * step


def peak_to_peak_gap(conductance: FloatArray, energies: FloatArray, *, model_gap_eV: FloatArray) -> FloatArray:
    """Half the distance between the coherence peaks, (E+ - E-) / 2, in eV.

    Parameters
    ----------
    conductance
        Noise-free dI/dV rows (P, M) on a uniform energy grid.
    energies
        The grid (M,) in eV.
    model_gap_eV
        Model gap per row (P,), used only to choose which maximum is the coherence peak
        (search in :data:`PEAK_SEARCH` times it).

    Returns
    -------
    numpy.ndarray
        (P,) peak-to-peak gap in eV.
    """
    lo, hi = PEAK_SEARCH[0] * model_gap_eV, PEAK_SEARCH[1] * model_gap_eV
    positive = _peak_position(conductance, energies, lo, hi)
    negative = _peak_position(conductance, energies, -hi, -lo)
    return 0.5 * (positive - negative)


def power_law_alpha(
    conductance: FloatArray, bias_V: FloatArray, *, window_V: tuple[float, float] = (5e-3, 30e-3)
) -> FloatArray:
    """AA exponent by the paper's definition: log-log least squares per polarity, then the mean.

    ln G = ln b + alpha ln|V| on window_V[0] <= |V| <= window_V[1], separately for V > 0 and V < 0;
    the closed-form slope sum((x - <x>)(y - <y>)) / sum((x - <x>)^2) per row.

    Parameters
    ----------
    conductance
        Noise-free dI/dV rows (P, n) at ``bias_V`` (> 0 in the window).
    bias_V
        Bias points (n,) in V.
    window_V
        |V| range of the fit in V (paper: 5..30 mV).

    Returns
    -------
    numpy.ndarray
        (P,) alpha = (alpha_+ + alpha_-) / 2; NaN when the sweep does not reach window_V[1] on
        both polarities with at least 3 points in the window (the definition needs the window).
    """
    slopes = []
    for sign in (1.0, -1.0):
        mag = sign * bias_V
        sel = (mag >= window_V[0]) & (mag <= window_V[1])
        if np.count_nonzero(sel) < 3 or mag.max() < window_V[1] - 1e-9:
            return np.full(conductance.shape[0], np.nan)
        x = np.log(mag[sel])
        x = x - x.mean()
        y = np.log(conductance[:, sel])
        # A per-row reduction, not BLAS: its result must not depend on how many rows share the
        # call (blocks and single pixels must give bit-identical truths).
        slopes.append(np.sum(y * x, axis=-1) / np.sum(x * x))
    return 0.5 * (slopes[0] + slopes[1])
