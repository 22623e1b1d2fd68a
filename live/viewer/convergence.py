"""How far each correlation figure is from a chosen precision, and when the run will get there.

Pure numbers, no Qt: the convergence panel (:mod:`~stslive.live.viewer.convergence_panel`)
draws what these functions return. From a :class:`~stslive.live.snapshot_history.SnapshotHistory`
(its :meth:`arrays`), :func:`figure_series` gives each figure's estimate and 90 % band against
the pixels measured; :func:`band_width` the band's width (relative to the estimate for the
lengths, absolute for rho_cross(0), which may lie near 0); :func:`forecast_figure` fits the
recent trend ``width = A n^-p`` and says whether the width target is reached, at how many pixels
it will be, or why that cannot be said yet; :func:`forecast_text` turns pixels into time at the
run's measured rate. No number comes from fewer than :data:`MIN_SNAPSHOTS` finite bands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stslive.live.snapshot_history import FIGURES

__all__ = [
    "DEFAULT_TARGET",
    "FORECAST_FIGURES",
    "MIN_SNAPSHOTS",
    "Forecast",
    "Series",
    "Target",
    "Trend",
    "band_width",
    "combine",
    "figure_series",
    "figure_target",
    "fit_width_trend",
    "forecast_figure",
    "forecast_text",
    "hours_text",
    "target_from_stop_rule",
]

#: Figures the screen forecasts (the stop rule's default figures); l_cross is drawn but not forecast.
FORECAST_FIGURES = ("l_delta_nm", "l_alpha_nm", "rho_cross_0")
#: Figures whose band is judged relative to the estimate; rho_cross(0) is a correlation
#: coefficient that may lie near 0, where a relative width means nothing: its width is absolute.
RELATIVE = {"l_delta_nm": True, "l_alpha_nm": True, "l_cross_nm": True, "rho_cross_0": False}
#: Width target without a stop rule: 90 % band 10 % of the estimate (rho_cross(0): 0.10 absolute).
DEFAULT_TARGET = 0.10
#: Fewest snapshots with a finite band from which a trend (two parameters) is fitted.
MIN_SNAPSHOTS = 3
#: The fit uses the snapshots taken after the pixel count was 1/RECENT_SPAN of the latest:
#: the width's trend changes during a run (see :data:`EXPONENT_RANGE`), the recent one predicts.
RECENT_SPAN = 4.0
#: Range of the fitted exponent p of ``width ~ n^-p``. Independent pixels give p = 1/2. A
#: progressive scan's early levels are nearly independent samples of the film (p ~ 1/2); once the
#: pixel spacing falls below the correlation lengths, new pixels repeat what their neighbours
#: said and the width shrinks more slowly (p towards 0); a bootstrap band's noise over a short
#: span of n can give any slope. Below 0.1 the extrapolation runs to absurd pixel counts (the
#: forecast then says "not within this map", which such a trend means anyway); above 1 (faster
#: than a mean of independent samples squared) it is noise or the estimator's start-up and
#: would promise too early an end.
EXPONENT_RANGE = (0.1, 1.0)
#: Smallest ratio of largest to smallest n among the fitted snapshots: a slope over a narrower
#: span (e.g. snapshots every 30 s at a few pixels each) is noise.
MIN_N_RATIO = 1.1


@dataclass(frozen=True)
class Series:
    """One figure against progress, rows sorted by pixels measured (then by time).

    ``estimate`` is the film's corrected figure where the snapshot has one (its 90 % band is
    that figure's), else the plain 1/e value; ``low``/``high`` NaN where there is no band.
    """

    figure: str
    n: np.ndarray
    time: np.ndarray
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    #: rows whose estimate is the corrected figure (else the plain 1/e value)
    corrected: np.ndarray | None = None


@dataclass(frozen=True)
class Target:
    """The width to reach: ``value`` (relative for lengths), where it comes from, and the figures that must reach it."""

    value: float = DEFAULT_TARGET
    source: str = "default"
    figures: tuple[str, ...] = FORECAST_FIGURES


@dataclass(frozen=True)
class Trend:
    """``width = amplitude * n^-exponent`` fitted to ``snapshots`` snapshots (``raw_exponent`` before clipping)."""

    amplitude: float
    exponent: float
    raw_exponent: float
    snapshots: int

    def width_at(self, n: np.ndarray | float) -> np.ndarray | float:
        """The trend's width at ``n`` pixels."""
        return self.amplitude * np.power(n, -self.exponent)

    def pixels_for(self, width: float) -> float:
        """Pixels at which the trend reaches ``width``."""
        return float((self.amplitude / width) ** (1.0 / self.exponent))


