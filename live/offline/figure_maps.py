"""Map-level figures of an analysed run: the maps, their histograms, Delta against alpha, the flags.

* :func:`maps_figure`: Delta (meV) and alpha maps (alpha's colour scale reversed, as the
  paper's Fig. 2), plus the topography when there is one, in the scan frame (nm);
* :func:`histograms_figure`: histograms of the valid values with mean, std and N;
* :func:`scatter_figure`: Delta against alpha per pixel (a density when there are many), with
  the Pearson coefficient, which is rho_cross(0) of the correlation analysis;
* :func:`flags_figure`: per pixel, which quality flag it carries and why the kernels refused it.

A quantity with no valid pixel gets a panel that says so (:func:`~stslive.live.offline.figures.say_empty`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from stslive.live.flag_kinds import FLAG_LABELS, FlagKind
from stslive.live.kernels import ReasonCode
from stslive.live.offline.figures import (
    RunMaps,
    cell_corners_nm,
    draw_map,
    legend_below,
    map_figure_size,
    mark_unmeasured,
    marked_pixel_handles,
    new_figure,
    say_empty,
    set_title,
)

__all__ = ["maps_figure", "histograms_figure", "scatter_figure", "flags_figure", "no_valid_message", "reason_name"]

#: Above this many points the Delta-alpha scatter becomes a 2D density (points would hide each other).
SCATTER_DENSITY_FROM = 2000
#: Colours of the flag categories, in order of first use (matplotlib's tab10 and tab20 light shades).
FLAG_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
)
#: Colours of the kernel reasons (matplotlib's Dark2), distinct from the flags' beside them.
REASON_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
#: Flag combinations named in the flag map at the most (the rest share one category).
MAX_FLAG_CATEGORIES = 10
#: Colour of the pixels with no flag (and the "OK" reason): pale, so the flagged ones stand out.
CLEAN_COLOUR = "#e8f0e8"
_QUANTITY_SYMBOL = {"delta": "$\\Delta$", "alpha": "$\\alpha$", "both": "$\\Delta$ and $\\alpha$"}


def no_valid_message(maps: RunMaps, quantity: str) -> str:
    """What an empty panel says: "no valid <quantity>: 0 of N measured pixels ...", with the main reasons."""
    n_measured = int(maps.measured.sum())
    if n_measured == 0:
        return "no valid pixel: nothing was measured"
    text = f"no valid pixel for {_QUANTITY_SYMBOL[quantity]}:\n0 of {n_measured} measured pixels"
    reasons = np.asarray(maps.maps["reason"])[maps.measured]
    codes, counts = np.unique(reasons, return_counts=True)
    main = sorted(zip(counts.tolist(), codes.tolist(), strict=True), reverse=True)[:3]
    if main:
        text += "\nkernel reasons: " + ", ".join(f"{reason_name(c)} {n}" for n, c in main)
    return text


def reason_name(code: int) -> str:
    """The kernel reason code's name ("not analysed" for -1, "code N" for one this version does not know)."""
    if code < 0:
        return "not analysed"
    try:
        return ReasonCode(code).name
    except ValueError:
        return f"code {code}"


