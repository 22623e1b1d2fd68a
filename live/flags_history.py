"""Windowed robust statistics of the flag rules that need history (thermal band; the tip rule's windows).

Every rule here is sequential in acquisition order: pixel i is judged against the accepted pixels
before it and joins them if accepted. Small batches (up to :data:`SEQUENTIAL_MAX` pixels, the live
analyser's usual 1-10) are judged one by one on Python floats, where a numpy call's fixed cost
would dominate; larger ones in numpy passes that assume their eligible pixels are accepted and
restart after the first flagged one. Both paths compute the same medians and MADs in float64, so
they give the same bits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from statistics import median
from typing import Any

import numpy as np

#: Batches up to this many pixels are evaluated one by one: the crossover with the numpy passes,
#: measured with FlagEngine.evaluate on a 60 x 50 synthetic run (batch 16: 0.55 ms one by one,
#: 0.82 ms in a pass; batch 32: 1.0 ms one by one, 0.76 ms in a pass)
SEQUENTIAL_MAX = 16

#: Pixels per numpy pass: a pass that meets a flagged pixel restarts after it, redoing the rest;
#: the following ones then go one by one (a temperature excursion flags stretches of pixels) and the passes
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
