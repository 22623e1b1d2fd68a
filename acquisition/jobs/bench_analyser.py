"""Live analyser throughput and publish-to-result latency (``stslive bench analyser``).

Replays N simulated spectra (:mod:`stslive.mocks.film`, current + lock-in, 1601 points) as a
run stream into an in-process :class:`~stslive.live.analyser.AnalyserService` and listens to its
results PUB from a child process (as a control-room screen would), twice:

* at full speed: sustained throughput = N / (first publish -> last result received), spectra/s,
  and, in the same run, the baseline: what a bare subscriber (receive + decode, no analysis)
  takes from the same publisher, with the analyser's share of it;
* at ``--rate`` spectra/s (default 1,000): latency of every pixel = arrival of its result at the
  listener (the maps are updated before the result is sent) minus the event's ``t_end``,
  stamped just before publishing (one machine, one clock); p50 and p99 in ms.

Both runs print the analyser's own CPU time per stage (receive + decode, pixel check, analysis,
flags, model update, encode + publish, snapshots; thread CPU time, so the kernels' helper threads
on batches > 512 are not in "analyse") so a slow stage shows. The publisher runs in a child
process like the scan engine (``in_process``: in this process, sharing the analyser's GIL); on a
busy machine the figures vary by tens of percent - say so when quoting them.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import zmq

from stslive.acquisition.formats.documents import ArraySpec, EventDoc
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import SetpointSet
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.drivers.errors import ConfigError, StreamError
from stslive.live.analyser import AnalyserService, AnalyserSettings, settle_gc
from stslive.live.kernels import KernelOptions
from stslive.live.pipeline import calibrate_options
from stslive.live.results_io import decode_message
from stslive.mocks.film import FilmParams, make_film

N_POINTS = 1601
CHANNELS = ("Current (A)", "LI Demod 1 X (A)")
SET = {
    "id": 0,
    "name": "bench",
    "bias_setpoint_V": -0.01,
    "current_setpoint_A": 150e-12,
    "sweep_start_V": -0.04,
    "sweep_end_V": 0.04,
    "n_points": N_POINTS,
    "lockin_amplitude_Vrms": 50e-6,
    "lockin_sensitivity_V": 5e-3,
}


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
    pub.start(
        grid={"nx": nx, "ny": ny, "width_m": nx * 1e-9, "height_m": ny * 1e-9, "centre_x_m": 0.0, "centre_y_m": 0.0},
        channel_names=CHANNELS,
        channel_units=("A", "A"),
        n_points=N_POINTS,
        setpoint_sets=(SET,),
        instruments={},
        software_version="bench-analyser",
    )
    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(len(CHANNELS), N_POINTS))})


def _publish(pub: RunPublisher, spectra: np.ndarray, nx: int, rate: float | None) -> float:
    """Publish the events (``t_end`` stamped just before sending); returns the start time (unix s).

    At a ``rate`` each event is due at ``k / rate`` after the first; the loop sleeps until then
    (as a scan engine waits for its instruments) and sends late events at once, so the schedule
    never drifts. It does not spin: a spinning publisher takes a whole
    core of this 2-core machine from the analyser, which a real scan engine does not.
    """
    start = time.time()
    t0 = time.perf_counter()
    for k in range(spectra.shape[0]):
        while rate and (left := t0 + k / rate - time.perf_counter()) > 0:
            time.sleep(left)
        iy, ix = divmod(k, nx)
        pub.event(
            arrays={"spectra": spectra[k]},
            ix=ix,
            iy=iy,
            x_m=0.0,
            y_m=0.0,
            setpoint_set_id=0,
            timestamps={"t_end": time.time()},
            temperature_before_K=0.3,
            temperature_after_K=0.3,
        )
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


def _listener_process(conn: Connection, endpoint: str, n: int, timeout_s: float) -> None:
    """Child process, as a control-room screen is: subscribe to the results, stamp each ``pixels``
    message on arrival, send back (latencies s, messages, last arrival unix s) once ``n`` results
    came or none came for ``timeout_s``.

    Not in the analyser's process: a listener thread there needs the GIL to stamp a message and
    waits for it behind the analysis (up to the 5 ms switch interval), which is no latency of the
    analyser's.
    """
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"pixels")
        sub.connect(endpoint)
        conn.send("subscribed")
        latencies: list[np.ndarray] = []
        received = batches = 0
        last = math.nan
        while received < n and sub.poll(int(timeout_s * 1000)):
            frames = sub.recv_multipart()
            now = time.time()
            topic, _, arrays = decode_message(frames)
            if topic == "pixels":
                latencies.append(now - arrays["time"])
                received += arrays["time"].size
                batches += 1
                last = now
        conn.send((np.concatenate(latencies) if latencies else np.zeros(0), batches, last))
    finally:
        sub.close(linger=0)
        ctx.term()


def _child(
    target: Callable[..., None], name: str, *args: object
) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    spawn = multiprocessing.get_context("spawn")
    parent_conn, child_conn = spawn.Pipe()
    child = spawn.Process(target=target, args=(child_conn, *args), name=name, daemon=True)
    child.start()
    return child, parent_conn


def _first_reply(child: multiprocessing.process.BaseProcess, conn: Connection, timeout_s: float) -> Any:
    """The next object ``child`` sends on ``conn`` (whatever the protocol step carries)."""
    if not conn.poll(timeout_s):
        child.kill()
        raise StreamError(
            f"the benchmark's {child.name} process did not answer within {timeout_s:g} s; see its error above"
        )
    return conn.recv()


def replay(
    spectra: np.ndarray,
    ny: int,
    nx: int,
    *,
    rate: float | None,
    options: KernelOptions,
    settings: AnalyserSettings,
    in_process: bool = False,
    timeout_s: float = 60.0,
) -> BenchRun:
    """Publish ``spectra`` as one run (at ``rate`` spectra/s, None: as fast as possible) and time the results.

    The analyser runs in this process (its stage times are read here); the results are stamped
    in a listener child process. ``in_process``: the publisher runs in this process too
    (sharing the GIL with the analyser, as the first measurements did); otherwise in a child
    process, as the scan engine would.
    """
    n = spectra.shape[0]
    ctx = zmq.Context()
    children: list[tuple[multiprocessing.process.BaseProcess, Connection | None]] = []
    pub = None
    try:
        if in_process:
            pub = RunPublisher("tcp://127.0.0.1:0", context=ctx, header_format="msgpack")
            endpoint = pub.pub_endpoint
        else:
            publisher, pub_conn = _child(_publisher_process, "publisher", n, rate)
            children.append((publisher, pub_conn))
            endpoint = _first_reply(publisher, pub_conn, timeout_s)
        svc = AnalyserService(
            str(endpoint), bind="tcp://127.0.0.1:0", options=options, settings=settings, context=ctx
        ).start()
        settle_gc()  # as `stslive analyser` does
        try:
            listener, listen_conn = _child(_listener_process, "listener", svc.results_endpoint, n, timeout_s)
            children.append((listener, None))  # it ends by itself once it has sent its figures
            _first_reply(listener, listen_conn, timeout_s)
            time.sleep(0.3)  # let the subscription reach the analyser
            if pub is not None:
                pub.wait_for_subscribers(1)
                _start_run(pub, ny, nx)
                started = _publish(pub, spectra, nx, rate)
            else:
                pub_conn.send("go")
                started = _first_reply(publisher, pub_conn, timeout_s + n / (rate or n))
            lat, batches, last = _first_reply(listener, listen_conn, timeout_s + n / (rate or n) + timeout_s)
            stages = svc.stage_seconds()
        finally:
            svc.close()
    finally:
        if pub is not None:
            pub.close()
        for child, conn in children:
            if conn is not None and child.is_alive():
                conn.send("done")  # the publisher keeps its socket open until every result is in
            child.join(10)
        ctx.term()
    return BenchRun(n=n, elapsed_s=float(last) - float(started), latencies_s=lat, stages_s=stages, batches=batches)


def bare_stream(n: int, *, timeout_s: float = 60.0) -> float:
    """The baseline: spectra/s a bare :class:`RunSubscriber` takes from the same publisher child
    (receive + decode + seq tracking, nothing analysed, nothing sent on) - the floor the
    analyser's throughput is compared with in the same run."""
    ctx = zmq.Context()
    publisher, conn = _child(_publisher_process, "publisher", n, None)
    try:
        sub = RunSubscriber(str(_first_reply(publisher, conn, timeout_s)), context=ctx, hwm=0)
        try:
            time.sleep(0.3)  # the subscription reaches the publisher (which also waits for it)
            conn.send("go")
            events, last = 0, math.nan
            while events < n and (doc := sub.poll(timeout_s)) is not None:
                if isinstance(doc, EventDoc):
                    events += 1
                    last = time.time()
            started = _first_reply(publisher, conn, timeout_s)
        finally:
            sub.close()
        if events < n:
            raise StreamError(f"bare stream: {events} of {n} events arrived")
        return n / (last - float(started))
    finally:
        if publisher.is_alive():
            conn.send("done")
        publisher.join(10)
        ctx.term()


