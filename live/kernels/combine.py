"""Delta from two channels: the lock-in's gap combined with the current's where both measure it.

A lock-in records dI/dV and the current I(V) at once, with independent noise (the lock-in's
narrow band and the current's wide one), and both are fitted with the same film model (the
map's gap and Dynes width, each channel's own broadening). Two unbiased estimates d_L and d_I of
the same Delta with standard errors s_L and s_I combine by inverse variance:

    Delta = (d_L / s_L^2 + d_I / s_I^2) / (1 / s_L^2 + 1 / s_I^2),   s = (1 / s_L^2 + 1 / s_I^2)^(-1/2)

the maximum-likelihood value of Delta given both (Gaussian errors). The lock-in stays primary:
a pixel's validity and reason are the lock-in's (the current only sharpens a valid Delta), and
where the two disagree by more than :data:`MAX_DISAGREEMENT` combined standard errors one
channel's model does not hold there (a current offset, a lock-in phase error), so the lock-in's
value is kept alone. At a step too coarse for the peaks one channel's likelihood can have a
second minimum about a step away: there a Delta stands only where the two agree (``agreement_only``).
"""

from __future__ import annotations

import numpy as np

from stslive.live.kernels.options import CODE, GapResult

__all__ = ["MAX_DISAGREEMENT", "combine_gaps"]

#: Largest |d_L - d_I| / sqrt(s_L^2 + s_I^2) of two channels combined: a two-sided 4-sigma test
#: of one degree of freedom, refused by chance once in 16,000 pixels when both channels hold.
MAX_DISAGREEMENT = 4.0
#: The fields a refused pixel reports as NaN (as :func:`~stslive.live.kernels.gap.gap_rows` does).
_MEASURED = ("delta_eV", "peak_neg_V", "peak_pos_V", "delta_sigma_eV", "delta_dynes_eV", "gamma_dynes_eV")


def combine_gaps(primary: GapResult, other: GapResult, *, agreement_only: bool = False) -> tuple[GapResult, np.ndarray]:
    """``primary``'s gap (the lock-in's) combined with ``other``'s (the current's) by inverse variance.

    Parameters
    ----------
    primary, other : GapResult
        The gap of the same spectra from two channels, arrays shaped (n,).
    agreement_only : bool
        The step is too coarse for the peaks (:func:`~stslive.live.kernels.gap.step_too_coarse`):
        a Delta stands only where both channels give it and agree; elsewhere the pixel is
        BIAS_STEP_TOO_COARSE (one channel's likelihood can have a second minimum about a step away).

    Returns
    -------
    GapResult
        Delta, both peaks and the Dynes gap and width combined where both channels give a valid
        Delta that agree (:data:`MAX_DISAGREEMENT`), else ``primary``'s; visibility, score and
        reason are always ``primary``'s.
    combined : ndarray of bool, (n,)
        Where the two channels were combined.
    """
    s_p = primary.delta_sigma_eV.astype(np.float64)
    s_o = other.delta_sigma_eV.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(primary.delta_eV.astype(np.float64) - other.delta_eV.astype(np.float64))
        combined = (
            (primary.reason == 0)
            & (other.reason == 0)
            & (s_p > 0)
            & (s_o > 0)
            & (gap <= MAX_DISAGREEMENT * np.hypot(s_p, s_o))
        )
        w_p = np.where(combined, 1.0 / s_p**2, 1.0)
        w_o = np.where(combined, 1.0 / s_o**2, 0.0)
    total = w_p + w_o

    def mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The weighted mean where combined, ``a`` elsewhere (``a`` too where ``b`` is NaN)."""
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        both = combined & np.isfinite(b64)
        out = np.where(both, (w_p * a64 + w_o * np.where(both, b64, 0.0)) / total, a64)
        # a Dynes fit that ran on one channel only: that channel's value
        out = np.where(combined & ~np.isfinite(a64) & np.isfinite(b64), b64, out)
        return out.astype(a.dtype, copy=False)

    sigma = np.where(combined, 1.0 / np.sqrt(total), s_p).astype(primary.delta_sigma_eV.dtype, copy=False)
    peak_neg, peak_pos = mean(primary.peak_neg_V, other.peak_neg_V), mean(primary.peak_pos_V, other.peak_pos_V)
    result = GapResult(
        delta_eV=np.where(
            combined, 0.5 * (peak_pos.astype(np.float64) - peak_neg.astype(np.float64)), primary.delta_eV
        ).astype(primary.delta_eV.dtype, copy=False),
        peak_neg_V=peak_neg,
        peak_pos_V=peak_pos,
        visibility=primary.visibility,
        score=primary.score,
        delta_sigma_eV=sigma,
        delta_dynes_eV=mean(primary.delta_dynes_eV, other.delta_dynes_eV),
        gamma_dynes_eV=mean(primary.gamma_dynes_eV, other.gamma_dynes_eV),
        reason=primary.reason,
    )
    alone = ~combined & (primary.reason == 0)
    if agreement_only and alone.any():
        refused = {f: np.where(alone, np.nan, getattr(result, f)).astype(getattr(result, f).dtype) for f in _MEASURED}
        reason = np.where(alone, CODE.BIAS_STEP_TOO_COARSE, primary.reason).astype(primary.reason.dtype)
        result = result._replace(reason=reason, **refused)
    return result, combined
