"""The joint fit of both coherence peaks over the whole gap region, and the Dynes fit it ends with.

One model for the region |V| <= the map's window, both polarities and the gap between them:

    dI/dV(v) = P(v) t_s(|v|),   s = s_sign(v),     P(v) = sum_k c_k v^k  (k <= DEGREE)

t_s is the coherence peak of a Dynes DOS of gap s at the map's width, drawn at the sample
temperature (and with the lock-in's modulation for a lock-in;
:func:`~stslive.live.kernels.templates.draw`), with s_+ on the positive side and s_- on the
mirrored negative side. It is drawn at each gap, not the map's peak moved: the in-gap region and
the BCS tail scale with the gap, and at a coarse step they, more than the peak's few samples,
place it. P is a smooth background shared
by both peaks (the Altshuler-Aronov background, the tip's asymmetry). A current is fitted as its
integral plus an offset. Sharing the background and the in-gap samples between the two peaks
lowers the gap's variance well below that of fitting each peak in its own window with its own
background (Cramer-Rao on the simulated film: by ~1.6 at 2 pA current noise).

The fit is linear in the c_k; the edges follow by Gauss-Newton, linearised at the shift grid of
the per-peak fit, or of a search of the whole grid (:func:`joint_fit` with no start).
Everything that depends only on the grid, the map's peak and a grid shift is tabulated once per
map (:func:`joint_tables`: each half's basis and its derivatives in the edge
and in ln(width), and their Gram matrices), so a spectrum costs a few dot products and a small
solve. Delta is the peak-to-peak distance of the fitted dI/dV at the sample temperature (the
maximum of P t_thermal near each edge) with the map's Dynes width; one more step with the width
free is the Dynes fit: Delta_Dynes = (s_+ + s_-) / 2 and Gamma_Dynes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from stslive.live.kernels.templates import WIDTH_STEP, Drawing, TemplateBank, draw, refined_argmax

__all__ = [
    "DEGREE",
    "MAX_WIDTH_STEP",
    "JointFit",
    "JointTables",
    "joint_fit",
    "joint_tables",
    "search_profile",
    "shift_index",
]

#: Degree of the shared background polynomial P (measured on the film: degree 2 and 3 give the
#: same gaps, 4 a larger variance).
DEGREE = 4
#: The Dynes fit's width may differ from the map's by at most this in ln (the tabulated width
#: derivative holds to ~+-40 %); beyond, the fit is refused (NaN).
MAX_WIDTH_STEP = 0.4
#: The gap's numerical derivative steps this many fine samples each way.
GAP_STEP_FINE = 2


@dataclass(frozen=True)
class JointTables:
    """One map's joint-fit tables on one grid (cached, see :func:`joint_tables`).

    ``vectors[side]`` is (n_shifts, F, M_side): for each grid shift, the basis (k <= DEGREE), its
    derivative in the edge (per V), its derivative in ln(width), and for a current a column of
    ones, sampled on that half's columns; ``gram[side]`` their (n_shifts, F, F) dot products.
    """

    columns: tuple[slice, slice]  #: (+, -) half columns of the unmirrored rows
    origin_V: tuple[float, float]  #: |V| of each half's shift 0
    step_V: float
    shifts: np.ndarray  #: grid shifts, samples
    integrated: bool
    vectors: tuple[np.ndarray, np.ndarray]
    gram: tuple[np.ndarray, np.ndarray]
    scale: np.ndarray  #: c_k of P = fitted coefficient * scale[k]
    x_peak: np.ndarray  #: (2, n_shifts) thermal peak from the edge, V, per side and grid shift
    t_peak: np.ndarray  #: (2, n_shifts) thermal peak value, per unit P
    t_peak2: np.ndarray  #: (2, n_shifts) its second derivative, per V^2


def joint_tables(
    bias_key: bytes, bank: TemplateBank, columns: tuple[slice, slice], origin_V: tuple[float, float], *,
    width_eV: float, temperature_K: float, modulation_Vrms: float, integrated: bool,
) -> JointTables:  # fmt: skip
    """:func:`_tables` keyed by the grid's values and the map's peak (cached; each grid shift's gap
    is ``origin_V`` + shift x step, so the map's gap needs no key of its own)."""
    return _tables(
        bias_key,
        bank.fine,
        bank.half,
        tuple(float(s) for s in bank.shifts),
        (columns[0].start, columns[0].stop, columns[1].start, columns[1].stop),
        origin_V,
        width_eV,
        temperature_K,
        modulation_Vrms,
        integrated,
    )


@lru_cache(maxsize=16)
def _tables(
    bias_key: bytes,
    fine: float,
    half: int,
    shifts: tuple[float, ...],
    bounds: tuple[int, int, int, int],
    origin_V: tuple[float, float],
    width_eV: float,
    temperature_K: float,
    modulation_Vrms: float,
    integrated: bool,
) -> JointTables:
    bias = np.frombuffer(bias_key, dtype=np.float64)
    step = float(bias[1] - bias[0])
    common = {"temperature_K": temperature_K, "modulation_Vrms": modulation_Vrms}
    reach = float(np.abs(bias[bounds[0] : bounds[3]]).max() if bounds[3] > bounds[0] else 1.0)
    reach = max(reach, float(np.abs(bias[bounds[2] : bounds[1]]).max()))
    k = np.arange(DEGREE + 1)
    scale = reach**-k
    grid = np.asarray(shifts)
    # the gap's derivative: central differences of GAP_STEP_FINE fine samples (exact index shifts)
    m = GAP_STEP_FINE
    eps = m * fine
    vectors, grams = [], []
    x_peak = np.empty((2, grid.size))
    t_peak = np.empty((2, grid.size))
    t_peak2 = np.empty((2, grid.size))
    drawings: dict[tuple[float, float], Drawing] = {}

    def drawing(gap: float, width: float) -> Drawing:
        """The peak drawn at a gap and width (both sides of a symmetric grid share them)."""
        key = (round(gap, 12), round(width, 14))
        if key not in drawings:
            drawings[key] = _draw(fine, half, gap_eV=gap, width_eV=width, **common)
        return drawings[key]

    def drawn(gap: float, width: float) -> np.ndarray:
        """The fitted dI/dV drawn at a gap and width."""
        return np.asarray(drawing(gap, width).fitted, np.float64)

    for side, (lo, hi), sign in ((0, bounds[:2], 1.0), (1, bounds[2:], -1.0)):
        v = bias[lo:hi]
        u = np.abs(v)
        per_shift = []
        for j, shift in enumerate(grid):
            edge = origin_V[side] + shift * step
            # the DOS drawn at this gap, not the map's peak moved: the in-gap region and the BCS
            # tail scale with the gap (at a coarse step they, not the peak, place it)
            t = drawn(edge, width_eV)
            # d/dgap at fixed |v|: the drawing about edge + eps holds |v| m fine samples lower
            up, down = drawn(edge + eps, width_eV), drawn(edge - eps, width_eV)
            t_d = np.zeros_like(t)
            t_d[m:-m] = (up[: -2 * m] - down[2 * m :]) / (2 * eps)
            t_g = (drawn(edge, width_eV * math.exp(WIDTH_STEP)) - drawn(edge, width_eV * math.exp(-WIDTH_STEP))) / (
                2 * WIDTH_STEP
            )
            thermal = np.asarray(drawing(edge, width_eV).thermal)
            x_peak[side, j], t_peak[side, j], t_peak2[side, j] = _thermal_peak(thermal, half, edge, fine)
            if not integrated:
                x = np.rint((u - edge) / fine).astype(np.intp) + half
                powers = (v[:, None] * np.ones(DEGREE + 1)) ** k * scale  # (M, K+1)
                rows = [powers.T * t[x], powers.T * t_d[x], powers.T * t_g[x]]
            else:
                # I(V) = int_0^V P(v) T(|v|) dv: on the fine grid from 0, sampled at |V|
                n_fine = round(u.max() / fine) + 2
                uf = fine * np.arange(n_fine)
                xf = np.clip(np.rint((uf - edge) / fine).astype(np.intp) + half, 0, t.size - 1)
                at = np.rint(u / fine).astype(np.intp)
                signs = np.where(sign > 0, 1.0, (-1.0) ** (k + 1))[:, None]
                ufk = uf[None, :] ** k[:, None]  # (K+1, n_fine)

                rows = []
                for y in (t, t_d, t_g):  # trapezoid integrals from 0 of u^k y(u), at the samples |V|
                    f = ufk * y[xf]
                    cum = np.cumsum(f, axis=1) * fine - 0.5 * fine * f[:, :1] - 0.5 * fine * f
                    rows.append(signs * cum[:, at] * scale[:, None])
                rows.append(np.ones((1, u.size)))
            per_shift.append(np.concatenate(rows, axis=0))
        block = np.stack(per_shift)  # (n_shifts, F, M)
        # the projections run in float32 (their rounding is 1e-7 of the signal, the noise 1e-3);
        # the Gram matrices and every solve in float64
        grams.append(np.einsum("sfm,sgm->sfg", block, block))
        vectors.append(np.ascontiguousarray(block, dtype=np.float32))
    return JointTables(
        columns=(slice(bounds[0], bounds[1]), slice(bounds[2], bounds[3])),
        origin_V=origin_V,
        step_V=step,
        shifts=grid,
        integrated=integrated,
        vectors=(vectors[0], vectors[1]),
        gram=(grams[0], grams[1]),
        scale=scale,
        x_peak=x_peak,
        t_peak=t_peak,
        t_peak2=t_peak2,
    )


def _draw(fine: float, half: int, **kwargs: float) -> Drawing:
    """:func:`draw` without its cache (a map's tables draw each grid shift's gap once)."""
    return draw.__wrapped__(fine, half, **kwargs)


def _thermal_peak(thermal: np.ndarray, half: int, gap_eV: float, fine: float) -> tuple[float, float, float]:
    """(peak from the gap edge (V), value, second derivative per V^2) of a drawn thermal dI/dV."""
    below = min(half - 2, int(0.5 * gap_eV / fine))
    peak = refined_argmax(thermal, slice(half - below, half + half // 2))
    i = round(peak)
    y0, y1, y2 = thermal[i - 1], thermal[i], thermal[i + 1]
    return float((peak - half) * fine), float(y1), float((y0 - 2 * y1 + y2) / fine**2)


class JointFit(NamedTuple):
    """The joint fit of rows (n,): peaks (|V|, V), the gap's standard error, chi^2, the Dynes fit."""

    peak_pos_V: np.ndarray
    peak_neg_V: np.ndarray
    delta_sigma_eV: np.ndarray
    chi2: np.ndarray
    converged: np.ndarray
    delta_dynes_eV: np.ndarray
    log_width: np.ndarray


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve n small symmetric positive definite systems a x = b: a (n, P, P), b (n, P) or (n, P, R).

    NaN rows where a system is not finite. The columns are equilibrated and a ridge of 1e-12 (of
    the unit diagonal) keeps an exactly singular system from failing the whole stack.
    """
    vector = b.ndim == 2
    rhs = b[:, :, None] if vector else b
    diag = np.sqrt(np.abs(np.einsum("nii->ni", a)))
    finite = np.isfinite(a).all(axis=(1, 2)) & np.isfinite(rhs).all(axis=(1, 2)) & (diag > 0).all(axis=1)
    with np.errstate(all="ignore"):
        d = np.where(finite[:, None], 1.0 / np.where(diag > 0, diag, 1.0), 1.0)
        m = np.where(finite[:, None, None], a * d[:, :, None] * d[:, None, :], np.eye(a.shape[1]))
        m += 1e-12 * np.eye(a.shape[1])
        x = np.linalg.solve(m, np.where(finite[:, None, None], rhs * d[:, :, None], 0.0)) * d[:, :, None]
    x[~finite] = np.nan
    return x[:, :, 0] if vector else x


def joint_fit(
    w: np.ndarray, start: np.ndarray | None, noise: np.ndarray, tables: JointTables, *, iterations: int = 1
) -> JointFit:
    """Fit rows ``w`` (n, N) (the signed signal on the grid's columns) from grid shifts ``start`` (n, 2).

    ``start`` holds each half's grid-shift index (the per-peak fit's best), or None to start
    every row at its best grid shift for one gap on both sides (:func:`_search`: at a coarse
    step the per-peak fit's window holds too few samples to start from, and the likelihood can
    have a second minimum about a step away); ``noise`` (n,) the rms noise per sample (NaN: the
    residual stands in). Each iteration linearises the problem at grid shifts (:func:`_step`)
    and moves on to the grid shifts nearest its edges, for at most ``iterations``.
    """
    last = tables.shifts.size - 1
    if start is None:
        index = np.repeat(_search(w, tables)[:, None], 2, axis=1)
    else:
        index = np.clip(np.nan_to_num(start, nan=last // 2).astype(np.intp), 0, last)
    fit, edges = _step(w, index, noise, tables)
    for _ in range(iterations - 1):
        nearest = shift_index(tables, edges)
        moved = np.flatnonzero((nearest != index).any(axis=1) & np.isfinite(edges).all(axis=1))
        if not moved.size:
            break
        index[moved] = nearest[moved]
        again, edges[moved] = _step(w[moved], index[moved], noise[moved], tables)
        for mine, new in zip(fit, again, strict=True):  # _step's arrays are fresh: written in place
            mine[moved] = new
    return fit


def search_profile(w: np.ndarray, tables: JointTables) -> np.ndarray:
    """(n, n_shifts): the squared signal each grid shift explains, one gap on both sides, the background profiled out.

    The residual of a linear least-squares fit is |w|^2 - b^T A^-1 b (b the projections on the
    shift's linear columns, A their Gram matrix): the shift that explains most fits best, and
    divided by the noise variance the profile is the drop in chi^2.
    """
    kp = DEGREE + 1
    li = np.r_[np.arange(kp), np.arange(3 * kp, 3 * kp + (1 if tables.integrated else 0))]
    proj = 0.0
    for s in (0, 1):
        half = np.ascontiguousarray(w[:, tables.columns[s]], dtype=np.float32)
        proj = proj + np.einsum("jfm,nm->njf", tables.vectors[s][:, li], half).astype(np.float64)
    gram = tables.gram[0][:, li[:, None], li] + tables.gram[1][:, li[:, None], li]  # (J, P, P)
    inv = np.linalg.pinv(gram)  # (J, P, P), one per shift for every row
    return np.asarray(np.einsum("njf,jfg,njg->nj", proj, inv, proj))


def _search(w: np.ndarray, tables: JointTables) -> np.ndarray:
    """Per row, the grid shift of least squared residual with one gap on both sides (:func:`search_profile`)."""
    return np.argmax(np.nan_to_num(search_profile(w, tables), nan=-np.inf), axis=1)


def shift_index(tables: JointTables, edge_V: np.ndarray) -> np.ndarray:
    """(n, 2) the grid shift of each side nearest the gap edges ``edge_V``, V: (n,) one for both sides, or (n, 2)."""
    last = tables.shifts.size - 1
    spacing = float(tables.shifts[1] - tables.shifts[0]) if last else 1.0
    edges = np.asarray(edge_V, np.float64)
    at = ((edges[:, None] if edges.ndim == 1 else edges) - np.asarray(tables.origin_V)[None, :]) / tables.step_V
    return np.clip(np.rint((np.nan_to_num(at) - tables.shifts[0]) / spacing), 0, last).astype(np.intp)


def _step(w: np.ndarray, index: np.ndarray, noise: np.ndarray, tables: JointTables) -> tuple[JointFit, np.ndarray]:
    """One Gauss-Newton step of rows ``w`` from grid-shift indices ``index`` (n, 2); the fit and its edges (n, 2), V.

    The problem is linearised at those grid shifts: one solve for the background (and offset)
    there, then one Gauss-Newton solve for everything with the edges free (and one more with the
    width free too, the Dynes fit).
    """
    n = w.shape[0]
    kp = DEGREE + 1
    extra = 1 if tables.integrated else 0
    p_lin = kp + extra
    size = p_lin + 2
    n_f = 3 * kp + extra
    li = np.r_[np.arange(kp), np.arange(3 * kp, n_f)]  # the linear columns: basis (and ones)
    proj, gram = [], []
    energy = np.zeros(n)
    samples = 0
    for s in (0, 1):
        half = np.ascontiguousarray(w[:, tables.columns[s]], dtype=np.float32)
        energy += np.einsum("nm,nm->n", half, half, dtype=np.float64)
        samples += half.shape[1]
        proj.append(np.einsum("nfm,nm->nf", tables.vectors[s][index[:, s]], half).astype(np.float64))
        gram.append(tables.gram[s][index[:, s]])
    with np.errstate(all="ignore"):
        # the background (and offset) at the grid shifts
        a_lin = gram[0][:, li[:, None], li] + gram[1][:, li[:, None], li]
        b_lin = proj[0][:, li] + proj[1][:, li]
        c = _solve(a_lin, b_lin)
        cb = c[:, :kp]
        # J's columns: the linear ones, D_+ c, D_- c, G c (the last for the Dynes fit); their
        # dot products from each half's Gram blocks
        d_, g_ = slice(kp, 2 * kp), slice(2 * kp, 3 * kp)
        normal = np.zeros((n, size + 1, size + 1))
        normal[:, :p_lin, :p_lin] = a_lin
        jtw = np.zeros((n, size + 1))
        jtw[:, :p_lin] = b_lin
        for s in (0, 1):
            g = gram[s]
            dc = np.einsum("nfk,nk->nf", g[:, :, d_], cb)  # every column . (D c)
            gc = np.einsum("nfk,nk->nf", g[:, :, g_], cb)  # every column . (G c)
            col = p_lin + s
            normal[:, :p_lin, col] = dc[:, li]
            normal[:, col, col] = np.einsum("nk,nk->n", dc[:, d_], cb)
            normal[:, :p_lin, size] += gc[:, li]
            normal[:, col, size] = np.einsum("nk,nk->n", gc[:, d_], cb)
            normal[:, size, size] += np.einsum("nk,nk->n", gc[:, g_], cb)
            jtw[:, col] = np.einsum("nk,nk->n", proj[s][:, d_], cb)
            jtw[:, size] += np.einsum("nk,nk->n", proj[s][:, g_], cb)
        upper = np.triu_indices(size + 1, 1)
        normal[:, upper[1], upper[0]] = normal[:, upper[0], upper[1]]
        rhs = jtw - (normal[:, :, :p_lin] @ c[:, :, None])[:, :, 0]  # J^T (w - model at the grid shifts)
        a = normal[:, :size, :size]
        units = np.zeros((n, size, size + 1))
        units[:, :, 0] = rhs[:, :size]
        units[:, np.arange(size), np.arange(1, size + 1)] = 1.0
        solved = _solve(a, units)  # the step, and the inverse for the covariance
        delta = solved[:, :, 0]
        grid_edges = np.asarray(tables.origin_V)[None, :] + tables.shifts[index] * tables.step_V
        edges = grid_edges + delta[:, p_lin:]
        # |w - model|^2 at the solution of the linearised problem: |r0|^2 - rhs . delta
        r0 = energy - 2 * np.einsum("ni,ni->n", c, b_lin) + np.einsum("ni,ni->n", c, (a_lin @ c[:, :, None])[:, :, 0])
        rss = r0 - np.einsum("ni,ni->n", rhs[:, :size], delta)
        dof = samples - size
        chi2 = rss / dof / noise**2
        sigma2 = np.fmax(rss / dof, noise**2)
        covariance = solved[:, :, 1:] * sigma2[:, None, None]
        coef = (cb + delta[:, :kp]) * tables.scale
        peaks = np.empty((n, 2))
        # Delta's gradient in the parameters: 1/2 per edge, and through each peak's move by the
        # background's slope (the maximum of P t_thermal), in the background's coefficients
        gradient = np.zeros((n, size))
        gradient[:, p_lin], gradient[:, p_lin + 1] = 0.5, 0.5
        k = np.arange(kp)
        for side, sign in ((0, 1.0), (1, -1.0)):
            at = index[:, side]
            x_pk, t_pk, t_pk2 = tables.x_peak[side, at], tables.t_peak[side, at], tables.t_peak2[side, at]
            u0 = edges[:, side] + x_pk
            vv = (sign * u0)[:, None]
            powers = vv ** np.maximum(k, 0)
            d1 = sign * k * vv ** np.maximum(k - 1, 0)  # d/du of v^k at v = sign u
            d2 = k * (k - 1) * vv ** np.maximum(k - 2, 0)
            p0, p1, p2 = (np.einsum("nk,nk->n", coef, m) for m in (powers, d1, d2))
            denom = p0 * t_pk2 + p2 * t_pk
            move = -p1 * t_pk / denom
            peaks[:, side] = u0 + np.clip(move, -tables.step_V, tables.step_V)
            d_move = -t_pk[:, None] * (
                d1 * denom[:, None] - p1[:, None] * (powers * t_pk2[:, None] + d2 * t_pk[:, None])
            )
            gradient[:, :kp] += 0.5 * d_move / (denom**2)[:, None] * tables.scale
        delta_sigma = np.sqrt(np.einsum("ni,nij,nj->n", gradient, covariance, gradient))
        converged = np.isfinite(peaks).all(axis=1) & np.isfinite(delta_sigma)
        # the Dynes fit: the same linearised problem with the width free
        dynes = _solve(normal, rhs)
        edges_dynes = grid_edges + dynes[:, p_lin : p_lin + 2]
        log_width = dynes[:, -1]
    return JointFit(
        peak_pos_V=peaks[:, 0],
        peak_neg_V=peaks[:, 1],
        delta_sigma_eV=delta_sigma,
        chi2=chi2,
        converged=converged,
        delta_dynes_eV=0.5 * (edges_dynes[:, 0] + edges_dynes[:, 1]),
        log_width=log_width,
    ), edges
