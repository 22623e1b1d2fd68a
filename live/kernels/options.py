"""Options, reason codes and result records of the per-spectrum kernels.

Every result is a NamedTuple of arrays shaped like the input batch without its bias axis; a
quantity that could not be extracted is NaN and its :class:`ReasonCode` says why (never 0).
Delta and alpha are judged separately: each has its own validity and reason.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.drivers.tomlfile import dataclass_from_mapping

__all__ = [
    "CODE",
    "DEFAULT_TEMPERATURE_K",
    "GAP_SOURCES",
    "GapResult",
    "KernelOptions",
    "PowerLawResult",
    "ReasonCode",
    "SpectrumAnalysis",
]

#: Sample temperature the kernels assume when neither the options nor the recording give one, K
#: (the reference experiment's 300 mK; the fitted Dynes width absorbs a moderate error).
DEFAULT_TEMPERATURE_K = 0.3
#: The values of ``KernelOptions.gap_source``.
GAP_SOURCES = ("auto", "current", "lockin", "both")


class ReasonCode(enum.IntEnum):
    """Why a quantity could not be extracted (0 = it could)."""

    OK = 0
    NAN_INPUT = 1  #: the spectrum holds NaN/inf where the fit reads (a pixel never measured, a truncated sweep)
    SEARCH_NOT_COVERED = 2  #: the sweep does not cover the gap search range (or a peak's fit window) on both polarities
    NO_PEAKS = 3  #: no coherence peak stands above the noise and the background
    PEAK_AT_EDGE = 4  #: a maximum sits on the edge of the search range (peak outside it)
    PEAK_NOT_BRACKETED = 5  #: the template fit did not converge inside its shift range
    POOR_PEAK_FIT = 6  #: the peak template does not describe the data beyond the noise, or locates it too loosely
    WINDOW_NOT_COVERED = 7  #: the sweep does not cover the power-law fit window on both polarities
    NONPOSITIVE_CONDUCTANCE = 8  #: dI/dV <= 0 inside the fit window (log undefined)
    POOR_POWER_LAW_FIT = 9  #: the power law does not describe dI/dV beyond the noise and the tolerance
    BIAS_STEP_TOO_COARSE = 10  #: the bias step cannot resolve this gap's coherence peaks


#: The codes as plain ints for the per-call paths: an Enum member lookup costs ~2 us on
#: Python 3.11, and the gap and power-law steps made a dozen per call.
CODE = SimpleNamespace(**{c.name: int(c) for c in ReasonCode})


@dataclass(frozen=True)
class KernelOptions:
    """Options of :func:`~stslive.live.kernels.analyse_spectra` (SI units).

    The last group (``gap_eV``, ``dynes_width_eV``, ``smoothing_points``,
    ``lockin_smoothing_points``) is the map's *calibration*: quantities measured on the spectra
    themselves. None estimates them from
    the first ``chunk`` spectra of a call (:func:`~stslive.live.kernels.calibrate`); a caller that
    analyses a map in pieces calibrates once and passes the result, so every piece is analysed
    alike.

    Attributes
    ----------
    current, lockin : str or None
        Channel names to use (None: pick by name, see :func:`~stslive.live.kernels.pick_channels`).
    gap_source : {"auto", "current", "lockin", "both"}
        Channel for Delta. "both": the lock-in's Delta combined with the current's where they
        agree (:mod:`~stslive.live.kernels.combine`); "auto" is "both" when both channels are
        given, else the one given; "lockin" or "current": that channel alone.
    alpha_source : {"current", "lockin"}
        Channel for alpha; "current" (default) gives b in siemens.
    fit_window_V : (float, float)
        |V| range of the power-law fit, V (paper: 5..30 mV).
    gap_search_V : (float, float)
        |V| range searched for a map's coherence peaks when its gap is calibrated, V; wide
        enough for gaps of 0.2 to 3 meV.
    temperature_K : float or None
        Sample temperature, K: the thermal width of the peak templates, and the temperature at
        which Delta is defined. None: the recording's, else :data:`DEFAULT_TEMPERATURE_K`.
    modulation_Vrms : float or None
        Lock-in bias modulation, V rms; the lock-in's peak templates are broadened by it and Delta
        is reported free of it. None: the recording's, else 0.
    min_visibility : float
        Minimum coarse-peak height over its running-mean background minus 1 (0: any maximum).
    min_peak_snr : float
        Minimum amplitude of the fitted peak template over its standard error (NO_PEAKS below).
    min_peak_score, max_peak_chi2 : float
        A peak fit is POOR_PEAK_FIT when its template explains less than ``min_peak_score`` of the
        window's variance AND its residual exceeds ``max_peak_chi2`` times the measured noise
        variance: a misfit, not noise.
    max_delta_sigma : float
        Largest standard error of Delta accepted, as a fraction of Delta (POOR_PEAK_FIT above).
    joint_fit_above : float
        The joint fit of both peaks (:mod:`~stslive.live.kernels.joint`: a shared background,
        ~1.5x less variance, no background bias, and the Dynes fit) refines the pixels whose
        per-peak fit gives Delta a standard error above this fraction of the map's gap, and
        every pixel of a map whose peaks are broad (width over gap above
        :data:`~stslive.live.kernels.gap.BROAD_PEAK`: there the per-peak fit's background bias
        grows beyond ~0.003 meV). 0: every pixel, inf: none. It costs ~6 us per spectrum, the
        per-peak fit ~2 us; the Dynes maps exist where it runs (``stslive analyse --dynes-fit``:
        everywhere).
    max_log_residual, max_power_law_chi2 : float
        A power-law fit is POOR_POWER_LAW_FIT when its rms residual of ln(dI/dV) exceeds
        ``max_log_residual`` AND its mean square residual exceeds ``max_power_law_chi2`` times what
        the measured noise explains.
    gap_eV : float or None
        The map's gap, eV (calibration: the median gap edge of its first spectra): the templates
        are drawn at it, the fit window is sized from it and each pixel's gap edge is searched
        within +-30 % of it. NaN: the map shows no gap (every pixel NO_PEAKS).
    dynes_width_eV : float or None
        Dynes broadening of the peak templates, eV (calibration).
    smoothing_points : int or None
        Width of the box derivative of I(V), samples, odd (calibration: chosen from the current's
        noise). The coarse peak search smooths over at most :data:`COARSE_MAX_WIDTH_V` of it.
    lockin_smoothing_points : int or None
        Running-mean width of a lock-in channel for alpha and the coarse peaks, samples, odd
        (calibration: chosen from the lock-in's noise).
    chunk : int
        Spectra per processing chunk (sized to stay in cache).
    threads : int or None
        Worker threads over the chunks (None: one per available core).
    """

    current: str | None = None
    lockin: str | None = None
    gap_source: str = "auto"
    alpha_source: str = "current"
    fit_window_V: tuple[float, float] = (5e-3, 30e-3)
    gap_search_V: tuple[float, float] = (0.1e-3, 5e-3)
    temperature_K: float | None = None
    modulation_Vrms: float | None = None
    min_visibility: float = 0.0
    min_peak_snr: float = 1.0
    min_peak_score: float = 0.2
    max_peak_chi2: float = 4.0
    max_delta_sigma: float = 0.1
    joint_fit_above: float = 0.025
    max_log_residual: float = 0.1
    max_power_law_chi2: float = 4.0
    gap_eV: float | None = None
    dynes_width_eV: float | None = None
    smoothing_points: int | None = None
    lockin_smoothing_points: int | None = None
    chunk: int = 512
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.gap_source not in GAP_SOURCES:
            raise AnalysisError(f"gap_source={self.gap_source!r}: use 'auto', 'current', 'lockin' or 'both'")
        if self.alpha_source not in ("current", "lockin"):
            raise AnalysisError(f"alpha_source={self.alpha_source!r}: use 'current' or 'lockin'")
        for name in ("fit_window_V", "gap_search_V"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise AnalysisError(f"{name}={(lo, hi)}: give 0 <= low < high in volts, e.g. (5e-3, 30e-3)")
        for name in ("smoothing_points", "lockin_smoothing_points"):
            points = getattr(self, name)
            if points is not None and (points < 1 or points % 2 == 0):
                raise AnalysisError(f"{name}={points}: give an odd number >= 1, or None to choose it from the noise")
        if self.smoothing_points is not None and self.smoothing_points < 3:
            raise AnalysisError(f"smoothing_points={self.smoothing_points}: the box derivative needs >= 3")
        if self.temperature_K is not None and not self.temperature_K > 0:
            raise AnalysisError(f"temperature_K={self.temperature_K}: give the sample temperature in K (> 0)")
        if self.modulation_Vrms is not None and not self.modulation_Vrms >= 0:
            raise AnalysisError(f"modulation_Vrms={self.modulation_Vrms}: give the modulation in V rms (>= 0)")
        if self.gap_eV is not None and not (self.gap_eV > 0 or self.gap_eV != self.gap_eV):
            raise AnalysisError(f"gap_eV={self.gap_eV}: give the map's gap in eV (> 0), NaN for none, or None")
        if self.dynes_width_eV is not None and not self.dynes_width_eV > 0:
            raise AnalysisError("dynes_width_eV must be > 0 eV, or None to estimate it from the data")
        if not self.joint_fit_above >= 0:
            raise AnalysisError(f"joint_fit_above={self.joint_fit_above}: give a fraction of the gap >= 0 (inf: never)")
        limits = ("min_peak_snr", "max_peak_chi2", "max_delta_sigma", "max_log_residual", "max_power_law_chi2")
        for name in limits:
            if not getattr(self, name) > 0:
                raise AnalysisError(f"{name}={getattr(self, name)}: give a positive limit")
        if self.chunk < 1:
            raise AnalysisError(f"chunk={self.chunk}: give a positive number of spectra, e.g. 512")
        if self.threads is not None and self.threads < 1:
            raise AnalysisError(f"threads={self.threads}: give a positive number of threads, or None for one per core")

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> KernelOptions:
        """Options from a mapping; unknown keys are refused with the list of known ones."""
        return dataclass_from_mapping(cls, values, what="kernel option", error=AnalysisError)

    def gap_from_lockin(self, *, lockin_given: bool) -> bool:
        """Whether Delta comes from the lock-in (and the map is calibrated on it): ``gap_source``
        "lockin" or "both", or "auto" with a lock-in given."""
        return self.gap_source in ("lockin", "both") or (self.gap_source == "auto" and lockin_given)

    def gap_channels(self, *, lockin_given: bool, current_given: bool) -> tuple[str, ...]:
        """The channels Delta is taken from, the first one primary: ("lockin",), ("current",) or
        ("lockin", "current") (``gap_source`` "both", or "auto" with both channels given)."""
        if self.gap_source == "both" or (self.gap_source == "auto" and lockin_given and current_given):
            return ("lockin", "current")
        return ("lockin",) if self.gap_from_lockin(lockin_given=lockin_given) else ("current",)

    @property
    def sample_temperature_K(self) -> float:
        """``temperature_K``, or :data:`DEFAULT_TEMPERATURE_K` when unknown."""
        return DEFAULT_TEMPERATURE_K if self.temperature_K is None else float(self.temperature_K)

    @property
    def lockin_modulation_Vrms(self) -> float:
        """``modulation_Vrms``, or 0 when unknown."""
        return 0.0 if self.modulation_Vrms is None else float(self.modulation_Vrms)

    @property
    def calibrated(self) -> bool:
        """Whether every calibration field is set (pieces of a map are then analysed alike)."""
        return None not in (self.gap_eV, self.dynes_width_eV, self.smoothing_points, self.lockin_smoothing_points)

    def with_instrument(self, *, temperature_K: float | None, modulation_Vrms: float | None) -> KernelOptions:
        """These options with the recording's temperature and modulation where the options leave them unknown."""
        return dataclasses.replace(
            self,
            temperature_K=self.temperature_K if self.temperature_K is not None else temperature_K,
            modulation_Vrms=self.modulation_Vrms if self.modulation_Vrms is not None else modulation_Vrms,
        )


class GapResult(NamedTuple):
    """Gap per spectrum, arrays shaped (...).

    delta_eV = (peak_pos_V - peak_neg_V) / 2 (e = 1), the maxima of dI/dV at the sample
    temperature (free of the lock-in's modulation); delta_sigma_eV its standard error from the
    fit (noise measured on the spectrum); visibility = min over the two peaks of the coarse peak
    height over its running-mean background minus 1; score = the smaller of the two peaks'
    fraction of the fit window's variance explained by the template; delta_dynes_eV and
    gamma_dynes_eV the gap and width of the Dynes DOS fitted to both peaks (NaN where Delta
    failed or that fit did not converge); reason: :class:`ReasonCode`.
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    score: np.ndarray
    delta_sigma_eV: np.ndarray
    delta_dynes_eV: np.ndarray
    gamma_dynes_eV: np.ndarray
    reason: np.ndarray


class PowerLawResult(NamedTuple):
    """dI/dV = b |V|^alpha per polarity; alpha = mean of both; alpha_sigma its standard error.

    A polarity the sweep covers keeps its alpha_s and b_s even when the other is not covered;
    ``alpha`` and ``reason`` need both. rms_log_residual is the larger polarity's rms residual of
    ln(dI/dV).
    """

    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    alpha_sigma: np.ndarray
    reason: np.ndarray


class SpectrumAnalysis(NamedTuple):
    """Everything :func:`~stslive.live.kernels.analyse_spectra` extracts, arrays shaped (...) of the batch.

    ``valid_delta`` / ``valid_alpha`` say where each quantity was extracted, ``gap_reason`` /
    ``alpha_reason`` why not; ``valid`` is both, and ``reason`` the gap reason where the gap
    failed, else the power-law reason. ``delta_dynes_eV`` and ``gamma_dynes_eV`` are the gap
    and width of a Dynes density of states fitted to both peaks (NaN where Delta is not valid
    or the fit failed).
    """

    delta_eV: np.ndarray
    peak_neg_V: np.ndarray
    peak_pos_V: np.ndarray
    visibility: np.ndarray
    peak_score: np.ndarray
    delta_sigma_eV: np.ndarray
    alpha: np.ndarray
    alpha_pos: np.ndarray
    alpha_neg: np.ndarray
    b: np.ndarray
    b_pos: np.ndarray
    b_neg: np.ndarray
    rms_log_residual: np.ndarray
    alpha_sigma: np.ndarray
    delta_dynes_eV: np.ndarray
    gamma_dynes_eV: np.ndarray
    gap_reason: np.ndarray
    alpha_reason: np.ndarray
    valid_delta: np.ndarray
    valid_alpha: np.ndarray
    valid: np.ndarray
    reason: np.ndarray
