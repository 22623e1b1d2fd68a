"""The convergence forecast (pure numbers): synthetic histories whose answer is known by construction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from stslive.live.snapshot_history import SnapshotHistory
from stslive.live.viewer.convergence import (
    DEFAULT_TARGET,
    EXPONENT_RANGE,
    FORECAST_FIGURES,
    Forecast,
    Target,
    combine,
    figure_series,
    figure_target,
    fit_width_trend,
    forecast_figure,
    forecast_text,
    target_from_stop_rule,
)
from stslive.live.viewer.scan_state import stop_rule_from_archive


def history(
    n: list[float], *, figure: str = "l_delta_nm", estimate: float = 10.0, width=None, absolute: bool = False
) -> dict[str, np.ndarray]:
    """A history whose ``figure`` band is ``width(n)`` wide (relative unless ``absolute``) about ``estimate``."""
    h = SnapshotHistory()
    for i, ni in enumerate(n):
        w = width(ni) if width is not None else math.nan
        half = w / 2 * (1.0 if absolute else abs(estimate))
        snap = SimpleNamespace(
            time=1000.0 + i,
            n_pixels=int(ni),
            **{figure: estimate, f"{figure}_ci90": (estimate - half, estimate + half)},
        )
        h.append(snap, n_measured=int(ni))
    return h.arrays()


def forecast(arrays, figure="l_delta_nm", *, target=0.1, n_now=None, n_total=1e6) -> Forecast:
    series = figure_series(arrays, figure)
    return forecast_figure(series, target, n_now=n_now if n_now is not None else float(series.n.max()), n_total=n_total)


def test_width_two_over_root_n_reaches_a_tenth_at_400_pixels() -> None:
    f = forecast(history([25, 50, 100, 200], width=lambda n: 2 * n**-0.5))
    assert f.state == "predicted" and f.snapshots == 4
    assert f.trend is not None and f.trend.exponent == pytest.approx(0.5)
    assert f.n_target == pytest.approx(400.0)
    assert f.width == pytest.approx(2 / math.sqrt(200))


def test_rho_cross_width_is_absolute() -> None:
    # 0.4 n^-1/2 absolute around -0.55 reaches 0.1 at n = 16 (relative it would need 0.055: n = 53)
    arrays = history([2, 4, 8], figure="rho_cross_0", estimate=-0.55, width=lambda n: 0.4 * n**-0.5, absolute=True)
    f = forecast(arrays, "rho_cross_0")
    assert f.n_target == pytest.approx(16.0)


def test_reached_due_and_beyond() -> None:
    arrays = history([100, 400, 1600], width=lambda n: 2 * n**-0.5)  # 0.05 at 1600
    assert forecast(arrays).state == "reached"
    arrays = history([25, 50, 100], width=lambda n: 2 * n**-0.5)
    assert forecast(arrays, n_now=450).state == "due"  # pixels measured since the last snapshot
    assert forecast(arrays, n_total=300).state == "beyond"


def test_never_a_number_from_fewer_than_three_bands() -> None:
    arrays = history([25, 50], width=lambda n: 2 * n**-0.5)
    f = forecast(arrays)
    assert (f.state, f.reason) == ("unknown", "2 snapshots")
    assert (
        forecast_text(f, pixels_per_hour=400, n_now=50, n_total=1e4, ended=False) == "cannot predict yet (2 snapshots)"
    )
    # rows without a band (NaN) do not count, whatever their number
    arrays = history([10, 20, 40, 80, 160], width=lambda n: 2 * n**-0.5 if n > 60 else math.nan)
    assert forecast(arrays).reason == "2 snapshots"
    assert forecast(history([10, 20, 30])).reason == "no 90 % band yet"
    one = forecast(history([30], width=lambda n: 1.0))
    assert one.state == "unknown" and one.reason == "1 snapshot"
    # three bands at the same pixel count: no slope to extrapolate
    assert "same pixel count" in forecast(history([50, 50, 50], width=lambda n: 0.3)).reason


def test_non_monotone_pixel_counts_give_the_same_forecast() -> None:
    ordered = forecast(history([25, 50, 100, 200], width=lambda n: 2 * n**-0.5))
    shuffled = forecast(history([100, 25, 200, 50], width=lambda n: 2 * n**-0.5))
    assert shuffled.n_target == pytest.approx(ordered.n_target)
    assert shuffled.width == pytest.approx(ordered.width)  # the row with the most pixels is the latest


def test_exponent_is_clipped_and_a_growing_band_is_no_forecast() -> None:
    steep = forecast(history([10, 20, 40], width=lambda n: 500 * n**-2.0))
    assert steep.trend is not None and steep.trend.raw_exponent == pytest.approx(2.0)
    assert steep.trend.exponent == EXPONENT_RANGE[1]
    # at the clipped exponent, through the points: later than the raw slope would say (n = 71)
    assert steep.n_target > 71
    growing = forecast(history([10, 20, 40], width=lambda n: 0.01 * n))
    assert (growing.state, growing.reason) == ("unknown", "band not narrowing")


def test_the_recent_trend_predicts() -> None:
    # n^-1/2 up to 1000 pixels, then n^-0.2 (pixels closer than the correlation length): the fit
    # over the recent snapshots (n >= n_max / 4) follows the slower trend
    def width(n: float) -> float:
        return 2 * n**-0.5 if n <= 1000 else 2 * 1000**-0.5 * (n / 1000) ** -0.2

    n = np.array([10, 30, 100, 300, 1000, 2000, 4000, 8000.0])
    w = np.array([width(v) for v in n])
    trend = fit_width_trend(n, w)
    assert trend is not None and trend.exponent == pytest.approx(0.2)


def test_time_at_the_measured_rate() -> None:
    f = forecast(history([25, 50, 100], width=lambda n: 2 * n**-0.5))
    assert forecast_text(f, pixels_per_hour=150.0, n_now=100, n_total=1e4, ended=False) == "~ 2 h 00 min (at 150 px/h)"
    assert (
        forecast_text(f, pixels_per_hour=math.nan, n_now=100, n_total=1e4, ended=False)
        == "~ 300 more pixels (rate unknown)"
    )
    assert (
        forecast_text(f, pixels_per_hour=150.0, n_now=100, n_total=1e4, ended=True) == "not reached (the run has ended)"
    )
    beyond = forecast(history([25, 50, 100], width=lambda n: 2 * n**-0.5), n_total=200)
    text = forecast_text(beyond, pixels_per_hour=150.0, n_now=100, n_total=200, ended=False)
    assert text == "not within this map (the trend needs ~ 2.0 × its 200 pixels)"


def test_all_figures_together() -> None:
    a = Forecast("a", "predicted", 0.1, n_target=400.0)
    b = Forecast("b", "predicted", 0.1, n_target=900.0)
    done = Forecast("c", "reached", 0.1)
    assert combine([a, b, done]).n_target == 900.0
    assert combine([done, done]).state == "reached"
    assert combine([a, Forecast("d", "unknown", 0.1, reason="2 snapshots")]).reason == "2 snapshots"


def test_target_from_the_stop_rule_or_the_default() -> None:
    assert target_from_stop_rule(None) == Target(DEFAULT_TARGET, "default")
    assert target_from_stop_rule({"results": "", "max_relative_width": 0.05}) == Target()  # the rule is off
    rule = target_from_stop_rule({"results": "tcp://127.0.0.1:5557", "max_relative_width": 0.05})
    assert rule == Target(0.05, "stop rule")
    assert figure_target("l_alpha_nm", rule, 12.0) == 0.05
    # the rule judges rho_cross(0) relative to its estimate; the screen draws its width absolute
    assert figure_target("rho_cross_0", rule, -0.55) == pytest.approx(0.0275)
    assert figure_target("rho_cross_0", Target(), -0.55) == DEFAULT_TARGET


def test_the_stop_rules_figures_are_the_ones_forecast_together() -> None:
    on = {"results": "tcp://127.0.0.1:5557", "max_relative_width": 0.05}
    assert target_from_stop_rule(on).figures == FORECAST_FIGURES  # the rule's own default
    assert target_from_stop_rule({**on, "figures": ["l_cross_nm", "l_delta_nm", "l_cross_nm"]}).figures == (
        "l_cross_nm",
        "l_delta_nm",
    )
    for odd in ([], ["l_gap_nm"], "l_delta_nm", [3]):  # what a rule cannot hold: the default figures
        assert target_from_stop_rule({**on, "figures": odd}).figures == FORECAST_FIGURES, odd
    assert target_from_stop_rule({"results": "", "figures": ["l_delta_nm"]}).figures == FORECAST_FIGURES


def test_the_corrected_figure_is_the_estimate_of_the_band() -> None:
    h = SnapshotHistory()
    h.append(
        SimpleNamespace(time=1.0, l_delta_nm=8.0, l_delta_nm_corrected=10.0, l_delta_nm_ci90=(9.0, 11.0)), n_measured=50
    )
    series = figure_series(h.arrays(), "l_delta_nm")
    assert series.estimate.tolist() == [10.0]


def test_stop_rule_from_the_archive_records() -> None:
    start = {"metadata": {"config": {"stop": {"results": "tcp://a:1", "max_relative_width": 0.2}}}}
    assert stop_rule_from_archive({"start": start}, [])["max_relative_width"] == 0.2
    log = [{"time": 5.0, "event": "stop_rule_set", "results": "tcp://a:1", "max_relative_width": 0.08}]
    assert stop_rule_from_archive({"start": start}, log) == {"results": "tcp://a:1", "max_relative_width": 0.08}
    assert stop_rule_from_archive({"start": {"metadata": {}}}, []) is None
