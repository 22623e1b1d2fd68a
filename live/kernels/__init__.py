"""Per-spectrum analysis kernels: dI/dV, the gap Delta and the Altshuler-Aronov exponent alpha.

Batch first: every function takes arrays shaped (..., points) with the bias on the last axis and
returns arrays shaped (...); one spectrum is the batch call with one row. A quantity that cannot
be extracted is NaN and a :class:`ReasonCode` says why, never a silent 0; Delta and alpha each
carry their own validity, reason and standard error. The physics and the equations are in
docs/physics.md.

Modules: ``options`` (options, reason codes, result records), ``scales`` (the physical scales
and the few fixed counts), ``channels`` (which channels), ``sweep`` (bias order and conductance
sign), ``noise`` (noise measured on each spectrum, smoothing from it), ``derivative`` (running
means, dI/dV), ``peaks`` (search geometry and coarse peaks), ``templates`` (peak templates and
their fit), ``gap``, ``joint`` (the joint and Dynes fit of both peaks), ``combine`` (Delta
from two channels), ``powerlaw``, ``widths`` (a map's
calibration), ``engine`` (:func:`analyse_spectra`), ``buffers`` (per-thread work arrays),
``stages`` (timing).
"""

from stslive.live.kernels.channels import ChannelPick, check_sweep_is_bias, pick_channels
from stslive.live.kernels.derivative import derivative
from stslive.live.kernels.engine import analyse_spectra
from stslive.live.kernels.gap import extract_gap
from stslive.live.kernels.noise import measure_noise
from stslive.live.kernels.options import (
    DEFAULT_TEMPERATURE_K,
    GAP_SOURCES,
    GapResult,
    KernelOptions,
    PowerLawResult,
    ReasonCode,
    SpectrumAnalysis,
)
from stslive.live.kernels.peaks import gap_search_covered
from stslive.live.kernels.powerlaw import Smoothing, fit_power_law
from stslive.live.kernels.sweep import conductance_sign, prepare_sweep
from stslive.live.kernels.widths import calibrate, estimate_dynes_width

__all__ = [
    "ReasonCode",
    "KernelOptions",
    "DEFAULT_TEMPERATURE_K",
    "GAP_SOURCES",
    "GapResult",
    "PowerLawResult",
    "SpectrumAnalysis",
    "ChannelPick",
    "Smoothing",
    "prepare_sweep",
    "conductance_sign",
    "pick_channels",
    "check_sweep_is_bias",
    "measure_noise",
    "derivative",
    "extract_gap",
    "fit_power_law",
    "analyse_spectra",
    "calibrate",
    "estimate_dynes_width",
    "gap_search_covered",
]
