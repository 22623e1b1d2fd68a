"""Options, reason codes and result records of the per-spectrum kernels.

Every result is a NamedTuple of arrays shaped like the input batch without its bias axis; a
quantity that could not be extracted is NaN and its :class:`ReasonCode` says why (never 0).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.drivers.tomlfile import dataclass_from_mapping
from stslive.live.kernels.samples import DEFAULT_SMOOTHING_POINTS

__all__ = ["CODE", "GapResult", "KernelOptions", "PowerLawResult", "ReasonCode", "SpectrumAnalysis"]


class ReasonCode(enum.IntEnum):
    """Why a quantity could not be extracted (0 = it could)."""

    OK = 0
    NAN_INPUT = 1  #: the spectrum holds NaN/inf (a pixel never measured, a truncated sweep)
    SEARCH_NOT_COVERED = 2  #: the sweep does not cover the gap search range
    NO_PEAKS = 3  #: coherence peaks not visible above the background
    PEAK_AT_EDGE = 4  #: a maximum sits on the edge of the search range (peak outside it)
    PEAK_NOT_BRACKETED = 5  #: the template fit did not converge inside its shift range
    POOR_PEAK_FIT = 6  #: the peak template explains too little of the window
    WINDOW_NOT_COVERED = 7  #: the sweep does not cover the power-law fit window
    NONPOSITIVE_CONDUCTANCE = 8  #: dI/dV <= 0 inside the fit window (log undefined)
    POOR_POWER_LAW_FIT = 9  #: rms log-residual of the power law above the limit


#: The codes as plain ints for the per-call paths: an Enum member lookup costs ~2 us on
#: Python 3.11, and the gap and power-law steps made a dozen per call.
CODE = SimpleNamespace(**{c.name: int(c) for c in ReasonCode})


@dataclass(frozen=True)
class KernelOptions:
    """Options of :func:`~stslive.live.kernels.analyse_spectra` (SI units).

    Attributes
    ----------
    current, lockin : str or None
        Channel names to use (None: pick by name, see :func:`~stslive.live.kernels.pick_channels`).
    gap_source : {"auto", "current", "lockin"}
        Channel for Delta; "auto" takes the lock-in when one is given (measured more accurate).
    alpha_source : {"current", "lockin"}
        Channel for alpha; "current" (default) gives b in siemens.
    fit_window_V : (float, float)
        |V| range of the power-law fit, V (paper: 5..30 mV).
    gap_search_V : (float, float)
        |V| range searched for the coherence peaks, V.
    smoothing_points : int
        Width of the running mean of the derivative, samples (odd).
    temperature_K : float
        Sample temperature, K; sets the thermal width of the peak templates.
    modulation_Vrms : float
        Lock-in bias modulation, V rms (broadens the lock-in peak templates).
    dynes_width_eV : float or None
        Dynes broadening of the peak templates, eV; None estimates it from the batch.
    min_visibility : float
        Minimum peak height over background minus 1; the background is the running mean of
        dI/dV over ``CONTRAST_POINTS`` samples around the peak. The default only demands a
        maximum (the simulated film's smoothed peaks stand ~0.1-0.2 above it).
    min_peak_score : float
        Minimum fraction of the window variance explained by the peak template.
    max_log_residual : float
        Maximum rms residual of ln(dI/dV) about the power law.
    chunk : int
        Spectra per processing chunk (sized to stay in cache).
    threads : int or None
        Worker threads over the chunks (None: one per available core). numpy and scipy release
        the GIL in the heavy calls, so a second core nearly doubles the throughput.
    """

    current: str | None = None
    lockin: str | None = None
    gap_source: str = "auto"
    alpha_source: str = "current"
    fit_window_V: tuple[float, float] = (5e-3, 30e-3)
    gap_search_V: tuple[float, float] = (0.3e-3, 4e-3)
    smoothing_points: int = DEFAULT_SMOOTHING_POINTS
    temperature_K: float = 0.3
    modulation_Vrms: float = 0.0
    dynes_width_eV: float | None = None
    min_visibility: float = 0.0
    min_peak_score: float = 0.2
    max_log_residual: float = 0.1
    chunk: int = 512
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.gap_source not in ("auto", "current", "lockin"):
            raise AnalysisError(f"gap_source={self.gap_source!r}: use 'auto', 'current' or 'lockin'")
        if self.alpha_source not in ("current", "lockin"):
            raise AnalysisError(f"alpha_source={self.alpha_source!r}: use 'current' or 'lockin'")
        for name in ("fit_window_V", "gap_search_V"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise AnalysisError(f"{name}={(lo, hi)}: give 0 <= low < high in volts, e.g. (5e-3, 30e-3)")
        if self.smoothing_points < 3 or self.smoothing_points % 2 == 0:
            raise AnalysisError(f"smoothing_points={self.smoothing_points}: give an odd number >= 3")
        if self.temperature_K <= 0 or self.modulation_Vrms < 0:
            raise AnalysisError("temperature_K must be > 0 and modulation_Vrms >= 0 (volts rms)")
        if self.dynes_width_eV is not None and self.dynes_width_eV <= 0:
            raise AnalysisError("dynes_width_eV must be > 0 eV, or None to estimate it from the data")
        if self.chunk < 1:
            raise AnalysisError(f"chunk={self.chunk}: give a positive number of spectra, e.g. 512")
        if self.threads is not None and self.threads < 1:
            raise AnalysisError(f"threads={self.threads}: give a positive number of threads, or None for one per core")

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> KernelOptions:
        """Options from a mapping; unknown keys are refused with the list of known ones."""
        return dataclass_from_mapping(cls, values, what="kernel option", error=AnalysisError)

    def gap_from_lockin(self, *, lockin_given: bool) -> bool:
        """Whether Delta comes from the lock-in: ``gap_source`` "lockin", or "auto" with a lock-in given."""
        return self.gap_source == "lockin" or (self.gap_source == "auto" and lockin_given)


class GapResult(NamedTuple):
    """Gap per spectrum, arrays shaped (...).

    delta_eV = (peak_pos_V - peak_neg_V) / 2 (e = 1); visibility = min over the two peaks of
    dI/dV(peak) / background - 1, background = the ``CONTRAST_POINTS`` running mean of dI/dV at
    the peak; score = fraction of the fit window explained by the peak template (per spectrum the
    smaller of the two peaks); reason: :class:`ReasonCode` values.
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    score: np.ndarray
    reason: np.ndarray


class PowerLawResult(NamedTuple):
    """dI/dV = b |V|^alpha per polarity; alpha = mean; rms_log_residual = fit quality."""

    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    reason: np.ndarray


class SpectrumAnalysis(NamedTuple):
    """Everything :func:`~stslive.live.kernels.analyse_spectra` extracts, arrays shaped (...) of the batch.

    ``valid`` is True where both Delta and alpha were extracted; ``reason`` is the gap reason
    where the gap failed, else the power-law reason (``gap_reason``/``alpha_reason`` keep both).
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    peak_score: np.ndarray
    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    gap_reason: np.ndarray
    alpha_reason: np.ndarray
    valid: np.ndarray
    reason: np.ndarray
