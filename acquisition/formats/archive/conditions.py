"""The measurement conditions a run archive records, as a ``RecordingConditions``.

Rules (first found wins, each value's source named): temperature = median of the measured pixels'
thermometer readings, else the start document's ``conditions.temperature_K``,
``metadata.conditions.temperature_K`` or ``film_params.temperature_K`` (simulations); modulation,
lock-in frequency and sensitivity = the set-point sets' values when all sets agree (None when they
differ; per set in ``modulation_Vrms_by_set``), stored as rms by stslive; bias divider, Dynes width
and field from ``metadata.conditions.{bias_divider, dynes_width_eV, magnetic_field_T}`` (also
without ``metadata.``), the Dynes width of a simulated film from ``film_params.dynes_gamma_eV``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stslive.acquisition.formats.conditions import RecordingConditions, median_finite

if TYPE_CHECKING:  # the reader imports this module
    from stslive.acquisition.formats.archive.reader import ArchiveReader

__all__ = ["archive_conditions"]


def _lookup(doc: Mapping[str, Any], dotted: str) -> float | None:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node) if math.isfinite(node) else None


def _first(doc: Mapping[str, Any], keys: Iterable[str]) -> tuple[float, str] | None:
    for key in keys:
        if (value := _lookup(doc, key)) is not None:
            return value, f"start document {key}"
    return None


def _common(values: Iterable[float | None]) -> float | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def archive_conditions(reader: ArchiveReader) -> RecordingConditions:
    """The conditions ``reader``'s archive records (module docstring)."""
    start = reader.documents.get("start", {})
    start = start if isinstance(start, Mapping) else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    meta, measured = reader.pixel_meta, np.asarray(reader.measured, dtype=bool)
    temperature = median_finite(meta[k][measured] for k in ("temperature_before_K", "temperature_after_K"))
    if temperature is not None:
        values["temperature_K"] = temperature
        sources["temperature_K"] = "pixels (median of the thermometer readings)"
    elif found := _first(
        start, ("conditions.temperature_K", "metadata.conditions.temperature_K", "film_params.temperature_K")
    ):
        values["temperature_K"], sources["temperature_K"] = found
    for name, keys in (
        ("bias_divider", ("metadata.conditions.bias_divider", "conditions.bias_divider")),
        (
            "dynes_width_eV",
            ("metadata.conditions.dynes_width_eV", "conditions.dynes_width_eV", "film_params.dynes_gamma_eV"),
        ),
        ("magnetic_field_T", ("metadata.conditions.magnetic_field_T", "conditions.magnetic_field_T")),
    ):
        if found := _first(start, keys):
            values[name], sources[name] = found
    sets = reader.setpoint_sets
    by_set = {sid: s.lockin_amplitude_Vrms for sid, s in sorted(sets.items())}
    for name, field in (
        ("modulation_Vrms", "lockin_amplitude_Vrms"),
        ("lockin_frequency_Hz", "lockin_frequency_Hz"),
        ("lockin_sensitivity_V", "lockin_sensitivity_V"),
    ):
        common = _common(getattr(s, field) for s in sets.values())
        if common is not None:
            values[name], sources[name] = common, f"set-point sets ({field})"
        elif sets:
            sources[name] = f"unknown: the set-point sets differ or do not record it; see {field} per set"
    if "modulation_Vrms" in values:
        values["lockin_amplitude_V"] = values["modulation_Vrms"]
        values["amplitude_convention"] = "rms"
    return RecordingConditions(**values, modulation_Vrms_by_set=by_set, sources=sources)