@dataclass(frozen=True)
class Forecast:
    """Where one figure's band stands against its target.

    ``state``: ``reached`` (the latest finite band is at most the target), ``due`` (the trend
    says it should be by now; the next snapshot will tell), ``predicted`` (at ``n_target``
    pixels), ``beyond`` (the trend reaches it only past the map's ``n_total`` pixels),
    ``unknown`` (``reason`` says why: too few snapshots with a band, a band not narrowing).
    """

    figure: str
    state: str
    target: float
    width: float = math.nan
    snapshots: int = 0
    n_target: float = math.nan
    trend: Trend | None = None
    reason: str = ""


def figure_series(arrays: Mapping[str, np.ndarray], figure: str) -> Series:
    """The rows of a history's :meth:`~stslive.live.snapshot_history.SnapshotHistory.arrays` for ``figure``."""
    k = np.asarray(arrays.get("n_measured", np.zeros(0))).size

    def column(name: str) -> np.ndarray:
        values = np.asarray(arrays.get(name, np.full(k, np.nan)), dtype=np.float64).reshape(-1)
        return values if values.size == k else np.full(k, np.nan)

    n, t = column("n_measured"), column("time")
    corrected, plain = column(f"{figure}_corrected"), column(figure)
    estimate = np.where(np.isfinite(corrected), corrected, plain)
    order = np.lexsort((t, n))  # non-monotone n (an analyser restarted): drawn in pixel order
    low, high = column(f"{figure}_low")[order], column(f"{figure}_high")[order]
    return Series(figure, n[order], t[order], estimate[order], low, high, np.isfinite(corrected)[order])


def band_width(series: Series) -> np.ndarray:
    """Width of each row's 90 % band: ``(high - low) / |estimate|`` for a length, ``high - low``
    for rho_cross(0); NaN where the band or the estimate is not finite (or the estimate is 0)."""
    width = series.high - series.low
    if RELATIVE.get(series.figure, True):
        with np.errstate(divide="ignore", invalid="ignore"):
            width = width / np.abs(series.estimate)
    ok = np.isfinite(width) & np.isfinite(series.estimate) & (width >= 0)
    return np.where(ok, width, np.nan)


def fit_width_trend(n: np.ndarray, width: np.ndarray) -> Trend | None:
    """Least squares of ``log width`` on ``log n`` over the recent snapshots; None without a trend.

    Uses the rows with finite, positive n and width taken at ``n >= n_max / RECENT_SPAN`` (all
    such rows if that leaves fewer than :data:`MIN_SNAPSHOTS`). None when fewer than
    :data:`MIN_SNAPSHOTS` rows remain or their n span less than :data:`MIN_N_RATIO`. The fitted
    exponent is clipped to :data:`EXPONENT_RANGE` and the amplitude refitted at the clipped one.
    """
    n, width = np.asarray(n, dtype=np.float64), np.asarray(width, dtype=np.float64)
    ok = np.isfinite(n) & np.isfinite(width) & (n > 0) & (width > 0)
    n, width = n[ok], width[ok]
    if n.size < MIN_SNAPSHOTS:
        return None
    recent = n >= n.max() / RECENT_SPAN
    if np.count_nonzero(recent) >= MIN_SNAPSHOTS:
        n, width = n[recent], width[recent]
    if n.max() < MIN_N_RATIO * n.min():
        return None
    x, y = np.log(n), np.log(width)
    slope = float(np.polyfit(x, y, 1)[0])
    exponent = float(np.clip(-slope, *EXPONENT_RANGE))
    amplitude = float(np.exp(np.mean(y + exponent * x)))
    return Trend(amplitude=amplitude, exponent=exponent, raw_exponent=-slope, snapshots=int(n.size))


