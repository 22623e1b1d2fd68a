"""The control-room screen's frame rate under a stream of results (``stslive bench viewer``).

:func:`bench_viewer` feeds ``rate`` pixel results per second from a worker thread into a
ResultsModel while the window redraws back to back, and reports the frame rate and the
per-frame redraw time (p50/p99). Goal: >= 15 fps at 1,000 pixels/s on 300 x 250.

The synthetic maps (:func:`synthetic_maps`, also the viewer tests' data) are smooth Gaussian
random fields with the paper's statistics (Delta 1.2 +- 0.07 meV, alpha 0.35 +- 0.028,
anti-correlated): display data only, not the physics simulation of ``stslive.mocks``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from stslive.drivers.errors import ConfigError
from stslive.live.correlations import correlation_length_1e, correlation_map, radial_profile
from stslive.live.results import CorrelationSnapshot, FlagKind, PixelResult, ResultsModel


def synthetic_maps(ny: int, nx: int, *, seed: int = 0, length_px: float = 8.0) -> dict[str, np.ndarray]:
    """Result maps of a plausible film: keys of ``MAP_SPECS`` (delta_eV, alpha, peaks, b, flags...)."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal((ny, nx)), length_px, mode="wrap")
    field /= field.std()
    noise = gaussian_filter(rng.standard_normal((ny, nx)), length_px / 2, mode="wrap")
    noise /= noise.std()
    delta = (1.2e-3 * (1 - 0.057 * (0.6 * field + 0.8 * noise))).astype(np.float32)
    alpha = (0.35 + 0.028 * field).astype(np.float32)
    flags = np.zeros((ny, nx), np.uint32)
    flags[rng.random((ny, nx)) < 0.01] = int(FlagKind.POOR_FIT)
    sets = np.zeros((ny, nx), np.int16)
    sets[ny // 2 :, :] = 1
    flags[ny // 2 : ny // 2 + max(1, ny // 10), :] |= np.uint32(FlagKind.MODULATION)
    return {
        "delta_eV": delta,
        "alpha": alpha,
        "alpha_pos": alpha + np.float32(0.01),
        "alpha_neg": alpha - np.float32(0.01),
        "b": np.full((ny, nx), 2e-9, np.float32),
        "peak_neg_V": -delta,
        "peak_pos_V": delta,
        "visibility": np.full((ny, nx), 1.6, np.float32),
        "fit_quality": np.full((ny, nx), 0.99, np.float32),
        "valid": np.ones((ny, nx), bool),
        "reason": np.zeros((ny, nx), np.int16),
        "setpoint_set": sets,
        "flags": flags,
        "temperature_K": (0.3 + 0.002 * rng.standard_normal((ny, nx))).astype(np.float32),
        "time": 1.7e9 + np.arange(ny * nx, dtype=np.float64).reshape(ny, nx) * 3.0,
    }


def snapshot_of(delta_eV: np.ndarray, alpha: np.ndarray, *, pixel_nm: float) -> CorrelationSnapshot:
    """Correlation snapshot of two maps through ``stslive.live.correlations`` (paper Appendix A)."""
    pixel_m = pixel_nm * 1e-9
    maps = {"delta": (delta_eV, None), "alpha": (alpha, None), "cross": (delta_eV, alpha)}
    rho = {k: correlation_map(a, b) for k, (a, b) in maps.items()}
    prof = {k: radial_profile(v, pixel_size_m=pixel_m) for k, v in rho.items()}
    lengths = {k: correlation_length_1e(p, absolute=k == "cross") * 1e9 for k, p in prof.items()}
    return CorrelationSnapshot(
        r_nm=prof["delta"].radius_m * 1e9,
        rho_delta=prof["delta"].value,
        rho_alpha=prof["alpha"].value,
        rho_cross=prof["cross"].value,
        cross_map=np.fft.fftshift(rho["cross"]).astype(np.float32),
        pixel_nm=pixel_nm,
        l_delta_nm=lengths["delta"],
        l_alpha_nm=lengths["alpha"],
        l_cross_nm=lengths["cross"],
        rho_cross_0=float(rho["cross"][0, 0]),
        n_pixels=int(np.isfinite(delta_eV).sum()),
        time=time.time(),
    )


def pixel_results(maps: dict[str, np.ndarray]) -> list[PixelResult]:
    """One PixelResult per pixel of ``maps`` in raster order."""
    ny, nx = maps["delta_eV"].shape
    return [
        PixelResult(iy=iy, ix=ix, **{k: v[iy, ix].item() for k, v in maps.items()})
        for iy in range(ny)
        for ix in range(nx)
    ]


def feed(model: ResultsModel, results: list[PixelResult], *, rate: float, stop: threading.Event) -> int:
    """Push ``results`` into ``model`` at ``rate`` per second (paced in 10 ms slices); returns the count."""
    t0, i = time.perf_counter(), 0
    while i < len(results) and not stop.is_set():
        due = min(len(results), int((time.perf_counter() - t0) * rate))
        while i < due:
            model.update_pixel(results[i])
            i += 1
        time.sleep(0.01)
    return i


def bench_viewer(
    *,
    nx: int,
    ny: int,
    rate: float,
    seconds: float,
    size: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Redraw the window back to back for ``seconds`` (s) while ``rate`` results/s arrive; log the figures.

    Needs a Qt platform (``QT_QPA_PLATFORM=offscreen`` without a display).

    Raises
    ------
    ConfigError
        ``rate`` or ``seconds`` not > 0.
    """
    if not (rate > 0 and seconds > 0):
        raise ConfigError(f"--rate {rate:g} and --seconds {seconds:g} must be > 0")
    # Qt only when the benchmark runs: the viewer tests import the synthetic maps without it
    from stslive.live.viewer.window import DEFAULT_SIZE, ControlRoomWindow, qt_app

    app = qt_app()
    maps = synthetic_maps(ny, nx)
    results = pixel_results(maps)
    model = ResultsModel(ny, nx, pixel_nm=1.0)
    model.set_snapshot(snapshot_of(maps["delta_eV"], maps["alpha"], pixel_nm=1.0))
    model.update_status(state="running")
    size = size or DEFAULT_SIZE  # the screen's window unless asked (before/after comparisons: the same)
    window = ControlRoomWindow(model, refresh_hz=1000.0, size=size)  # timer never the limit: measure the redraw
    window.timer.stop()
    window.show()
    durations, changed = [], 0
    stop = threading.Event()
    worker = threading.Thread(target=lambda: feed(model, results, rate=rate, stop=stop), daemon=True)
    worker.start()
    t_start = time.perf_counter()
    t_end = t_start + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        before = window._seen["maps"]
        window.refresh()
        window.repaint()  # synchronous paint of the whole window: what a frame really costs
        app.processEvents()
        changed += window._seen["maps"] != before
        durations.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t_start
    stop.set()
    worker.join()
    d = np.array(durations, dtype=np.float64) * 1e3
    fed = int(model.status().n_measured)
    log(f"grid {nx}x{ny}, window {size[0]}x{size[1]}: {rate:.0f} pixels/s for {elapsed:.1f} s, {fed} applied")
    log(
        f"frames (refresh + full repaint, back to back): {len(d)} = {len(d) / elapsed:.1f} fps, "
        f"{changed / elapsed:.1f} fps with new pixels"
    )
    log(f"frame time ms: p50 {np.percentile(d, 50):.1f}, p99 {np.percentile(d, 99):.1f}, max {d.max():.1f}")
    busy = min(1.0, 15 * float(np.mean(d)) / 1e3)
    log(f"at the default 15 Hz timer the GUI thread would be busy {busy * 100:.0f} % of the time")
    window.close()
