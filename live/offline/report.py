"""``report.json`` of an offline analysis: statistics, correlation lengths, Eq. (2)/(3) figures, inputs.

Keys (SI except where the name says meV or nm; ``null`` = could not be determined):

==========================  ======================================================================
pixels, valid_pixels        measured (analysed) pixels, pixels with both Delta and alpha
grid_pixels                 ny * nx of the file
reasons                     count of pixels per kernel reason code name (OK included)
delta_mean_meV/_std_meV     mean and standard deviation (ddof=0) of Delta over the valid pixels
alpha_mean, alpha_std       same for the AA exponent alpha
l_delta_nm, l_alpha_nm,     1/e correlation lengths (Appendix A; cross on |profile|)
l_cross_nm
l_*_noise_nm, noise_band_*  "falls into the noise" lengths and the bands used (live.correlations)
l_*_fit_nm                  Gaussian-fit lengths, the statistic the intervals are built on
*_corrected, *_ci90         the film process's l_*_nm and rho_cross_0: bias-corrected, 90 % interval
                            [low, high] (high null beside a low: no upper bound)
correlation_pixels          valid pixels the correlations use
correlation_pixel_fraction  and their fraction of the grid (warnings: below one half)
warnings                    why the correlation figures and the Eq. (2)/(3) figures may mislead
rho_cross_0                 Delta-alpha cross-correlation at zero shift (paper: -0.55)
rho_delta_topo_0            Delta-topography cross-correlation at zero shift (null: no topography)
sigma_rho_ohm               sheet-resistance spread from alpha_std and l_alpha, paper Eq. (2)
predicted_delta_rel_sigma   |delta Delta| / <Delta> from sigma_rho, paper Eq. (3) at <Delta> measured
measured_delta_rel_sigma    delta_std / delta_mean, to compare with the prediction
theory_constants            bias_V, diffusion_m2_s, hbar_omega_D_K used (overridable, paper values)
elapsed_s                   wall time of the analysis (reading + kernels + correlations)
inputs                      file, format, channels, sweep signal, grid, kernel options, version
ground_truth                simulated inputs only: RMS errors vs the definition truth, and the
                            correlation lengths of the true (model) maps
==========================  ======================================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.version import software_version
from stslive.drivers.errors import AnalysisError
from stslive.live.correlations import correlation_report
from stslive.live.kernels import KernelOptions, ReasonCode
from stslive.live.results import ResultsModel
from stslive.live.theory import TheoryConstants, predicted_gap_spread, sheet_resistance_sigma

__all__ = ["map_statistics", "ground_truth_errors", "build_report", "write_report"]


def _finite(value: Any) -> float | None:
    """A float, or None for NaN/inf/None (JSON has no NaN)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def map_statistics(delta_eV: np.ndarray, alpha: np.ndarray, valid: np.ndarray) -> dict[str, float | None]:
    """Mean and standard deviation (ddof=0) of Delta (meV) and alpha over ``valid`` pixels."""
    d = np.asarray(delta_eV, dtype=np.float64)[valid]
    a = np.asarray(alpha, dtype=np.float64)[valid]
    if d.size == 0:
        return {"delta_mean_meV": None, "delta_std_meV": None, "alpha_mean": None, "alpha_std": None}
    return {
        "delta_mean_meV": float(d.mean() * 1e3),
        "delta_std_meV": float(d.std() * 1e3),
        "alpha_mean": float(a.mean()),
        "alpha_std": float(a.std()),
    }