def _stages_line(run: BenchRun) -> str:
    per = {k: v / max(1, run.latencies_s.size) * 1e6 for k, v in run.stages_s.items()}
    return ", ".join(f"{k} {v:.0f}" for k, v in per.items()) + " us/spectrum"


def bench_analyser(
    *,
    n: int = 10000,
    latency_n: int = 3000,
    rate: float = 1000.0,
    batch: int = AnalyserSettings.batch,
    in_process: bool = False,
    dynes_width_meV: float | None = None,
    calibrated: bool = False,
    log: Callable[[str], None] = print,
) -> bool:
    """Both replays and the bare-stream baseline; logs throughput, its ratio to the baseline,
    latency p50/p99 and the stage times. True when every result of both replays arrived.

    Parameters
    ----------
    n
        Spectra replayed at full speed.
    latency_n
        Spectra of the latency run.
    rate
        Rate of the latency run (spectra/s).
    batch
        Largest batch the analyser drains at once.
    in_process
        Publish from this process (sharing the GIL with the analyser).
    dynes_width_meV
        Fixed Dynes width (meV); None: the analyser's own rule (estimated from the first spectra).
    calibrated
        Calibrate the analysis (gap, width, smoothing) on the film's first ``KernelOptions.chunk``
        spectra before the replays, as a run given its calibration does: no provisional results.
        Without it the analyser's own rule runs: provisional results at once, and all of them
        analysed again when the calibration is fixed, which delays the results that follow.
    log
        Receives each line of the report.

    Raises
    ------
    ConfigError
        A count or the batch below 1, or a rate not > 0.
    """
    if n < 1 or latency_n < 1 or not rate > 0 or batch < 1:
        raise ConfigError("give -n, --latency-n, --batch >= 1 and --rate > 0 (spectra/s)")
    options = KernelOptions() if dynes_width_meV is None else KernelOptions(dynes_width_eV=dynes_width_meV * 1e-3)
    # no periodic maps/status messages and no snapshots: they are not what is measured here
    settings = AnalyserSettings(batch=batch, snapshot_every=10**9, publish_every_s=3600.0)
    spectra, ny, nx = film_spectra(max(n, latency_n))
    if calibrated:
        sset = SetpointSet.from_dict(SET)
        instrument = options.with_instrument(temperature_K=None, modulation_Vrms=sset.lockin_amplitude_Vrms)
        options = calibrate_options(sset.bias_axis, spectra[: options.chunk], list(CHANNELS), options=instrument)
        log(f"calibrated before the replays on the first {options.chunk} spectra (no provisional results)")
    else:
        log("the analyser's own calibration: provisional results, all analysed again once it is fixed")
    full = replay(spectra[:n], ny, nx, rate=None, options=options, settings=settings, in_process=in_process)
    log(
        f"sustained throughput: {full.throughput:,.0f} spectra/s of {N_POINTS} points "
        f"({full.latencies_s.size} of {full.n} results in {full.elapsed_s:.2f} s, {full.batches} batches; "
        "goal >= 5,000)"
    )
    log(f"  analyser stages: {_stages_line(full)}")
    floor = bare_stream(n)
    log(
        f"  baseline, same run: the bare stream (receive + decode, nothing analysed) takes {floor:,.0f} spectra/s; "
        f"the analyser reaches {full.throughput / floor:.0%} of it"
    )
    slow = replay(spectra[:latency_n], ny, nx, rate=rate, options=options, settings=settings, in_process=in_process)
    if slow.latencies_s.size == 0:
        log("latency: no result received")
        return False
    p50, p99 = np.percentile(slow.latencies_s, [50, 99]) * 1e3
    log(
        f"publish-to-result latency at {rate:,.0f} spectra/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"({slow.latencies_s.size} of {slow.n} results, {slow.batches} batches; goal p99 <= 20 ms)"
    )
    log(f"  analyser stages: {_stages_line(slow)}")
    return bool(full.latencies_s.size == full.n and slow.latencies_s.size == slow.n)
