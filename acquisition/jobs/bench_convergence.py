"""How fast the correlation figures converge while a map fills, in raster and in progressive order.

For each film seed (the simulated film at the paper's geometry by default: 300 x 250 pixels of
1 nm, its lengths) and each scan order, the maps are cut to the first 1, 2, 5, 10, 20, 50 and
100 % of the pixels in that order and analysed as the live analyser does mid-run
(:func:`stslive.live.correlations.correlation_report`: unmeasured pixels are gaps). The maps come
straight from the film's generator (no spectra: the question is the sampling, not the kernels),
and each estimate is judged against the film process's true value
(:func:`stslive.mocks.film_maps.true_correlation_figures`). The command line is
``stslive bench convergence`` (:mod:`stslive.acquisition.cli.bench_convergence`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.plans import progressive_order
from stslive.live.correlations import correlation_report
from stslive.live.offline.figures import new_figure, save_figure
from stslive.mocks.film import make_film
from stslive.mocks.film_maps import true_correlation_figures
from stslive.mocks.film_params import FilmParams

__all__ = ["FRACTIONS", "GOALS", "ORDERS", "Estimate", "Goal", "raster_order", "run_benchmark", "summary_rows"]

#: Fractions of the pixels after which the figures are taken.
FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50, 1.00)
#: The scan orders compared.
ORDERS = ("raster", "progressive")
#: The figures followed: report key, label.
FIGURES = (
    ("l_delta_nm", "l_Delta (nm)"),
    ("l_alpha_nm", "l_alpha (nm)"),
    ("l_cross_nm", "l_cross (nm)"),
    ("rho_cross_0", "rho_cross(0)"),
)


@dataclass(frozen=True)
class Goal:
    """A goal at one fraction of a progressive scan: relative error of the lengths, absolute of rho_cross(0)."""

    fraction: float
    length_rel: float
    rho_abs: float


#: The goals: within 15 % and 0.07 after 5 % of the pixels, 10 % and 0.05 after 20 %, in 75 % of the seeds.
GOALS = (Goal(0.05, 0.15, 0.07), Goal(0.20, 0.10, 0.05))
#: Fraction of the seeds that must meet a goal, and that each interval must cover.
SEED_QUORUM = 0.75


@dataclass(frozen=True)
class Estimate:
    """One seed, order and fraction: every figure's map value, corrected value and interval, and the truth."""

    seed: int
    order: str
    fraction: float
    pixels: int
    seconds: float
    truth: dict[str, float]
    raw: dict[str, float]
    corrected: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def error(self, key: str) -> float:
        """Corrected estimate minus truth (relative for a length, absolute for rho_cross(0)); NaN if none."""
        value, truth = self.corrected[key], self.truth[key]
        return value - truth if key == "rho_cross_0" else value / truth - 1.0

    def covers(self, key: str) -> bool:
        """Whether the 90 % interval holds the truth (no interval: no)."""
        return bool(self.low[key] <= self.truth[key] <= self.high[key])


def raster_order(nx: int, ny: int) -> np.ndarray:
    """Raster pixels ``(iy, ix)``, rows left to right (as ``GridGeometry.visit_order('raster')``)."""
    iy, ix = np.divmod(np.arange(ny * nx, dtype=np.int64), nx)
    return np.stack([iy, ix], axis=-1)


