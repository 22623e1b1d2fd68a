"""The tip rule: tip-change events, the tip epoch of every pixel, and momentary junction changes.

Contract (the physics and thresholds are :class:`~stslive.live.flag_config.FlagConfig`, tip_change):
:class:`TipTracker` judges pixels in acquisition order by their features f = (f-, f+). Each epoch
(one tip) has an offset, the step of f since epoch 0; a pixel's normalised features are f minus
its epoch's offset, and those are what the spatial and temporal references hold, so pixels of
different tips compare. An *outlier* differs from both references by more than the limit. A run of
``tip_confirm`` outliers with one common step is a tip-change *event*: from its first pixel on,
every pixel belongs to the new epoch - or to an earlier epoch whose offset the new one matches
within the limit (a tip that went back: its spectra are those of the earlier tip, so its pixels
belong with them). A shorter run is a momentary junction change: those pixels stay in their epoch,
flagged. The TIP_CHANGE bit of a pixel is "epoch != 0 or momentary change".

A live run cannot wait: the pixels of an unconfirmed run are reported at once as momentary changes
and relabelled when the event is confirmed (:class:`TipVerdict` ``revised``). Small batches go one
pixel at a time on Python floats; long stretches without outliers in numpy passes that assume
every eligible pixel is accepted and stop before the first outlier. Both give the same labels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import NamedTuple

import numpy as np

from stslive.drivers.errors import AnalysisError
from stslive.live.flag_config import FlagConfig
from stslive.live.flags_history import MAD_SCALE, SEQUENTIAL_MAX, median_mad, trailing

__all__ = ["TipEvent", "TipRevision", "TipVerdict", "TipTracker"]

#: Pixels per numpy pass (a pass that meets an outlier stops before it; passes then grow by doubling).
_LONGEST = 256


class TipEvent(NamedTuple):
    """A confirmed tip change: its first pixel, the epochs it leaves and enters, the feature step."""

    order: int  #: position of its first pixel among all pixels judged (0-based, acquisition order)
    iy: int
    ix: int
    from_epoch: int
    to_epoch: int
    step: tuple[float, float]  #: change of (f-, f+) = ln(G_band / G_set) per polarity


class TipRevision(NamedTuple):
    """Pixels judged in an earlier batch whose label a confirmed event changed: (m,) arrays.

    ``order`` is each one's position among all pixels judged (0-based, acquisition order).
    """

    order: np.ndarray
    iy: np.ndarray
    ix: np.ndarray
    epoch: np.ndarray
    changed: np.ndarray


class TipVerdict(NamedTuple):
    """The labels of a batch: TIP_CHANGE bit and epoch (n,), and the earlier pixels revised."""

    changed: np.ndarray
    epoch: np.ndarray
    revised: TipRevision


@dataclass(slots=True)
class _Pending:
    """An outlier of the current run, or (``step`` None) a pixel measured during the run but not judged."""

    order: int
    iy: int
    ix: int
    values: list[float] | None = None  # raw features
    resid: list[float] | None = None  # spatial residual in the current epoch's normalisation
    step: list[float] | None = None  # resid minus the typical residual
    limits: list[float] | None = None


class TipTracker:
    """History of the tip rule: normalised features on the map and in time, epochs, open outlier run.

    The map grows with the largest row/column seen (the engine is not told the grid) and has a
    border of ``tip_radius_px`` never-seen pixels, so a neighbourhood never needs bounds checks.
    """

    def __init__(self, config: FlagConfig) -> None:
        self.config = config
        r = self._pad = config.tip_radius_px
        self.values = np.full((2 * r, 2 * r, 2), np.nan)  # accepted normalised features per pixel, padded
        self.seen = np.zeros((2 * r, 2 * r), dtype=bool)
        self._local = np.full((2 * r, 2 * r), -1, dtype=np.int64)  # scratch: pass index of a pixel, -1 elsewhere
        # last tip_recent accepted features and last tip_window accepted spatial residuals, oldest first
        self.recent: deque[Sequence[float]] = deque(maxlen=config.tip_recent)
        self.residuals: deque[Sequence[float]] = deque(maxlen=config.tip_window)
        dy, dx = np.mgrid[0 : 2 * r + 1, 0 : 2 * r + 1]  # neighbourhood offsets in padded coordinates
        self._dy, self._dx = dy.ravel(), dx.ravel()
        #: offset of each epoch's features from epoch 0's, (f-, f+)
        self.offsets: list[tuple[float, float]] = [(0.0, 0.0)]
        self.epoch = 0
        self.events: list[TipEvent] = []
        self._count = 0  # pixels judged so far
        self._run: list[_Pending] = []  # the open run: outliers and the pixels between them, in order

    # -- public --------------------------------------------------------------------------------
    def judge(self, iy: np.ndarray, ix: np.ndarray, values: np.ndarray, *, eligible: np.ndarray) -> TipVerdict:
        """Labels of n pixels (n,) at (iy, ix) with features ``values`` (n, 2), in acquisition order.

        ``eligible``: finite features and a settled set-point; other pixels only take the epoch.
        """
        n = values.shape[0]
        changed = np.zeros(n, dtype=bool)
        epoch = np.zeros(n, dtype=np.int16)
        revised: list[tuple[int, int, int, int, bool]] = []
        if n:
            rows, cols = iy.tolist(), ix.tolist()
            if min(rows) < 0 or min(cols) < 0:
                raise AnalysisError("flags: negative pixel row/column; give map indices (iy, ix) >= 0")
            self._grow(max(rows) + 1, max(cols) + 1)
        first = self._count
        start, look = 0, _LONGEST
        while start < n:
            end = min(n, start + look)
            if self._run or end - start <= SEQUENTIAL_MAX:  # an open run, after an outlier, or a small batch
                end = min(n, start + SEQUENTIAL_MAX)
                met = self._one_by_one(iy, ix, values, eligible, start, end, changed, epoch, first, revised)
                look = SEQUENTIAL_MAX if met or self._run else min(2 * look, _LONGEST)
            else:
                end = self._pass(iy, ix, values, eligible, start, self._pass_end(iy, ix, eligible, start, end))
                changed[start:end], epoch[start:end] = self.epoch != 0, self.epoch
                look = min(2 * look, _LONGEST) if end - start == look else SEQUENTIAL_MAX
                self._count += end - start
            start = end
        cols_ = list(zip(*revised, strict=True)) if revised else [(), (), (), (), ()]
        revision = TipRevision(
            order=np.array(cols_[0], dtype=np.int64),
            iy=np.array(cols_[1], dtype=np.int64),
            ix=np.array(cols_[2], dtype=np.int64),
            epoch=np.array(cols_[3], dtype=np.int16),
            changed=np.array(cols_[4], dtype=bool),
        )
        return TipVerdict(changed=changed, epoch=epoch, revised=revision)

    # -- one pixel at a time ------------------------------------------------------------------
    def _one_by_one(
        self,
        iy: np.ndarray,
        ix: np.ndarray,
        values: np.ndarray,
        eligible: np.ndarray,
        start: int,
        end: int,
        changed: np.ndarray,
        epoch: np.ndarray,
        first: int,
        revised: list[tuple[int, int, int, int, bool]],
    ) -> bool:
        """Judge pixels start..end-1 by the rule as written; True if one was an outlier."""
        cfg = self.config
        span = 2 * self._pad + 1
        residuals, recent, low = self.residuals, self.recent, cfg.tip_min_change
        met = False
        for k in range(start, end):
            y, x, order = int(iy[k]), int(ix[k]), self._count
            self._count += 1
            epoch[k], changed[k] = self.epoch, self.epoch != 0
            if not eligible[k]:
                if self._run:
                    self._run.append(_Pending(order, y, x))
                continue
            off = self.offsets[self.epoch]
            raw = values[k].tolist()
            v = [raw[0] - off[0], raw[1] - off[1]]
            near = self.values[y : y + span, x : x + span][self.seen[y : y + span, x : x + span]]  # (k, 2)
            resid = [v[0] - median(near[:, 0].tolist()), v[1] - median(near[:, 1].tolist())] if near.size else None
            step = limits = None
            if resid is not None and len(residuals) >= cfg.tip_min_history and recent:
                hists = list(zip(*residuals, strict=True))
                meds = [median(h) for h in hists]
                in_space = [resid[j] - meds[j] for j in (0, 1)]  # steps vs the neighbours' residuals
                in_time = [abs(v[j] - median([r[j] for r in recent])) for j in (0, 1)]  # vs the recent pixels
                # the limit is at least tip_min_change: a step below it in space or in time is not an
                # outlier whatever the MAD, which is then not needed
                if any(abs(d) > low for d in in_space) and any(d > low for d in in_time):
                    limits = [
                        max(cfg.tip_mad_k * (MAD_SCALE * median([abs(h_ - m) for h_ in h])), low)
                        for h, m in zip(hists, meds, strict=True)
                    ]
                    if any(abs(in_space[j]) > limits[j] for j in (0, 1)) and any(
                        in_time[j] > limits[j] for j in (0, 1)
                    ):
                        step = in_space
            if step is None:  # accepted: an open run was momentary
                self._run.clear()
                self._accept(y, x, v, resid)
                continue
            met = True
            changed[k] = True
            head = next((p for p in self._run if p.step is not None), None)
            if head is not None and not all(
                abs(step[j] - head.step[j]) <= limits[j]  # type: ignore[index]
                for j in (0, 1)
            ):
                self._run.clear()  # another step: the run so far was momentary, this one starts a new run
            self._run.append(_Pending(order, y, x, raw, resid, step, limits))
            if sum(p.step is not None for p in self._run) >= cfg.tip_confirm:
                self._confirm(changed, epoch, first, revised)
        return met

    def _accept(self, y: int, x: int, v: list[float], resid: list[float] | None) -> None:
        p = self._pad
        self.values[y + p, x + p] = v
        self.seen[y + p, x + p] = True
        self.recent.append(v)
        if resid is not None:
            self.residuals.append(resid)

    def _confirm(
        self, changed: np.ndarray, epoch: np.ndarray, first: int, revised: list[tuple[int, int, int, int, bool]]
    ) -> None:
        """The open run is an event: label its pixels with the new (or matching earlier) epoch, accept them."""
        outliers = [p for p in self._run if p.step is not None]
        limits = outliers[-1].limits or [self.config.tip_min_change] * 2
        step = [median([p.step[j] for p in outliers]) for j in (0, 1)]  # type: ignore[index]
        old = self.offsets[self.epoch]
        new = (old[0] + step[0], old[1] + step[1])
        # an earlier epoch within the limit of the new offset: the tip went back to it
        matches = [
            (max(abs(o[j] - new[j]) / limits[j] for j in (0, 1)), e)
            for e, o in enumerate(self.offsets)
            if e != self.epoch and all(abs(o[j] - new[j]) <= limits[j] for j in (0, 1))
        ]
        if matches:
            to = min(matches)[1]
        else:
            to = len(self.offsets)
            self.offsets.append(new)
        head = self._run[0]
        self.events.append(TipEvent(head.order, head.iy, head.ix, self.epoch, to, (step[0], step[1])))
        shift = [self.offsets[to][j] - old[j] for j in (0, 1)]
        self.epoch = to
        for p in self._run:
            local = p.order - first
            if local >= 0:
                epoch[local], changed[local] = to, to != 0
            else:
                revised.append((p.order, p.iy, p.ix, to, to != 0))
            if p.values is not None:
                v = [p.values[0] - self.offsets[to][0], p.values[1] - self.offsets[to][1]]
                assert p.resid is not None  # an outlier always has a spatial reference
                self._accept(p.iy, p.ix, v, [p.resid[j] - shift[j] for j in (0, 1)])
        self._run.clear()

    # -- numpy passes ---------------------------------------------------------------------------
    def _pass(
        self, iy: np.ndarray, ix: np.ndarray, values: np.ndarray, eligible: np.ndarray, start: int, end: int
    ) -> int:
        """Judge start..end-1 assuming no outlier; accept up to the first outlier; return where it is (or end)."""
        off = np.asarray(self.offsets[self.epoch])
        v = values[start:end] - off
        ok = eligible[start:end]
        test, resid = self._test(iy[start:end], ix[start:end], v, ok)
        bad = np.flatnonzero(test & ok)
        stop = end if bad.size == 0 else start + int(bad[0])
        k = stop - start
        self._accept_many(iy[start:stop], ix[start:stop], v[:k], resid[:k], ok[:k])
        return stop

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
        ref, _ = median_mad(neighbours.transpose(0, 2, 1), n_ref, mad=False)  # NaN sorts last: the n_ref present
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

    def _accept_many(
        self, iy: np.ndarray, ix: np.ndarray, v: np.ndarray, resid: np.ndarray, accepted: np.ndarray
    ) -> None:
        """Accepted pixels become references: on the map, in time and (with a reference) residuals."""
        p = self._pad
        self.values[iy[accepted] + p, ix[accepted] + p] = v[accepted]
        self.seen[iy[accepted] + p, ix[accepted] + p] = True
        self.recent.extend(v[accepted].tolist())
        with_ref = accepted & np.isfinite(resid).all(axis=1)
        self.residuals.extend(resid[with_ref].tolist())

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


def _pairs(history: deque) -> np.ndarray:
    """A history of (f-, f+) pairs as an (h, 2) float64 array."""
    return np.array(history, dtype=np.float64).reshape(-1, 2)
