"""Analyser benchmark (not a test): ``python tests/live/test_analyser_bench.py [N]``.

Replays N simulated 1601-point spectra (current + lock-in) as a run stream and prints the
sustained analyser throughput (spectra/s, publish of the first event to the last result) and
the publish-to-result latency p50/p99 at 1,000 spectra/s (latency = arrival of the ``pixel``
result on the analyser's PUB minus the event's ``t_end`` stamped just before publishing; the
map update happens before the result is sent).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from stslive.acquisition.stream import ArraySpec, RunPublisher
from stslive.live.analyser import AnalyserService, AnalyserSettings
from stslive.live.kernels import KernelOptions
from stslive.live.results_io import decode_message
from stslive.mocks.film import FilmParams, make_film


def _spectra(ny: int, nx: int) -> np.ndarray:
    film = make_film(FilmParams(ny=ny, nx=nx, seed=1))
    iy, ix = np.divmod(np.arange(ny * nx), nx)
    s = film.spectra(iy, ix)
    return np.ascontiguousarray(np.stack([s.current_A, s.lockin_x_A], axis=1), dtype=np.float32)


def _replay(n: int, rate: float | None, spectra: np.ndarray, ny: int, nx: int) -> tuple[float, np.ndarray]:
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx, header_format="msgpack")
    svc = AnalyserService(pub.pub_endpoint, bind="tcp://127.0.0.1:0", options=KernelOptions(dynes_width_eV=0.1e-3),
                          settings=AnalyserSettings(snapshot_every=10**9, publish_every_s=3600), context=ctx).start()
    pub.wait_for_subscribers(1)
    results = ctx.socket(zmq.SUB)
    results.setsockopt(zmq.RCVHWM, 0)
    results.setsockopt(zmq.SUBSCRIBE, b"pixel")
    results.connect(svc.results_endpoint)
    time.sleep(0.3)
    sets = [{"id": 0, "name": "s", "bias_setpoint_V": -0.01, "current_setpoint_A": 150e-12, "sweep_start_V": -0.04,
             "sweep_end_V": 0.04, "n_points": 1601, "lockin_amplitude_Vrms": 50e-6, "lockin_sensitivity_V": 5e-3}]
    pub.start(grid={"nx": nx, "ny": ny, "width_m": nx * 1e-9, "height_m": ny * 1e-9, "centre_x_m": 0.0,
                    "centre_y_m": 0.0}, channel_names=("Current (A)", "LI Demod 1 X (A)"), channel_units=("A", "A"),
              n_points=1601, setpoint_sets=tuple(sets), instruments={}, software_version="bench")
    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(2, 1601))})
    latencies: list[float] = []
    t0 = time.perf_counter()
    for k in range(n):
        if rate:
            target = t0 + k / rate
            while time.perf_counter() < target:
                pass
        iy, ix = divmod(k, nx)
        now = time.time()
        pub.event(arrays={"spectra": spectra[k]}, ix=ix, iy=iy, x_m=0.0, y_m=0.0, setpoint_set_id=0,
                  timestamps={"t_end": now}, temperature_before_K=0.3, temperature_after_K=0.3)
        while results.poll(0):
            _, header, _ = decode_message(results.recv_multipart())
            latencies.append(time.time() - header["result"]["time"])
    while len(latencies) < n:
        if not results.poll(30_000):
            break
        _, header, _ = decode_message(results.recv_multipart())
        latencies.append(time.time() - header["result"]["time"])
    elapsed = time.perf_counter() - t0
    svc.close()
    results.close()
    pub.close()
    ctx.term()
    return n / elapsed, np.array(latencies)


def main(n: int = 5000) -> None:
    ny, nx = 50, n // 50
    spectra = _spectra(ny, nx)
    rate, _ = _replay(spectra.shape[0], None, spectra, ny, nx)
    print(f"sustained throughput: {rate:,.0f} spectra/s of 1601 points ({spectra.shape[0]} spectra, goal >= 5,000)")
    m = min(3000, spectra.shape[0])
    _, lat = _replay(m, 1000.0, spectra, ny, nx)
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    print(f"publish-to-result latency at 1,000 spectra/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({lat.size} results, goal p99 <= 20 ms)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