def maps_figure(maps: RunMaps) -> Figure:
    """Delta and alpha maps (and topography) in the scan frame; refused and unmeasured pixels marked."""
    panels = [
        ("Gap $\\Delta$ (meV)", "delta", maps.values("delta_eV", "delta") * 1e3, "viridis"),
        ("AA exponent $\\alpha$", "alpha", maps.values("alpha", "alpha"), "viridis_r"),
    ]
    count = len(panels) + (maps.topography is not None)
    fig = new_figure(map_figure_size(maps.geometry, count))
    axes = fig.subplots(1, count, squeeze=False)[0]
    handles: dict[str, Patch] = {}
    for ax, (title, quantity, values, cmap) in zip(axes, panels, strict=False):
        ax.set_title(title)
        valid = maps.valid(quantity)
        if not valid.any():
            say_empty(ax, no_valid_message(maps, quantity))
            continue
        mesh = draw_map(ax, maps.geometry, values, valid=valid, measured=maps.measured, cmap=cmap)
        fig.colorbar(mesh, ax=ax, shrink=0.8)
        marked = marked_pixel_handles(
            refused=int((maps.measured & ~valid).sum()),
            missing=int((~maps.measured).sum()),
            refused_label=f"no {_QUANTITY_SYMBOL[quantity]} (see flags.png)",
        )
        handles.update((str(h.get_label()), h) for h in marked)
        handles = dict(sorted(handles.items(), key=lambda item: item[0].startswith("not measured")))  # that one last
    if maps.topography is not None:
        ax = axes[-1]
        topo = np.asarray(maps.topography, dtype=np.float64)
        finite = np.isfinite(topo)
        ax.set_title("Topography Z (pm)")
        if finite.any():
            values = (topo - np.nanmean(topo)) * 1e12
            mesh = draw_map(ax, maps.geometry, values, valid=finite, measured=maps.measured | finite, cmap="gray")
            fig.colorbar(mesh, ax=ax, shrink=0.8)
        else:
            say_empty(ax, "no topography value")
    legend_below(fig, list(handles.values()))
    set_title(fig, "Maps", maps.caption)
    return fig


def histograms_figure(maps: RunMaps, *, bins: int = 50) -> Figure:
    """Histograms of the valid Delta (meV) and alpha values (0.5-99.5 % range), mean, std and N in the titles."""
    fig = new_figure((10, 4.2))
    for ax, quantity, name, scale, unit in zip(
        fig.subplots(1, 2), ("delta", "alpha"), ("delta_eV", "alpha"), (1e3, 1.0), (" meV", ""), strict=True
    ):
        v = maps.values(name, quantity)
        v = v[np.isfinite(v)] * scale
        symbol = _QUANTITY_SYMBOL[quantity]
        ax.set_xlabel(f"{symbol}{' (meV)' if unit else ''}")
        if v.size == 0:
            say_empty(ax, no_valid_message(maps, quantity))
            continue
        lo, hi = np.percentile(v, [0.5, 99.5])
        ax.hist(v, bins=bins, range=(lo, hi) if hi > lo else None, color="tab:blue", alpha=0.8)
        ax.axvline(v.mean(), color="k", lw=1)
        ax.set_title(f"{symbol}: mean {v.mean():.4g}{unit}, std {v.std():.3g}{unit}, N = {v.size}", fontsize=10)
        ax.set_ylabel("pixels")
    set_title(fig, "Histograms of the valid pixels", maps.caption)
    return fig


def scatter_figure(maps: RunMaps) -> Figure:
    """Delta (meV) against alpha, one point per pixel valid for both (a density above :data:`SCATTER_DENSITY_FROM`)."""
    fig = new_figure((6.4, 5.4))
    ax = fig.subplots()
    valid = maps.valid("both")
    delta = np.asarray(maps.maps["delta_eV"], dtype=np.float64)[valid] * 1e3
    alpha = np.asarray(maps.maps["alpha"], dtype=np.float64)[valid]
    ax.set_xlabel("AA exponent $\\alpha$")
    ax.set_ylabel("gap $\\Delta$ (meV)")
    if delta.size == 0:
        say_empty(ax, no_valid_message(maps, "both"))
        set_title(fig, "$\\Delta$ against $\\alpha$", maps.caption)
        return fig
    if delta.size > SCATTER_DENSITY_FROM:
        density = ax.hexbin(alpha, delta, gridsize=60, mincnt=1, bins="log", cmap="viridis")
        fig.colorbar(density, ax=ax, shrink=0.85, label="pixels per cell")
    else:
        ax.plot(alpha, delta, "o", ms=3, alpha=0.6, color="tab:blue", mec="none")
    title = f"$\\Delta$ against $\\alpha$: N = {delta.size}"
    if delta.size >= 3 and np.ptp(delta) > 0 and np.ptp(alpha) > 0:
        r = float(np.corrcoef(alpha, delta)[0, 1])
        slope, intercept = np.polyfit(alpha, delta, 1)
        grid = np.linspace(alpha.min(), alpha.max(), 2)
        ax.plot(
            grid, slope * grid + intercept, color="tab:red", lw=1.2, label=f"least squares: {slope:.3g} meV per unit"
        )
        ax.legend(fontsize=8, loc="upper right")
        title += f", Pearson r = {r:.3f} (= $\\rho_{{\\Delta\\alpha}}(0)$)"
    set_title(fig, title, maps.caption)
    return fig