def _number(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _estimate(
    seed: int, order: str, fraction: float, report: dict[str, Any], truth: dict[str, float], seconds: float
) -> Estimate:
    raw, corrected, low, high = {}, {}, {}, {}
    for key, _ in FIGURES:
        raw[key] = _number(report[key], math.nan)
        corrected[key] = _number(report[f"{key}_corrected"], math.nan)
        interval = report[f"{key}_ci90"] or (None, None)
        low[key] = _number(interval[0], math.nan)
        high[key] = _number(interval[1], math.inf)  # None beside a low bound: no upper bound
    return Estimate(
        seed,
        order,
        fraction,
        int(report["correlation_pixels"]),
        seconds,
        truth,
        raw,
        corrected,
        low,
        high,
        list(report["warnings"]),
    )


def run_benchmark(
    *,
    seeds: Sequence[int] = tuple(range(12)),
    fractions: Sequence[float] = FRACTIONS,
    ny: int = 250,
    nx: int = 300,
    pixel_m: float = 1e-9,
    replicates: int = 60,
    out: Callable[[str], None] = print,
) -> list[Estimate]:
    """Estimates of every seed, order and fraction (module docstring); one progress line per seed."""
    orders = {"raster": raster_order(nx, ny), "progressive": progressive_order(nx, ny)}
    found: list[Estimate] = []
    for seed in seeds:
        t0 = time.perf_counter()
        params = FilmParams(ny=ny, nx=nx, pixel_m=pixel_m, seed=seed)
        film = make_film(params)
        truth = true_correlation_figures(params)
        for name, order in orders.items():
            for fraction in fractions:
                n = max(3, round(fraction * ny * nx))
                measured = np.zeros((ny, nx), dtype=bool)
                measured[order[:n, 0], order[:n, 1]] = True
                start = time.perf_counter()
                report = correlation_report(
                    np.where(measured, film.delta_eV, np.nan),
                    np.where(measured, film.alpha, np.nan),
                    pixel_size_m=pixel_m,
                    replicates=replicates,
                    seed=seed,
                )
                found.append(_estimate(seed, name, fraction, report, truth, time.perf_counter() - start))
        out(f"seed {seed}: {len(orders) * len(fractions)} maps in {time.perf_counter() - t0:.0f} s")
    return found


def summary_rows(estimates: Sequence[Estimate]) -> list[dict[str, Any]]:
    """Per order and fraction: for each figure the median corrected estimate, the median interval,
    the median |error| and the fraction of seeds whose interval covers the truth."""
    rows = []
    for order in ORDERS:
        for fraction in sorted({e.fraction for e in estimates}):
            group = [e for e in estimates if e.order == order and e.fraction == fraction]
            if not group:
                continue
            row: dict[str, Any] = {"order": order, "fraction": fraction, "seeds": len(group)}
            for key, _ in FIGURES:
                row[f"{key}_median"] = float(np.nanmedian([e.corrected[key] for e in group]))
                row[f"{key}_low"] = float(np.nanmedian([e.low[key] for e in group]))
                row[f"{key}_high"] = float(np.median([e.high[key] for e in group]))
                row[f"{key}_abs_error"] = float(np.nanmedian([abs(e.error(key)) for e in group]))
                row[f"{key}_coverage"] = float(np.mean([e.covers(key) for e in group]))
            row["seconds"] = float(np.mean([e.seconds for e in group]))
            rows.append(row)
    return rows


def goal_lines(estimates: Sequence[Estimate]) -> list[tuple[str, bool]]:
    """The goals of a progressive scan, each as (sentence with the measured share of seeds, met)."""
    lines = []
    progressive = [e for e in estimates if e.order == "progressive"]
    for goal in GOALS:
        group = [e for e in progressive if math.isclose(e.fraction, goal.fraction)]
        if not group:
            continue
        for key, label in FIGURES:
            if key == "l_cross_nm":
                continue  # the goals name l_Delta, l_alpha and rho_cross(0)
            limit = goal.rho_abs if key == "rho_cross_0" else goal.length_rel
            share = float(np.mean([abs(e.error(key)) <= limit for e in group]))
            unit = "" if key == "rho_cross_0" else " relative"
            lines.append(
                (
                    f"progressive, {100 * goal.fraction:g} % of the pixels: {label} within {limit:g}{unit} "
                    f"of the truth in {100 * share:.0f} % of {len(group)} seeds (goal >= {100 * SEED_QUORUM:.0f} %)",
                    share >= SEED_QUORUM,
                )
            )
    for fraction in sorted({e.fraction for e in progressive}):
        group = [e for e in progressive if e.fraction == fraction]
        worst = min(float(np.mean([e.covers(key) for e in group])) for key, _ in FIGURES)
        lines.append(
            (
                f"progressive, {100 * fraction:g} % of the pixels: every 90 % interval covers the truth in >= "
                f"{100 * worst:.0f} % of {len(group)} seeds (goal >= {100 * SEED_QUORUM:.0f} %)",
                worst >= SEED_QUORUM,
            )
        )
    return lines


def format_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary as fixed-width text: per figure, median estimate [median interval] and coverage."""
    head = f"{'order':<11} {'pixels':>6}"
    for _, label in FIGURES:
        head += f" | {label:^31}"
    lines = [head, f"{'':<11} {'':>6}" + " | median [90 % interval] cover |err|" * len(FIGURES)]
    for row in rows:
        text = f"{row['order']:<11} {100 * row['fraction']:5g}%"
        for key, _ in FIGURES:
            digits = 3 if key == "rho_cross_0" else 1
            err = row[f"{key}_abs_error"]
            err_text = f"{err:.3f}" if key == "rho_cross_0" else f"{100 * err:.0f}%"
            high = row[f"{key}_high"]
            high_text = "inf" if not math.isfinite(high) else f"{high:.{digits}f}"
            text += (
                f" | {row[f'{key}_median']:6.{digits}f} [{row[f'{key}_low']:.{digits}f}, {high_text}]"
                f" {100 * row[f'{key}_coverage']:3.0f}% {err_text:>5}"
            )
        lines.append(text)
    return lines


def convergence_figure(path: str | Path, estimates: Sequence[Estimate]) -> Path:
    """One row per figure, raster (left) beside progressive (right): each seed's corrected estimate,
    their median, the median 90 % interval (shaded; to the edge where unbounded) and the truth."""
    fig = new_figure((10.0, 11.0))
    axes = fig.subplots(len(FIGURES), len(ORDERS), sharex=True, sharey="row")
    colours = {"raster": "tab:orange", "progressive": "tab:blue"}
    for row, (key, label) in zip(axes, FIGURES, strict=True):
        truth = estimates[0].truth[key] if estimates else math.nan
        for ax, order in zip(row, ORDERS, strict=True):
            group = [e for e in estimates if e.order == order]
            fractions = sorted({e.fraction for e in group})
            at = [[e for e in group if e.fraction == f] for f in fractions]
            x = 100 * np.array(fractions)
            if group:
                low = [np.nanmedian([e.low[key] for e in g]) for g in at]
                high = [np.median([e.high[key] for e in g]) for g in at]
                edge = 1.0 if key == "rho_cross_0" else 1e6  # an unbounded interval runs off the axes
                ax.fill_between(
                    x, low, np.minimum(high, edge), color=colours[order], alpha=0.2, label="median 90 % interval"
                )
                for g, xf in zip(at, x, strict=True):
                    ax.plot([xf] * len(g), [e.corrected[key] for e in g], ".", color=colours[order], alpha=0.4, ms=4)
                median = [np.nanmedian([e.corrected[key] for e in g]) for g in at]
                ax.plot(x, median, "o-", color=colours[order], label="median estimate (dots: seeds)")
            ax.axhline(truth, color="k", lw=1.0, ls="--", label="the film's true value")
            ax.set_xscale("log")
            ax.set_title(f"{order} order", fontsize=9)
        row[0].set_ylabel(label)
        if math.isfinite(truth):
            if key == "rho_cross_0":
                row[0].set_ylim(max(truth - 0.25, -1.02), min(truth + 0.25, 1.02))
            else:
                row[0].set_ylim(0.4 * truth, 1.6 * truth)
    for ax in axes[-1]:
        ax.set_xlabel("pixels measured (%)")
    axes[0][1].legend(fontsize=7, loc="upper right")
    seeds = len({e.seed for e in estimates})
    fig.suptitle(f"Correlation figures while the map fills ({seeds} film seeds)")
    return save_figure(fig, path)
