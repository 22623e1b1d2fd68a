"""Campaign summary of several analysed runs: one table (CSV + JSON) and figures against T or B.

:func:`write_campaign` writes ``campaign.csv`` and ``campaign.json`` (the same rows; JSON keeps
nulls), one row per run with its conditions and its report's scalar results, and
``campaign_vs_temperature.png`` / ``campaign_vs_field.png`` for each condition that takes at
least two values (else ``campaign_runs.png`` against the run index): Delta and alpha (mean, error
bar = the map's standard deviation) and the 1/e correlation lengths. :func:`run_conditions`
reads a run's temperature (K) and field (T) from its recording's conditions
(:class:`~stslive.acquisition.formats.conditions.RecordingConditions`: thermometer readings of
the pixels, else the start document or the Nanonis header) and names the source in the table.

Absent conditions are null in JSON and empty in CSV; nothing is guessed. An input that could not
be analysed has a row with its reason in ``skipped`` (empty for analysed runs) and no results.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.recording import open_recording
from stslive.live.offline.figure_campaign import draw_campaign
from stslive.live.offline.figures import save_figure

__all__ = ["run_conditions", "campaign_rows", "write_campaign", "campaign_figure", "CONDITIONS"]

#: Conditions a campaign varies: table column -> (axis label, figure file suffix).
CONDITIONS: dict[str, tuple[str, str]] = {
    "temperature_K": ("temperature (K)", "temperature"),
    "field_T": ("magnetic field (T)", "field"),
}


def run_conditions(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Temperature (K) and magnetic field (T) of a run, with where each was read: the recording's
    :meth:`conditions` (:class:`~stslive.acquisition.formats.conditions.RecordingConditions`).

    Returns
    -------
    dict
        ``temperature_K``, ``temperature_source``, ``field_T``, ``field_source``; None when absent.
    """
    with open_recording(path) as recording:
        c = recording.conditions()
    known = {"temperature": c.temperature_K is not None, "field": c.magnetic_field_T is not None}
    return {
        "temperature_K": c.temperature_K,
        "temperature_source": c.sources.get("temperature_K") if known["temperature"] else None,
        "field_T": c.magnetic_field_T,
        "field_source": c.sources.get("magnetic_field_T") if known["field"] else None,
    }


#: Report keys copied into the table, in column order (after run, file, format and the conditions).
REPORT_COLUMNS: tuple[str, ...] = (
    "pixels_measured",
    "pixels_valid",
    "pixels_valid_delta",
    "pixels_valid_alpha",
    "pixels_in_grid",
    "delta_mean_meV",
    "delta_std_meV",
    "alpha_mean",
    "alpha_std",
    "l_delta_nm",
    "l_alpha_nm",
    "l_cross_nm",
    "l_delta_noise_nm",
    "l_alpha_noise_nm",
    "l_cross_noise_nm",
    "rho_cross_0",
    "rho_delta_topo_0",
    "sigma_rho_ohm",
    "predicted_delta_rel_sigma",
    "measured_delta_rel_sigma",
    "elapsed_s",
)


def campaign_rows(runs: Sequence[tuple[str, Path, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per ``(name, input path, report)``: identity, conditions and the report's scalar results.

    Every key of :data:`REPORT_COLUMNS` is present (None when the report lacks it), so the CSV
    has one fixed header; ``dynes_width_meV`` is the template width the run was analysed with.
    """
    rows = []
    for name, path, report in runs:
        inputs = report.get("inputs", {})
        width = inputs.get("options", {}).get("dynes_width_eV")
        row: dict[str, Any] = {"run": name, "file": str(path), "format": inputs.get("format"), **run_conditions(path)}
        row.update({key: report.get(key) for key in REPORT_COLUMNS})
        row["dynes_width_meV"] = None if width is None else float(width) * 1e3
        rows.append(row)
    return rows


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def campaign_figure(path: Path, rows: Sequence[Mapping[str, Any]], *, x_key: str | None) -> Path:
    """Delta, alpha and the 1/e lengths against ``x_key`` (None: run index): :mod:`.figure_campaign`."""
    conditions = {key: label for key, (label, _) in CONDITIONS.items()}
    return save_figure(draw_campaign(rows, x_key=x_key, conditions=conditions), path)


def write_campaign(
    out: str | os.PathLike[str],
    runs: Sequence[tuple[str, Path, Mapping[str, Any]]],
    *,
    skipped: Sequence[tuple[Path, str]] = (),
) -> list[Path]:
    """Write ``campaign.csv``, ``campaign.json`` and the figures into ``out``; returns the paths written.

    ``skipped`` inputs (path, reason) get a table row each, after the runs, and no figure point.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = campaign_rows(runs)
    figure_rows = list(rows)
    for row in rows:
        row["skipped"] = None
    empty = dict.fromkeys(rows[0] if rows else ["run", "file", "format", "skipped"])
    rows += [{**empty, "run": path.stem, "file": str(path), "skipped": reason} for path, reason in skipped]
    written = [out / "campaign.csv", out / "campaign.json"]
    with open(written[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    written[1].write_text(json.dumps({"runs": rows}, indent=2, allow_nan=False) + "\n")
    varied = [key for key in CONDITIONS if len({v for v in _column(figure_rows, key) if math.isfinite(v)}) >= 2]
    for key in varied:
        written.append(campaign_figure(out / f"campaign_vs_{CONDITIONS[key][1]}.png", figure_rows, x_key=key))
    if not varied:
        written.append(campaign_figure(out / "campaign_runs.png", figure_rows, x_key=None))
    return written