def _flag_categories(flags: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Category index per pixel (-1: not measured) and the category names.

    "no flag" first, then each combination of flags present, most frequent first, named by its
    flags ("thermal + setpoint"); beyond :data:`MAX_FLAG_CATEGORIES` the rarest combinations share
    "other combinations".
    """
    bits = flags.astype(np.int64)
    category = np.where(measured, 0, -1)
    names = ["no flag"]
    values, counts = np.unique(bits[measured & (bits != 0)], return_counts=True)
    ranked = [int(v) for _, v in sorted(zip(counts.tolist(), values.tolist(), strict=True), key=lambda cv: -cv[0])]
    for k, value in enumerate(ranked):
        if k == MAX_FLAG_CATEGORIES - 1 and len(ranked) > MAX_FLAG_CATEGORIES:
            names.append("other combinations")
            category[measured & np.isin(bits, ranked[k:])] = len(names) - 1
            break
        names.append(" + ".join(FLAG_LABELS[kind] for kind in FlagKind if value & int(kind)) or f"bits {value:#x}")
        category[measured & (bits == value)] = len(names) - 1
    return category, names


def _reason_categories(reason: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, list[str]]:
    codes = sorted(int(c) for c in np.unique(reason[measured]))
    category = np.full(reason.shape, -1)
    for k, code in enumerate(codes):
        category[measured & (reason == code)] = k
    return category, [reason_name(c) for c in codes]


def _draw_categories(
    ax: Axes, maps: RunMaps, category: np.ndarray, names: list[str], *, clean: str, palette: Sequence[str]
) -> list[Patch]:
    """A categorical map: one colour per name (``clean`` pale), unmeasured white; returns legend handles with counts."""
    colours, it = [], iter(list(palette) * 4)
    for name in names:
        colours.append(CLEAN_COLOUR if name == clean else next(it))
    cmap = ListedColormap(["white", *colours])
    norm = BoundaryNorm(np.arange(-1.5, len(names)), cmap.N)
    corners = cell_corners_nm(maps.geometry)
    ax.pcolormesh(*corners, category, cmap=cmap, norm=norm, shading="flat", rasterized=True)
    mark_unmeasured(ax, corners, category >= 0)
    ax.set_aspect("auto" if maps.is_line else "equal")  # a line at equal aspect would be a hairline
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    handles = [
        Patch(facecolor=c, edgecolor="0.6", label=f"{n} ({int((category == k).sum())} px)")
        for k, (n, c) in enumerate(zip(names, colours, strict=True))
    ]
    missing = int((category < 0).sum())
    if missing:
        handles.append(Patch(facecolor="white", edgecolor="0.6", label=f"not measured ({missing} px)"))
    return handles


def flags_figure(maps: RunMaps) -> Figure:
    """Per pixel: the quality flag it carries (categorical colours) and the kernel's reason code."""
    measured = maps.measured
    fig = new_figure(map_figure_size(maps.geometry, 2, panel_width=5.5))
    ax_flags, ax_reason = fig.subplots(1, 2)
    ax_flags.set_title("quality flags")
    ax_reason.set_title("kernel result (why $\\Delta$ or $\\alpha$ is missing)")
    if not measured.any():
        for ax in (ax_flags, ax_reason):
            say_empty(ax, "no measured pixel")
    else:
        flags = np.asarray(maps.maps["flags"])
        handles = _draw_categories(
            ax_flags, maps, *_flag_categories(flags, measured), clean="no flag", palette=FLAG_COLOURS
        )
        legend_below(fig, handles, where="left", title="quality flags")
        reason = np.asarray(maps.maps["reason"])
        handles = _draw_categories(
            ax_reason, maps, *_reason_categories(reason, measured), clean="OK", palette=REASON_COLOURS
        )
        legend_below(fig, handles, where="right", title="kernel result")
    set_title(fig, "Flags and kernel reasons per pixel", maps.caption)
    return fig
