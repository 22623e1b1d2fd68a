"""The simulated NbN film: a seeded forward model of the paper's sample (docs/physics.md).

``make_film(FilmParams(ny=..., nx=..., seed=...))`` builds the maps (resistance field, alpha(r) by
paper Eq. (2), Delta(r) by paper Eq. (3) smoothed over a few xi, independent topography) and the
returned :class:`Film` produces per-pixel I(V) and lock-in X(V) spectra on demand
(:meth:`Film.spectra`), the whole map in bounded-memory blocks (:meth:`Film.iter_blocks`), and the
ground truth the analysis is judged against (:meth:`Film.definition_truth`).

Reproducibility: the same parameters give bit-identical maps and spectra. The noise of pixel
(iy, ix) comes from a Philox generator keyed by the seed with the counter set by the flat pixel
index, so any pixel can be regenerated alone, in any order, and equals its block counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from stslive.drivers.errors import ConfigError
from stslive.live import theory
from stslive.mocks import film_maps, film_spectra, film_truth
from stslive.mocks.film_params import FilmParams, TipState

__all__ = ["COMPUTE_DTYPE", "DefinitionTruth", "Film", "FilmParams", "FilmSpectra", "TipState", "make_film"]

FloatArray = npt.NDArray[np.float64]

# Independent random streams derived from the seed (SeedSequence entropy = (seed, stream)).
_STREAM_RESISTANCE = 1
_STREAM_TOPOGRAPHY = 2
_STREAM_NOISE = 3
# Pixels per DOS/FFT chunk: ~32 x 6,600 float64 temporaries stay in cache (measured ~100 us per
# pixel for the DOS at 32 vs ~800 us when a 256-row chunk is first-touched in RAM).
_CHUNK_PIXELS = 32
# Default block of iter_blocks: at most this many output values per channel (~16 MB float32;
# the float64 working copies make ~100 MB per block in flight).
_BLOCK_VALUES = 4_000_000


class FilmSpectra(NamedTuple):
    """Spectra of one or many pixels.

    Attributes
    ----------
    bias_V
        Sweep (n,) in V, in sweep order.
    current_A
        Tunnel current I(V) in A, shape (..., n).
    lockin_x_A
        Lock-in X output (first harmonic, in phase, rms) in A, shape (..., n).
    """

    bias_V: FloatArray
    current_A: npt.NDArray[np.floating]
    lockin_x_A: npt.NDArray[np.floating]


class DefinitionTruth(NamedTuple):
    """The paper's definitions applied to each pixel's noise-free dI/dV (see :mod:`film_truth`).

    Attributes
    ----------
    delta_pp_eV
        Peak-to-peak gap map (ny, nx) in eV.
    alpha_def
        5-30 mV power-law exponent map (ny, nx), mean of both polarities.
    """

    delta_pp_eV: FloatArray
    alpha_def: FloatArray


#: Working precision of the DOS and the FFT convolution. Single precision is ~2x faster for the
#: DOS and ~3x for the FFTs (measured), and its rounding (~2e-6 relative in N, ~1e-7 in G) is
#: 10^4 below the current noise and moves the truth's peak positions by < 1e-9 eV (tested).
#: Integrals, normalisation and the truth fits run in float64.
COMPUTE_DTYPE = np.float32


@dataclass
class _Sweep:
    """Grid, kernels and sampling positions of one set of sweep settings (internal)."""

    grid: film_spectra.EnergyGrid
    energies: npt.NDArray[np.floating]
    log_background: npt.NDArray[np.floating]
    asymmetry: npt.NDArray[np.floating]
    nfft: int
    kernel_ffts: list[npt.NDArray[np.complexfloating]]
    pos_bias: FloatArray
    pos_set: FloatArray
    pos_zero: FloatArray

    def conductance(self, delta_eV: FloatArray, alpha: FloatArray, *, gamma_eV: float) -> list[FloatArray]:
        """Noise-free G and lock-in-broadened G_m on the grid, (P, n) float64 each, arbitrary units."""
        dtype = self.energies.dtype
        rows = film_spectra.dos(
            self.energies,
            delta_eV=delta_eV.astype(dtype)[:, None],
            alpha=alpha.astype(dtype)[:, None],
            gamma_eV=gamma_eV,
            log_background=self.log_background,
            asymmetry=self.asymmetry,
        )
        out = film_spectra.convolve_valid(
            rows, self.kernel_ffts, nfft=self.nfft, width=2 * self.grid.pad + 1, n=self.grid.n
        )
        return [part.astype(np.float64) for part in out]

    def truth(
        self, conductance: FloatArray, delta_eV: FloatArray, *, bias_V: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Peak-to-peak gap (eV) and 5-30 mV alpha of noise-free G rows (see :mod:`film_truth`)."""
        gap = film_truth.peak_to_peak_gap(conductance, self.grid.energies(), model_gap_eV=delta_eV)
        return gap, film_truth.power_law_alpha(film_spectra.value_at(conductance, self.pos_bias), bias_V)


