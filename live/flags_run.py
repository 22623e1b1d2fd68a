"""A run's flags: the one path from its pixels to their flag bits and tip epochs, live and offline.

Contract: :class:`RunFlags` is built from a run's start document (its set-point sets, channels and
``metadata["not_recorded"]``, the fields a recording does not hold) and judges pixels in
acquisition order: :meth:`RunFlags.features` (history-free, any batch) then
:meth:`RunFlags.evaluate` (the rules with history, :class:`~stslive.live.flags.FlagEngine`). The
live analyser (:class:`~stslive.live.run_context.RunContext`) calls both per batch;
:func:`flag_recording` calls them over a whole archive or ``.3ds`` in the order the live analyser
receives its pixels, so ``stslive analyse`` writes the live analyser's flags. A value the
recording does not hold is unknown (NaN, status -1) and the rule that reads it does not fire;
:meth:`RunFlags.unjudged` says which rules were not judged, on how many pixels and why.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.recording import open_recording
from stslive.acquisition.formats.runmodel import SetpointSet, channel_unit
from stslive.acquisition.formats.start_document import start_fields
from stslive.drivers.errors import AnalysisError, ConfigError, FileFormatError, NanonisFileError, StreamError
from stslive.live.flag_config import FlagConfig
from stslive.live.flag_kinds import FLAG_LABELS, FlagKind
from stslive.live.flags import (
    FlagEngine,
    PixelConditions,
    SpectralFeatures,
    channel_arrays,
    lockin_settings,
    spectral_features,
)
from stslive.live.flags_log import FlagLog
from stslive.live.flags_tip import TipEvent
from stslive.live.kernels import pick_channels
from stslive.live.results import ResultsModel

__all__ = ["RunFlags", "parse_sets", "flag_recording"]

#: Pixels per flag-engine call when a whole recording or run is judged (numpy passes; bounded memory).
_FLAG_BATCH = 4096
_TIP = np.uint32(FlagKind.TIP_CHANGE)

#: Why each rule could not be judged on a pixel (:meth:`RunFlags.unjudged`).
_WHY = {
    FlagKind.THERMAL: "no thermometer reading",
    FlagKind.MODULATION: "lock-in amplitude not recorded",
    FlagKind.LOCKIN_SENSITIVITY: "lock-in sensitivity not recorded, no lock-in channel, or one not in A or A/V",
    FlagKind.LOCKIN_MISMATCH: "no lock-in channel, no (or no known) modulation, or no signal in its window",
    FlagKind.LOCKIN_OVERLOAD: "lock-in status not recorded",
    FlagKind.SETPOINT: "the sweep does not reach V_set",
    FlagKind.TIP_CHANGE: "the sweep does not reach the tip band, or no conductance at V_set",
}


class RunFlagResult(NamedTuple):
    """A batch's labels from :meth:`RunFlags.evaluate`: (n,) ``bits`` and ``tip_epoch``, in the order given.

    ``revised``: columns ``iy``, ``ix``, ``flags``, ``tip_epoch`` of earlier measurements whose
    labels this batch changed (a confirmed tip change, a late measurement), or None.
    """

    bits: np.ndarray
    tip_epoch: np.ndarray
    revised: dict[str, np.ndarray] | None


def parse_sets(run_uid: str, start: Mapping[str, Any]) -> tuple[list[str], dict[int, SetpointSet]]:
    """Channel names and set-point sets of a start document; StreamError when unusable."""
    try:
        names = [str(c) for c in start["channel_names"]]
        sets = {int(s["id"]): SetpointSet.from_dict(s) for s in start["setpoint_sets"]}
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise StreamError(f"run {run_uid}: start document unusable ({exc}); check the scan engine's version") from exc
    return names, sets


class RunFlags:
    """The flag state of one run: what it recorded, the flag engine, and what could not be judged.

    Parameters
    ----------
    channel_names
        The run's channels (current and lock-in picked by name, as the kernels do).
    sets
        Set-point sets by id; None for a set the recording does not describe (a ``.3ds`` whose
        header gives no usable set-point): the rules that need its set-point are not judged.
    metadata
        The start document's metadata; ``not_recorded`` lists the set-point set and event fields
        the recording does not hold.
    config
        Flag thresholds.
    current, lockin
        The channels to read by name (``KernelOptions.current``/``lockin``; None: the usual names).
    """

    def __init__(
        self,
        channel_names: list[str],
        sets: Mapping[int, SetpointSet | None],
        *,
        metadata: Mapping[str, Any] | None = None,
        config: FlagConfig,
        current: str | None = None,
        lockin: str | None = None,
    ) -> None:
        # needs a current channel (the one ``current`` names, if any)
        channel_arrays(np.zeros((len(channel_names), 2)), channel_names, current=current, lockin=lockin)
        self.current, self.lockin = current, lockin
        self.channel_names = list(channel_names)
        self.sets = dict(sets)
        self.config = config
        unknown = set((metadata or {}).get("not_recorded", ()))
        self.status_known = "lockin_status" not in unknown
        #: (modulation V rms, sensitivity V) of each set as the rules read them, NaN = unknown
        self.settings: dict[int, tuple[float, float]] = {}
        for set_id, s in self.sets.items():
            if s is None:
                self.settings[set_id] = (math.nan, math.nan)
                continue
            amplitude = math.nan if "lockin_amplitude_Vrms" in unknown else s.lockin_amplitude_Vrms
            sensitivity = math.nan if "lockin_sensitivity_V" in unknown else s.lockin_sensitivity_V
            self.settings[set_id] = lockin_settings(amplitude, sensitivity)
        lockin_index = pick_channels(self.channel_names, current=current, lockin=lockin).lockin
        self._lockin_unit = "" if lockin_index is None else channel_unit(self.channel_names[lockin_index])
        self._set_ids = np.array(sorted(self.settings), dtype=np.int64)
        self._set_table = np.array([self.settings[k] for k in self._set_ids.tolist()], dtype=np.float64).reshape(-1, 2)
        self.reset()

    def _settings_of(self, set_ids: np.ndarray) -> np.ndarray:
        """(n, 2) modulation (V rms) and sensitivity (V) of each measurement's set."""
        idx = np.minimum(np.searchsorted(self._set_ids, set_ids), self._set_ids.size - 1)
        if set_ids.size and np.any(self._set_ids[idx] != set_ids):
            raise AnalysisError(
                f"flags: set-point set ids {sorted(set(set_ids.tolist()) - set(self.settings))} unknown"
            )
        return self._set_table[idx]

    def reset(self) -> None:
        """Forget every pixel judged (the analyser re-judges a run from its first pixel)."""
        self.engine = FlagEngine(self.config)
        self.log = FlagLog()

    @property
    def tip_events(self) -> list[TipEvent]:
        """The run's tip-change events so far."""
        return self.engine.tip_events

    @property
    def feature_channels(self) -> list[str]:
        """The channels the features read: the current, then the lock-in if the run has one."""
        pick = pick_channels(self.channel_names, current=self.current, lockin=self.lockin)
        return [self.channel_names[i] for i in (pick.current, pick.lockin) if i is not None]

    def features(self, set_id: int, spectra: np.ndarray) -> SpectralFeatures:
        """Features of spectra ``(n, n_channels, n_points)`` of one set (history-free: any batch)."""
        current, lockin = channel_arrays(spectra, self.channel_names, current=self.current, lockin=self.lockin)
        return self.channel_features(set_id, current, lockin)

    def channel_features(self, set_id: int, current: np.ndarray, lockin: np.ndarray | None) -> SpectralFeatures:
        """:meth:`features` of the :attr:`feature_channels` given apart, ``(n, n_points)`` each.

        NaN (not judged) for a set without a known set-point.
        """
        s = self.sets[set_id]
        if s is None:
            lead = current.shape[:-1]
            return SpectralFeatures(
                setpoint_rel_dev=np.full(lead, np.nan),
                tip_features=np.full((*lead, 2), np.nan),
                lockin_peak=np.full(lead, np.nan),
                lockin_rel_residual=np.full(lead, np.nan),
            )
        return spectral_features(
            s.bias_axis,
            current,
            v_set_V=s.bias_setpoint_V,
            i_set_A=abs(s.current_setpoint_A),
            lockin=lockin,
            config=self.config,
        )

    def evaluate(
        self,
        *,
        iy: np.ndarray,
        ix: np.ndarray,
        set_ids: np.ndarray,
        time: np.ndarray,
        delta_eV: np.ndarray,
        reason: np.ndarray,
        features: SpectralFeatures,
        temperature_K: np.ndarray,
        lockin_status: np.ndarray,
        lockin_overload: np.ndarray,
    ) -> RunFlagResult:
        """Flags and tip epochs of n measurements (all (n,) arrays), judged in measurement-time order.

        ``time``: when each measurement ended (unix s); ``temperature_K`` NaN: no reading;
        ``lockin_status``/``lockin_overload`` as the events carry them (ignored when the
        recording holds no status). Measurements that arrive in time order are judged after the
        earlier ones; one that arrives late (measured before a pixel already judged) makes the
        whole run be judged again in time order, and every earlier label that changed is revised.
        """
        log = self.log
        start = log.n
        rows = log.append(
            iy=iy,
            ix=ix,
            set_id=set_ids,
            time=time,
            delta_eV=delta_eV,
            reason=reason,
            temperature_K=temperature_K,
            lockin_status=lockin_status,
            lockin_overload=lockin_overload,
            **{name: getattr(features, name) for name in SpectralFeatures.__slots__},
        )
        if not log.in_time_order(start):
            return self._judge_again(first_arrival=int(log.col("arrival")[start]))
        revised = self._judge(rows.start, rows.stop)
        return RunFlagResult(
            bits=log.col("bits")[rows].copy(),
            tip_epoch=log.col("tip_epoch")[rows].copy(),
            revised=self._revisions(revised[revised < start]),
        )

    def _judge(self, lo: int, hi: int) -> np.ndarray:
        """Judge log rows lo..hi-1 (after every earlier row); returns the earlier rows a tip event relabelled."""
        log = self.log
        n = hi - lo
        settings = self._settings_of(log.col("set_id")[lo:hi])
        known = self.status_known
        conditions = PixelConditions(
            temperature_K=log.col("temperature_K")[lo:hi],
            lockin_overload=log.col("lockin_overload")[lo:hi] if known else np.zeros(n, dtype=bool),
            lockin_status=log.col("lockin_status")[lo:hi] if known else np.full(n, -1, dtype=np.int64),
            modulation_Vrms=settings[:, 0],
            sensitivity_V=settings[:, 1],
        )
        features = SpectralFeatures(**{name: log.col(name)[lo:hi] for name in SpectralFeatures.__slots__})
        # the sensitivity rule reads the lock-in signal in amperes: X = dI/dV * V_m for a channel
        # archived as dI/dV (A/V); a channel in another unit (a raw output voltage) is not judged
        unit = self._lockin_unit
        scale = 1.0 if unit == "A" else settings[:, 0] if unit == "A/V" else math.nan
        features = dataclasses.replace(features, lockin_peak=features.lockin_peak * scale)
        result = self.engine.evaluate(
            delta_eV=log.col("delta_eV")[lo:hi],
            reason=log.col("reason")[lo:hi],
            features=features,
            conditions=conditions,
            iy=log.col("iy")[lo:hi],
            ix=log.col("ix")[lo:hi],
        )
        log.col("bits")[lo:hi] = result.bits
        log.col("tip_epoch")[lo:hi] = result.tip_epoch
        rev = result.revised  # orders count the pixels judged since the reset: log positions
        bits = log.col("bits")
        bits[rev.order] = (bits[rev.order] & ~_TIP) | (rev.changed * _TIP)
        log.col("tip_epoch")[rev.order] = rev.epoch
        return rev.order

    def _judge_again(self, *, first_arrival: int) -> RunFlagResult:
        """Sort the log by time, judge all of it again; the batch's labels and the others that changed."""
        log = self.log
        log.sort_by_time()
        before = {k: log.col(k).copy() for k in ("bits", "tip_epoch")}
        self.engine = FlagEngine(self.config)
        for lo in range(0, log.n, _FLAG_BATCH):
            self._judge(lo, min(log.n, lo + _FLAG_BATCH))
        arrival = log.col("arrival")
        batch = np.flatnonzero(arrival >= first_arrival)
        batch = batch[np.argsort(arrival[batch])]  # in the order given
        changed = (log.col("bits") != before["bits"]) | (log.col("tip_epoch") != before["tip_epoch"])
        earlier = np.flatnonzero(changed & (arrival < first_arrival))
        return RunFlagResult(
            bits=log.col("bits")[batch].copy(),
            tip_epoch=log.col("tip_epoch")[batch].copy(),
            revised=self._revisions(earlier),
        )

    def _revisions(self, rows: np.ndarray) -> dict[str, np.ndarray] | None:
        """Columns (``iy``, ``ix``, ``flags``, ``tip_epoch``) of revised log rows that the maps hold."""
        if rows.size == 0:
            return None
        rows = rows[self.log.latest()[rows]]  # an older measurement of a pixel measured again is not on the map
        if rows.size == 0:
            return None
        log = self.log
        return {
            "iy": log.col("iy")[rows].copy(),
            "ix": log.col("ix")[rows].copy(),
            "flags": log.col("bits")[rows].copy(),
            "tip_epoch": log.col("tip_epoch")[rows].copy(),
        }

    def unjudged(self) -> dict[str, dict[str, Any]]:
        """Rules not judged on some pixels: label -> ``{"pixels": n, "why": text}`` (none: ``{}``).

        Counted over the measurements judged (a pixel measured twice counts twice).
        """
        log = self.log
        settings = self._settings_of(log.col("set_id"))

        def unknown(values: np.ndarray) -> int:
            return int(np.count_nonzero(~np.isfinite(values)))

        counts = {
            FlagKind.THERMAL: unknown(log.col("temperature_K")),
            FlagKind.MODULATION: unknown(settings[:, 0]),
            FlagKind.LOCKIN_SENSITIVITY: unknown(
                settings[:, 1] + log.col("lockin_peak") * (0.0 if self._lockin_unit in ("A", "A/V") else math.nan)
            ),
            FlagKind.LOCKIN_MISMATCH: unknown(np.where(settings[:, 0] > 0, log.col("lockin_rel_residual"), np.nan)),
            FlagKind.LOCKIN_OVERLOAD: 0 if self.status_known else log.n,
            FlagKind.SETPOINT: unknown(log.col("setpoint_rel_dev")),
            FlagKind.TIP_CHANGE: unknown(log.col("tip_features").sum(axis=-1)),
        }
        why = dict(_WHY)
        if any(s is None for s in self.sets.values()):
            for kind in (FlagKind.SETPOINT, FlagKind.TIP_CHANGE, FlagKind.LOCKIN_MISMATCH, FlagKind.LOCKIN_SENSITIVITY):
                why[kind] = "the recording gives no usable set-point set"
        return {FLAG_LABELS[k]: {"pixels": n, "why": why[k]} for k, n in sorted(counts.items()) if n}


