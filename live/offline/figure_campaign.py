"""The campaign figure: Delta, alpha and the correlation lengths of several runs against T, B or the run.

Runs are drawn as markers. A line joins runs only inside a series, the runs that share every
other condition of the campaign (e.g. the same field in a figure against temperature; the
conditions are the table's, :data:`stslive.live.offline.campaign.CONDITIONS`), so unrelated
runs are never joined; against the run
index (no condition varies) nothing is joined. Error bars: the map's standard deviation for
Delta and alpha, the 90 % interval of a length when the row has ``<key>_ci90``. Runs without a
value of the x condition are named under the title instead of being placed anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stslive.drivers.errors import AnalysisError
from stslive.live.offline.figures import new_figure

__all__ = ["draw_campaign", "series_of"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
_LENGTHS = (("l_delta_nm", "$l_\\Delta$", "tab:blue"), ("l_alpha_nm", "$l_\\alpha$", "tab:orange"),
            ("l_cross_nm", "$l_{cross}$", "tab:green"))  # fmt: skip


def _number(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _interval(row: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    value = row.get(f"{key}_ci90")
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = (_number({"v": v}, "v") for v in value)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None


def series_of(
    rows: Sequence[Mapping[str, Any]], x_key: str | None, conditions: Mapping[str, str]
) -> list[tuple[str, list[int]]]:
    """Runs grouped into series: (legend label, row indices), a series sharing every condition but ``x_key``.

    ``conditions`` maps the table's condition columns to their axis labels ("temperature (K)").
    Against the run index (``x_key`` None) every run is its own series: none is joined.
    """
    if x_key is None:
        return [(str(row.get("run", k)), [k]) for k, row in enumerate(rows)]
    others = [k for k in conditions if k != x_key]
    groups: dict[tuple[float | None, ...], list[int]] = {}
    for k, row in enumerate(rows):
        key = tuple(None if math.isnan(v := _number(row, o)) else round(v, 9) for o in others)
        groups.setdefault(key, []).append(k)
    out = []
    for key, members in groups.items():
        parts = []
        for column, value in zip(others, key, strict=True):
            name, _, unit = conditions[column].partition(" (")
            parts.append(f"{name} unknown" if value is None else f"{name} = {value:g} {unit.rstrip(')')}".strip())
        out.append((", ".join(parts) or "runs", members))
    return out


def _draw_series(ax: Axes, x: np.ndarray, y: np.ndarray, err: Any, *, joined: bool, **style: Any) -> None:
    """Markers (with error bars) of one series; a line only when ``joined``."""
    order = np.argsort(x, kind="stable")
    err = None if err is None else np.asarray(err)[..., order]
    ax.errorbar(x[order], y[order], yerr=err, ls="-" if joined else "none", capsize=3, ms=6, **style)


def _draw_means(
    axes: Sequence[Axes], rows: Sequence[Mapping[str, Any]], idx: np.ndarray, x: np.ndarray, *,
    joined: bool, named: bool, marker: str, colour: str,
) -> None:  # fmt: skip
    """Delta and alpha, mean with the map's std as error bar, of the runs ``idx``; run names beside Delta."""
    for ax, mean, std in zip(axes, ("delta_mean_meV", "alpha_mean"), ("delta_std_meV", "alpha_std"), strict=True):
        y = np.array([_number(rows[k], mean) for k in idx])
        spread = np.nan_to_num(np.array([_number(rows[k], std) for k in idx]))
        _draw_series(ax, x[idx], y, spread, joined=joined, marker=marker, color=colour)
    if named:
        y = np.array([_number(rows[k], "delta_mean_meV") for k in idx])
        for k, xv, yv in zip(idx, x[idx], y, strict=True):
            axes[0].annotate(str(rows[k].get("run", k)), (xv, yv), xytext=(5, 4), textcoords="offset points",
                             fontsize=7, color="0.3")  # fmt: skip