def ground_truth_errors(
    delta_eV: np.ndarray,
    alpha: np.ndarray,
    valid: np.ndarray,
    truth: dict[str, np.ndarray],
    *,
    pixel_size_m: tuple[float, float],
) -> dict[str, Any]:
    """RMS errors vs the definition truth (valid pixels) and the 1/e lengths of the model maps.

    ``truth`` holds the archive's ground truth: ``delta_def`` (eV) and ``alpha_def`` (the paper's
    definitions on the noise-free spectra), ``delta_model`` / ``alpha_model`` (the film's maps).
    """
    out: dict[str, Any] = {"pixels_compared": int(valid.sum())}
    if "delta_def" in truth and valid.any():
        out["delta_rms_error_meV"] = float(np.sqrt(np.mean((delta_eV[valid] - truth["delta_def"][valid]) ** 2)) * 1e3)
    if "alpha_def" in truth and valid.any():
        out["alpha_rms_error"] = float(np.sqrt(np.mean((alpha[valid] - truth["alpha_def"][valid]) ** 2)))
    if "delta_model" in truth and "alpha_model" in truth:
        model = correlation_report(
            truth["delta_model"], truth["alpha_model"], pixel_size_m=pixel_size_m, intervals=False
        )
        out["true_maps"] = {k: model[k] for k in ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")}
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
) -> dict[str, Any]:
    """The report dictionary (JSON-ready: no NaN, only builtins) of an analysed model.

    Parameters
    ----------
    model : ResultsModel
        Analysed maps (:func:`stslive.live.pipeline.analyse_input`).
    pixel_size_m : (dy, dx)
        Pixel size, m.
    inputs : dict
        What was analysed (file, format, channels, sweep signal, ...); options and version are added.
    options, constants
        Kernel options and Eq. (2)/(3) constants used.
    elapsed_s : float
        Wall time so far, s.
    ground_truth : dict, optional
        Simulation ground truth maps (see :func:`ground_truth_errors`).
    """
    maps = model.copy_maps(("delta_eV", "alpha", "valid", "measured", "reason"))
    valid = maps["valid"]
    delta = np.where(valid, maps["delta_eV"], np.nan)
    alpha = np.where(valid, maps["alpha"], np.nan)
    reasons = {
        ReasonCode(int(c)).name: int(n)
        for c, n in zip(*np.unique(maps["reason"][maps["measured"]], return_counts=True), strict=False)
    }
    report: dict[str, Any] = {
        "pixels": int(maps["measured"].sum()),
        "valid_pixels": int(valid.sum()),
        "grid_pixels": int(valid.size),
        "reasons": reasons,
    }
    stats = map_statistics(maps["delta_eV"], maps["alpha"], valid)
    report.update(stats)
    if valid.sum() >= 3:
        topo = None if model.topography is None else model.topography
        report.update(correlation_report(delta, alpha, pixel_size_m=pixel_size_m, topography=topo))
    else:
        for key in (
            "l_delta_nm",
            "l_alpha_nm",
            "l_cross_nm",
            "l_delta_noise_nm",
            "l_alpha_noise_nm",
            "l_cross_noise_nm",
            "rho_cross_0",
            "rho_delta_topo_0",
        ):
            report[key] = None
    l_alpha_nm = report.get("l_alpha_nm")
    sigma_rho = sheet_resistance_sigma(
        stats["alpha_std"] if stats["alpha_std"] is not None else math.nan,
        l_alpha_nm * 1e-9 if l_alpha_nm is not None else math.nan,
        constants=constants,
    )
    mean_gap = stats["delta_mean_meV"]
    report["sigma_rho_ohm"] = sigma_rho
    report["predicted_delta_rel_sigma"] = predicted_gap_spread(
        sigma_rho, mean_gap * 1e-3 if mean_gap is not None else math.nan, constants=constants
    )
    std_gap = stats["delta_std_meV"]
    report["measured_delta_rel_sigma"] = (std_gap / mean_gap) if mean_gap and std_gap is not None else None
    report["theory_constants"] = constants.to_dict()
    report["elapsed_s"] = float(elapsed_s)
    report["inputs"] = {**inputs, "options": dataclasses.asdict(options), "software_version": software_version()}
    if ground_truth:
        report["ground_truth"] = ground_truth_errors(
            maps["delta_eV"], maps["alpha"], valid, ground_truth, pixel_size_m=pixel_size_m
        )
    return _json_safe(report)


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
