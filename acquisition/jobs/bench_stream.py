"""The run stream's benchmark: throughput, latency and HWM losses against raw pyzmq in the same run.

Each measurement runs a publisher in a child process and the consumer here, over loopback TCP.
The stslive path publishes events with :class:`~stslive.acquisition.formats.publisher.RunPublisher`
and receives them with :class:`~stslive.acquisition.formats.subscriber.RunSubscriber` (encode,
decode, validation, seq tracking); the baseline sends the very frames of an encoded event
(``[topic, header, array]``, same sizes) through bare pyzmq sockets, decoding nothing. So the
ratio of the two is what the stream's code costs over ZeroMQ itself on this machine. The command
line is ``stslive bench stream`` (:mod:`stslive.acquisition.cli.bench_stream`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import zmq

from stslive.acquisition.formats.codec import HeaderFormat
from stslive.acquisition.formats.documents import ArraySpec, EventDoc, HeartbeatDoc, StopDoc, encode
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.subscriber import RunSubscriber

LOCAL = "tcp://127.0.0.1:0"
Mode = Literal["sub", "pull"]
_END = b"stslive.bench.end"


@dataclass(frozen=True)
class Case:
    """One measurement: who sends (``stslive`` or ``raw`` pyzmq), over what, how many, how fast.

    ``rate_hz`` 0 is as fast as possible; ``busy_s`` keeps the consumer away while the burst
    arrives (what a high-water mark of ``hwm`` messages then drops).
    """

    sender: Literal["stslive", "raw"]
    mode: Mode
    header_format: HeaderFormat
    n: int
    rate_hz: float
    n_channels: int
    n_points: int
    hwm: int = 100_000
    busy_s: float = 0.0


@dataclass(frozen=True)
class Result:
    """What the consumer saw: events received of ``case.n``, rate (msg/s) and one-way latency (us)."""

    case: Case
    received: int
    gaps: int
    msg_per_s: float
    p50_us: float
    p99_us: float

    @property
    def lost(self) -> int:
        return self.case.n - self.received


def _start_fields(case: Case) -> dict[str, Any]:
    names = tuple(f"Channel {i} (A)" for i in range(case.n_channels))
    return {
        "grid": {"nx": case.n, "ny": 1, "centre_x_m": 0.0, "centre_y_m": 0.0, "width_m": 1e-7, "height_m": 1e-9},
        "channel_names": names,
        "channel_units": ("A",) * case.n_channels,
        "n_points": case.n_points,
        "setpoint_sets": ({"id": 0},),
        "instruments": {"stm": "benchmark"},
        "software_version": "benchmark",
    }


def _event(case: Case) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fields and arrays of the one event sent over and over (a measured pixel's worth of data)."""
    spectra = np.random.default_rng(0).normal(size=(case.n_channels, case.n_points)).astype(np.float32)
    t = time.time()
    fields = {
        "ix": 0,
        "iy": 0,
        "x_m": 0.0,
        "y_m": 0.0,
        "setpoint_set_id": 0,
        "timestamps": {"t_start": t, "t_sweep_start": t, "t_sweep_end": t, "t_end": t},
        "temperature_before_K": 0.3,
        "temperature_after_K": 0.3,
        "z_m": 1e-10,
    }
    return fields, {"spectra": spectra}


def _pace(t0: float, i: int, rate_hz: float) -> None:
    if rate_hz:
        while time.perf_counter() < t0 + i / rate_hz:
            pass  # busy-wait: sleep() granularity (~60 us and more) would distort the pacing


def _publish_stslive(case: Case, queue: Any, done: Any) -> None:
    pub_ep, push_ep = (LOCAL, None) if case.mode == "sub" else (None, LOCAL)
    with RunPublisher(pub_ep, push_endpoint=push_ep, header_format=case.header_format, hwm=case.hwm) as pub:
        queue.put(pub.pub_endpoint or pub.push_endpoint)
        if case.mode == "sub":
            pub.wait_for_subscribers(1, timeout_s=30)
        pub.start(**_start_fields(case))
        pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(case.n_channels, case.n_points))})
        fields, arrays = _event(case)
        t0 = time.perf_counter()
        for i in range(case.n):
            _pace(t0, i, case.rate_hz)
            pub.event(arrays=arrays, **fields)
        pub.stop()
        pub.flush(timeout_s=30)
        while not done.is_set():  # idle heartbeats until the consumer is done: they reveal a lost stop
            pub.heartbeat()
            time.sleep(0.05)


def _publish_raw(case: Case, queue: Any, done: Any) -> None:
    fields, arrays = _event(case)
    topic, header, array = encode(
        EventDoc(run_uid="r" * 32, seq=0, descriptor_uid="d" * 32, arrays=arrays, **fields),
        header_format=case.header_format,
    )
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB if case.mode == "sub" else zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, case.hwm)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.bind(LOCAL)
    queue.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    if case.mode == "sub" and not sock.poll(30_000):  # the subscription: nothing sent before it arrives
        raise TimeoutError("no subscriber within 30 s")
    if case.mode == "sub":
        sock.recv()
    t0 = time.perf_counter()
    for i in range(case.n):
        _pace(t0, i, case.rate_hz)
        # the send time rides in the first 8 bytes of the array frame: same frame sizes as an event
        sock.send_multipart([topic, header, struct.pack("<d", time.time()) + array[8:]])
    while not done.is_set():  # repeated: at the HWM one end marker may be dropped like any message
        with contextlib.suppress(zmq.Again):  # a PUSH whose consumer has gone
            sock.send_multipart([_END], flags=zmq.NOBLOCK)
        time.sleep(0.05)
    sock.close()
    ctx.term()


