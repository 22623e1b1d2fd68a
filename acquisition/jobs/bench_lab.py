"""Round trips of the real drivers against the simulated instruments on loopback (a benchmark).

Contract: :func:`run_lab_benchmark` returns one :class:`Latency` row per measured call, the
baseline first: a plain socket round trip (one short line out, the same line back) to an echo
server built on the simulated instruments' own TCP base, measured in the same run so that the
driver rows can be read against the floor of this machine at this moment. The Nanonis rows go
through pyvisa-py and the Nanonis driver (``Bias.Get``; a full ``BiasSpectr.Start`` of
``points`` x 3 channels, with the film computation inside the server as a row of its own);
the lock-in rows through the SR830 driver. ``stslive bench lab`` prints them
(:mod:`stslive.acquisition.cli.bench_lab`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stslive.drivers.nanonis import NanonisController
from stslive.drivers.protocols import CURRENT_CHANNEL, LOCKIN_X_CHANNEL, SpectroscopyConfig
from stslive.drivers.sr830 import open_lockin
from stslive.drivers.visa import VisaSettings
from stslive.mocks.film import Film, FilmParams, make_film
from stslive.mocks.lab import MockLab, Sweep
from stslive.mocks.nanonis_server import NanonisServer
from stslive.mocks.sr830_server import SR830Server
from stslive.mocks.tcp import TcpServerBase

#: The instruments :func:`run_lab_benchmark` can time.
INSTRUMENTS = ("nanonis", "sr830")

#: What the baseline sends: a line as long as a typical lock-in query.
_ECHO_LINE = b"SNAP? 1,2,3,4\n"


@dataclass(frozen=True)
class Latency:
    """Percentiles of one measured call.

    Parameters
    ----------
    name
        What was timed.
    p50_s, p99_s
        Median and 99th percentile (s).
    samples
        How many calls were timed.
    """

    name: str
    p50_s: float
    p99_s: float
    samples: int

    @classmethod
    def of(cls, name: str, durations_s: list[float]) -> Latency:
        """The row of ``durations_s`` (s, at least one)."""
        p50, p99 = np.percentile(durations_s, [50, 99])
        return cls(name, float(p50), float(p99), len(durations_s))


class _EchoServer(TcpServerBase):
    """Sends every received byte straight back: the transport floor, no protocol."""

    def __init__(self) -> None:
        super().__init__("echo")

    def serve(self, conn: socket.socket) -> None:
        while chunk := conn.recv(4096):
            conn.sendall(chunk)


def socket_round_trip(*, repeats: int, warmup: int = 50) -> Latency:
    """The baseline: one short line to an echo server on loopback and back, ``TCP_NODELAY`` on."""
    durations: list[float] = []
    with _EchoServer() as server, socket.create_connection(server.address, timeout=5.0) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def exchange() -> None:
            conn.sendall(_ECHO_LINE)
            received = b""
            while len(received) < len(_ECHO_LINE):
                chunk = conn.recv(4096)
                if not chunk:
                    raise ConnectionError("the echo server closed the connection")
                received += chunk

        for _ in range(warmup):
            exchange()
        durations = [_timed(exchange) for _ in range(repeats)]
    return Latency.of("plain socket round trip (baseline)", durations)


def nanonis_round_trips(*, repeats: int, sweeps: int, points: int, seed: int = 0) -> list[Latency]:
    """``Bias.Get`` and ``BiasSpectr.Start`` through the Nanonis driver, and the film's share of a Start."""
    lab = _TimedLab(make_film(FilmParams(ny=8, nx=8, seed=seed)), seed=seed, speed=0.0)
    config = SpectroscopyConfig((CURRENT_CHANNEL, LOCKIN_X_CHANNEL), -0.04, 0.04, points)
    with NanonisServer(lab) as server, NanonisController(VisaSettings(server.resource, timeout_s=10)) as stm:
        stm.configure_spectroscopy(config)
        query = [_timed(stm.get_bias) for _ in range(repeats)]
        start = [_timed(lambda: stm.call("BiasSpectr.Start", 1, "", idempotent=False)) for _ in range(sweeps)]
    return [
        Latency.of("nanonis Bias.Get", query),
        Latency.of(f"nanonis BiasSpectr.Start ({points} x 3 channels)", start),
        Latency.of("  of which the film model in the server", lab.sweep_s),
    ]


def lockin_round_trips(*, repeats: int, warmup: int = 50) -> list[Latency]:
    """SR830 driver calls: a query, a snapshot, a verified set and the compound status line."""
    rows: list[Latency] = []
    with SR830Server() as server, open_lockin(VisaSettings(server.resource, timeout_s=2.0)) as lockin:
        calls: dict[str, Callable[[], object]] = {
            "sr830 FREQ? (get_frequency)": lockin.get_frequency,
            "sr830 SNAP? 1,2,3,4 (read)": lockin.read,
            "sr830 OFLT 5 + *ESR? (set_time_constant)": lambda: lockin.set_time_constant(3e-3),
            "sr830 LIAS?;ERRS?;*ESR? (status)": lockin.status,
        }
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            rows.append(Latency.of(name, [_timed(call) for _ in range(repeats)]))
    return rows


def run_lab_benchmark(
    *,
    instruments: tuple[str, ...] = INSTRUMENTS,
    repeats: int = 500,
    sweeps: int = 100,
    points: int = 1601,
    seed: int = 0,
) -> list[Latency]:
    """The baseline, then the rows of each instrument in ``instruments`` (see the module notes).

    Parameters
    ----------
    instruments
        Any of :data:`INSTRUMENTS`.
    repeats
        Timed calls per query row (and of the baseline).
    sweeps
        Timed ``BiasSpectr.Start`` calls.
    points
        Points per sweep.
    seed
        Seed of the simulated film.
    """
    unknown = sorted(set(instruments) - set(INSTRUMENTS))
    if unknown:
        raise ValueError(f"unknown instrument(s) {unknown}; known: {list(INSTRUMENTS)}")
    rows = [socket_round_trip(repeats=repeats)]
    if "nanonis" in instruments:
        rows += nanonis_round_trips(repeats=repeats, sweeps=sweeps, points=points, seed=seed)
    if "sr830" in instruments:
        rows += lockin_round_trips(repeats=repeats)
    return rows


def format_rows(rows: list[Latency]) -> str:
    """A table of the rows with each p50 as a multiple of the first row's (the baseline)."""
    base = rows[0].p50_s
    width = max(len(r.name) for r in rows)
    lines = [f"{'call':{width}s}  {'p50 ms':>8s}  {'p99 ms':>8s}  {'p50 / baseline':>14s}  {'n':>5s}"]
    for r in rows:
        lines.append(
            f"{r.name:{width}s}  {r.p50_s * 1e3:8.3f}  {r.p99_s * 1e3:8.3f}  {r.p50_s / base:14.1f}  {r.samples:5d}"
        )
    return "\n".join(lines)


class _TimedLab(MockLab):
    """A lab that records how long each simulated sweep takes to compute (s)."""

    def __init__(self, film: Film, **kwargs: Any) -> None:
        super().__init__(film, **kwargs)
        self.sweep_s: list[float] = []

    def run_sweep(self) -> Sweep:
        t0 = time.perf_counter()
        try:
            return super().run_sweep()
        finally:
            self.sweep_s.append(time.perf_counter() - t0)


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0