def flag_recording(
    path: str | os.PathLike[str],
    model: ResultsModel,
    *,
    config: FlagConfig,
    max_block_bytes: int = 64 * 2**20,
    current: str | None = None,
    lockin: str | None = None,
) -> RunFlags:
    """Flags and tip epochs of every measured pixel of an archive or ``.3ds`` into ``model``.

    The pixels are judged in the order the live analyser receives them (a replay or a backfill:
    an archive's end-time order, a ``.3ds`` grid's record order), with the conditions its events
    carry and the reason and gap already in ``model`` (the kernels' results). Spectra are read in
    blocks of whole rows (at most ``max_block_bytes``), converted to float32 as a stream carries
    them. Writes the ``flags`` and ``tip_epoch`` maps; returns the run's :class:`RunFlags`
    (tip events, rules not judged). ``current``/``lockin`` name the channels as the analysis read them.

    Raises
    ------
    FileFormatError
        The file cannot be read; StreamError when its start document is unusable.
    """
    with open_recording(path) as rec:
        sets: Mapping[int, SetpointSet | None]
        try:
            start = start_fields(rec)
            names, sets = parse_sets(str(path), start)
            metadata = start.get("metadata")
        except NanonisFileError:  # a .3ds header without a usable set-point: the kernels' rules still hold
            names, sets, metadata = list(rec.channel_names), {0: None}, None
        flags = RunFlags(names, sets, metadata=metadata, config=config, current=current, lockin=lockin)
        ny, nx = rec.geometry.shape
        measured = np.asarray(rec.measured, dtype=bool)
        if isinstance(rec, ArchiveReader):
            meta = rec.pixel_meta
            set_map = np.asarray(meta["setpoint_set_id"], dtype=np.int64)
            order = np.array(rec.event_pixels("end-time"), dtype=np.int64).reshape(-1, 2)
            times = rec.end_times()
            with np.errstate(invalid="ignore"):  # both readings missing: NaN
                temps = np.fmax(meta["temperature_before_K"], meta["temperature_after_K"])
            status = np.asarray(meta["lockin_status"], dtype=np.int64)
            overload = np.asarray(meta["lockin_overload"], dtype=bool)
        else:
            set_map = np.zeros((ny, nx), dtype=np.int64)
            order = np.argwhere(measured).astype(np.int64)
            times = temps = np.full((ny, nx), np.nan)  # a .3ds records neither: judged in record order
            status, overload = np.zeros((ny, nx), dtype=np.int64), np.zeros((ny, nx), dtype=bool)
        # a damaged archive may list pixels whose spectra or metadata were lost (set id -1): the
        # kernels did not analyse them (the reader's damage report names them), so they are not
        # judged either
        with model.lock:
            measured &= model.maps["measured"]
        measured &= np.isin(set_map, np.fromiter(sets, dtype=np.int64, count=len(sets)))
        order = order[measured[order[:, 0], order[:, 1]]]
        feats = _features(rec, flags, measured, set_map, max_block_bytes)
    with model.lock:
        delta = model.maps["delta_eV"].copy()
        reason = model.maps["reason"].copy()
    for lo in range(0, order.shape[0], _FLAG_BATCH):
        iy, ix = order[lo : lo + _FLAG_BATCH].T
        result = flags.evaluate(
            iy=iy,
            ix=ix,
            set_ids=set_map[iy, ix],
            time=times[iy, ix],
            delta_eV=delta[iy, ix],
            reason=reason[iy, ix],
            features=SpectralFeatures(**{k: v[iy, ix] for k, v in feats.items()}),
            temperature_K=temps[iy, ix],
            lockin_status=status[iy, ix],
            lockin_overload=overload[iy, ix],
        )
        store_flags(model, iy, ix, result)
    return flags


