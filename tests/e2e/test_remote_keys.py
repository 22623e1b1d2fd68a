"""Remote monitoring with CURVE keys end to end, on 127.0.0.1 only.

A scan runs against the in-process simulated lab with ``[stream] keys``; the analyser is a real
``stslive analyser --keys --client`` process reading the keyed run stream and publishing its
results with keys; ``stslive control`` runs as a real process with a viewer key (refused: no
reply, the error names authentication) and a controller key (obeyed); the viewer's
``StreamSource`` and ``stslive view --keys --client`` follow the analyser with a viewer key, and an
unknown key gets nothing.
Nothing binds or sends beyond loopback: CURVE is required on loopback because keys are given.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.auth

from stslive.acquisition.cli import main
from stslive.acquisition.control import send_command
from stslive.acquisition.formats.documents import EventDoc, HeartbeatDoc
from stslive.acquisition.formats.security import Security
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.scan import run_scan
from stslive.drivers.errors import InstrumentTimeout, StreamError
from stslive.live.viewer.stream_source import StreamSource
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

pytestmark = pytest.mark.timeout(180)
N = 6  # grid N x N
CLI = [sys.executable, "-m", "stslive.acquisition.cli"]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stslive keys``: server, viewers 'screen' and 'analyser', controller 'alice'; an outsider pair beside."""
    root = tmp_path_factory.mktemp("keys")
    assert main(["keys", "--dir", str(root)]) == 0
    for name, role in (("screen", "viewer"), ("analyser", "viewer"), ("alice", "control")):
        assert main(["keys", "--dir", str(root), "--client", name, "--role", role]) == 0
    (root / "outsider").mkdir()
    zmq.auth.create_certificates(root / "outsider", "mallory")
    return root


def outsider(keydir: Path) -> Security:
    return Security(client_secret=keydir / "outsider" / "mallory.key_secret", server_public=keydir / "server.key")


def _lines(stream: Any, into: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)


