"""``stslive bench-analyser``: live analyser throughput and publish-to-result latency (issue 5 "Performance").

Replays N simulated spectra (:mod:`stslive.mocks.film`, current + lock-in, 1601 points) as a
run stream into an in-process :class:`~stslive.live.analyser.AnalyserService` and listens to its
results PUB, twice:

* at full speed: sustained throughput = N / (first publish -> last result received), spectra/s;
* at ``--rate`` spectra/s (default 1,000): latency of every pixel = arrival of its result on the
  analyser's PUB (the maps are updated before the result is sent) minus the event's ``t_end``,
  stamped just before publishing; p50 and p99 in ms.

Both runs print the analyser's own CPU time per stage (receive + decode, pixel check, analysis,
flags, model update, encode + publish, snapshots; thread CPU time, so the kernels' helper threads
on batches > 512 are not in "analyse") so a slow stage shows. The publisher runs in a child
process like the scan engine (``--in-process``: in this process, sharing the analyser's GIL, as
the first measurements did); on a busy machine the figures vary by tens of percent - say so
when quoting them.

Examples::

    stslive bench-analyser                      # 5,000 spectra full speed, 3,000 at 1,000/s
    stslive bench-analyser -n 20000 --rate 2000 --latency-n 5000
    python -m stslive.live.analyser_bench -n 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import zmq

from stslive.acquisition.stream import ArraySpec, RunPublisher
from stslive.drivers.errors import ConfigError, StreamError
from stslive.live.analyser import AnalyserService, AnalyserSettings
from stslive.live.kernels import KernelOptions
from stslive.live.results_io import decode_message
from stslive.mocks.film import FilmParams, make_film

N_POINTS = 1601
CHANNELS = ("Current (A)", "LI Demod 1 X (A)")
SET = {"id": 0, "name": "bench", "bias_setpoint_V": -0.01, "current_setpoint_A": 150e-12, "sweep_start_V": -0.04,
       "sweep_end_V": 0.04, "n_points": N_POINTS, "lockin_amplitude_Vrms": 50e-6, "lockin_sensitivity_V": 5e-3}


@dataclass
class BenchRun:
    """One replay: spectra sent, seconds from first publish to last result, latencies (s), stage times (s)."""

    n: int
    elapsed_s: float
    latencies_s: np.ndarray
    stages_s: dict[str, float] = field(default_factory=dict)
    batches: int = 0

    @property
    def throughput(self) -> float:
        """Results received per second of the replay, spectra/s."""
        return self.latencies_s.size / self.elapsed_s if self.elapsed_s > 0 else float("nan")


def film_spectra(n: int, *, seed: int = 1) -> tuple[np.ndarray, int, int]:
    """``n`` spectra (n, 2, 1601) float32 of a simulated film on a grid of 50 rows, and (ny, nx)."""
    ny = min(50, n)
    nx = -(-n // ny)
    film = make_film(FilmParams(ny=ny, nx=nx, seed=seed))
    iy, ix = np.divmod(np.arange(n), nx)
    s = film.spectra(iy, ix)
    spectra = np.ascontiguousarray(np.stack([s.current_A, s.lockin_x_A], axis=1), dtype=np.float32)
    return spectra, ny, nx


def _start_run(pub: RunPublisher, ny: int, nx: int) -> None:
    pub.start(grid={"nx": nx, "ny": ny, "width_m": nx * 1e-9, "height_m": ny * 1e-9, "centre_x_m": 0.0,
                    "centre_y_m": 0.0}, channel_names=CHANNELS, channel_units=("A", "A"), n_points=N_POINTS,
              setpoint_sets=(SET,), instruments={}, software_version="bench-analyser")
    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(len(CHANNELS), N_POINTS))})


def _publish(pub: RunPublisher, spectra: np.ndarray, nx: int, rate: float | None,
             wait: Callable[[float], None] = time.sleep) -> float:
    """Publish the events (``t_end`` stamped just before sending); returns the start time (unix s).

    At a ``rate`` each event is due at ``k / rate`` after the first; the loop waits with
    ``wait(seconds)`` (a sleep, as a scan engine waits for its instruments) and sends late events
    at once, so the schedule never drifts. It does not spin: a spinning publisher takes a whole
    core of this 2-core machine from the analyser, which a real scan engine does not.
    """
    start = time.time()
    t0 = time.perf_counter()
    for k in range(spectra.shape[0]):
        while rate and (left := t0 + k / rate - time.perf_counter()) > 0:
            wait(left)  # may return early (a result came in): wait again for what is left
        iy, ix = divmod(k, nx)
        pub.event(arrays={"spectra": spectra[k]}, ix=ix, iy=iy, x_m=0.0, y_m=0.0, setpoint_set_id=0,
                  timestamps={"t_end": time.time()}, temperature_before_K=0.3, temperature_after_K=0.3)
    return start


def _publisher_process(conn: Connection, n: int, rate: float | None) -> None:
    """Child process: bind, report the endpoint, wait for 'go', publish, report the start time."""
    spectra, ny, nx = film_spectra(n)
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx, header_format="msgpack")
    try:
        conn.send(pub.pub_endpoint)
        conn.recv()
        pub.wait_for_subscribers(1)
        _start_run(pub, ny, nx)
        conn.send(_publish(pub, spectra, nx, rate))
        conn.recv()  # keep the socket open until the parent has every result
    finally:
        pub.close()
        ctx.term()


def replay(spectra: np.ndarray, ny: int, nx: int, *, rate: float | None, options: KernelOptions,
           settings: AnalyserSettings, in_process: bool = False, timeout_s: float = 60.0) -> BenchRun:
    """Publish ``spectra`` as one run (at ``rate`` spectra/s, None: as fast as possible) and time the results.

    ``in_process``: the publisher runs in this process (sharing the GIL with the analyser, as
    the first measurements did); otherwise in a child process, as the scan engine would.
    """
    n = spectra.shape[0]
    ctx = zmq.Context()
    child = None
    pub = None
    if in_process:
        pub = RunPublisher("tcp://127.0.0.1:0", context=ctx, header_format="msgpack")
        endpoint = pub.pub_endpoint
    else:
        parent_conn, child_conn = multiprocessing.get_context("spawn").Pipe()
        child = multiprocessing.get_context("spawn").Process(target=_publisher_process, args=(child_conn, n, rate),
                                                             name="bench-publisher", daemon=True)
        child.start()
        if not parent_conn.poll(timeout_s):
            child.kill()
            raise StreamError("the benchmark publisher process did not start; see its error above")
        endpoint = parent_conn.recv()
    svc = AnalyserService(endpoint, bind="tcp://127.0.0.1:0", options=options, settings=settings, context=ctx).start()
    results = ctx.socket(zmq.SUB)
    latencies: list[np.ndarray] = []
    received = 0
    batches = 0

    def take(wait_s: float = 0.0) -> None:
        """Receive every result waiting (after up to ``wait_s`` for the first), stamping its arrival."""
        nonlocal received, batches
        timeout_ms = max(0, round(wait_s * 1000))
        while results.poll(timeout_ms):
            timeout_ms = 0
            topic, _, arrays = decode_message(results.recv_multipart())
            if topic == "pixels":
                latencies.append(time.time() - arrays["time"])
                received += arrays["time"].size
                batches += 1

    try:
        results.setsockopt(zmq.RCVHWM, 0)
        results.setsockopt(zmq.SUBSCRIBE, b"pixels")
        results.connect(svc.results_endpoint)
        time.sleep(0.3)  # let the subscription reach the analyser
        if pub is not None:
            pub.wait_for_subscribers(1)
            _start_run(pub, ny, nx)
            started = _publish(pub, spectra, nx, rate, take)
        else:
            parent_conn.send("go")
            while not parent_conn.poll(0):
                take(0.01)  # wakes on a result: its arrival is stamped at once, not at the next check
            started = parent_conn.recv()
        while received < n and results.poll(int(timeout_s * 1000)):
            take()
        elapsed = time.time() - started
        stages = svc.stage_seconds()
    finally:
        svc.close()
        results.close()
        if pub is not None:
            pub.close()
        if child is not None:
            parent_conn.send("done")
            child.join(10)
        ctx.term()
    lat = np.concatenate(latencies) if latencies else np.zeros(0)
    return BenchRun(n=n, elapsed_s=elapsed, latencies_s=lat, stages_s=stages, batches=batches)


def _stages_line(run: BenchRun) -> str:
    per = {k: v / max(1, run.latencies_s.size) * 1e6 for k, v in run.stages_s.items()}
    return ", ".join(f"{k} {v:.0f}" for k, v in per.items()) + " us/spectrum"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench-analyser``."""
    parser.add_argument("-n", type=int, default=5000, help="spectra replayed at full speed (default 5000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="rate of the latency run, spectra/s (default 1000)")
    parser.add_argument("--latency-n", type=int, default=3000, help="spectra of the latency run (default 3000)")
    parser.add_argument("--batch", type=int, default=AnalyserSettings.batch,
                        help=f"largest batch the analyser drains at once (default {AnalyserSettings.batch})")
    parser.add_argument("--in-process", action="store_true",
                        help="publish from this process (shares the GIL with the analyser; the first figures' setup)")
    parser.add_argument("--dynes-width-meV", type=float, default=None,
                        help="fixed Dynes width; default: the analyser's rule (estimated from the first spectra)")


def run(args: argparse.Namespace) -> int:
    """Run both replays and print throughput, latency p50/p99 and the stage times."""
    if args.n < 1 or args.latency_n < 1 or not args.rate > 0 or args.batch < 1:
        raise ConfigError("give -n, --latency-n, --batch >= 1 and --rate > 0 (spectra/s)")
    options = KernelOptions() if args.dynes_width_meV is None else KernelOptions(dynes_width_eV=args.dynes_width_meV * 1e-3)
    # no periodic maps/status messages and no snapshots: they are not what is measured here
    settings = AnalyserSettings(batch=args.batch, snapshot_every=10**9, publish_every_s=3600.0)
    spectra, ny, nx = film_spectra(max(args.n, args.latency_n))
    full = replay(spectra[: args.n], ny, nx, rate=None, options=options, settings=settings, in_process=args.in_process)
    print(f"sustained throughput: {full.throughput:,.0f} spectra/s of {N_POINTS} points "
          f"({full.latencies_s.size} of {full.n} results in {full.elapsed_s:.2f} s, {full.batches} batches; goal >= 5,000)")
    print(f"  analyser stages: {_stages_line(full)}")
    slow = replay(spectra[: args.latency_n], ny, nx, rate=args.rate, options=options, settings=settings,
                  in_process=args.in_process)
    if slow.latencies_s.size == 0:
        print("latency: no result received", file=sys.stderr)
        return 1
    p50, p99 = np.percentile(slow.latencies_s, [50, 99]) * 1e3
    print(f"publish-to-result latency at {args.rate:,.0f} spectra/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"({slow.latencies_s.size} of {slow.n} results, {slow.batches} batches; goal p99 <= 20 ms)")
    print(f"  analyser stages: {_stages_line(slow)}")
    return 0 if full.latencies_s.size == full.n and slow.latencies_s.size == slow.n else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m stslive.live.analyser_bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