@dataclass
class Film:
    """A simulated film: maps, spectra and definition truth. Build it with :func:`make_film`.

    Attributes
    ----------
    params
        The parameters it was built from.
    delta_rho_ohm
        Sheet-resistance deviation map (ny, nx) in ohm.
    alpha
        Model AA exponent map (ny, nx), alpha_mean + Eq. (2).
    delta_eV
        Model gap map (ny, nx) in eV, <Delta> (1 + Eq. (3)) smoothed over gap_smoothing_xi xi.
    topography_m
        Height map Z (ny, nx) in metres, independent of the rest.
    bias_V
        Default sweep (n_points,) in V.
    """

    params: FilmParams
    delta_rho_ohm: FloatArray
    alpha: FloatArray
    delta_eV: FloatArray
    topography_m: FloatArray
    bias_V: FloatArray
    _noise_key: npt.NDArray[np.unsignedinteger] = field(repr=False)
    _truth: DefinitionTruth | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return self.params.ny, self.params.nx

    def sheet_resistance_ohm(self) -> FloatArray:
        """Local sheet resistance R_sq + delta_rho(r) in ohm."""
        return self.params.r_sq_ohm + self.delta_rho_ohm

    # -- spectra -----------------------------------------------------------------------------
    def _sweep(
        self,
        bias_V: FloatArray,
        *,
        temperature_K: float,
        v_set_V: float,
        modulation_Vrms: float,
        slope: float,
        dtype: npt.DTypeLike = COMPUTE_DTYPE,
    ) -> _Sweep:
        p = self.params
        if not (math.isfinite(temperature_K) and temperature_K > 0):
            raise ConfigError(f"temperature_K must be finite and > 0, got {temperature_K!r}.")
        if not (math.isfinite(modulation_Vrms) and modulation_Vrms >= 0):
            raise ConfigError(f"modulation_Vrms must be finite and >= 0, got {modulation_Vrms!r}.")
        if not (math.isfinite(v_set_V) and v_set_V != 0):
            raise ConfigError(f"v_set_V must be finite and non-zero (I(0) = 0), got {v_set_V!r}.")
        reach = film_spectra.kernel_half_width_eV(temperature_K=temperature_K, modulation_Vrms=modulation_Vrms)
        grid = film_spectra.make_grid(bias_V, extra_V=(v_set_V, 0.0), max_step_eV=p.energy_step_eV, half_width_eV=reach)
        thermal, lockin = film_spectra.kernels(grid, temperature_K=temperature_K, modulation_Vrms=modulation_Vrms)
        energies = grid.extended_energies()
        asymmetry = 1.0 + slope * energies
        if np.any(asymmetry <= 0):
            raise ConfigError(
                f"DOS asymmetry slope {slope} /eV makes 1 + s E <= 0 inside the sweep; use |s| < 1 / max|E|."
            )
        sat2 = p.aa_saturation_eV**2
        nfft, kernel_ffts = film_spectra.kernel_spectra((thermal, lockin), length=energies.size, dtype=dtype)
        return _Sweep(
            grid=grid,
            energies=energies.astype(dtype),
            log_background=np.log((energies * energies + sat2) / sat2).astype(dtype),
            asymmetry=asymmetry.astype(dtype),
            nfft=nfft,
            kernel_ffts=kernel_ffts,
            pos_bias=grid.position(bias_V),
            pos_set=grid.position([v_set_V]),
            pos_zero=grid.position([0.0]),
        )

    def _pixel_noise(self, flat_index: int, n: int) -> FloatArray:
        """(2, n) standard normals of one pixel: Philox keyed by the seed, counter = pixel index."""
        bitgen = np.random.Philox(key=self._noise_key, counter=[0, 0, flat_index, 0])
        return np.random.Generator(bitgen).standard_normal((2, n))

    def _simulate(
        self,
        flat: npt.NDArray[np.intp],
        sweep: _Sweep,
        *,
        i_set_A: float,
        modulation_Vrms: float,
        tip: TipState,
        noise: bool,
        rng: np.random.Generator | None,
        current_out: npt.NDArray[np.floating],
        lockin_out: npt.NDArray[np.floating],
        truth_out: tuple[FloatArray, FloatArray] | None = None,
    ) -> None:
        """Fill ``current_out``/``lockin_out`` (len(flat), n) for the flat pixel indices."""
        p = self.params
        delta = self.delta_eV.ravel()[flat]
        alpha = self.alpha.ravel()[flat]
        step = sweep.grid.step_eV
        n = sweep.pos_bias.size
        for start in range(0, flat.size, _CHUNK_PIXELS):
            part = slice(start, start + _CHUNK_PIXELS)
            g, g_mod = sweep.conductance(delta[part], alpha[part], gamma_eV=p.dynes_gamma_eV)
            running = film_spectra.cumulative_integral(g, step=step)
            at_zero = film_spectra.integral_at(g, running, sweep.pos_zero, step=step)
            at_set = film_spectra.integral_at(g, running, sweep.pos_set, step=step) - at_zero
            # C > 0 with |I(V_set)| = i_set: the set-point fixes the junction conductance scale.
            scale = (i_set_A * tip.dos_factor) / np.abs(at_set)
            current = (film_spectra.integral_at(g, running, sweep.pos_bias, step=step) - at_zero) * scale
            lockin = film_spectra.value_at(g_mod, sweep.pos_bias) * (scale * modulation_Vrms)
            if noise:
                for row, index in enumerate(flat[part]):
                    draws = rng.standard_normal((2, n)) if rng is not None else self._pixel_noise(int(index), n)
                    current[row] += p.current_noise_A * draws[0]
                    lockin[row] += p.lockin_noise_A * draws[1]
            current_out[part] = current
            lockin_out[part] = lockin
            if truth_out is not None:
                truth_out[0][part], truth_out[1][part] = sweep.truth(g, delta[part], bias_V=self.bias_V)

    def _flat_indices(self, iy: npt.ArrayLike, ix: npt.ArrayLike) -> tuple[npt.NDArray[np.intp], tuple[int, ...]]:
        y, x = np.broadcast_arrays(np.asarray(iy), np.asarray(ix))
        if not (np.issubdtype(y.dtype, np.integer) and np.issubdtype(x.dtype, np.integer)):
            raise ConfigError(f"pixel indices must be integers, got dtypes {y.dtype} and {x.dtype}.")
        ny, nx = self.shape
        if np.any((y < 0) | (y >= ny) | (x < 0) | (x >= nx)):
            raise ConfigError(f"pixel index outside the {ny} x {nx} film (iy in 0..{ny - 1}, ix in 0..{nx - 1}).")
        return (y * nx + x).ravel().astype(np.intp), y.shape

    def spectra(
        self,
        iy: npt.ArrayLike,
        ix: npt.ArrayLike,
        *,
        bias_V: npt.ArrayLike | None = None,
        temperature_K: float | None = None,
        v_set_V: float | None = None,
        i_set_A: float | None = None,
        modulation_Vrms: float | None = None,
        noise: bool = True,
        rng: np.random.Generator | None = None,
        tip: TipState | None = None,
        dtype: npt.DTypeLike = np.float32,
    ) -> FilmSpectra:
        """I(V) and lock-in X(V) of pixels (iy, ix), normalised to the set-point.

        I(V) = C int N(E) [f(E - eV) - f(E)] dE with C fixed by |I(V_set)| = i_set, then Gaussian
        noise of ``current_noise_A`` rms; X(V) = V_m C G_m(V), the exact first harmonic of a
        sqrt(2) V_m cos(wt) modulation (see :mod:`film_spectra`), plus ``lockin_noise_A`` rms.

        Parameters
        ----------
        iy, ix
            Integer pixel indices, broadcast together; the output has their shape + (n,).
        bias_V
            Sweep in V, any order and spacing (default: the film's ``bias_V``).
        temperature_K, v_set_V, i_set_A, modulation_Vrms
            Measurement conditions (default: the film's parameters). ``i_set_A`` is the
            set-point current magnitude; the current has the sign of the bias.
        noise
            Add current and lock-in noise.
        rng
            Noise source; default: each pixel's own Philox stream (seed, pixel index), so the
            same call gives the same noise. Pass a generator for fresh noise on re-measurement;
            it is drawn per pixel in order, (2, n) normals each (current, then X).
        tip
            Tip state (fault injection); default a healthy :class:`TipState`.
        dtype
            Output float dtype (float32 default, float64 for reference work).

        Returns
        -------
        FilmSpectra
        """
        p = self.params
        tip = TipState() if tip is None else tip
        flat, shape = self._flat_indices(iy, ix)
        bias = self.bias_V if bias_V is None else np.asarray(bias_V, dtype=np.float64).ravel()
        i_set = p.i_set_A if i_set_A is None else float(i_set_A)
        if not (math.isfinite(i_set) and i_set > 0):
            raise ConfigError(f"i_set_A is the set-point magnitude and must be > 0, got {i_set_A!r}.")
        vm = p.modulation_Vrms if modulation_Vrms is None else float(modulation_Vrms)
        sweep = self._sweep(
            bias,
            temperature_K=p.temperature_K if temperature_K is None else float(temperature_K),
            v_set_V=p.v_set_V if v_set_V is None else float(v_set_V),
            modulation_Vrms=vm,
            slope=p.dos_slope_per_eV + tip.extra_slope_per_eV,
        )
        current = np.empty((flat.size, bias.size), dtype=np.float64)
        lockin = np.empty_like(current)
        self._simulate(
            flat,
            sweep,
            i_set_A=i_set,
            modulation_Vrms=vm,
            tip=tip,
            noise=noise,
            rng=rng,
            current_out=current,
            lockin_out=lockin,
        )
        out_shape = (*shape, bias.size)
        return FilmSpectra(
            bias_V=bias.copy(),
            current_A=current.reshape(out_shape).astype(dtype, copy=False),
            lockin_x_A=lockin.reshape(out_shape).astype(dtype, copy=False),
        )

    def _default_sweep(self, dtype: npt.DTypeLike = COMPUTE_DTYPE) -> _Sweep:
        p = self.params
        return self._sweep(
            self.bias_V,
            temperature_K=p.temperature_K,
            v_set_V=p.v_set_V,
            modulation_Vrms=p.modulation_Vrms,
            slope=p.dos_slope_per_eV,
            dtype=dtype,
        )

    def _rows_per_block(self, rows_per_block: int | None) -> int:
        if rows_per_block is None:
            return max(1, _BLOCK_VALUES // (self.params.nx * self.params.n_points))
        if isinstance(rows_per_block, bool) or not isinstance(rows_per_block, (int, np.integer)) or rows_per_block < 1:
            raise ConfigError(f"rows_per_block must be an integer >= 1, got {rows_per_block!r}.")
        return int(rows_per_block)

    def iter_blocks(
        self, *, rows_per_block: int | None = None, noise: bool = True, dtype: npt.DTypeLike = np.float32
    ) -> Iterator[tuple[slice, FilmSpectra]]:
        """The whole map in row blocks, at the film's own settings, with bounded memory.

        Each block equals ``spectra(iy, ix)`` of its pixels (same per-pixel noise). As a side
        product a complete pass fills the definition-truth cache (same noise-free conductance).

        Parameters
        ----------
        rows_per_block
            Rows per block (default: ~4 M values per channel, ~16 MB in float32).
        noise
            Add noise.
        dtype
            Output dtype.

        Yields
        ------
        (slice, FilmSpectra)
            Row slice of the map and spectra shaped (rows, nx, n_points).
        """
        rows = self._rows_per_block(rows_per_block)
        ny, nx = self.shape
        n = self.params.n_points
        sweep = self._default_sweep()
        fill_truth = self._truth is None
        truth = (np.empty(ny * nx), np.empty(ny * nx)) if fill_truth else None
        for row0 in range(0, ny, rows):
            row_slice = slice(row0, min(ny, row0 + rows))
            flat = np.arange(row_slice.start * nx, row_slice.stop * nx, dtype=np.intp)
            current = np.empty((flat.size, n), dtype=np.float64)
            lockin = np.empty_like(current)
            part = None if truth is None else (truth[0][flat[0] : flat[-1] + 1], truth[1][flat[0] : flat[-1] + 1])
            self._simulate(
                flat,
                sweep,
                i_set_A=self.params.i_set_A,
                modulation_Vrms=self.params.modulation_Vrms,
                tip=TipState(),
                noise=noise,
                rng=None,
                current_out=current,
                lockin_out=lockin,
                truth_out=part,
            )
            shape = (row_slice.stop - row_slice.start, nx, n)
            yield (
                row_slice,
                FilmSpectra(
                    bias_V=self.bias_V.copy(),
                    current_A=current.reshape(shape).astype(dtype, copy=False),
                    lockin_x_A=lockin.reshape(shape).astype(dtype, copy=False),
                ),
            )
        if truth is not None and self._truth is None:
            self._truth = DefinitionTruth(truth[0].reshape(ny, nx), truth[1].reshape(ny, nx))

    def definition_truth(self) -> DefinitionTruth:
        """Peak-to-peak Delta and 5-30 mV alpha of every pixel's noise-free dI/dV (cached).

        The paper's definitions (docs/physics.md, "Per-pixel quantities") on the conductance
        G = dI/dV of the film's noise-free I(V) at its own temperature: the coherence peaks are
        located on the fine grid (step <= ``energy_step_eV``) and refined by a parabola vertex;
        alpha is the log-log least-squares slope on the default sweep's points with
        5 mV <= |V| <= 30 mV, per polarity, then averaged. Not the model maps ``delta_eV`` and
        ``alpha``, which differ from these by the thermal/Dynes peak shift and the BCS tail and
        AA saturation inside the fit window.

        Returns
        -------
        DefinitionTruth
            (delta_pp_eV, alpha_def), each (ny, nx) float64.
        """
        if self._truth is None:
            ny, nx = self.shape
            sweep = self._default_sweep()
            delta = self.delta_eV.ravel()
            alpha = self.alpha.ravel()
            gaps = np.empty(ny * nx)
            alphas = np.empty(ny * nx)
            for start in range(0, ny * nx, _CHUNK_PIXELS):
                part = slice(start, start + _CHUNK_PIXELS)
                g, _ = sweep.conductance(delta[part], alpha[part], gamma_eV=self.params.dynes_gamma_eV)
                gaps[part], alphas[part] = sweep.truth(g, delta[part], bias_V=self.bias_V)
            self._truth = DefinitionTruth(gaps.reshape(ny, nx), alphas.reshape(ny, nx))
        return self._truth


def _coherence_length_m(params: FilmParams) -> float:
    return float(theory.coherence_length_m(diffusion_m2_s=params.diffusion_m2_s, gap_eV=params.delta_mean_eV))


def make_film(params: FilmParams) -> Film:
    """Build the maps of a film (resistance, alpha, Delta, topography); spectra come on demand.

    delta_rho: Gaussian random field, covariance sigma_rho^2 exp(-r^2 / l_rho^2), generated
    periodic on a grid larger than the film by 3 l_rho plus the gap-smoothing reach, of which the
    film is a window.
    alpha(r) = alpha_mean + delta_alpha, paper Eq. (2) at aa_bias_V, D, l_alpha = l_rho.
    Delta(r) = <Delta> (1 + G_s * [delta_Delta/<Delta>]), paper Eq. (3), G_s a Gaussian of
    standard deviation gap_smoothing_xi * xi(0), xi(0) = sqrt(hbar D / <Delta>).
    Z(r): :func:`film_maps.grain_topography` from its own random stream.

    Parameters
    ----------
    params
        The film's parameters.

    Returns
    -------
    Film
    """
    p = params
    smoothing_px = p.gap_smoothing_xi * _coherence_length_m(p) / p.pixel_m
    correlation_px = p.l_rho_m / p.pixel_m
    margin = math.ceil(3.0 * correlation_px + 5.0 * smoothing_px)
    shape = film_maps.padded_shape(p.ny, p.nx, margin_px=margin)
    rng_rho = np.random.default_rng(np.random.SeedSequence([p.seed, _STREAM_RESISTANCE]))
    rho = film_maps.gaussian_random_field(shape, sigma=p.sigma_rho_ohm, correlation_px=correlation_px, rng=rng_rho)
    d_alpha = theory.aa_exponent_shift(rho, bias_V=p.aa_bias_V, diffusion_m2_s=p.diffusion_m2_s, l_alpha_m=p.l_rho_m)
    d_gap = theory.gap_relative_shift(rho, hbar_omega_D_K=p.hbar_omega_D_K, gap_K=p.gap_eq3_K)
    d_gap = film_maps.smooth_periodic(d_gap, sigma_px=smoothing_px)
    window = (slice(0, p.ny), slice(0, p.nx))
    delta = p.delta_mean_eV * (1.0 + d_gap[window])
    if np.any(delta <= 5.0 * p.dynes_gamma_eV):
        raise ConfigError(
            "the gap map reaches <= 5 Gamma somewhere: no coherence peaks to define Delta there; "
            "lower sigma_rho_ohm or dynes_gamma_eV."
        )
    rng_topo = np.random.default_rng(np.random.SeedSequence([p.seed, _STREAM_TOPOGRAPHY]))
    topo = film_maps.grain_topography(
        p.ny, p.nx, pixel_m=p.pixel_m, diameter_m=p.grain_diameter_m, height_m=p.grain_height_m, rng=rng_topo
    )
    noise_key = np.random.SeedSequence([p.seed, _STREAM_NOISE]).generate_state(2, np.uint64)
    return Film(
        params=p,
        delta_rho_ohm=np.ascontiguousarray(rho[window]),
        alpha=np.ascontiguousarray(p.alpha_mean + d_alpha[window]),
        delta_eV=np.ascontiguousarray(delta),
        topography_m=topo,
        bias_V=p.default_bias_V(),
        _noise_key=noise_key,
    )
