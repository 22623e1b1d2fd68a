"""A recording's start document: an archive's own, a Nanonis file's built from its header.

Contract: :func:`start_fields` is the one rule replay, watch, the offline flags and the analysis
read, so a file analysed offline and the same file replayed into the live analyser state the same
set-point set, conditions and unknowns. A Nanonis file stores no stslive set-point set:
:func:`setpoint_set_from_header` builds one and names the header key behind each value; what the
header does not give is None (unknown) or listed in ``metadata["not_recorded"]``, never invented.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.conditions import AmplitudeConvention, RecordingConditions, header_number
from stslive.acquisition.formats.nanonis3ds import NanonisGrid
from stslive.acquisition.formats.nanonis_dat import NanonisPointSet
from stslive.acquisition.formats.recording import Recording, kind_of
from stslive.acquisition.formats.runmodel import SetpointSet, channel_unit
from stslive.drivers.errors import ConfigError, NanonisFileError

__all__ = ["STATED_TEMPERATURE_KEY", "setpoint_set_from_header", "start_fields"]

#: ``setpoint_source`` value of a set-point set field the header does not give
_ABSENT = "absent from the header: default"
#: Event fields a Nanonis file does not record (its events carry the defaults)
_NANONIS_EVENT_UNKNOWNS = ("lockin_status", "lockin_overload")
#: Start-document metadata key of the one sample temperature a Nanonis file states (``conditions.temperature_K``:
#: per-point temperature parameters, else the header; its events carry no reading)
STATED_TEMPERATURE_KEY = "header_temperature_K"


def _header_float(header: Mapping[str, str], key: str, path: Path) -> float:
    try:
        return float(header[key])
    except ValueError:
        raise NanonisFileError(path, f"header entry {key!r}={header[key]!r} is not a number") from None


def setpoint_set_from_header(
    recording: NanonisGrid | NanonisPointSet,
    *,
    conditions: RecordingConditions,
    setpoint: tuple[float, float] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The set-point set of a Nanonis recording, built from its header; and where each value came from.

    Nanonis keys used: ``Bias>Bias (V)`` (bias set-point); ``Z-Controller>Setpoint`` when its
    unit is A, else ``Current>Current (A)`` (the current when the measurement started) for the
    current set-point (``setpoint`` = (bias V, current A) gives both instead);
    ``Bias Spectroscopy>Sweep Start/End (V)`` for a bias sweep, else the first measured point's
    sweep, for the limits; ``Bias Spectroscopy>Settling time (s)``, ``>Integration time (s)``,
    ``>Z-controller hold`` (a ``.dat``: ``Settling time (s)``, ``Integration time (s)``,
    ``Z-Ctrl hold``). The lock-in: the frequency from ``Lock-in>Frequency (Hz)`` and the
    modulation from ``conditions``, the recording's (0 when it did not run; None when unknown, e.g. an
    amplitude of unstated convention); its time constant and sensitivity are never in a Nanonis
    header: None (unknown). Absent timing keys leave the :class:`SetpointSet` default, and the
    returned sources say so. ``conditions``: the recording's, when the caller has read them already.

    Raises
    ------
    NanonisFileError
        A header number that does not parse, or (bias sweeps) no set-point or values no
        set-point set allows.
    """
    h, path = recording.header, recording.path
    values: dict[str, Any] = {"id": 0, "name": "from the file header", "n_points": int(recording.n_points)}
    sources: dict[str, str] = {"n_points": "points of the sweep"}

    def take(field_name: str, *keys: str) -> None:
        for key in keys:
            if key in h:
                values[field_name] = _header_float(h, key, path)
                sources[field_name] = key
                return
        sources[field_name] = _ABSENT

    if setpoint is not None:
        values["bias_setpoint_V"], values["current_setpoint_A"] = setpoint
        sources["bias_setpoint_V"] = sources["current_setpoint_A"] = "given by the caller (--setpoint)"
    else:
        take("bias_setpoint_V", "Bias>Bias (V)")
        current_keys = (("Z-Controller>Setpoint",) if h.get("Z-Controller>Setpoint unit") == "A" else ()) + (
            "Current>Current (A)",
        )
        take("current_setpoint_A", *current_keys)
    take("settle_s", "Bias Spectroscopy>Settling time (s)", "Settling time (s)")
    take("integration_s", "Bias Spectroscopy>Integration time (s)", "Integration time (s)")
    if recording.is_bias_sweep and "Bias Spectroscopy>Sweep Start (V)" in h and "Bias Spectroscopy>Sweep End (V)" in h:
        take("sweep_start_V", "Bias Spectroscopy>Sweep Start (V)")
        take("sweep_end_V", "Bias Spectroscopy>Sweep End (V)")
    else:
        sweep = recording.nominal_sweep()
        values["sweep_start_V"], values["sweep_end_V"] = float(sweep[0]), float(sweep[-1])
        sources["sweep_start_V"] = sources["sweep_end_V"] = f"first measured point's sweep ({recording.sweep_signal})"
    hold_key = next((k for k in ("Bias Spectroscopy>Z-controller hold", "Z-Ctrl hold") if k in h), None)
    if hold_key is not None:
        values["feedback_hold"] = h[hold_key].strip().upper() == "TRUE"
        sources["feedback_hold"] = hold_key
    values["lockin_frequency_Hz"] = header_number(h, "Lock-in>Frequency (Hz)")
    values["lockin_amplitude_Vrms"] = conditions.modulation_Vrms
    values["lockin_time_constant_s"] = values["lockin_sensitivity_V"] = None
    sources["lockin"] = (
        conditions.sources.get("modulation_Vrms", "no lock-in settings in the header: unknown (None)")
        + "; time constant and sensitivity unknown (None)"
    )
    missing = [k for k in ("bias_setpoint_V", "current_setpoint_A") if k not in values]
    if recording.is_bias_sweep:
        if missing:
            raise NanonisFileError(
                path,
                f"header lacks the set-point value(s) {missing} needed to replay a bias "
                "recording (Bias>Bias (V), Current>Current (A)); give them (--setpoint BIAS_V,CURRENT_A)",
            )
        try:
            values = SetpointSet.from_dict(values).to_dict()
        except ConfigError as exc:
            raise NanonisFileError(path, f"the header's set-point values do not make a set-point set: {exc}") from exc
    return values, sources


