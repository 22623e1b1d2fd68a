"""``report.json`` of an offline analysis: counts, statistics, correlations, flags, tip epochs, warnings.

Contract: :func:`build_report` returns a JSON-ready dictionary (builtins only, ``null`` for what
could not be determined) of schema :data:`REPORT_SCHEMA` version :data:`REPORT_SCHEMA_VERSION`;
:func:`write_report` writes it. Units are in the key names (``_meV``, ``_nm``, ``_s``, ``_ohm``,
``_eV``; no suffix = dimensionless); every key, its unit and meaning are listed in
``docs/formats.md`` ("report.json"). Delta statistics are over the pixels where Delta was
extracted (``valid_delta``), alpha statistics over those where alpha was (``valid_alpha``);
``pixels_valid`` counts both. The per-quantity maps of the results model are used where present,
else derived from the gap and exponent maps (finite = extracted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.version import software_version
from stslive.drivers.errors import AnalysisError
from stslive.live.correlations import correlation_report
from stslive.live.flag_kinds import FLAG_LABELS, FlagKind, SetFlagSummary
from stslive.live.flags_tip import TipEvent
from stslive.live.kernels import KernelOptions, ReasonCode
from stslive.live.results import ResultsModel
from stslive.live.theory import TheoryConstants, predicted_gap_spread, sheet_resistance_sigma

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_SCHEMA_VERSION",
    "quantity_masks",
    "map_statistics",
    "ground_truth_errors",
    "build_report",
    "write_report",
    "summary_line",
]

REPORT_SCHEMA = "stslive.report"
#: 1: the unversioned report (``pixels`` = measured, ``grid`` = [ny, nx]); 2: this layout.
REPORT_SCHEMA_VERSION = 2

#: Reason code of a quantity whose own reason the results do not hold (the pixel's is the other's).
UNKNOWN_REASON = -2
#: Correlation keys that are null when the maps are too sparse to correlate.
_CORRELATION_KEYS = (
    "l_delta_nm",
    "l_alpha_nm",
    "l_cross_nm",
    "l_delta_noise_nm",
    "l_alpha_noise_nm",
    "l_cross_noise_nm",
    "noise_band_delta",
    "noise_band_alpha",
    "noise_band_cross",
    "rho_cross_0",
    "rho_delta_topo_0",
)
#: Optional per-pixel maps summarised when the results model has them: map -> (report key, scale).
_OPTIONAL_STATS = {
    "delta_sigma_eV": ("delta_sigma_median_meV", 1e3),
    "alpha_sigma": ("alpha_sigma_median", 1.0),
    "delta_dynes_eV": ("delta_dynes_median_meV", 1e3),
    "gamma_dynes_eV": ("gamma_dynes_median_meV", 1e3),
}


def _finite(value: Any) -> float | None:
    """A float, or None for NaN/inf/None (JSON has no NaN)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def quantity_masks(maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``valid_delta``, ``valid_alpha``, ``reason_delta``, ``reason_alpha`` of measured pixels.

    The model's own maps where it has them; else Delta (alpha) counts as extracted where the gap
    (exponent) is finite, and a pixel without it carries the pixel's reason code: the gap's
    reason for Delta; for alpha the power law's where the gap was found, else
    :data:`UNKNOWN_REASON` (the pixel's code is then the gap's).
    """
    measured = maps["measured"]
    out: dict[str, np.ndarray] = {}
    for q, value in (("delta", "delta_eV"), ("alpha", "alpha")):
        valid = maps.get(f"valid_{q}")
        valid = (np.isfinite(maps[value]) if valid is None else valid.astype(bool)) & measured
        reason = maps.get(f"reason_{q}")
        if reason is None:
            reason = np.where(valid, int(ReasonCode.OK), maps["reason"])
            if q == "alpha":
                reason = np.where(valid | out["valid_delta"], reason, UNKNOWN_REASON)
        out[f"valid_{q}"], out[f"reason_{q}"] = valid, reason
    return out


def map_statistics(
    delta_eV: np.ndarray, alpha: np.ndarray, valid: np.ndarray | tuple[np.ndarray, np.ndarray]
) -> dict[str, float | None]:
    """Mean and standard deviation (ddof=0) of Delta (meV) and alpha over ``valid`` pixels.

    ``valid`` is one mask for both, or a ``(valid_delta, valid_alpha)`` pair.
    """
    valid_d, valid_a = valid if isinstance(valid, tuple) else (valid, valid)
    d = np.asarray(delta_eV, dtype=np.float64)[valid_d]
    a = np.asarray(alpha, dtype=np.float64)[valid_a]
    return {
        "delta_mean_meV": float(d.mean() * 1e3) if d.size else None,
        "delta_std_meV": float(d.std() * 1e3) if d.size else None,
        "alpha_mean": float(a.mean()) if a.size else None,
        "alpha_std": float(a.std()) if a.size else None,
    }


def ground_truth_errors(
    delta_eV: np.ndarray,
    alpha: np.ndarray,
    valid: np.ndarray | tuple[np.ndarray, np.ndarray],
    truth: dict[str, np.ndarray],
    *,
    pixel_size_m: tuple[float, float],
) -> dict[str, Any]:
    """RMS errors vs the definition truth (over each quantity's valid pixels) and the model maps' lengths.

    ``truth`` holds the archive's ground truth: ``delta_def`` (eV) and ``alpha_def`` (the paper's
    definitions on the noise-free spectra), ``delta_model`` / ``alpha_model`` (the film's maps).
    """
    valid_d, valid_a = valid if isinstance(valid, tuple) else (valid, valid)
    out: dict[str, Any] = {
        "pixels_compared": int((valid_d & valid_a).sum()),
        "pixels_compared_delta": int(valid_d.sum()),  # each error is over its own quantity's pixels
        "pixels_compared_alpha": int(valid_a.sum()),
    }
    if "delta_def" in truth and valid_d.any():
        err = delta_eV[valid_d] - truth["delta_def"][valid_d]
        out["delta_rms_error_meV"] = float(np.sqrt(np.mean(err.astype(np.float64) ** 2)) * 1e3)
    if "alpha_def" in truth and valid_a.any():
        err = alpha[valid_a] - truth["alpha_def"][valid_a]
        out["alpha_rms_error"] = float(np.sqrt(np.mean(err.astype(np.float64) ** 2)))
    if "delta_model" in truth and "alpha_model" in truth:
        model = correlation_report(
            truth["delta_model"], truth["alpha_model"], pixel_size_m=pixel_size_m, intervals=False
        )
        out["true_maps"] = {k: model[k] for k in ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")}
    return out


def _reason_counts(reason: np.ndarray, where: np.ndarray) -> dict[str, int]:
    codes, counts = np.unique(reason[where], return_counts=True)
    names = {int(c): c.name for c in ReasonCode} | {UNKNOWN_REASON: "UNKNOWN"}
    return {names.get(int(c), f"CODE_{int(c)}"): int(n) for c, n in zip(codes, counts, strict=True)}


def main_reasons(reasons: Mapping[str, int], *, most: int = 2) -> str:
    """The commonest refusal reasons, e.g. ``"WINDOW_NOT_COVERED 3072"`` ("" when none)."""
    refused = sorted(((n, k) for k, n in reasons.items() if k != ReasonCode.OK.name and n), reverse=True)
    return ", ".join(f"{k} {n}" for n, k in refused[:most])


def _pixel(p: tuple[int, int] | None) -> dict[str, int] | None:
    return None if p is None else {"iy": int(p[0]), "ix": int(p[1])}


def flag_section(
    flags: np.ndarray,
    measured: np.ndarray,
    sets: Sequence[SetFlagSummary],
    *,
    not_judged: Mapping[str, Any],
    set_flag_fraction: float,
) -> dict[str, Any]:
    """The ``flags`` object: counts per flag over the measured pixels, per set, rules not judged."""
    f = flags[measured]
    return {
        "pixels_flagged": int(np.count_nonzero(f)),
        "counts": {FLAG_LABELS[k]: int(np.count_nonzero(f & int(k))) for k in FlagKind},
        "set_flag_fraction": float(set_flag_fraction),
        "sets": [
            {
                "set_id": s.set_id,
                "pixels_measured": s.n_pixels,
                "pixels_flagged": s.n_flagged,
                "flagged_fraction": s.fraction,
                "flagged": s.flagged,
                "dominant": s.dominant,
                "counts": dict(s.counts),
                "first_flagged_pixel": _pixel(s.first_pixel),
                "last_flagged_pixel": _pixel(s.last_pixel),
                "message": s.message,
            }
            for s in sets
        ],
        "not_judged": {k: dict(v) for k, v in not_judged.items()},
    }


def epoch_section(
    maps: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], events: Sequence[TipEvent]
) -> dict[str, Any]:
    """The ``tip_epochs`` object: the change events and Delta/alpha statistics per tip epoch."""
    epoch = maps["tip_epoch"]
    measured = maps["measured"]
    per_epoch = []
    for e in np.unique(epoch[measured & (epoch >= 0)]).tolist():
        here = measured & (epoch == e)
        stats = map_statistics(
            maps["delta_eV"], maps["alpha"], (here & masks["valid_delta"], here & masks["valid_alpha"])
        )
        per_epoch.append(
            {
                "epoch": int(e),
                "pixels_measured": int(here.sum()),
                "pixels_valid_delta": int((here & masks["valid_delta"]).sum()),
                "pixels_valid_alpha": int((here & masks["valid_alpha"]).sum()),
                **stats,
            }
        )
    return {
        "count": len(per_epoch),
        "changes": [
            {
                "pixel": {"iy": ev.iy, "ix": ev.ix},
                "order": ev.order,
                "from_epoch": ev.from_epoch,
                "to_epoch": ev.to_epoch,
                "feature_step": list(ev.step),
            }
            for ev in events
        ],
        "epochs": per_epoch,
    }


def _temperature_hint(quantity: str, options: KernelOptions) -> str:
    """For a refused gap: the temperature its peaks were expected at (a header may name another thermometer)."""
    if quantity != "delta" or options.temperature_K is None:
        return ""
    return (
        f"; the peaks were expected thermally broadened at T = {options.temperature_K:g} K (the recording's, "
        "or --temperature-K): if that is not the sample's temperature, give the right one with --temperature-K"
    )


def _warnings(report: Mapping[str, Any], options: KernelOptions) -> list[dict[str, str]]:
    """What a reader must know before trusting the numbers (codes in docs/formats.md)."""
    out = []
    measured = report["pixels_measured"]
    for q, name in (("delta", "Delta"), ("alpha", "alpha")):
        valid = report[f"pixels_valid_{q}"]
        if measured and valid < 0.5 * measured:
            why = main_reasons(report[f"reasons_{q}"]) or "no reason recorded"
            out.append(
                {
                    "code": f"few_valid_{q}",
                    "message": f"{name} extracted on {valid} of {measured} measured pixels (refused: {why})"
                    + _temperature_hint(q, options),
                }
            )
    changes = report["tip_epochs"]["changes"]
    if changes:
        out.append(
            {
                "code": "tip_changed",
                "message": f"the tip changed {len(changes)} time(s): the map mixes {report['tip_epochs']['count']} "
                "tip epochs; compare their statistics (tip_epochs) before pooling them",
            }
        )
    not_judged = report["flags"]["not_judged"]
    if not_judged:
        out.append(
            {
                "code": "flags_not_judged",
                "message": "flags not judged where their input is unknown: "
                + "; ".join(f"{k} on {v['pixels']} pixels ({v['why']})" for k, v in not_judged.items()),
            }
        )
    return out


def build_report(
    model: ResultsModel,
    *,
    pixel_size_m: tuple[float, float],
    inputs: dict[str, Any],
    options: KernelOptions,
    constants: TheoryConstants,
    elapsed_s: float,
    ground_truth: dict[str, np.ndarray] | None = None,
    not_judged: Mapping[str, Any] | None = None,
    tip_events: Sequence[TipEvent] = (),
) -> dict[str, Any]:
    """The report dictionary (JSON-ready: no NaN, only builtins) of an analysed model.

    Parameters
    ----------
    model : ResultsModel
        Analysed and flagged maps.
    pixel_size_m : (dy, dx)
        Pixel size, m.
    inputs : dict
        What was analysed (file, format, channels, sweep signal, ``channels_used`` ...); the
        options are added.
    options, constants
        Kernel options and Eq. (2)/(3) constants used.
    elapsed_s : float
        Wall time so far, s.
    ground_truth : dict, optional
        Simulation ground truth maps (see :func:`ground_truth_errors`).
    not_judged, tip_events
        The run's flag rules not judged (:meth:`stslive.live.flags_run.RunFlags.unjudged`) and
        tip-change events.
    """
    maps = model.copy_maps()
    measured = maps["measured"]
    masks = quantity_masks(maps)
    valid_d, valid_a = masks["valid_delta"], masks["valid_alpha"]
    used = inputs.get("channels_used", {})
    ny, nx = measured.shape
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "software_version": software_version(),
        "grid": {"nx": nx, "ny": ny},
        "pixel_size_nm": {"x": pixel_size_m[1] * 1e9, "y": pixel_size_m[0] * 1e9},
        "pixels_in_grid": int(measured.size),
        "pixels_measured": int(measured.sum()),
        "pixels_valid": int((maps["valid"] & measured).sum()),
        "pixels_valid_delta": int(valid_d.sum()),
        "pixels_valid_alpha": int(valid_a.sum()),
        "reasons": _reason_counts(maps["reason"], measured),
        "reasons_delta": _reason_counts(masks["reason_delta"], measured),
        "reasons_alpha": _reason_counts(masks["reason_alpha"], measured),
        "gap_channel": used.get("delta"),
        "alpha_channel": used.get("alpha"),
    }
    stats = map_statistics(maps["delta_eV"], maps["alpha"], (valid_d, valid_a))
    report.update(stats)
    for name, (key, scale) in _OPTIONAL_STATS.items():
        if name in maps:
            values = maps[name][valid_d if "delta" in name or "gamma" in name else valid_a].astype(np.float64)
            values = values[np.isfinite(values)]
            report[key] = float(np.median(values) * scale) if values.size else None
    report.update(_correlations(maps, masks, model, pixel_size_m))
    l_alpha_nm = report.get("l_alpha_nm")
    sigma_rho = sheet_resistance_sigma(
        stats["alpha_std"] if stats["alpha_std"] is not None else math.nan,
        l_alpha_nm * 1e-9 if l_alpha_nm is not None else math.nan,
        constants=constants,
    )
    mean_gap, std_gap = stats["delta_mean_meV"], stats["delta_std_meV"]
    report["sigma_rho_ohm"] = sigma_rho
    report["predicted_delta_rel_sigma"] = predicted_gap_spread(
        sigma_rho, mean_gap * 1e-3 if mean_gap is not None else math.nan, constants=constants
    )
    report["measured_delta_rel_sigma"] = (std_gap / mean_gap) if mean_gap and std_gap is not None else None
    report["flags"] = flag_section(
        maps["flags"],
        measured,
        model.flag_summary(),
        not_judged=not_judged or {},
        set_flag_fraction=model.set_threshold,
    )
    report["tip_epochs"] = epoch_section(maps, masks, tip_events)
    report["warnings"] = [*report.pop("warnings", []), *_warnings(report, options)]
    report["theory_constants"] = constants.to_dict()
    report["elapsed_s"] = float(elapsed_s)
    report["inputs"] = {**inputs, "options": dataclasses.asdict(options)}
    if ground_truth:
        report["ground_truth"] = ground_truth_errors(
            maps["delta_eV"], maps["alpha"], (valid_d, valid_a), ground_truth, pixel_size_m=pixel_size_m
        )
    return _json_safe(report)


def _correlations(
    maps: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    model: ResultsModel,
    pixel_size_m: tuple[float, float],
) -> dict[str, Any]:
    """Correlation keys of :func:`~stslive.live.correlations.correlation_report` (null when too sparse).

    Delta over its valid pixels, alpha over its own; any ``warnings`` it returns are kept as
    ``{"code": "correlations", "message": ...}`` entries.
    """
    delta = np.where(masks["valid_delta"], maps["delta_eV"], np.nan)
    alpha = np.where(masks["valid_alpha"], maps["alpha"], np.nan)
    out: dict[str, Any] = dict.fromkeys(_CORRELATION_KEYS)
    if min(masks["valid_delta"].sum(), masks["valid_alpha"].sum()) < 3:
        return out
    try:
        found = dict(correlation_report(delta, alpha, pixel_size_m=pixel_size_m, topography=model.topography))
    except AnalysisError as exc:
        return {**out, "warnings": [{"code": "correlations", "message": f"no correlations: {exc}"}]}
    raw = found.pop("warnings", None)
    notes: list[Any] = list(raw) if isinstance(raw, list) else []
    out.update(found)
    if notes:
        out["warnings"] = [n if isinstance(n, dict) else {"code": "correlations", "message": str(n)} for n in notes]
    return out


def _json_safe(value: Any) -> Any:
    """Builtins only, NaN/inf as None, tuples as lists, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    raise AnalysisError(f"report value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as indented JSON (strict: NaN refused), atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def summary_line(report: dict[str, Any]) -> str:
    """One line of a run's results: pixels extracted per quantity (and why not), Delta, alpha, lengths, flags."""

    def fmt(key: str, scale: str = "") -> str:
        value = report.get(key)
        return "n/a" if value is None else f"{value:.4g}{scale}"

    measured = report["pixels_measured"]
    counts = []
    for q, name in (("delta", "Delta"), ("alpha", "alpha")):
        why = main_reasons(report[f"reasons_{q}"])
        counts.append(f"{name} on {report[f'pixels_valid_{q}']}" + (f" (refused: {why})" if why else ""))
    line = (
        f"{measured} of {report['pixels_in_grid']} pixels measured, {report['pixels_valid']} valid; "
        + ", ".join(counts)
        + f"; Delta {fmt('delta_mean_meV')} +- {fmt('delta_std_meV')} meV, alpha {fmt('alpha_mean')} "
        f"+- {fmt('alpha_std')}; l_Delta {fmt('l_delta_nm')} nm, l_alpha {fmt('l_alpha_nm')} nm, "
        f"rho_cross(0) {fmt('rho_cross_0')}"
    )
    flagged = report["flags"]["pixels_flagged"]
    if flagged:
        top = sorted(((n, k) for k, n in report["flags"]["counts"].items() if n), reverse=True)[:2]
        line += f"; {flagged} flagged (" + ", ".join(f"{k} {n}" for n, k in top) + ")"
    changes = len(report["tip_epochs"]["changes"])
    if changes:
        line += f"; {changes} tip change(s)"
    return line
