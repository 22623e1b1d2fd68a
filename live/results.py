"""The live results model: every per-pixel result map of one run, its status and its correlation snapshot.

:class:`ResultsModel` holds preallocated (ny, nx) maps (:data:`MAP_SPECS`), the per-pixel flags,
the run status and the latest :class:`CorrelationSnapshot`. Writers (the analyser, a results
subscriber, a file loader) call :meth:`~ResultsModel.update_pixel` /
:meth:`~ResultsModel.update_block`; readers (the screen's timer) call the accessors, which hold
the lock only to copy. Version counters say what changed since a reader last looked. Units are
SI (the gap in eV); meV and nm only in human-readable messages. The analysis file and the
results messages are :mod:`stslive.live.results_io`.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from stslive.acquisition.formats.documents import RUN_STATES as SCAN_STATES
from stslive.drivers.errors import AnalysisError

# The flag bits and names are re-exported: the screen, the results messages and the benchmarks import them from here.
from stslive.live.flag_kinds import FLAG_DESCRIPTIONS as FLAG_DESCRIPTIONS
from stslive.live.flag_kinds import FLAG_LABELS as FLAG_LABELS
from stslive.live.flag_kinds import FlagKind as FlagKind
from stslive.live.flag_kinds import SetFlagSummary, summarise_sets
from stslive.live.provisional import ProvisionalWidth

# The records are re-exported: the analyser, the results messages and the screen import them from here.
from stslive.live.result_records import CorrelationSnapshot as CorrelationSnapshot
from stslive.live.result_records import Histogram as Histogram
from stslive.live.result_records import MapStatistics as MapStatistics
from stslive.live.result_records import PixelResult as PixelResult
from stslive.live.result_records import RunStatus as RunStatus
from stslive.live.snapshot_history import SnapshotHistory

#: Fixed map layout: name -> (dtype, fill value, SI unit, description). The order is the display order.
MAP_SPECS: dict[str, tuple[np.dtype, Any, str, str]] = {
    "delta_eV": (np.dtype(np.float32), np.nan, "eV", "gap: half the peak-to-peak bias distance"),
    "alpha": (np.dtype(np.float32), np.nan, "1", "AA exponent, mean of both polarities"),
    "alpha_pos": (np.dtype(np.float32), np.nan, "1", "AA exponent for V > 0"),
    "alpha_neg": (np.dtype(np.float32), np.nan, "1", "AA exponent for V < 0"),
    "b": (np.dtype(np.float32), np.nan, "S/V^alpha", "power-law prefactor, dI/dV = b |V|^alpha"),
    "b_pos": (np.dtype(np.float32), np.nan, "S/V^alpha", "power-law prefactor for V > 0"),
    "b_neg": (np.dtype(np.float32), np.nan, "S/V^alpha", "power-law prefactor for V < 0"),
    "visibility": (np.dtype(np.float32), np.nan, "1", "coherence-peak height over background"),
    "fit_quality": (np.dtype(np.float32), np.nan, "1", "power-law fit quality (kernel's measure)"),
    "peak_neg_V": (np.dtype(np.float32), np.nan, "V", "bias of the negative coherence peak"),
    "peak_pos_V": (np.dtype(np.float32), np.nan, "V", "bias of the positive coherence peak"),
    "temperature_K": (np.dtype(np.float32), np.nan, "K", "temperature during the spectrum"),
    "time": (np.dtype(np.float64), np.nan, "s", "unix time the result was produced"),
    "reason": (np.dtype(np.int16), -1, "", "kernel reason code, 0 = OK, -1 = not analysed"),
    "setpoint_set": (np.dtype(np.int16), -1, "", "set-point parameter set id, -1 = unknown"),
    "valid": (np.dtype(np.bool_), False, "", "Delta and alpha extracted"),
    "valid_delta": (np.dtype(np.bool_), False, "", "Delta extracted"),
    "valid_alpha": (np.dtype(np.bool_), False, "", "alpha extracted"),
    "reason_delta": (np.dtype(np.int16), -1, "", "reason code of Delta, 0 = OK, -1 = not analysed"),
    "reason_alpha": (np.dtype(np.int16), -1, "", "reason code of alpha, 0 = OK, -1 = not analysed"),
    "delta_sigma_eV": (np.dtype(np.float32), np.nan, "eV", "standard error of Delta"),
    "alpha_sigma": (np.dtype(np.float32), np.nan, "1", "standard error of alpha"),
    "delta_dynes_eV": (np.dtype(np.float32), np.nan, "eV", "gap of a Dynes DOS fitted to both peaks"),
    "gamma_dynes_eV": (np.dtype(np.float32), np.nan, "eV", "Dynes width of that fit"),
    "measured": (np.dtype(np.bool_), False, "", "a result exists for the pixel"),
    "flags": (np.dtype(np.uint32), 0, "", "FlagKind bits"),
    "tip_epoch": (np.dtype(np.int16), -1, "", "tip epoch: 0 = the run's first tip, +1 per new tip, -1 = not analysed"),
}

#: what a model shows as the run state: a run's states, and "unknown" before any status arrived
RUN_STATES = ("unknown", *SCAN_STATES)


class _Keep(enum.Enum):
    """A status field left out of :meth:`ResultsModel.update_status` (None there means "none")."""

    KEEP = 0


_KEEP = _Keep.KEEP


class ResultsModel:
    """Preallocated per-pixel result maps of one (ny, nx) run, with status, flags and correlations.

    Thread safe: every method takes ``self.lock``; readers receive copies. ``version`` grows on
    every change; ``maps_version``, ``snapshot_version`` and ``status_version`` say which part.

    Parameters
    ----------
    ny, nx
        Grid shape (rows, columns), the archive's pixel order.
    pixel_nm
        Pixel size in nm (display axes and correlation lengths); NaN when unknown.
    topography
        Optional (ny, nx) topography Z in m.
    set_threshold
        Flagged fraction above which a whole set-point set is reported as flagged.
    rate_window
        Number of most recent pixel times used for pixels/hour and the ETA.
    temperature_points
        Length of the temperature trace ring buffer.
    """

    def __init__(
        self,
        ny: int,
        nx: int,
        *,
        pixel_nm: float = float("nan"),
        topography: np.ndarray | None = None,
        set_threshold: float = 0.5,
        rate_window: int = 200,
        temperature_points: int = 20_000,
    ) -> None:
        if ny < 1 or nx < 1:
            raise AnalysisError(f"results grid must be at least 1 x 1 pixels, got ny={ny}, nx={nx}")
        if not 0.0 < set_threshold <= 1.0:
            raise AnalysisError(f"set_threshold must lie in (0, 1], got {set_threshold}")
        self.ny, self.nx = int(ny), int(nx)
        self.pixel_nm = float(pixel_nm)
        self.set_threshold = float(set_threshold)
        self.lock = threading.RLock()
        self.maps: dict[str, np.ndarray] = {
            name: np.full((self.ny, self.nx), fill, dtype=dtype) for name, (dtype, fill, _, _) in MAP_SPECS.items()
        }
        self.topography: np.ndarray | None = None
        self.topography_origin = ""
        self.setpoint_sets: dict[int, dict[str, Any]] = {}
        self.snapshot: CorrelationSnapshot | None = None
        #: every snapshot's figures and bands against the pixels measured (:meth:`set_snapshot` appends)
        self.history = SnapshotHistory()
        self.version = 0
        self.maps_version = 0
        self.snapshot_version = 0
        self.status_version = 0
        self._state = "unknown"
        self._current_set = -1
        self._last_seq = -1
        self._message = ""
        self._provisional_width: ProvisionalWidth | None = None
        self._rate_override: float | None = None
        self._recent_times: deque[float] = deque(maxlen=max(2, rate_window))
        self._temp_t: deque[float] = deque(maxlen=temperature_points)
        self._temp_K: deque[float] = deque(maxlen=temperature_points)
        self._stats_cache: tuple[int, int, MapStatistics] | None = None
        if topography is not None:
            self.set_topography(topography)

    # -- writing ---------------------------------------------------------------------------
    def _bump(self, part: str) -> None:
        self.version += 1
        setattr(self, part, self.version)

    def _check_pixel(self, iy: int, ix: int) -> None:
        if not (0 <= iy < self.ny and 0 <= ix < self.nx):
            raise AnalysisError(f"pixel (iy={iy}, ix={ix}) outside the {self.ny} x {self.nx} grid")

    def update_pixel(self, result: PixelResult) -> None:
        """Store one pixel's result (overwrites a previous one, e.g. a re-measured pixel)."""
        self._check_pixel(result.iy, result.ix)
        with self.lock:
            for name in MAP_SPECS:
                if name == "measured":
                    continue
                self.maps[name][result.iy, result.ix] = getattr(result, name)
            self.maps["measured"][result.iy, result.ix] = True
            if np.isfinite(result.time):
                self._recent_times.append(float(result.time))
                if np.isfinite(result.temperature_K):
                    self._temp_t.append(float(result.time))
                    self._temp_K.append(float(result.temperature_K))
            self._current_set = int(result.setpoint_set)
            self._bump("maps_version")

    def update_block(self, iy: slice | np.ndarray, ix: slice | np.ndarray, **maps: np.ndarray) -> None:
        """Vectorised update of many pixels at once (backfill, offline analysis files).

        Parameters
        ----------
        iy, ix
            Index expressions into the (ny, nx) grid (slices or integer/boolean arrays), used
            as ``map[iy, ix] = value``.
        **maps
            Values per map name of :data:`MAP_SPECS`, broadcastable to the indexed region;
            cast to the map's dtype. ``measured`` is set True for the region unless given.
        """
        unknown = set(maps) - set(MAP_SPECS)
        if unknown:
            raise AnalysisError(f"unknown result maps {sorted(unknown)}; known: {list(MAP_SPECS)}")
        with self.lock:
            for name, value in maps.items():
                self.maps[name][iy, ix] = np.asarray(value).astype(MAP_SPECS[name][0], copy=False)
            if "measured" not in maps:
                self.maps["measured"][iy, ix] = True
            if "time" in maps:
                self._extend_traces(iy, ix, maps)
            self._bump("maps_version")

    def _extend_traces(self, iy: slice | np.ndarray, ix: slice | np.ndarray, maps: dict[str, np.ndarray]) -> None:
        """Feed a block's pixel times (rate, ETA) and temperatures (trace) in time order."""
        region = self.maps["time"][iy, ix].shape
        t = np.broadcast_to(np.asarray(maps["time"], dtype=np.float64), region).ravel()
        temp = np.broadcast_to(np.asarray(maps.get("temperature_K", np.nan), dtype=np.float64), region).ravel()
        keep = np.isfinite(t)
        order = np.argsort(t[keep], kind="stable")
        t, temp = t[keep][order], temp[keep][order]
        self._recent_times.extend(t[-(self._recent_times.maxlen or 1) :].tolist())
        ok = np.isfinite(temp)
        tail = -(self._temp_t.maxlen or 1)
        self._temp_t.extend(t[ok][tail:].tolist())
        self._temp_K.extend(temp[ok][tail:].tolist())

    def set_topography(self, topography: np.ndarray, *, origin: str = "") -> None:
        """Attach a (ny, nx) topography map Z in m; ``origin`` says where it comes from (display).

        ``origin`` is e.g. :data:`stslive.acquisition.formats.recording.TOPO_FROM_Z` ("" = not known);
        unchanged values do not bump the version, so a poller may call this every poll.
        """
        topo = np.asarray(topography, dtype=np.float32)
        if topo.shape != (self.ny, self.nx):
            raise AnalysisError(f"topography shape {topo.shape} does not match the grid ({self.ny}, {self.nx})")
        with self.lock:
            if (
                self.topography is not None
                and origin == self.topography_origin
                and np.array_equal(self.topography, topo, equal_nan=True)
            ):
                return
            self.topography = topo.copy()
            self.topography_origin = origin
            self._bump("maps_version")

    def set_setpoint_sets(self, sets: dict[int, dict[str, Any]]) -> None:
        """Parameters per set id (e.g. ``lockin_amplitude_Vrms``), used in the set messages."""
        with self.lock:
            self.setpoint_sets = {int(k): dict(v) for k, v in sets.items()}
            self._bump("status_version")

    def set_snapshot(self, snapshot: CorrelationSnapshot) -> None:
        """Replace the correlation snapshot and add it to :attr:`history` (once per snapshot time)."""
        with self.lock:
            self.snapshot = snapshot
            self.history.append(snapshot, n_measured=int(np.count_nonzero(self.maps["measured"])))
            self._bump("snapshot_version")

    def set_history(self, history: SnapshotHistory) -> None:
        """Replace the snapshot history (a late-joining viewer, a file)."""
        with self.lock:
            self.history = history
            self._bump("snapshot_version")

    def update_status(
        self,
        *,
        state: str | None = None,
        current_set: int | None = None,
        last_seq: int | None = None,
        message: str | None = None,
        pixels_per_hour: float | None = None,
        temperature: tuple[float, float] | None = None,
        provisional_width: ProvisionalWidth | Mapping[str, Any] | _Keep | None = _KEEP,
    ) -> None:
        """Update the run status; ``pixels_per_hour`` overrides the rate measured from pixel times.

        ``temperature`` is one (unix time s, K) point appended to the trace. ``provisional_width``
        (or its :meth:`ProvisionalWidth.to_dict`) while the analyser's template width is
        provisional, None once it is fixed; left out, unchanged.
        """
        if state is not None and state not in RUN_STATES:
            raise AnalysisError(f"run state {state!r} unknown; one of {RUN_STATES}")
        if isinstance(provisional_width, Mapping):
            provisional_width = ProvisionalWidth.from_dict(provisional_width)
        with self.lock:
            if not isinstance(provisional_width, _Keep):
                self._provisional_width = provisional_width
            if state is not None:
                self._state = state
            if current_set is not None:
                self._current_set = int(current_set)
            if last_seq is not None:
                self._last_seq = int(last_seq)
            if message is not None:
                self._message = message
            if pixels_per_hour is not None:
                self._rate_override = float(pixels_per_hour)
            if temperature is not None:
                self._temp_t.append(float(temperature[0]))
                self._temp_K.append(float(temperature[1]))
            self._bump("status_version")

    # -- reading ---------------------------------------------------------------------------
    def copy_maps(self, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Copies of the named maps (all when None), taken under the lock."""
        with self.lock:
            return {n: self.maps[n].copy() for n in (names or tuple(MAP_SPECS))}

    def pixel(self, iy: int, ix: int) -> PixelResult | None:
        """The stored result of one pixel, None if it has none yet."""
        self._check_pixel(iy, ix)
        with self.lock:
            if not self.maps["measured"][iy, ix]:
                return None
            values = {n: self.maps[n][iy, ix].item() for n in MAP_SPECS if n != "measured"}
        return PixelResult(iy=iy, ix=ix, **values)

    def statistics(self, *, bins: int = 40) -> MapStatistics:
        """Mean, std and histograms of Delta (eV) where valid and alpha where valid; cached per ``maps_version``.

        Done on demand because a pass over 75,000 pixels costs well under a millisecond and
        keeps the numbers exact when a pixel is overwritten (running sums would drift).
        """
        with self.lock:
            cached = self._stats_cache
            if cached is not None and cached[0] == self.maps_version and cached[1] == bins:
                return cached[2]
            version = self.maps_version
            measured = self.maps["measured"]
            n_valid = int(np.count_nonzero(self.maps["valid"] & measured))
            # a writer that sets only ``valid`` (both quantities: an older file, a test) counts too
            delta = self.maps["delta_eV"][(self.maps["valid_delta"] | self.maps["valid"]) & measured]
            alpha = self.maps["alpha"][(self.maps["valid_alpha"] | self.maps["valid"]) & measured]
            n_measured = int(np.count_nonzero(measured))
        delta = delta[np.isfinite(delta)]
        alpha = alpha[np.isfinite(alpha)]
        stats = MapStatistics(
            n_measured=n_measured,
            n_valid=n_valid,
            n_valid_delta=int(delta.size),
            n_valid_alpha=int(alpha.size),
            delta_mean_eV=float(delta.mean()) if delta.size else float("nan"),
            delta_std_eV=float(delta.std()) if delta.size else float("nan"),
            alpha_mean=float(alpha.mean()) if alpha.size else float("nan"),
            alpha_std=float(alpha.std()) if alpha.size else float("nan"),
            delta_hist=_histogram(delta, bins),
            alpha_hist=_histogram(alpha, bins),
        )
        with self.lock:
            self._stats_cache = (version, bins, stats)
        return stats

    def flag_summary(self) -> list[SetFlagSummary]:
        """Flags per set-point set: counts per kind, fraction, first/last flagged pixel, message.

        First/last are in acquisition time order (the ``time`` map), falling back to raster
        order for pixels without a time.
        """
        with self.lock:
            measured = self.maps["measured"].copy()
            sets = self.maps["setpoint_set"][measured]
            flags = self.maps["flags"][measured]
            times = self.maps["time"][measured]
            params = dict(self.setpoint_sets)
        return summarise_sets(measured, sets, flags, times, params=params, threshold=self.set_threshold)

    def flagged_pixels(self, *, limit: int = 5000) -> list[tuple[int, int, int]]:
        """(iy, ix, flags) of flagged pixels in acquisition order, at most ``limit`` (latest kept)."""
        with self.lock:
            mask = self.maps["measured"] & (self.maps["flags"] != 0)
            iy, ix = np.nonzero(mask)
            flags = self.maps["flags"][mask]
            times = self.maps["time"][mask]
        order = np.lexsort((np.arange(iy.size), np.where(np.isfinite(times), times, np.inf)))[-limit:]
        return [(int(iy[i]), int(ix[i]), int(flags[i])) for i in order]

    def status(self, *, now: float | None = None) -> RunStatus:
        """Progress, pixels/hour (from the recent pixel times unless overridden), ETA and trace."""
        with self.lock:
            n_measured = int(np.count_nonzero(self.maps["measured"]))
            recent = list(self._recent_times)
            rate = self._rate_override
            state, current_set, last_seq, message = self._state, self._current_set, self._last_seq, self._message
            provisional = self._provisional_width
            temp_t = np.fromiter(self._temp_t, dtype=np.float64, count=len(self._temp_t))
            temp_K = np.fromiter(self._temp_K, dtype=np.float64, count=len(self._temp_K))
        if rate is None:
            rate = _rate_per_hour(recent)
        n_total = self.ny * self.nx
        remaining = n_total - n_measured
        eta = remaining / rate * 3600.0 if rate and rate > 0 and np.isfinite(rate) else float("nan")
        if remaining == 0:
            eta = 0.0
        return RunStatus(
            state=state,
            n_total=n_total,
            n_measured=n_measured,
            pixels_per_hour=float(rate) if rate is not None else float("nan"),
            eta_s=eta,
            current_set=current_set,
            last_seq=last_seq,
            message=message,
            temperature_t=temp_t,
            temperature_K=temp_K,
            provisional_width=provisional,
        )

    def status_fields(self) -> dict[str, Any]:
        """The raw status fields (state, current_set, last_seq, message, rate override, provisional width as a dict)."""
        with self.lock:
            provisional = self._provisional_width
            return {
                "state": self._state,
                "current_set": self._current_set,
                "last_seq": self._last_seq,
                "message": self._message,
                "pixels_per_hour": self._rate_override,
                "provisional_width": None if provisional is None else provisional.to_dict(),
            }


def _histogram(values: np.ndarray, bins: int) -> Histogram:
    if values.size == 0:
        return Histogram(counts=np.zeros(0, dtype=np.int64), edges=np.zeros(0, dtype=np.float64))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:  # one distinct value: give the bar a finite width around it
        pad = abs(lo) * 1e-3 or 1e-9
        lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return Histogram(counts=counts, edges=edges)


def _rate_per_hour(times: list[float]) -> float:
    """Pixels per hour from the most recent pixel completion times (unix s)."""
    if len(times) < 2:
        return float("nan")
    span = max(times) - min(times)
    return (len(times) - 1) / span * 3600.0 if span > 0 else float("nan")
