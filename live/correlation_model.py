"""A bivariate Gaussian random-field model of a (Delta, alpha) map pair, and its simulation.

:class:`FieldModel`: two unit-variance fields X (Delta), Y (alpha) with correlation functions
exp(-r^2 / l_x^2), exp(-r^2 / l_y^2), cross-correlation rho_0 exp(-r^2 / l_xy^2) and white
measurement noise (nuggets); its true figures are (l_x, l_y, l_xy, rho_0). Spectrally
Y = h_y * W1, X = h_x * (c W1 + sqrt(1 - c^2) W2), which exists only where the coherence
|c(k)| <= 1: l_xy^2 >= (l_x^2 + l_y^2) / 2 and |rho_0| <= l_x l_y / l_xy^2
(:meth:`FieldModel.valid` projects onto that set). :class:`FieldSimulator` draws pairs on a
periodic grid three of the longest lengths larger than the frame and returns the frame-sized
window, so the maps are not periodic (a real map is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import scipy.fft

from stslive.drivers.errors import AnalysisError

__all__ = ["FieldModel", "FieldSimulator"]

FloatArray = npt.NDArray[np.float64]

#: Largest nugget (noise fraction of a map's variance) the model accepts: beyond it a map is
#: mostly noise and no correlation length is meaningful.
MAX_NUGGET = 0.5
#: The generation grid exceeds the frame by this many of the longest correlation lengths
#: (the Gaussian correlation is e^-9 there: a window of it is as good as an infinite field).
MARGIN_LENGTHS = 3.0


@dataclass(frozen=True)
class FieldModel:
    """Parameters of the bivariate model (module docstring); lengths in metres.

    Attributes
    ----------
    l_x_m, l_y_m
        1/e lengths of the Delta and alpha autocorrelations.
    l_xy_m
        1/e length of |rho_XY|.
    rho_0
        rho_XY(0) of the noise-free fields.
    nugget_x, nugget_y
        Fraction of each observed map's variance that is white measurement noise, in [0, MAX_NUGGET].
    """

    l_x_m: float
    l_y_m: float
    l_xy_m: float
    rho_0: float
    nugget_x: float = 0.0
    nugget_y: float = 0.0

    def __post_init__(self) -> None:
        lengths = (self.l_x_m, self.l_y_m, self.l_xy_m)
        if not all(math.isfinite(v) and v > 0 for v in lengths):
            raise AnalysisError(f"model lengths must be finite and > 0 m; got {lengths}.")
        if not (math.isfinite(self.rho_0) and abs(self.rho_0) <= 1.0):
            raise AnalysisError(f"model rho_0 must lie in [-1, 1]; got {self.rho_0}.")
        if not all(0.0 <= v <= MAX_NUGGET for v in (self.nugget_x, self.nugget_y)):
            raise AnalysisError(f"model nuggets must lie in [0, {MAX_NUGGET}]; got {self.nugget_x}, {self.nugget_y}.")

    def valid(self) -> FieldModel:
        """The nearest model that exists: l_xy raised to its floor, then |rho_0| cut to its ceiling."""
        floor = math.sqrt((self.l_x_m**2 + self.l_y_m**2) / 2.0)
        l_xy = max(self.l_xy_m, floor)
        ceiling = self.l_x_m * self.l_y_m / l_xy**2
        return replace(self, l_xy_m=l_xy, rho_0=float(np.clip(self.rho_0, -ceiling, ceiling)))

    def figures(self) -> FloatArray:
        """The process's true (l_delta_m, l_alpha_m, l_cross_m, rho_cross_0)."""
        return np.array([self.l_x_m, self.l_y_m, self.l_xy_m, self.rho_0])


class FieldSimulator:
    """Draws (Delta, alpha) map pairs of a :class:`FieldModel` on a frame (module docstring).

    Parameters
    ----------
    model
        The model; it must be valid (:meth:`FieldModel.valid`).
    shape
        Frame (ny, nx) in pixels.
    pixel_size_m
        (dy, dx) in metres.
    """

    def __init__(self, model: FieldModel, shape: tuple[int, int], *, pixel_size_m: tuple[float, float]) -> None:
        nearest = model.valid()
        if not (
            math.isclose(nearest.l_xy_m, model.l_xy_m, rel_tol=1e-9)
            and math.isclose(nearest.rho_0, model.rho_0, rel_tol=1e-9, abs_tol=1e-12)
        ):
            raise AnalysisError(f"{model} cannot exist (|coherence| > 1); simulate model.valid().")
        self.model = model
        self.shape = shape
        py, px = pixel_size_m
        longest = max(model.l_x_m, model.l_y_m, model.l_xy_m)
        self.grid = (
            scipy.fft.next_fast_len(shape[0] + math.ceil(MARGIN_LENGTHS * longest / py)),
            scipy.fft.next_fast_len(shape[1] + math.ceil(MARGIN_LENGTHS * longest / px), real=True),
        )
        ky = 2.0 * np.pi * scipy.fft.fftfreq(self.grid[0], d=py)[:, None]
        kx = 2.0 * np.pi * scipy.fft.rfftfreq(self.grid[1], d=px)[None, :]
        k2 = ky**2 + kx**2
        # rfft half plane: interior columns stand for two k's each in the full-plane variance
        weights = np.full(k2.shape[1], 2.0)
        weights[0] = 1.0
        if self.grid[1] % 2 == 0:
            weights[-1] = 1.0
        cells = float(self.grid[0] * self.grid[1])

        def spectrum(length_m: float) -> FloatArray:
            """Power spectrum of exp(-r^2 / l^2) on the grid, scaled to unit variance."""
            power = np.exp(-k2 * length_m**2 / 4.0)
            return power / (float(np.sum(power * weights)) / cells)

        power_x, power_y = spectrum(model.l_x_m), spectrum(model.l_y_m)
        cross = model.rho_0 * spectrum(model.l_xy_m)
        coherence = np.clip(cross / np.sqrt(power_x * power_y + 1e-300), -1.0, 1.0)
        # single precision: ~2x faster FFTs, and 1e-7 errors are nothing beside a map's sampling error
        self._h_y = np.sqrt(power_y).astype(np.float32)
        self._h_x1 = (np.sqrt(power_x) * coherence).astype(np.float32)
        self._h_x2 = (np.sqrt(power_x) * np.sqrt(1.0 - coherence**2)).astype(np.float32)

    def sample(self, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
        """One (Delta, alpha) pair on the frame: unit variance, nuggets included, float32 (ny, nx)."""
        w1 = scipy.fft.rfft2(rng.standard_normal(self.grid, dtype=np.float32))
        w2 = scipy.fft.rfft2(rng.standard_normal(self.grid, dtype=np.float32))
        window = (slice(0, self.shape[0]), slice(0, self.shape[1]))
        y = scipy.fft.irfft2(self._h_y * w1, s=self.grid)[window]
        x = scipy.fft.irfft2(self._h_x1 * w1 + self._h_x2 * w2, s=self.grid)[window]
        out = []
        for field, nugget in ((x, self.model.nugget_x), (y, self.model.nugget_y)):
            if nugget > 0.0:
                field = math.sqrt(1.0 - nugget) * field + math.sqrt(nugget) * rng.standard_normal(
                    self.shape, dtype=np.float32
                )
            out.append(field)
        return out[0], out[1]
