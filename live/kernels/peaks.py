"""Where the coherence peaks are searched, and the coarse peak with the window a template is fitted to.

Each polarity is searched on its own: the negative one as the positive side of the mirrored
sweep V -> -V. :func:`gap_geometry` holds THE coverage rule (which polarities a sweep covers),
:func:`coarse_peaks` the coarse peak (argmax above a running-mean background) and
:func:`fit_windows` the samples the matched filter of :mod:`~stslive.live.kernels.templates`
reads around it. The gap, the batch engine and the Dynes-width estimate all go through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter1d

from stslive.live.kernels.buffers import scratch
from stslive.live.kernels.samples import (
    COARSE_OUTWARD_SAMPLES,
    CONTRAST_POINTS,
    GAP_REACH_SAMPLES,
    LOCKIN_COARSE_OUTWARD_SAMPLES,
    MIN_SEARCH_SAMPLES,
)
from stslive.live.kernels.sweep import bias_step, prepare_sweep
from stslive.live.kernels.templates import TemplateBank

__all__ = ["GapGeometry", "SearchSide", "coarse_peaks", "fit_windows", "gap_geometry", "gap_search_covered"]


@dataclass(frozen=True)
class SearchSide:
    """One polarity of the coarse-peak search, in columns of the unmirrored (ascending) rows.

    The negative polarity is searched as the positive one of the mirrored sweep V -> -V: its
    contrast input is the reversed view of ``part``, so the running mean sees the samples in the
    same order as on a mirrored copy (the running sum of ``uniform_filter1d`` depends on it).
    """

    mirrored: bool
    part: slice  #: columns of the contrast input: search columns +- CONTRAST_POINTS // 2
    searched: slice  #: the search columns within the (reversed, if mirrored) contrast input
    start: int  #: first search column in the side's own (mirrored) coordinates
    origin_V: float  #: bias of column 0 in the side's own coordinates, V


@dataclass(frozen=True)
class GapGeometry:
    """What the gap search reads on one bias grid (cached per grid, see :func:`gap_geometry`)."""

    #: columns the gap search reads: |V| <= search end + GAP_REACH_SAMPLES (contrast and template reach)
    columns: slice
    sides: tuple[SearchSide | None, SearchSide | None]  #: (+, -); None: the sweep does not cover it
    #: per searched side (in order): first search column, search column count, origin (V), +-1,
    #: column of coordinate 0
    start: np.ndarray
    count: np.ndarray
    origin_V: np.ndarray
    direction: np.ndarray
    base: np.ndarray

    @property
    def searched(self) -> list[SearchSide]:
        """The polarities the sweep covers, (+, -) order."""
        return [s for s in self.sides if s is not None]

    @property
    def covered(self) -> bool:
        """Whether the sweep covers the search range on both polarities (else no Delta at all)."""
        return all(s is not None for s in self.sides)


@lru_cache(maxsize=32)
def gap_geometry(bias_key: bytes, search_V: tuple[float, float], step: float) -> GapGeometry:
    """:class:`GapGeometry` of the ascending float64 grid ``bias_key``, keyed by its values (not its id).

    THE coverage rule: a polarity is searched if it holds at least ``MIN_SEARCH_SAMPLES``
    samples with search_V[0] <= |V| <= search_V[1] and the sweep reaches search_V[1] to within a
    step; Delta needs both (else SEARCH_NOT_COVERED).
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    used = np.flatnonzero(np.abs(bias) <= search_V[1] + GAP_REACH_SAMPLES * step)
    columns = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0)
    half = CONTRAST_POINTS // 2
    sides: list[SearchSide | None] = []
    for mirrored, side_bias in ((False, bias), (True, -bias[::-1])):
        sel = np.flatnonzero((side_bias >= search_V[0]) & (side_bias <= search_V[1]))
        if sel.size < MIN_SEARCH_SAMPLES or side_bias[-1] < search_V[1] - step:
            sides.append(None)
            continue
        lo, hi = max(int(sel[0]) - half, 0), min(int(sel[-1]) + half + 1, n)
        sides.append(
            SearchSide(
                mirrored=mirrored,
                part=slice(n - hi, n - lo) if mirrored else slice(lo, hi),
                searched=slice(int(sel[0]) - lo, int(sel[-1]) + 1 - lo),
                start=int(sel[0]),
                origin_V=float(side_bias[0]),
            )
        )
    searched = [s for s in sides if s is not None]

    def frozen(values: list[float] | list[int], dtype: type) -> np.ndarray:
        array: np.ndarray = np.array(values, dtype)
        array.setflags(write=False)  # shared by every call and thread on this grid
        return array

    return GapGeometry(
        columns=columns,
        sides=(sides[0], sides[1]),
        start=frozen([s.start for s in searched], np.intp),
        count=frozen([s.searched.stop - s.searched.start for s in searched], np.intp),
        origin_V=frozen([s.origin_V for s in searched], np.float64),
        direction=frozen([-1 if s.mirrored else 1 for s in searched], np.intp),
        base=frozen([n - 1 if s.mirrored else 0 for s in searched], np.intp),
    )


