"""``stslive watch``: a .3ds followed while a writer appends records the way the controller does.

The writer (a thread, or the test itself) writes the header, then one record per grid point with
pauses, and flushes one record in two halves; the watch must publish each point once, only when
its record is complete, with the documents a replay of the finished file sends.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from nanonis_samples import film_grid

from stslive.acquisition.formats.documents import EventDoc, HeartbeatDoc, StartDoc, StopDoc
from stslive.acquisition.formats.nanonis3ds import HEADER_END
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.acquisition.replay import open_replay
from stslive.acquisition.watch import watch
from stslive.live.flag_config import FlagConfig
from stslive.live.kernels import KernelOptions
from stslive.live.run_context import PixelInput, RunContext

NX, NY = 5, 4
HEADER = {
    "Lock-in>Lock-in status": "ON",
    "Lock-in>Modulated signal": '"Bias (V)"',
    "Lock-in>Amplitude": "70E-6",
    "Bias Spectroscopy>Lock-In run": "TRUE",
}


class ControllerWriter(threading.Thread):
    """Writes ``complete`` the way Nanonis does: header, then records with pauses; record
    ``split`` in two halves ``half_pause_s`` apart. ``written[k]`` = when record k was complete."""

    def __init__(self, path: Path, complete: bytes, *, stop_after: int | None = None, pause_s: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.path, self.pause_s = path, pause_s
        end = complete.index(HEADER_END) + len(HEADER_END)
        self.header, body = complete[:end], complete[end:]
        self.record = len(body) // (NX * NY)
        self.records = [body[k * self.record : (k + 1) * self.record] for k in range(NX * NY)][:stop_after]
        self.split, self.half_pause_s = 7, 0.4
        self.written: dict[int, float] = {}

    def run(self) -> None:
        with open(self.path, "wb") as fh:
            fh.write(self.header[:100])  # even the header arrives in pieces
            fh.flush()
            time.sleep(self.pause_s)
            fh.write(self.header[100:])
            fh.flush()
            for k, record in enumerate(self.records):
                time.sleep(self.pause_s)
                if k == self.split:
                    fh.write(record[: self.record // 2])
                    fh.flush()
                    time.sleep(self.half_pause_s)
                    fh.write(record[self.record // 2 :])
                else:
                    fh.write(record)
                fh.flush()
                self.written[k] = time.monotonic()


@pytest.fixture(scope="module")
def grid_bytes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path, _ = film_grid(tmp_path_factory.mktemp("watch") / "done.3ds", nx=NX, ny=NY, header=HEADER)
    return path, path.read_bytes()


def _follow(path: Path, **kwargs: object) -> tuple[list, list[float], object]:
    """Run :func:`watch` in a thread; every document a SUB receives, and when it arrived."""
    ctx = zmq.Context()
    docs: list = []
    arrived: list[float] = []
    result: dict[str, object] = {}
    try:
        with RunPublisher("tcp://127.0.0.1:0", context=ctx) as pub:
            sub = RunSubscriber(pub.pub_endpoint, context=ctx)
            try:
                pub.wait_for_subscribers(1, timeout_s=10)
                thread = threading.Thread(
                    target=lambda: result.setdefault("stop", watch(path, pub, poll_s=0.01, **kwargs)), daemon=True
                )
                thread.start()
                for doc in sub.iter(idle_timeout_s=20, until_stop=True):
                    docs.append(doc)
                    arrived.append(time.monotonic())
                thread.join(20)
            finally:
                sub.close()
    finally:
        ctx.term()
    return docs, arrived, result.get("stop")


def test_watch_publishes_each_point_once_when_its_record_is_complete(
    grid_bytes: tuple[Path, bytes], tmp_path: Path
) -> None:
    done, complete = grid_bytes
    live = tmp_path / "live.3ds"
    writer = ControllerWriter(live, complete)
    writer.start()
    docs, arrived, _ = _follow(live)
    writer.join(10)
    waiting = [d for d in docs if isinstance(d, HeartbeatDoc) and d.run_uid is None]
    assert waiting and "waiting for" in waiting[0].message  # heartbeats before the run starts
    start = next(d for d in docs if isinstance(d, StartDoc))
    assert isinstance(docs[-1], StopDoc)
    assert docs[-1].exit_status == "success" and "complete" in docs[-1].reason
    events = [(d, t) for d, t in zip(docs, arrived, strict=True) if isinstance(d, EventDoc)]
    assert [(e.iy, e.ix) for e, _ in events] == [divmod(k, NX) for k in range(NX * NY)]  # each once, in order
    # the half-written record was published only after its second half reached the file
    split_event = events[writer.split][1]
    assert split_event >= writer.written[writer.split]
    assert split_event - writer.written[writer.split - 1] >= writer.half_pause_s
    # the same documents a replay of the finished file sends: the analyser and the screen cannot tell
    with open_replay(done) as replayed:
        fields = replayed.start_fields
        expected = list(replayed.events())
    assert start.grid == fields["grid"] and list(start.channel_names) == fields["channel_names"]
    assert list(start.setpoint_sets) == fields["setpoint_sets"] and start.n_points == fields["n_points"]
    assert start.metadata["watch_of"] == str(live) and start.metadata["conditions"] == fields["metadata"]["conditions"]
    for (got, _), want in zip(events, expected, strict=True):
        np.testing.assert_array_equal(got.arrays["spectra"], want.arrays["spectra"])
        assert (got.x_m, got.y_m, got.z_m) == (want.x_m, want.y_m, want.z_m)
    # and the live analyser takes them as they come
    ctx = RunContext("w", start.body(), options=KernelOptions(), flag_config=FlagConfig())
    ctx.process([PixelInput.from_event(e) for e, _ in events])
    ctx.finish()
    assert ctx.model.maps["measured"].all() and ctx.model.maps["valid"].sum() >= NX * NY - 1


def test_watch_ends_on_stop_and_on_idle(grid_bytes: tuple[Path, bytes], tmp_path: Path) -> None:
    _, complete = grid_bytes
    stopped = tmp_path / "stopped.3ds"
    writer = ControllerWriter(stopped, complete, stop_after=6)  # the operator stopped the grid
    writer.start()
    _, _, stop = _follow(stopped, idle_timeout_s=1.0)
    assert isinstance(stop, StopDoc) and stop.exit_status == "abort" and "nothing appended" in stop.reason
    assert stop.counts["event"] == 6
    flag = threading.Event()
    late = tmp_path / "never.3ds"
    threading.Timer(0.5, flag.set).start()
    with RunPublisher("tcp://127.0.0.1:0") as pub:
        assert watch(late, pub, poll_s=0.05, stop=flag) is None  # Ctrl-C before the first point: no run


def test_cli_watch(grid_bytes: tuple[Path, bytes], tmp_path: Path) -> None:
    _, complete = grid_bytes
    live = tmp_path / "cli.3ds"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "stslive.acquisition.cli", "watch", str(live), "--bind", "tcp://127.0.0.1:0"),
            *("--poll", "0.02", "--wait-subscribers", "1", "--wait-timeout", "20"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "stream", line
        sub = RunSubscriber(line[1])
        try:
            deadline = time.monotonic() + 20
            while sub.poll(0.1) is None and time.monotonic() < deadline and proc.poll() is None:
                pass  # the watcher heartbeats while it waits for the file; then the writer starts
            writer = ControllerWriter(live, complete, pause_s=0.01)
            writer.start()
            docs = list(sub.iter(idle_timeout_s=20, until_stop=True))
        finally:
            sub.close()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert sum(isinstance(d, EventDoc) for d in docs) == NX * NY
    assert f"watched {NX * NY} points" in out and "success" in out