def store_flags(model: ResultsModel, iy: np.ndarray, ix: np.ndarray, result: RunFlagResult) -> None:
    """Write a batch's flags and tip epochs into ``model``, after the revisions of earlier measurements.

    The revisions name measurements made before this batch, so they go first: a pixel measured
    again in the batch keeps the batch's labels.
    """
    rev = result.revised
    if rev is not None:
        model.update_block(rev["iy"], rev["ix"], flags=rev["flags"], tip_epoch=rev["tip_epoch"])
    model.update_block(iy, ix, flags=result.bits, tip_epoch=result.tip_epoch)


def _features(
    rec: Any, flags: RunFlags, measured: np.ndarray, set_map: np.ndarray, max_block_bytes: int
) -> dict[str, np.ndarray]:
    """Per-pixel feature maps ``(ny, nx[, 2])`` of the measured pixels, NaN elsewhere."""
    ny, nx = measured.shape
    out = {
        "setpoint_rel_dev": np.full((ny, nx), np.nan),
        "tip_features": np.full((ny, nx, 2), np.nan),
        "lockin_peak": np.full((ny, nx), np.nan),
        "lockin_rel_residual": np.full((ny, nx), np.nan),
    }
    names = flags.feature_channels  # the current and the lock-in only: a third of the bytes of a 3-channel archive
    per_row = max(1, nx * len(names) * int(rec.n_points) * 4)
    step = max(1, max_block_bytes // per_row)
    for start in range(0, ny, step):
        rows = slice(start, min(ny, start + step))
        try:
            if isinstance(rec, ArchiveReader):
                block = rec.read_pixels(rows, slice(None), names)
            else:
                block = rec.read_block(rows, names)
        except OSError as exc:
            raise FileFormatError(
                rec.path, f"cannot read the spectra ({exc}); the file is truncated or corrupt"
            ) from exc
        block = np.asarray(block, dtype=np.float32)  # as a stream carries them (a .3ds is big-endian)
        here = measured[rows]
        for set_id in np.unique(set_map[rows][here]).tolist():
            by, bx = np.nonzero(here & (set_map[rows] == set_id))
            spectra = block[by, bx]
            f = flags.channel_features(int(set_id), spectra[:, 0], spectra[:, 1] if len(names) > 1 else None)
            for name in SpectralFeatures.__slots__:
                out[name][by + start, bx] = getattr(f, name)
    return out
