"""The caption of a run's figures: file name, temperature, set-point and date, read from the file.

:func:`run_caption` reads an stslive archive or a Nanonis ``.3ds`` and returns a
:class:`~stslive.live.offline.figures.RunCaption`; what the file does not record stays None
(the title then says "unknown"), nothing is guessed.

* temperature: :func:`stslive.live.offline.campaign.run_conditions` (the campaign table's value);
* set-point: an archive's set-point sets (bias and current of each); a ``.3ds`` header's
  ``Bias>Bias (V)`` and ``Z-Controller>Setpoint`` with its ``Setpoint unit``;
* date: an archive's start document ``time`` (UTC); a ``.3ds`` header's ``Start time``
  (the controller's local time, as written).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from stslive.acquisition.formats.archive import ArchiveReader
from stslive.acquisition.formats.recording import open_recording
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.live.offline.campaign import run_conditions
from stslive.live.offline.figures import RunCaption

__all__ = ["run_caption", "format_quantity"]

#: SI prefixes used for display, largest first.
_PREFIXES = ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"))
#: Set-point sets named in a caption at the most (the rest are counted).
_MAX_SETS = 3
#: The .3ds header's start time layout (Nanonis writes day.month.year).
_3DS_TIME = "%d.%m.%Y %H:%M:%S"


def format_quantity(value: float, unit: str) -> str:
    """``value`` with an SI prefix and ``unit``, 3 significant digits (e.g. -0.01, "V" -> "-10 mV")."""
    if not math.isfinite(value):
        return f"{value} {unit}"
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 1:
        return f"{value:.3g} {unit}"
    for scale, prefix in _PREFIXES:
        if magnitude >= scale * 0.9995:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _set_text(s: SetpointSet) -> str:
    return f"{format_quantity(s.bias_setpoint_V, 'V')}, {format_quantity(s.current_setpoint_A, 'A')}"


def _archive_setpoint(sets: Mapping[int, SetpointSet]) -> str | None:
    if not sets:
        return None
    texts = [_set_text(sets[k]) for k in sorted(sets)]
    if len(texts) == 1:
        return texts[0]
    more = f" (+{len(texts) - _MAX_SETS} more)" if len(texts) > _MAX_SETS else ""
    return f"{len(texts)} sets: " + "; ".join(texts[:_MAX_SETS]) + more


def _archive_date(start: Mapping[str, object]) -> str | None:
    t = start.get("time")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        return None
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _header_number(header: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(header[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _3ds_setpoint(header: Mapping[str, str]) -> str | None:
    bias = _header_number(header, "Bias>Bias (V)")
    setpoint = _header_number(header, "Z-Controller>Setpoint")
    unit = header.get("Z-Controller>Setpoint unit", "").strip()
    parts = []
    if bias is not None:
        parts.append(format_quantity(bias, "V"))
    if setpoint is not None:
        parts.append(format_quantity(setpoint, unit) if unit else f"{setpoint:.3g} (unit not given)")
    return ", ".join(parts) or None


def _3ds_date(header: Mapping[str, str]) -> str | None:
    raw = header.get("Start time", "").strip()
    try:
        return datetime.strptime(raw, _3DS_TIME).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return raw or None


def run_caption(path: str | os.PathLike[str]) -> RunCaption:
    """The caption of the run in ``path`` (module docstring says where each part comes from)."""
    path = Path(path)
    temperature = run_conditions(path)["temperature_K"]
    with open_recording(path) as recording:
        if isinstance(recording, ArchiveReader):
            setpoint = _archive_setpoint(recording.setpoint_sets)
            date = _archive_date(recording.documents.get("start", {}))
        else:
            setpoint, date = _3ds_setpoint(recording.header), _3ds_date(recording.header)
    return RunCaption(file_name=path.name, temperature_K=temperature, setpoint=setpoint, date=date)