def _wait_line(lines: queue.Queue, pattern: str, timeout_s: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; got {seen}")


def _docs(sub: RunSubscriber, seconds: float) -> list[Any]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        doc = sub.poll(0.05)
        if doc is not None:
            out.append(doc)
    return out


def control(keydir: Path, endpoint: str, client: str, command: str) -> subprocess.CompletedProcess[str]:
    """``stslive control`` as a real process with the key pair ``client``."""
    return subprocess.run(
        [
            *CLI,
            "control",
            "--connect",
            endpoint,
            "--keys",
            str(keydir),
            "--client",
            client,
            "--timeout",
            "1.5",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


Analyser = Callable[[str], tuple["subprocess.Popen[str]", queue.Queue]]


@pytest.fixture
def analyser(keydir: Path, tmp_path: Path) -> Iterator[Analyser]:
    """Starts ``stslive analyser --keys --client analyser`` on a stream endpoint; killed if still running."""
    proc_holder: dict[str, Any] = {}

    def start(stream_endpoint: str) -> tuple[subprocess.Popen[str], queue.Queue]:
        proc = subprocess.Popen(
            [
                *CLI,
                "analyser",
                "--connect",
                stream_endpoint,
                "--keys",
                str(keydir),
                "--client",
                "analyser",
                "--bind",
                "tcp://127.0.0.1:0",
                "--out",
                str(tmp_path / "run.analysis.h5"),
                "--once",
                "--dynes-width-meV",
                "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        proc_holder["proc"] = proc
        return proc, lines

    yield start
    proc = proc_holder.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_keyed_scan_analyser_viewer_and_control(keydir: Path, tmp_path: Path, analyser: Analyser) -> None:
    lab = MockLab.from_seed(seed=5, ny=N, nx=N, speed=1.0)
    slow = {
        "id": 0,
        "name": "slow",
        "bias_setpoint_V": -0.010,
        "current_setpoint_A": 150e-12,
        "sweep_start_V": -0.04,
        "sweep_end_V": 0.04,
        "n_points": 101,
        "integration_s": 1e-3,
    }  # 0.1 s sweep: ~4 s run
    started: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources, nx=N, ny=N, n_points=101, setpoint_set=[slow], stream={"keys": str(keydir)}
        )

        def on_ready(engine: Any) -> None:
            proc, lines = analyser(engine.publisher.pub_endpoint)
            started.put((engine, proc, lines))
            # the analyser's subscription reaches the keyed PUB only after its CURVE handshake
            engine.publisher.wait_for_subscribers(1, timeout_s=60)

        def target() -> None:
            try:
                result["engine"] = run_scan(config, tmp_path / "run.h5", announce=False, on_ready=on_ready)
            except BaseException as exc:  # noqa: BLE001  handed to the test thread
                result["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        engine, proc, lines = started.get(timeout=30)
        results_ep = _wait_line(lines, r"results on (tcp://\S+),", 60).group(1)
        stream_ep, control_ep = engine.publisher.pub_endpoint, engine.control_endpoint
        screen = Security.from_dir(keydir, client="screen")
        with (
            RunSubscriber(stream_ep, security=screen) as viewer_sub,
            RunSubscriber(stream_ep, security=outsider(keydir)) as stranger,
            RunSubscriber(stream_ep) as plain,
        ):
            deadline = time.monotonic() + 30
            while not any(isinstance(d, EventDoc) for d in _docs(viewer_sub, 0.2)):
                assert time.monotonic() < deadline, "the authorised viewer key got no event from the keyed stream"
            # a viewer key cannot pause a running scan: the control socket never answers it
            with pytest.raises(InstrumentTimeout, match="no reply"):
                send_command(control_ep, "pause", timeout_s=1.0, security=screen)
            assert engine.machine.state == "running"
            accepted = control(keydir, control_ep, "alice", "pause")
            assert accepted.returncode == 0, accepted
            assert "the scan is paused" in accepted.stdout and engine.machine.state == "paused"
            # nor resume it, through the command line: no reply, an error naming authentication
            refused = control(keydir, control_ep, "screen", "resume")
            assert refused.returncode == 1, refused
            assert "authentication" in refused.stderr and "no reply" in refused.stderr
            assert engine.machine.state == "paused"
            # while paused: heartbeats reach the viewer key, nothing reaches an unknown or no key
            assert any(isinstance(d, HeartbeatDoc) for d in _docs(viewer_sub, 1.0))
            assert _docs(stranger, 0.5) == [] and _docs(plain, 0.5) == []
            assert stranger.received == 0 and plain.received == 0

        # the analyser's results: a viewer key receives them, an unknown key nothing
        source = StreamSource.connect(results_ep, timeout_s=30, security=screen)
        try:
            assert (source.model.ny, source.model.nx) == (N, N) and source.received >= 1
        finally:
            source.stop()
        with pytest.raises(StreamError, match="authentication"):
            StreamSource.connect(results_ep, timeout_s=3, security=outsider(keydir))
        # and the command line: `stslive view --connect --keys --client` renders the live screen
        png = tmp_path / "screen.png"
        assert (
            main(
                [
                    "view",
                    "--connect",
                    results_ep,
                    "--keys",
                    str(keydir),
                    "--client",
                    "screen",
                    "--snapshot",
                    str(png),
                    "--size",
                    "800x600",
                    "--timeout",
                    "30",
                ]
            )
            == 0
        )
        assert png.stat().st_size > 10_000

        resumed = control(keydir, control_ep, "alice", "resume")
        assert resumed.returncode == 0, resumed
        thread.join(timeout=60)
        assert not thread.is_alive(), "scan did not finish"
        if "error" in result:
            raise result["error"]
        assert proc.wait(60) == 0
    assert result["engine"].machine.exit_status == "success"
    assert (tmp_path / "run.analysis.h5").is_file()
