"""The physical scales of the kernels, and how they become sample counts on a given bias grid.

Every width, window and offset of the analysis is a physical quantity (a voltage, a fraction of
the gap, a relative noise) turned into samples of the grid at hand; none is a count tuned to one
bias step. The few true counts (fewest points of a sweep or a fit) are here too, named.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "COARSE_MAX_WIDTH_V",
    "CONTRAST_WIDTH_V",
    "GAP_LADDER_MIN_EV",
    "GAP_RATIO",
    "MIN_FIT_DOF",
    "MIN_GAP_SAMPLES",
    "MIN_SEARCH_SAMPLES",
    "MIN_SWEEP_POINTS",
    "MIN_WINDOW_SAMPLES",
    "SIGN_END_DIVISOR",
    "WIDTH_SAMPLE",
    "class_gap_eV",
    "gap_class",
    "odd_points",
]

#: Fewest points of a bias sweep the kernels accept (a uniform grid needs a step).
MIN_SWEEP_POINTS = 8

#: The conductance sign of a current compares the means of the outer 1/SIGN_END_DIVISOR of the
#: sweep at each end (5 %), so noise cannot flip it.
SIGN_END_DIVISOR = 20

#: Fewest samples of a power-law fit window per polarity (a line through ln|V| needs more than two).
MIN_WINDOW_SAMPLES = 3

#: Fewest samples per polarity in the gap search range: fewer cannot hold a peak and its flanks
#: (a sweep of 2 mV steps has 2 in 0.1..5 mV: BIAS_STEP_TOO_COARSE).
MIN_SEARCH_SAMPLES = 5

#: Spectra used to estimate a map's calibration (more adds time, not accuracy).
WIDTH_SAMPLE = 1024

#: Width of the running-mean background removed before the coarse argmax, V: wider than a
#: coherence peak (Gamma, k_B T, the modulation: ~0.1 mV), narrower than the bend of the
#: Altshuler-Aronov background (which saturates below ~Delta).
CONTRAST_WIDTH_V = 1.5e-3

#: Widest smoothing of dI/dV before the coarse argmax, V: a third of the smallest gap the default
#: search is meant for (1.2 meV) - wider smears a peak into the gap.
COARSE_MAX_WIDTH_V = 0.4e-3

#: Templates are drawn at gaps GAP_LADDER_MIN_EV * GAP_RATIO**k; each pixel is fitted with the
#: rung nearest its coarse gap. A 5 % rung keeps a pixel's gap within 2.5 % of its templates'.
GAP_LADDER_MIN_EV = 0.1e-3
GAP_RATIO = 1.05

#: A gap must span this many bias steps (zero bias to peak) to be located at all: with fewer,
#: the in-gap samples cannot tell a coherence peak from the background (BIAS_STEP_TOO_COARSE).
MIN_GAP_SAMPLES = 2.5

#: Fewest degrees of freedom a peak fit keeps after its parameters (template amplitude and
#: shift, background polynomial): fewer samples in the window and the fit is BIAS_STEP_TOO_COARSE.
MIN_FIT_DOF = 4


def gap_class(gap_eV: np.ndarray) -> np.ndarray:
    """The rung of the gap ladder nearest each gap (int; gaps below the ladder take rung 0)."""
    ratio = np.maximum(np.asarray(gap_eV, dtype=np.float64), GAP_LADDER_MIN_EV) / GAP_LADDER_MIN_EV
    with np.errstate(invalid="ignore"):
        return np.rint(np.log(ratio) / math.log(GAP_RATIO)).astype(np.intp)


def class_gap_eV(k: int) -> float:
    """The gap of rung ``k`` of the ladder, eV."""
    return GAP_LADDER_MIN_EV * GAP_RATIO ** int(k)


def odd_points(width: float, *, minimum: int = 1) -> int:
    """The odd sample count nearest ``width`` (in samples), at least ``minimum``."""
    n = max(minimum, round(width))
    return n if n % 2 else n + 1
