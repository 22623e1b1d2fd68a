"""The per-pixel quality-flag bits, their labels and descriptions, and their summary per set-point set.

:class:`FlagKind` is the one bit table: the flag engine writes these bits, the results model
stores them, the analysis file and the screen name them with :data:`FLAG_LABELS` and
:data:`FLAG_DESCRIPTIONS`. :func:`summarise_sets` aggregates the bits of a run's measured pixels
per set-point set (counts, fraction, first/last flagged pixel, dominant flag, a sentence).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import numpy as np


class FlagKind(IntFlag):
    """Per-pixel quality flags, one bit each; a pixel may carry several."""

    MODULATION = 1 << 0
    THERMAL = 1 << 1
    SETPOINT = 1 << 2
    TIP_CHANGE = 1 << 3
    LOCKIN_OVERLOAD = 1 << 4
    LOCKIN_SENSITIVITY = 1 << 5
    SWEEP_COVERAGE = 1 << 6
    NO_PEAKS = 1 << 7
    POOR_FIT = 1 << 8
    LOCKIN_MISMATCH = 1 << 9
    FAILED_PIXEL = 1 << 10


#: One-line description of each flag for display; the set message reads "set N: <this>, ...".
FLAG_DESCRIPTIONS: dict[FlagKind, str] = {
    FlagKind.MODULATION: "lock-in modulation too large for the gap: broadens the coherence peaks",
    FlagKind.THERMAL: "temperature above the band (3.5 k_B T no longer small against Delta)",
    FlagKind.SETPOINT: "I(V_set) differs from I_set: feedback not settled or tip unstable",
    FlagKind.TIP_CHANGE: "abrupt change of the normal-state conductance: tip change",
    FlagKind.LOCKIN_OVERLOAD: "lock-in overload during the sweep",
    FlagKind.LOCKIN_SENSITIVITY: "lock-in sensitivity too coarse for the signal",
    FlagKind.SWEEP_COVERAGE: "sweep does not cover the gap or the power-law fit window",
    FlagKind.NO_PEAKS: "no coherence peaks found",
    FlagKind.POOR_FIT: "power-law fit of the background is poor",
    FlagKind.LOCKIN_MISMATCH: "lock-in dI/dV and the derivative of I(V) disagree",
    FlagKind.FAILED_PIXEL: "pixel could not be measured",
}

#: Short label of each flag ("modulation", "lockin_overload", ...), its lower-case member name.
FLAG_LABELS: dict[FlagKind, str] = {kind: str(kind.name).lower() for kind in FlagKind}


@dataclass(frozen=True, slots=True)
class SetFlagSummary:
    """Flags aggregated over the pixels of one set-point parameter set."""

    set_id: int
    n_pixels: int
    n_flagged: int
    counts: dict[str, int]
    first_pixel: tuple[int, int] | None
    last_pixel: tuple[int, int] | None
    dominant: str | None
    flagged: bool
    message: str

    @property
    def fraction(self) -> float:
        """Flagged fraction of the set's measured pixels (0 when the set has none)."""
        return self.n_flagged / self.n_pixels if self.n_pixels else 0.0


def set_message(set_id: int, dominant: str | None, fraction: float, params: Mapping[str, Any]) -> str:
    """Human sentence for a set, e.g. "set 2: modulation 0.8 mV rms broadens peaks, 97 % ..."."""
    if dominant is None:
        return f"set {set_id}: no flags"
    what = FLAG_DESCRIPTIONS[FlagKind[dominant.upper()]]
    amp = params.get("lockin_amplitude_Vrms")
    if dominant == "modulation" and amp is not None:
        what = f"modulation {float(amp) * 1e3:.1f} mV rms broadens peaks"
    return f"set {set_id}: {what}, {100.0 * fraction:.0f} % of its pixels flagged"


def summarise_sets(
    measured: np.ndarray,
    sets: np.ndarray,
    flags: np.ndarray,
    times: np.ndarray,
    *,
    params: Mapping[int, Mapping[str, Any]],
    threshold: float,
) -> list[SetFlagSummary]:
    """Flags per set-point set of a run's measured pixels.

    Parameters
    ----------
    measured : ndarray of bool, (ny, nx)
        Pixels with a result.
    sets, flags, times : ndarray, (k,)
        Set id, FlagKind bits and unix time (s, NaN = unknown) of the k measured pixels, in the
        raster order of ``measured``'s True entries.
    params
        Parameters per set id (``lockin_amplitude_Vrms`` names the modulation in the message).
    threshold
        Flagged fraction at and above which a set is reported as flagged.

    Returns
    -------
    list of SetFlagSummary
        One per set id present, ascending. First/last flagged pixel in acquisition time order,
        raster order breaking ties and ordering the pixels without a time.
    """
    iy, ix = np.nonzero(measured)
    order_key = np.where(np.isfinite(times), times, np.inf)
    summaries = []
    for set_id in np.unique(sets):
        in_set = sets == set_id
        f = flags[in_set]
        flagged = f != 0
        counts = {FLAG_LABELS[k]: int(np.count_nonzero(f & int(k))) for k in FlagKind}
        counts = {k: v for k, v in counts.items() if v}
        n, n_flagged = int(in_set.sum()), int(flagged.sum())
        first = last = None
        if n_flagged:
            idx = np.flatnonzero(in_set)[flagged]
            # stable lexsort: time first, raster index breaks ties and orders untimed pixels
            order = idx[np.lexsort((idx, order_key[idx]))]
            first = (int(iy[order[0]]), int(ix[order[0]]))
            last = (int(iy[order[-1]]), int(ix[order[-1]]))
        dominant = max(counts, key=lambda k: counts[k]) if counts else None
        fraction = n_flagged / n if n else 0.0
        summaries.append(
            SetFlagSummary(
                set_id=int(set_id),
                n_pixels=n,
                n_flagged=n_flagged,
                counts=counts,
                first_pixel=first,
                last_pixel=last,
                dominant=dominant,
                flagged=fraction >= threshold,
                message=set_message(int(set_id), dominant, fraction, params.get(int(set_id), {})),
            )
        )
    return summaries
