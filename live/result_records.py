"""The records the live results are made of: a pixel's result, the correlation snapshot, map statistics, run status.

Contract: plain frozen dataclasses in SI units (the gap in eV), shared by the results model
(:mod:`stslive.live.results`, which re-exports them), the results messages and the screen.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.drivers.tomlfile import dataclass_from_mapping
from stslive.live.provisional import ProvisionalWidth

__all__ = ["CorrelationSnapshot", "Histogram", "MapStatistics", "PixelResult", "RunStatus"]


@dataclass(frozen=True, slots=True)
class PixelResult:
    """Everything the analyser concludes about one pixel (SI units; NaN = could not extract)."""

    iy: int
    ix: int
    setpoint_set: int = -1
    delta_eV: float = float("nan")
    alpha: float = float("nan")
    alpha_pos: float = float("nan")
    alpha_neg: float = float("nan")
    b: float = float("nan")
    visibility: float = float("nan")
    fit_quality: float = float("nan")
    peak_neg_V: float = float("nan")
    peak_pos_V: float = float("nan")
    valid: bool = False
    reason: int = 0
    flags: int = 0
    temperature_K: float = float("nan")
    time: float = float("nan")
    b_pos: float = float("nan")
    b_neg: float = float("nan")
    tip_epoch: int = -1
    valid_delta: bool = False
    valid_alpha: bool = False
    reason_delta: int = -1
    reason_alpha: int = -1
    delta_sigma_eV: float = float("nan")
    alpha_sigma: float = float("nan")
    delta_dynes_eV: float = float("nan")
    gamma_dynes_eV: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtin scalars (JSON/msgpack-safe; NaN stays a float NaN)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixelResult:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise AnalysisError so a schema drift is visible."""
        return dataclass_from_mapping(
            cls, d, what="PixelResult (update stslive on both ends if they differ)", error=AnalysisError
        )


@dataclass(frozen=True, slots=True)
class CorrelationSnapshot:
    """Correlations of the measured part of the maps (paper Appendix A) and what they imply.

    ``r_nm`` and the ``rho_*`` profiles are the circular averages of the 2D correlations;
    ``cross_map`` is the 2D Delta-alpha cross-correlation, zero shift at the centre
    (fftshifted), ``pixel_nm`` per pixel. ``sigma_rho_ohm`` is the Eq. (2) sheet-resistance spread
    and ``predicted_delta_rel_sigma`` the Eq. (3) gap spread that follows from it. The
    ``*_corrected`` figures and ``*_ci90`` (low, high) intervals are those of the film's process
    (``stslive.live.correlations.correlation_report``; a non-finite high with a finite low: no
    upper bound); ``warnings`` says why the figures may mislead (few pixels, finite size).
    """

    r_nm: np.ndarray
    rho_delta: np.ndarray
    rho_alpha: np.ndarray
    rho_cross: np.ndarray
    cross_map: np.ndarray
    pixel_nm: float
    l_delta_nm: float
    l_alpha_nm: float
    l_cross_nm: float
    rho_cross_0: float
    sigma_rho_ohm: float = float("nan")
    predicted_delta_rel_sigma: float = float("nan")
    n_pixels: int = 0
    time: float = float("nan")
    l_delta_nm_corrected: float = float("nan")
    l_alpha_nm_corrected: float = float("nan")
    l_cross_nm_corrected: float = float("nan")
    rho_cross_0_corrected: float = float("nan")
    l_delta_nm_ci90: tuple[float, float] = (float("nan"), float("nan"))
    l_alpha_nm_ci90: tuple[float, float] = (float("nan"), float("nan"))
    l_cross_nm_ci90: tuple[float, float] = (float("nan"), float("nan"))
    rho_cross_0_ci90: tuple[float, float] = (float("nan"), float("nan"))
    warnings: tuple[str, ...] = ()

    ARRAYS = ("r_nm", "rho_delta", "rho_alpha", "rho_cross", "cross_map")


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts per bin and the bin edges (len(edges) = len(counts) + 1), in the map's unit."""

    counts: np.ndarray
    edges: np.ndarray


@dataclass(frozen=True, slots=True)
class MapStatistics:
    """Statistics per quantity: Delta over the pixels where Delta is valid, alpha where alpha is.

    Mean, standard deviation (ddof=0) and a histogram each; ``n_valid`` counts the pixels with
    both, ``n_valid_delta`` / ``n_valid_alpha`` each quantity's.
    """

    n_measured: int
    n_valid: int
    delta_mean_eV: float
    delta_std_eV: float
    alpha_mean: float
    alpha_std: float
    delta_hist: Histogram
    alpha_hist: Histogram
    n_valid_delta: int = 0
    n_valid_alpha: int = 0


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Where the run stands, as the viewer shows it.

    ``provisional_width``: set while the live analyser's results rest on a provisional template
    width, None once it is fixed (or when no analyser said).
    """

    state: str
    n_total: int
    n_measured: int
    pixels_per_hour: float
    eta_s: float
    current_set: int
    last_seq: int
    message: str
    temperature_t: np.ndarray
    temperature_K: np.ndarray
    provisional_width: ProvisionalWidth | None = None

    @property
    def progress(self) -> float:
        """Measured fraction of the grid, 0..1."""
        return self.n_measured / self.n_total if self.n_total else 0.0
