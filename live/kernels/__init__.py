"""Per-spectrum analysis kernels: dI/dV, the gap Delta and the Altshuler-Aronov exponent alpha.

Batch first: every function takes arrays shaped (..., points) with the bias on the last axis and
returns arrays shaped (...); one spectrum is the batch call with one row. A quantity that cannot
be extracted is NaN and a :class:`ReasonCode` says why, never a silent 0. The physics and the
equations are in docs/physics.md.

Modules: ``options`` (options, reason codes, result records), ``channels`` (which channels),
``sweep`` (bias order and conductance sign), ``derivative`` (running means, dI/dV), ``peaks``
(search geometry and coarse peaks), ``templates`` (peak templates and their fit), ``gap``,
``powerlaw``, ``widths`` (the templates' Dynes width), ``engine`` (:func:`analyse_spectra`),
``buffers`` (per-thread work arrays), ``samples`` (the fixed sample counts), ``stages`` (timing).
"""

from stslive.live.kernels.channels import ChannelPick, check_sweep_is_bias, pick_channels
from stslive.live.kernels.derivative import derivative
from stslive.live.kernels.engine import analyse_spectra
from stslive.live.kernels.gap import extract_gap
from stslive.live.kernels.options import GapResult, KernelOptions, PowerLawResult, ReasonCode, SpectrumAnalysis
from stslive.live.kernels.peaks import gap_search_covered
from stslive.live.kernels.powerlaw import fit_power_law
from stslive.live.kernels.sweep import conductance_sign, prepare_sweep
from stslive.live.kernels.widths import estimate_dynes_width

__all__ = [
    "ReasonCode",
    "KernelOptions",
    "GapResult",
    "PowerLawResult",
    "SpectrumAnalysis",
    "ChannelPick",
    "prepare_sweep",
    "conductance_sign",
    "pick_channels",
    "check_sweep_is_bias",
    "derivative",
    "extract_gap",
    "fit_power_law",
    "analyse_spectra",
    "estimate_dynes_width",
    "gap_search_covered",
]