def gap_search_covered(bias_V: np.ndarray, search_V: tuple[float, float]) -> bool:
    """Whether a sweep (V, either direction) covers the gap search range ``search_V`` on both polarities.

    The rule of :func:`gap_geometry`; raises AnalysisError for a sweep the kernels refuse
    (non-uniform, fewer than ``MIN_SWEEP_POINTS`` points).
    """
    (bias,) = prepare_sweep(np.asarray(bias_V, dtype=np.float64))
    key = bias.tobytes()
    return gap_geometry(key, tuple(search_V), bias_step(bias, key=key)).covered


def coarse_peaks(sides: list[SearchSide], didv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coarse coherence peak per row and side: argmax of dI/dV minus its CONTRAST_POINTS running mean.

    Why the background is removed: on the simulated film the rising Altshuler-Aronov background
    at 3-4 mV exceeds the coherence peak of small-gap pixels, so a plain argmax lands on the
    search edge (17 % of one 40 x 40 film).

    Returns
    -------
    j : ndarray of int, (rows, k)
        Peak index within each side's search columns.
    ratio : ndarray, (rows, k), float64
        Peak height over its background (the running mean the contrast removed).
    """
    rows = didv.shape[0]
    j = np.empty((rows, len(sides)), np.intp)
    ratio = np.empty((rows, len(sides)))
    every = np.arange(rows)
    for i, side in enumerate(sides):
        part = didv[:, side.part][:, ::-1] if side.mirrored else didv[:, side.part]
        searched = part[:, side.searched]
        # scratch output: uniform_filter1d allocating its own costs twice the filter on these rows
        mean = uniform_filter1d(
            part, CONTRAST_POINTS, axis=-1, mode="nearest", output=scratch("contrast", part.shape, part.dtype)
        )
        contrast = searched - mean[:, side.searched]
        peak = contrast.argmax(axis=1)
        peak_height = searched[every, peak].astype(np.float64)
        np.divide(peak_height, peak_height - contrast[every, peak], out=ratio[:, i])
        j[:, i] = peak
    return j, ratio


def fit_windows(
    geometry: GapGeometry, signal: np.ndarray, j: np.ndarray, bank: TemplateBank, *, integrated: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template-fit windows around the coarse peaks ``j`` (rows, k) of the searched sides.

    The window is centred COARSE_OUTWARD_SAMPLES (current) or LOCKIN_COARSE_OUTWARD_SAMPLES
    (lock-in) inside the coarse peak. ``integrated`` (a current) fits -I(-V) on the mirrored
    side (the current changes sign with V): only the windows are negated, not the rows.

    Returns
    -------
    windows : ndarray, (rows, k, M)
        ``signal`` at the window columns, in each side's own coordinates.
    outside : ndarray of bool, (rows, k)
        The window passes a sweep end (its columns are clipped).
    centre : ndarray of int, (rows, k)
        Window centre in each side's own columns.
    """
    rows, n = signal.shape
    centre = geometry.start + j - (COARSE_OUTWARD_SAMPLES if integrated else LOCKIN_COARSE_OUTWARD_SAMPLES)
    idx = centre[:, :, None] + bank.offsets
    outside = (idx[:, :, 0] < 0) | (idx[:, :, -1] >= n)
    np.minimum(np.maximum(idx, 0, out=idx), n - 1, out=idx)
    # side coordinates -> columns of the unmirrored rows
    idx *= geometry.direction[:, None]
    idx += geometry.base[:, None]
    windows = signal[np.arange(rows)[:, None, None], idx]
    if integrated:
        for i, side in enumerate(geometry.searched):
            if side.mirrored:
                np.negative(windows[:, i], out=windows[:, i])
    return windows, outside, centre