def forecast_figure(series: Series, target: float, *, n_now: float, n_total: float) -> Forecast:
    """Whether and when ``series``'s band width falls to ``target``.

    Parameters
    ----------
    series
        The figure's rows (:func:`figure_series`).
    target
        Width to reach (relative, or absolute for rho_cross(0): :func:`band_width`).
    n_now
        Pixels measured now (the latest snapshot may be older).
    n_total
        Pixels of the whole map: a trend that needs more is ``beyond``.
    """
    width = band_width(series)
    finite = np.isfinite(width) & np.isfinite(series.n)
    k = int(np.count_nonzero(finite))
    if k == 0:
        return Forecast(series.figure, "unknown", target, reason="no 90 % band yet")
    if not (math.isfinite(target) and target > 0):
        return Forecast(series.figure, "unknown", target, snapshots=k, reason="no target without an estimate")
    latest = float(width[finite][-1])  # the row with the most pixels (rows are in pixel order)
    if latest <= target:
        return Forecast(series.figure, "reached", target, width=latest, snapshots=k)
    if k < MIN_SNAPSHOTS:
        return Forecast(
            series.figure, "unknown", target, width=latest, snapshots=k, reason=f"{k} snapshot{'s' * (k != 1)}"
        )
    trend = fit_width_trend(series.n[finite], width[finite])
    if trend is None:
        return Forecast(
            series.figure, "unknown", target, latest, k, reason=f"{k} snapshots at nearly the same pixel count"
        )
    if trend.raw_exponent <= 0:
        return Forecast(series.figure, "unknown", target, latest, k, trend=trend, reason="band not narrowing")
    n_target = trend.pixels_for(target)
    state = "due" if n_target <= n_now else "beyond" if n_target > n_total else "predicted"
    return Forecast(series.figure, state, target, latest, k, n_target, trend)


def combine(forecasts: Sequence[Forecast]) -> Forecast:
    """All figures together (the stop rule needs every one): the latest of their targets."""
    if not forecasts:
        return Forecast("all", "unknown", math.nan, reason="no figure")
    for state in ("unknown", "beyond"):
        worst = [f for f in forecasts if f.state == state]
        if worst:
            if state == "unknown":
                return Forecast("all", state, math.nan, reason=worst[0].reason)
            return max(worst, key=lambda f: f.n_target)
    if all(f.state == "reached" for f in forecasts):
        return Forecast("all", "reached", math.nan)
    pending = [f for f in forecasts if f.state in ("predicted", "due")]
    return max(pending, key=lambda f: f.n_target)


def hours_text(hours: float) -> str:
    """ "3 h 20 min", "45 min", "2 d 04 h" for a duration in hours."""
    minutes = round(hours * 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    h, m = divmod(minutes, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    d, h = divmod(round(hours), 24)
    return f"{d} d {h:02d} h"


def forecast_text(forecast: Forecast, *, pixels_per_hour: float, n_now: float, n_total: float, ended: bool) -> str:
    """What the screen says of a forecast: "reached", "~ 3 h 20 min (at 410 px/h)", "cannot predict yet (2 snapshots)".

    ``ended``: the run measures no more pixels (a target not reached stays so).
    """
    state = forecast.state
    if state == "reached":
        return "reached"
    if state == "unknown":
        return f"cannot predict yet ({forecast.reason})"
    if ended:
        return "not reached (the run has ended)"
    if state == "due":
        return "about now by the trend (the latest band is still wider)"
    if state == "beyond":
        ratio = forecast.n_target / n_total
        needs = "> 100" if ratio > 100 else f"~ {ratio:.1f}"
        return f"not within this map (the trend needs {needs} × its {n_total:,.0f} pixels)"
    left = max(forecast.n_target - n_now, 0.0)
    if not (math.isfinite(pixels_per_hour) and pixels_per_hour > 0):
        return f"~ {left:,.0f} more pixels (rate unknown)"
    return f"~ {hours_text(left / pixels_per_hour)} (at {pixels_per_hour:,.0f} px/h)"


def target_from_stop_rule(table: Mapping[str, Any] | None) -> Target:
    """The run's stop-rule width and figures when its rule is on (``results`` set), else :data:`DEFAULT_TARGET`.

    The rule's ``figures`` (any of :data:`~stslive.live.snapshot_history.FIGURES`) are the ones
    its verdict waits for; a list the rule could not hold keeps :data:`FORECAST_FIGURES`.
    """
    if not isinstance(table, Mapping) or not table.get("results"):
        return Target()
    value = table.get("max_relative_width")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        return Target()
    named = table.get("figures")
    figures = FORECAST_FIGURES
    if isinstance(named, list | tuple) and named and all(isinstance(f, str) and f in FIGURES for f in named):
        figures = tuple(dict.fromkeys(named))
    return Target(float(value), "stop rule", figures)


def figure_target(figure: str, target: Target, estimate: float) -> float:
    """The width ``figure`` must reach.

    The stop rule judges every figure relative to its estimate; rho_cross(0)'s width is drawn
    absolute, so the rule's target becomes ``value * |estimate|`` there (NaN without an
    estimate). The default target is absolute for rho_cross(0).
    """
    if RELATIVE.get(figure, True) or target.source != "stop rule":
        return target.value
    return target.value * abs(estimate) if math.isfinite(estimate) else math.nan