def start_fields(
    recording: Recording,
    *,
    setpoint: tuple[float, float] | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
) -> dict[str, Any]:
    """The start-document fields of a recording (:meth:`RunPublisher.start` keywords, no uid).

    An archive's are its own record (:meth:`ArchiveReader.start_document`). A Nanonis file stores
    no stslive set-point set: one is built from its header (:func:`setpoint_set_from_header`) and
    ``metadata["setpoint_source"]`` names where each of its values came from.
    ``metadata["not_recorded"]`` lists the set fields the header does not give (including the
    lock-in settings it leaves unknown) and the event fields a Nanonis file does not hold (the
    values sent are defaults, not measurements); ``metadata["conditions"]`` is the file's
    :class:`RecordingConditions` and ``metadata["header_temperature_K"]`` its one stated
    temperature. For a sweep that is not the bias the set is not validated
    (``metadata["sweep_signal"]``).
    """
    if isinstance(recording, ArchiveReader):
        return recording.start_document().body()
    conditions = recording.conditions(amplitude_convention=amplitude_convention)
    sp, sources = setpoint_set_from_header(recording, setpoint=setpoint, conditions=conditions)
    names = list(recording.channel_names)
    varies = recording.sweep_varies()
    known = {k for k, v in sources.items() if v != _ABSENT} | {"id", "name"}
    known |= {k for k in ("lockin_frequency_Hz", "lockin_amplitude_Vrms") if sp.get(k) is not None}
    not_recorded = [f.name for f in dataclasses.fields(SetpointSet) if f.name not in known]
    kind = kind_of(recording)
    return {
        "grid": recording.geometry.to_dict(),
        "channel_names": names,
        "channel_units": [channel_unit(n) for n in names],
        "n_points": int(recording.n_points),
        "setpoint_sets": [sp],
        "instruments": {"stm": f"Nanonis (from {kind} file)"},
        "software_version": recording.header.get("NanonisMain>SW Version", "unknown"),
        "metadata": {
            "source_kind": kind,
            "sweep_signal": recording.sweep_signal,
            "setpoint_source": {"note": "built from the file header; it stores no set-point set", **sources},
            "not_recorded": [*not_recorded, *_NANONIS_EVENT_UNKNOWNS],
            "sweep_limits_vary_per_point": varies,
            "header_start_time": recording.header.get("Start time", recording.header.get("Date", "")),
            "header_end_time": recording.header.get("End time", ""),
            STATED_TEMPERATURE_KEY: conditions.temperature_K,  # one reading, no event's
            "conditions": conditions.to_dict(),
        },
    }
