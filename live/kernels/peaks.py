"""Where the coherence peaks are searched, the coarse peak, and the window a template is fitted to.

Each polarity is searched on its own: the negative one as the positive side of the mirrored
sweep V -> -V. :func:`gap_geometry` holds THE coverage rule (which polarities a sweep covers,
and whether its step can hold a peak at all), :func:`coarse_peaks` the coarse peak (argmax of the
smoothed dI/dV above its running-mean background, :data:`~.scales.CONTRAST_WIDTH_V` wide) and
:func:`fit_windows` the samples the template fit of :mod:`~stslive.live.kernels.templates` reads
around it. The gap, the batch engine and the calibration all go through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import uniform_filter1d

from stslive.live.kernels.buffers import scratch
from stslive.live.kernels.scales import CONTRAST_WIDTH_V, MIN_SEARCH_SAMPLES, odd_points
from stslive.live.kernels.sweep import bias_step, prepare_sweep
from stslive.live.kernels.templates import TemplateBank

__all__ = [
    "READ_REACH_V",
    "GapGeometry",
    "SearchSide",
    "coarse_peaks",
    "fit_windows",
    "gap_geometry",
    "gap_search_covered",
]

#: The gap reads this far beyond its search range, V: the widest template window (2 mV past a
#: peak) plus its shifts.
READ_REACH_V = 2.6e-3


@dataclass(frozen=True)
class SearchSide:
    """One polarity of the coarse-peak search, in columns of the unmirrored (ascending) rows.

    The negative polarity is searched as the positive one of the mirrored sweep V -> -V: its
    contrast input is the reversed view of ``part``, so the running mean sees the samples in the
    same order as on a mirrored copy (the running sum of ``uniform_filter1d`` depends on it).
    """

    mirrored: bool
    part: slice  #: columns of the contrast input: search columns +- the contrast half width
    searched: slice  #: the search columns within the (reversed, if mirrored) contrast input
    start: int  #: first search column in the side's own (mirrored) coordinates
    origin_V: float  #: bias of column 0 in the side's own coordinates, V


@dataclass(frozen=True)
class GapGeometry:
    """What the gap search reads on one bias grid (cached per grid, see :func:`gap_geometry`)."""

    #: columns the gap reads: |V| <= search end + READ_REACH_V, within the sweep
    columns: slice
    sides: tuple[SearchSide | None, SearchSide | None]  #: (+, -); None: the sweep does not cover it
    #: the step cannot hold a coherence peak in the search range (fewer than MIN_SEARCH_SAMPLES)
    too_coarse: bool
    contrast_points: int
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
        """Whether both polarities are searched (else no Delta at all)."""
        return all(s is not None for s in self.sides) and not self.too_coarse


@lru_cache(maxsize=64)
def gap_geometry(bias_key: bytes, search_V: tuple[float, float], step: float, edge: int) -> GapGeometry:
    """:class:`GapGeometry` of the ascending float64 grid ``bias_key``, keyed by its values (not its id).

    THE coverage rule: a polarity is searched on search_V[0] <= |V| <= search_V[1], cut where
    the sweep ends (less ``edge`` samples: the NaN ends of a box derivative) or where the contrast
    background would pass the sweep end; it is covered if at least ``MIN_SEARCH_SAMPLES``
    remain and it starts below search_V[1]. A step so coarse that the full search range holds
    fewer samples is ``too_coarse`` (BIAS_STEP_TOO_COARSE, not a coverage failure).
    """
    bias = np.frombuffer(bias_key, dtype=np.float64)
    n = bias.size
    contrast = odd_points(CONTRAST_WIDTH_V / step, minimum=3)
    half = contrast // 2
    used = np.flatnonzero(np.abs(bias) <= search_V[1] + READ_REACH_V)
    columns = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 0)
    too_coarse = (search_V[1] - search_V[0]) / step < MIN_SEARCH_SAMPLES
    sides: list[SearchSide | None] = []
    for mirrored, side_bias in ((False, bias), (True, -bias[::-1])):
        inside = np.flatnonzero((side_bias >= search_V[0]) & (side_bias <= search_V[1]))
        inside = inside[(inside >= edge) & (inside < n - edge)]
        if inside.size < MIN_SEARCH_SAMPLES or too_coarse:
            sides.append(None)
            continue
        lo, hi = max(int(inside[0]) - half, edge), min(int(inside[-1]) + half + 1, n - edge)
        sides.append(
            SearchSide(
                mirrored=mirrored,
                part=slice(n - hi, n - lo) if mirrored else slice(lo, hi),
                searched=slice(int(inside[0]) - lo, int(inside[-1]) + 1 - lo),
                start=int(inside[0]),
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
        too_coarse=too_coarse,
        contrast_points=contrast,
        start=frozen([s.start for s in searched], np.intp),
        count=frozen([s.searched.stop - s.searched.start for s in searched], np.intp),
        origin_V=frozen([s.origin_V for s in searched], np.float64),
        direction=frozen([-1 if s.mirrored else 1 for s in searched], np.intp),
        base=frozen([n - 1 if s.mirrored else 0 for s in searched], np.intp),
    )


def gap_search_covered(bias_V: np.ndarray, search_V: tuple[float, float], *, edge: int = 0) -> bool:
    """Whether a sweep (V, either direction) is searched for coherence peaks on both polarities.

    The rule of :func:`gap_geometry` (``edge``: samples lost at each sweep end, e.g. by a box
    derivative); raises AnalysisError for a sweep the kernels refuse (non-uniform, fewer than
    ``MIN_SWEEP_POINTS`` points).
    """
    (bias,) = prepare_sweep(np.asarray(bias_V, dtype=np.float64))
    key = bias.tobytes()
    return gap_geometry(key, tuple(search_V), bias_step(bias, key=key), edge).covered


def coarse_peaks(geometry: GapGeometry, didv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coarse coherence peak per row and side: argmax of dI/dV minus its running-mean background.

    Why the background is removed: the rising Altshuler-Aronov background at a few mV can
    exceed the coherence peak of a small gap, and a plain argmax then lands on the search edge.

    Returns
    -------
    j : ndarray of int, (rows, k)
        Peak index within each side's search columns.
    ratio : ndarray, (rows, k), float64
        Peak height over its background (the running mean the contrast removed).
    """
    sides = geometry.searched
    rows = didv.shape[0]
    j = np.empty((rows, len(sides)), np.intp)
    ratio = np.empty((rows, len(sides)))
    every = np.arange(rows)
    for i, side in enumerate(sides):
        part = didv[:, side.part][:, ::-1] if side.mirrored else didv[:, side.part]
        searched = part[:, side.searched]
        # scratch output: uniform_filter1d allocating its own costs twice the filter on these rows
        mean = uniform_filter1d(
            part,
            geometry.contrast_points,
            axis=-1,
            mode="nearest",
            output=scratch("contrast", part.shape, part.dtype),
        )
        contrast = searched - mean[:, side.searched]
        peak = contrast.argmax(axis=1)
        peak_height = searched[every, peak].astype(np.float64)
        np.divide(peak_height, peak_height - contrast[every, peak], out=ratio[:, i])
        j[:, i] = peak
    return j, ratio


def fit_windows(
    geometry: GapGeometry, signal: np.ndarray, centre: np.ndarray, bank: TemplateBank, *, integrated: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The template-fit windows around ``centre`` (rows, k), in each searched side's own columns.

    ``integrated`` (a current) fits -I(-V) on the mirrored side (the current changes sign with
    V): only the windows are negated, not the rows.

    Returns
    -------
    windows : ndarray, (rows, k, M)
        ``signal`` at the window columns, in each side's own coordinates.
    outside : ndarray of bool, (rows, k)
        The window passes a sweep end (its columns are clipped).
    """
    rows, n = signal.shape
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
    return windows, outside