def _publisher(case: Case, queue: Any, done: Any) -> None:
    """Child process entry: publish ``case``."""
    (_publish_stslive if case.sender == "stslive" else _publish_raw)(case, queue, done)


def _receive_stslive(case: Case, endpoint: str) -> tuple[list[float], list[float], int]:
    arrivals, latencies = [], []
    with RunSubscriber(endpoint, mode=case.mode, hwm=case.hwm) as sub:
        time.sleep(case.busy_s)  # a consumer busy elsewhere while the burst arrives
        while (doc := sub.poll(10)) is not None:
            now = time.time()
            if isinstance(doc, EventDoc):
                arrivals.append(time.perf_counter())
                latencies.append(now - doc.time)
            if isinstance(doc, StopDoc) or (isinstance(doc, HeartbeatDoc) and doc.run_uid is None):
                break
        gaps = sum(g.size for g in sub.gaps(sub.runs[0])) if sub.runs else 0
    return arrivals, latencies, gaps


def _receive_raw(case: Case, endpoint: str) -> tuple[list[float], list[float], int]:
    arrivals, latencies = [], []
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if case.mode == "sub" else zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, case.hwm)
    if case.mode == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    time.sleep(case.busy_s)
    while sock.poll(10_000):
        frames = sock.recv_multipart()
        now = time.time()
        if frames[0] == _END:
            break
        arrivals.append(time.perf_counter())
        latencies.append(now - struct.unpack_from("<d", frames[2])[0])
    sock.close(linger=0)
    ctx.term()
    return arrivals, latencies, 0


def measure(case: Case) -> Result:
    """Run one case: a publisher child process, this process consuming."""
    mp = multiprocessing.get_context("spawn")
    queue, done = mp.Queue(), mp.Event()
    child = mp.Process(target=_publisher, args=(case, queue, done), daemon=True)
    child.start()
    try:
        endpoint = queue.get(timeout=60)
        receive = _receive_stslive if case.sender == "stslive" else _receive_raw
        arrivals, latencies, gaps = receive(case, endpoint)
    finally:
        done.set()
        child.join(30)
        if child.is_alive():
            child.kill()
    lat_us = np.array(latencies or [np.nan]) * 1e6
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return Result(
        case=case,
        received=len(arrivals),
        gaps=gaps,
        msg_per_s=(len(arrivals) - 1) / span if span > 0 else float("nan"),
        p50_us=float(np.percentile(lat_us, 50)),
        p99_us=float(np.percentile(lat_us, 99)),
    )


def run_benchmark(
    *,
    events: int = 20_000,
    latency_events: int = 5_000,
    rate_hz: float = 1000.0,
    n_channels: int = 3,
    n_points: int = 1601,
    formats: tuple[HeaderFormat, ...] = ("json", "msgpack"),
    busy_s: float = 5.0,
    out: Callable[[str], None] = print,
) -> list[Result]:
    """Every measurement of ``stslive bench stream``, each stslive figure beside its raw baseline.

    Parameters
    ----------
    events
        Events per throughput burst (sent as fast as possible).
    latency_events
        Events per latency run at ``rate_hz`` (msg/s); 0 skips the latency runs.
    n_channels, n_points
        Shape of each event's float32 spectra.
    formats
        Header formats of the stslive path.
    busy_s
        Consumer pause (s) during a burst at HWM 1000 and 100,000; 0 skips the HWM runs.
    out
        Where the table lines go.
    """
    kb = n_channels * n_points * 4 / 1000
    out(f"stream benchmark: events of {n_channels} x {n_points} float32 ({kb:.1f} kB of arrays), loopback TCP")
    out("baseline 'raw': the same frames through bare pyzmq sockets, nothing encoded or decoded")
    results: list[Result] = []

    def pair(case: Case) -> tuple[Result, Result]:
        raw = measure(replace(case, sender="raw"))
        ours = measure(case)
        results.extend((raw, ours))
        return raw, ours

    base = Case("stslive", "sub", "json", events, 0.0, n_channels, n_points)
    bursts: tuple[tuple[Mode, tuple[HeaderFormat, ...]], ...] = (("sub", formats), ("pull", formats[-1:]))
    for mode, fmts in bursts:
        for fmt in fmts:
            raw, ours = pair(replace(base, mode=mode, header_format=fmt))
            out(
                f"{'PUB/SUB' if mode == 'sub' else 'PUSH/PULL':9s} {fmt:7s} full speed: stslive "
                f"{ours.msg_per_s:9,.0f} msg/s, raw {raw.msg_per_s:9,.0f} msg/s "
                f"(stslive/raw {ours.msg_per_s / raw.msg_per_s:.2f}); lost {ours.lost} / raw {raw.lost} of {events}"
            )
    if latency_events:
        for fmt in formats:
            raw, ours = pair(replace(base, header_format=fmt, n=latency_events, rate_hz=rate_hz))
            out(
                f"PUB/SUB   {fmt:7s} at {rate_hz:,.0f} msg/s: one-way latency p50 {ours.p50_us:.0f} us, "
                f"p99 {ours.p99_us:.0f} us (raw p50 {raw.p50_us:.0f} us, p99 {raw.p99_us:.0f} us); "
                f"lost {ours.lost} / raw {raw.lost}"
            )
    if busy_s:
        for hwm in (1000, 100_000):
            raw, ours = pair(replace(base, header_format=formats[-1], hwm=hwm, busy_s=busy_s))
            out(
                f"PUB/SUB   HWM {hwm:>7,}, burst while the consumer is busy {busy_s:g} s: stslive lost "
                f"{ours.lost} of {events} ({ours.gaps} documents reported as gaps), raw lost {raw.lost}"
            )
    return results
