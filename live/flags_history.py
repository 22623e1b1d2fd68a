"""The flag rules that need history (tip change, thermal band): windowed robust statistics.

Every rule here is sequential in acquisition order: pixel i is judged against the accepted pixels
before it and joins them if accepted. Small batches (up to :data:`SEQUENTIAL_MAX` pixels, the live
analyser's usual 1-10) are judged one by one on Python floats, where a numpy call's fixed cost
would dominate; larger ones in numpy passes that assume their eligible pixels are accepted and
restart after the first flagged one. Both paths compute the same medians and MADs in float64, so
they give the same bits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from statistics import median
from typing import Any

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.flag_config import FlagConfig

#: Batches up to this many pixels are evaluated one by one: the crossover with the numpy passes,
#: measured with FlagEngine.evaluate on a 60 x 50 synthetic run (batch 16: 0.55 ms one by one,
#: 0.82 ms in a pass; batch 32: 1.0 ms one by one, 0.76 ms in a pass)
SEQUENTIAL_MAX = 16

#: Pixels per numpy pass: a pass that meets a flagged pixel restarts after it, redoing the rest;
#: the following ones then go one by one (a tip change flags stretches of pixels) and the passes
#: grow again by doubling
_LONGEST = 256

#: 1.4826 MAD estimates the standard deviation of normal data
MAD_SCALE = 1.4826

#: ``outside(values, medians)``: True where a value lies outside its window, elementwise on float64
#: arrays (numpy passes) and on floats (one by one)
Outside = Callable[[Any, Any], Any]


def median_mad(windows: np.ndarray, counts: np.ndarray, *, mad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Median and 1.4826 * MAD over the last axis of the first ``counts`` (per row) values.

    ``windows`` (m, k, width) is NaN-padded where a row holds fewer than ``width`` values (the
    start of a run). By sorting (NaN sorts last) and taking the middle of the valid part: the
    same numbers as np.median / np.nanmedian, without their per-call overhead (~0.1 ms each,
    four per batch) or nanmedian's masked arrays. ``mad=False`` skips the MAD (None).
    """
    c = np.maximum(counts, 1)
    if c.min() == c.max():  # the usual case (history full): one middle for all rows, plain slicing
        lo, hi = (int(c[0]) - 1) // 2, int(c[0]) // 2
        rows: tuple = (Ellipsis,)
    else:
        lo, hi = ((c - 1) // 2)[:, None], (c // 2)[:, None]
        rows = (np.arange(c.size)[:, None], np.arange(windows.shape[1])[None, :])

    def mid(v: np.ndarray) -> np.ndarray:
        v = np.sort(v, axis=-1)
        return 0.5 * (v[(*rows, lo)] + v[(*rows, hi)])

    med = mid(windows)
    return med, (MAD_SCALE * mid(np.abs(windows - med[..., None])) if mad else None)


def trailing(
    hist: np.ndarray, values: np.ndarray, joins: np.ndarray, *, width: int, mad: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Median, 1.4826 MAD and count of the last ``width`` entries before each of m pixels.

    The entries are ``hist`` (h, k), oldest first, followed by the ``values`` (m, k) of the
    pixels with ``joins``; pixel i sees those of pixels before it only. ``count`` (m,) is the
    number of entries before each pixel (not clipped to ``width``).
    """
    m, k = values.shape
    idx = np.flatnonzero(joins)
    entries = np.concatenate([hist, values[idx]])
    count = hist.shape[0] + np.searchsorted(idx, np.arange(m))  # entries before each pixel
    padded = np.concatenate([np.full((width, k), np.nan), entries])
    windows = padded[count[:, None] + np.arange(width)].transpose(0, 2, 1)  # (m, k, width): entries[count-width:count]
    med, spread = median_mad(windows, np.minimum(count, width), mad=mad)
    return med, spread, count


def windowed_outliers(
    history: deque,
    values: np.ndarray,
    eligible: np.ndarray,
    *,
    min_history: int,
    outside: Outside,
) -> np.ndarray:
    """Sequential robust-window test of n values (k = 1 column), vectorised for large batches.

    Pixel i is flagged when ``outside(value_i, median)`` of the last ``history.maxlen`` accepted
    values before it, provided there are at least ``min_history``; a value joins the history
    when ``eligible`` and not flagged.

    Parameters
    ----------
    history : deque of float
        Accepted values so far, ``maxlen`` = window; updated.
    values : ndarray, (n,)
    eligible : ndarray of bool, (n,)
    outside : callable
        (values, medians) -> bool, elementwise on float64 arrays or on floats.

    Returns
    -------
    ndarray of bool, (n,)
    """
    n = values.size
    width = int(history.maxlen or 1)
    flagged = np.zeros(n, dtype=bool)
    hist = np.array(history, dtype=np.float64).reshape(-1, 1)
    longest = max(_LONGEST, 2 * width)
    start, look = 0, longest
    while start < n:
        end = min(n, start + look)
        if end - start <= SEQUENTIAL_MAX:  # after a flag, or a small batch: one by one
            steps = deque(hist[:, 0].tolist(), maxlen=width)
            flagged[start:end] = [
                judge(steps, v, ok, min_history=min_history, outside=outside)
                for v, ok in zip(values[start:end].tolist(), eligible[start:end].tolist(), strict=True)
            ]
            hist = np.array(steps, dtype=np.float64).reshape(-1, 1)
            look = SEQUENTIAL_MAX if (flagged[start:end] & eligible[start:end]).any() else min(2 * look, longest)
            start = end
            continue
        idx = start + np.flatnonzero(eligible[start:end])
        med, _, count = trailing(hist, values[start:end, None], eligible[start:end], width=width, mad=False)
        test = (count >= min_history) & outside(values[start:end], med[:, 0])
        bad = np.flatnonzero(test & eligible[start:end])
        stop = end if bad.size == 0 else start + int(bad[0]) + 1
        flagged[start:stop] = test[: stop - start]
        accepted = idx if bad.size == 0 else idx[idx < stop - 1]  # the first flagged one and later: next pass
        hist = np.concatenate([hist, values[accepted, None]])[-width:]
        start, look = stop, longest if bad.size == 0 else SEQUENTIAL_MAX
    history.clear()
    history.extend(hist[:, 0].tolist())
    return flagged


def judge(history: deque, value: float, eligible: bool, *, min_history: int, outside: Outside) -> bool:
    """One step of :func:`windowed_outliers`: True if ``value`` is outside; it joins ``history`` if eligible and not."""
    bad = len(history) >= max(min_history, 1) and bool(outside(value, median(history)))
    if eligible and not bad:
        history.append(value)
    return bad


class TipTracker:
    """History of the tip rule: accepted features on the map and in time (:class:`FlagConfig`, tip_change).

    The map grows with the largest row/column seen (the engine is not told the grid) and has a
    border of ``tip_radius_px`` never-seen pixels, so a neighbourhood never needs bounds checks.
    """

    def __init__(self, config: FlagConfig) -> None:
        self.config = config
        r = self._pad = config.tip_radius_px
        self.values = np.full((2 * r, 2 * r, 2), np.nan)  # accepted features per pixel (the latest), padded
        self.seen = np.zeros((2 * r, 2 * r), dtype=bool)
        self._local = np.full((2 * r, 2 * r), -1, dtype=np.int64)  # scratch: pass index of a pixel, -1 elsewhere
        # last tip_recent accepted features and last tip_window accepted spatial residuals, oldest
        # first, as (f-, f+) pairs of floats: the one-by-one path reads them as they are
        self.recent: deque[Sequence[float]] = deque(maxlen=config.tip_recent)
        self.residuals: deque[Sequence[float]] = deque(maxlen=config.tip_window)
        dy, dx = np.mgrid[0 : 2 * r + 1, 0 : 2 * r + 1]  # neighbourhood offsets in padded coordinates
        self._dy, self._dx = dy.ravel(), dx.ravel()

    def _grow(self, ny: int, nx: int) -> None:
        oy, ox = self.seen.shape
        ny, nx = ny + 2 * self._pad, nx + 2 * self._pad
        if ny <= oy and nx <= ox:
            return
        ny, nx = max(ny, oy), max(nx, ox)
        values = np.full((ny, nx, 2), np.nan)
        values[:oy, :ox] = self.values
        seen = np.zeros((ny, nx), dtype=bool)
        seen[:oy, :ox] = self.seen
        self.values, self.seen, self._local = values, seen, np.full((ny, nx), -1, dtype=np.int64)

    def changed(self, iy: np.ndarray, ix: np.ndarray, values: np.ndarray, *, eligible: np.ndarray) -> np.ndarray:
        """Tip-change test of n pixels (n,) at (iy, ix) with features ``values`` (n, 2), in order."""
        n = values.shape[0]
        if n == 0:
            return np.zeros(0, dtype=bool)
        rows, cols = iy.tolist(), ix.tolist()  # bounds by min/max of Python ints: no numpy calls for a few pixels
        if min(rows) < 0 or min(cols) < 0:
            raise AnalysisError("flags: negative pixel row/column; give map indices (iy, ix) >= 0")
        self._grow(max(rows) + 1, max(cols) + 1)
        flagged = np.zeros(n, dtype=bool)
        longest = max(_LONGEST, 2 * self.config.tip_window)
        start, look = 0, longest
        while start < n:
            end = min(n, start + look)
            if end - start <= SEQUENTIAL_MAX:  # after a flag, or a small batch: one by one
                flagged[start:end] = self._one_by_one(
                    rows[start:end], cols[start:end], values[start:end], eligible[start:end].tolist()
                )
                look = SEQUENTIAL_MAX if (flagged[start:end] & eligible[start:end]).any() else min(2 * look, longest)
                start = end
                continue
            end = self._pass_end(iy, ix, eligible, start, end)
            test, resid = self._test(iy[start:end], ix[start:end], values[start:end], eligible[start:end])
            bad = np.flatnonzero(test & eligible[start:end])
            stop = end if bad.size == 0 else start + int(bad[0]) + 1
            flagged[start:stop] = test[: stop - start]
            k = stop - start
            self._accept(
                iy[start:stop], ix[start:stop], values[start:stop], resid[:k], eligible[start:stop] & ~test[:k]
            )
            start, look = stop, longest if bad.size == 0 else SEQUENTIAL_MAX
        return flagged

    def _one_by_one(self, iy: list[int], ix: list[int], values: np.ndarray, eligible: list[bool]) -> np.ndarray:
        """:meth:`changed` pixel by pixel: the rule as written, on Python floats (small batches)."""
        cfg = self.config
        span = 2 * self._pad + 1
        residuals, recent = self.residuals, self.recent
        flagged = []
        for y, x, v, ok in zip(iy, ix, values.tolist(), eligible, strict=True):
            near = self.values[y : y + span, x : x + span][self.seen[y : y + span, x : x + span]]  # (k, 2)
            resid = [v[0] - median(near[:, 0].tolist()), v[1] - median(near[:, 1].tolist())] if near.size else None
            bad = False
            if resid is not None and len(residuals) >= cfg.tip_min_history and recent:
                hists = list(zip(*residuals, strict=True))
                meds = [median(h) for h in hists]
                in_space = [abs(resid[j] - meds[j]) for j in (0, 1)]  # steps vs the neighbours' residuals
                in_time = [abs(v[j] - median([r[j] for r in recent])) for j in (0, 1)]  # vs the recent pixels
                # the limit is at least tip_min_change: a step below it in space or in time (the
                # clean pixel) is not flagged, whatever the MAD, which is then not needed
                low = cfg.tip_min_change
                if any(d > low for d in in_space) and any(d > low for d in in_time):
                    limits = [
                        max(cfg.tip_mad_k * (MAD_SCALE * median([abs(x - m) for x in h])), low)
                        for h, m in zip(hists, meds, strict=True)
                    ]
                    bad = any(in_space[j] > limits[j] for j in (0, 1)) and any(in_time[j] > limits[j] for j in (0, 1))
            flagged.append(bad)
            if ok and not bad:
                self.values[y + self._pad, x + self._pad] = v
                self.seen[y + self._pad, x + self._pad] = True
                recent.append(v)
                if resid is not None:
                    residuals.append(resid)
        return np.array(flagged, dtype=bool)

    def _pass_end(self, iy: np.ndarray, ix: np.ndarray, eligible: np.ndarray, start: int, end: int) -> int:
        """End of a pass: before the second eligible occurrence of a pixel (a re-measure) in it."""
        rows = start + np.flatnonzero(eligible[start:end])
        flat = iy[rows] * self.seen.shape[1] + ix[rows]
        order = np.argsort(flat, kind="stable")
        repeats = order[1:][flat[order][1:] == flat[order][:-1]]
        return end if repeats.size == 0 else int(rows[repeats.min()])

    def _test(
        self, iy: np.ndarray, ix: np.ndarray, v: np.ndarray, eligible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Outside in space and in time (and the spatial residuals), eligible pixels assumed accepted."""
        cfg = self.config
        m = v.shape[0]
        qy, qx = iy[:, None] + self._dy, ix[:, None] + self._dx  # (m, K) neighbourhood, padded coordinates
        before = self.seen[qy, qx]  # accepted in earlier passes
        p = self._pad
        self._local[iy[eligible] + p, ix[eligible] + p] = np.flatnonzero(eligible)
        j = self._local[qy, qx]
        self._local[iy + p, ix + p] = -1
        in_pass = (j >= 0) & (j < np.arange(m)[:, None])  # measured earlier in this pass (wins: the latest)
        neighbours = np.where(
            in_pass[..., None], v[np.maximum(j, 0)], np.where(before[..., None], self.values[qy, qx], np.nan)
        )
        n_ref = (in_pass | before).sum(axis=1)
        ref, _ = median_mad(
            neighbours.transpose(0, 2, 1), n_ref, mad=False
        )  # NaN sorts last: the median of the n_ref present
        resid = v - ref
        has_ref = n_ref > 0
        med_r, mad_r, n_r = trailing(_pairs(self.residuals), resid, eligible & has_ref, width=cfg.tip_window)
        assert mad_r is not None  # asked for (mad=True)
        med_t, _, n_t = trailing(_pairs(self.recent), v, eligible, width=cfg.tip_recent, mad=False)
        limit = np.maximum(cfg.tip_mad_k * mad_r, cfg.tip_min_change)
        with np.errstate(invalid="ignore"):  # NaN features or no reference: comparisons are False
            in_space = (np.abs(resid - med_r) > limit).any(axis=1)
            in_time = (np.abs(v - med_t) > limit).any(axis=1)
        return has_ref & (n_r >= cfg.tip_min_history) & (n_t > 0) & in_space & in_time, resid

    def _accept(self, iy: np.ndarray, ix: np.ndarray, v: np.ndarray, resid: np.ndarray, accepted: np.ndarray) -> None:
        """Accepted pixels become references: on the map, in time and (with a reference) residuals."""
        p = self._pad
        self.values[iy[accepted] + p, ix[accepted] + p] = v[accepted]
        self.seen[iy[accepted] + p, ix[accepted] + p] = True
        self.recent.extend(v[accepted].tolist())
        with_ref = accepted & np.isfinite(resid).all(axis=1)
        self.residuals.extend(resid[with_ref].tolist())


def _pairs(history: deque) -> np.ndarray:
    """A history of (f-, f+) pairs as an (h, 2) float64 array."""
    return np.array(history, dtype=np.float64).reshape(-1, 2)