def _draw_lengths(
    ax: Axes, rows: Sequence[Mapping[str, Any]], idx: np.ndarray, x: np.ndarray, *,
    dodge: float, joined: bool, marker: str,
) -> None:  # fmt: skip
    """The three 1/e lengths of the runs ``idx``, side by side, with their 90 % intervals when known."""
    for shift, (key, _, colour) in zip((-dodge, 0.0, dodge), _LENGTHS, strict=True):
        y = np.array([_number(rows[k], key) for k in idx])
        bounds = [_interval(rows[k], key) for k in idx]
        bars = None
        if any(b is not None for b in bounds):
            bars = np.array([[0.0, 0.0] if b is None else [max(v - b[0], 0), max(b[1] - v, 0)]
                             for v, b in zip(y, bounds, strict=True)]).T  # fmt: skip
        _draw_series(ax, x[idx] + shift, y, bars, joined=joined, marker=marker, color=colour)


def draw_campaign(rows: Sequence[Mapping[str, Any]], *, x_key: str | None, conditions: Mapping[str, str]) -> Figure:
    """Delta, alpha (mean +- map std) and l_Delta, l_alpha, l_cross against ``x_key`` (None: run index).

    ``conditions``: the table's condition columns and their axis labels (see :func:`series_of`).
    """
    if x_key is None:
        x, label = np.arange(len(rows), dtype=np.float64), "run"
    elif x_key in conditions:
        x, label = np.array([_number(r, x_key) for r in rows]), conditions[x_key]
    else:
        raise AnalysisError(f"campaign figure against {x_key!r}: choose one of {list(conditions)} or None")
    fig = new_figure((15, 4.6))
    axes = fig.subplots(1, 3)
    series = series_of(rows, x_key, conditions)
    handles = []
    for s, (name, members) in enumerate(series):
        idx = np.array([k for k in members if math.isfinite(x[k])], dtype=int)
        if idx.size == 0:
            continue
        joined = x_key is not None and idx.size >= 2 and np.unique(x[idx]).size >= 2
        marker, colour = _MARKERS[s % len(_MARKERS)], _SERIES_COLOURS[s % len(_SERIES_COLOURS)]
        if x_key is None:  # every run is its own series: one style, the axis names them
            marker, colour = "o", _SERIES_COLOURS[0]
        _draw_means(axes[:2], rows, idx, x, joined=joined, named=x_key is not None, marker=marker, colour=colour)
        finite_x = x[np.isfinite(x)]
        dodge = 0.012 * (np.ptp(finite_x) or 1.0) if x_key is not None else 0.1  # the three lengths side by side
        _draw_lengths(axes[2], rows, idx, x, dodge=dodge, joined=joined, marker=marker)
        if x_key is not None:
            handles.append(Line2D([], [], color=colour, marker=marker, ls="-" if joined else "none", label=name))
    axes[0].set_ylabel("$\\Delta$ (meV), mean $\\pm$ map std")
    axes[1].set_ylabel("$\\alpha$, mean $\\pm$ map std")
    axes[2].set_ylabel("1/e correlation length (nm)")
    axes[2].legend(handles=[Line2D([], [], color=c, marker="o", ls="none", label=n) for _, n, c in _LENGTHS],
                   fontsize=8, loc="best")  # fmt: skip
    for ax in axes:
        ax.set_xlabel(label)
        if x_key is None:
            ax.set_xticks(x, [str(r.get("run", k)) for k, r in enumerate(rows)], rotation=45, ha="right")
    if handles:
        axes[0].legend(handles=handles, fontsize=8, loc="best", title="series (lines join a series)")
    missing = [str(r.get("run")) for k, r in enumerate(rows) if not math.isfinite(x[k])]
    title = f"Campaign of {len(rows)} runs against {label}"
    if missing:
        title += f"\nnot placed (no {label.split(' (')[0]} recorded): " + ", ".join(missing)
    fig.suptitle(title, fontsize=11)
    return fig
