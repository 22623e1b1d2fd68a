"""The stop rule: judging snapshots, the [stop] table and the control command, and a run it ends.

The runs here follow a results stream published by the test itself (the analyser's own message
format, :mod:`stslive.live.results_io`), so the moment the intervals become narrow is chosen;
``tests/e2e/test_stop_rule_analyser.py`` runs the real analyser behind a progressive scan.
"""

from __future__ import annotations

import math
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from stslive.acquisition.config import RunConfig
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.scan import run_scan
from stslive.acquisition.state import CommandRefused, RunStateMachine
from stslive.acquisition.stop_rule import StopRule, relative_width
from stslive.drivers.errors import ConfigError
from stslive.live.results import CorrelationSnapshot
from stslive.live.results_io import encode_message, snapshot_message
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 6, 5, 101
pytestmark = pytest.mark.timeout(120)


def snapshot(n_pixels: int, half_width: float) -> dict[str, Any]:
    """Snapshot scalars: l_Delta 20 nm, l_alpha 16 nm, rho_cross(0) -0.9, each +-half_width (relative)."""
    values = {"l_delta_nm": 20.0, "l_alpha_nm": 16.0, "l_cross_nm": 18.0, "rho_cross_0": -0.9}
    out: dict[str, Any] = {"n_pixels": n_pixels}
    for name, v in values.items():
        out[name] = out[f"{name}_corrected"] = v
        out[f"{name}_ci90"] = [v - half_width * abs(v), v + half_width * abs(v)]
    return out


def test_a_rule_is_met_when_every_named_interval_is_narrow_enough() -> None:
    rule = StopRule(max_relative_width=0.1, min_pixels=100)
    wide, narrow = snapshot(500, 0.08), snapshot(500, 0.04)
    assert relative_width(wide, "l_delta_nm") == pytest.approx(0.16)
    assert not rule.judge(wide).met
    verdict = rule.judge(narrow)
    assert verdict.met and verdict.widths == pytest.approx(
        {"l_delta_nm": 0.08, "l_alpha_nm": 0.08, "rho_cross_0": 0.08}
    )
    assert verdict.reason == (
        "stop rule met at 500 analysed pixels: the 90 % intervals of l_delta_nm 8 %, l_alpha_nm 8 %, "
        "rho_cross_0 8 % of the estimate (limit 10 %, from 100 pixels)"
    )
    assert not rule.judge(snapshot(99, 0.01)).met  # too few pixels yet
    unbounded = {**narrow, "l_alpha_nm_ci90": [15.0, None]}  # no upper bound: never narrow
    assert math.isinf(relative_width(unbounded, "l_alpha_nm")) and not rule.judge(unbounded).met
    assert rule.judge({**narrow, "rho_cross_0_ci90": None}).widths["rho_cross_0"] == math.inf
    only_lengths = StopRule(figures=("l_delta_nm", "l_alpha_nm"))
    assert only_lengths.judge({**narrow, "rho_cross_0_ci90": None}).met


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"figures": ["l_gap"]}, "stop.figures"),
        ({"figures": "l_delta_nm"}, "stop.figures"),
        ({"max_relative_width": 0}, "stop.max_relative_width"),
        ({"max_relative_width": "tight"}, "stop.max_relative_width"),
        ({"action": "halt"}, "stop.action"),
        ({"min_pixels": -1}, "stop.min_pixels"),
        ({"when": "soon"}, "unknown key"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StopRule.from_table(table)


def test_the_run_config_and_the_control_socket_take_the_rule() -> None:
    doc = {
        "instruments": {"nanonis": {"resource": "TCPIP::127.0.0.1::1::SOCKET"}},
        "grid": {"width_m": 1e-8, "height_m": 1e-8, "nx": 2, "ny": 2, "order": "progressive"},
        "setpoint_set": [
            {
                "id": 0,
                "name": "s",
                "bias_setpoint_V": -0.01,
                "current_setpoint_A": 1e-10,
                "sweep_start_V": -0.04,
                "sweep_end_V": 0.04,
                "n_points": 101,
            }
        ],
        "stop": {"results": "tcp://127.0.0.1:5560", "max_relative_width": 0.2, "action": "pause"},
    }
    config = RunConfig.from_dict(doc)
    assert StopRule.from_table(config.stop).max_relative_width == 0.2 and config.to_dict()["stop"] == config.stop
    with pytest.raises(ConfigError, match="stop.action"):
        RunConfig.from_dict({**doc, "stop": {"action": "later"}})
    machine = RunStateMachine([0], stop_rule=config.stop)
    machine.begin()
    assert machine.pop_stop_rule() is None
    machine.execute("stop_rule", {"max_relative_width": 0.05})
    assert machine.pop_stop_rule() == {**config.stop, "max_relative_width": 0.05}
    assert machine.pop_stop_rule() is None  # handed out once
    with pytest.raises(CommandRefused, match="stop_rule: stop.figures"):
        machine.execute("stop_rule", {"figures": ["nothing"]})


# -- a run that the rule ends -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeAnalyser:
    """Publishes snapshots on a results PUB: wide intervals until :meth:`narrow`, then narrow ones."""

    def __init__(self) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(self.endpoint)
        self.half_width = 0.5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.02):
            n += 1
            s = snapshot(10 * n, self.half_width)
            scalars = {k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items()}
            snap = CorrelationSnapshot(
                r_nm=np.arange(3.0),
                rho_delta=np.ones(3),
                rho_alpha=np.ones(3),
                rho_cross=-np.ones(3),
                cross_map=np.zeros((3, 3)),
                pixel_nm=1.0,
                **scalars,
            )
            self._pub.send_multipart(encode_message(*snapshot_message(snap)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._pub.close()
        self._ctx.term()


@contextmanager
def ruled_scan(tmp_path: Path, rule: dict[str, Any]) -> Iterator[tuple[FakeAnalyser, queue.Queue, dict[str, Any]]]:
    """A scan of a slow simulated lab in a thread, its stop rule following a FakeAnalyser."""
    lab = MockLab.from_seed(seed=4, ny=NY, nx=NX, speed=1)  # 101 points x 1 ms: 0.1 s a pixel
    analyser = FakeAnalyser()
    ready: queue.Queue = queue.Queue()
    result: dict[str, Any] = {}
    try:
        with LabServers.start(lab) as servers:
            config = mock_lab_config(
                servers.resources,
                nx=NX,
                ny=NY,
                pixel_m=lab.pixel_m,
                n_points=POINTS,
                stop={**rule, "results": analyser.endpoint},
            )
            doc = config.to_dict()
            doc["setpoint_set"][0]["integration_s"] = 1e-3
            doc["grid"]["order"] = "progressive"
            config = RunConfig.from_dict(doc)

            def target() -> None:
                try:
                    result["engine"] = run_scan(config, tmp_path / "run.h5", announce=False, on_ready=ready.put)
                except BaseException as exc:  # noqa: BLE001  handed to the test thread
                    result["error"] = exc
                    ready.put(None)

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            yield analyser, ready, result
            thread.join(timeout=60)
            assert not thread.is_alive(), "scan did not finish"
            if "error" in result:
                raise result["error"]
    finally:
        analyser.close()


def wait_for(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_rule_ends_a_run_early_with_its_reason_in_the_archive(tmp_path: Path) -> None:
    with ruled_scan(tmp_path, {"max_relative_width": 0.1}) as (analyser, ready, result):
        engine = ready.get(timeout=30)
        wait_for(lambda: engine.stats.measured >= 5)
        assert engine.machine.state == "running"  # wide intervals: the rule holds back
        analyser.half_width = 0.03
    engine = result["engine"]
    assert engine.machine.exit_status == "success" and engine.machine.reason.startswith("stop rule met at ")
    with open_archive(tmp_path / "run.h5") as reader:
        stop = reader.documents["stop"]
        measured = int(reader.measured.sum())
        log = reader.log
    assert 5 <= measured < NX * NY  # ended early
    assert stop["exit_status"] == "success" and stop["reason"] == engine.machine.reason
    assert "l_delta_nm 6 %, l_alpha_nm 6 %, rho_cross_0 6 %" in stop["reason"]
    assert stop["stop_rule"]["spent"] and stop["stop_rule"]["verdict"]["met"]
    assert stop["progress"]["remaining"] == NX * NY - measured
    stopping = [r for r in log if r["event"] == "stopping"]
    assert stopping[-1]["stop_rule"]["widths"]["l_alpha_nm"] == pytest.approx(0.06)


def test_a_pause_rule_waits_for_the_operator_and_then_lets_the_run_finish(tmp_path: Path) -> None:
    with ruled_scan(tmp_path, {"max_relative_width": 0.1, "action": "pause"}) as (analyser, ready, _):
        engine = ready.get(timeout=30)
        wait_for(lambda: engine.stats.measured >= 3)
        analyser.half_width = 0.02
        wait_for(lambda: engine.machine.state == "paused")
        reply = engine.machine.execute("status", {})
        assert reply["pause_reasons"] == ["stop_rule"] and reply["stop_rule"]["spent"]
        assert reply["progress"]["state"] == "paused"
        time.sleep(0.3)
        assert engine.machine.state == "paused"  # it stays paused for the operator
        engine.machine.execute("resume", {})
    assert engine.machine.exit_status == "success" and engine.machine.reason == "every pixel of the plan visited"
    with open_archive(tmp_path / "run.h5") as reader:
        assert reader.measured.all()
        assert any(r["event"] == "paused" and r.get("reason") == "stop_rule" for r in reader.log)


def test_the_control_line_takes_the_rule_and_status_shows_it() -> None:
    from stslive.acquisition.cli.control import reply_text, rule_values

    assert rule_values({"figures": "l_delta_nm, rho_cross_0", "max_relative_width": "0.05", "min_pixels": "10"}) == {
        "figures": ["l_delta_nm", "rho_cross_0"],
        "max_relative_width": 0.05,
        "min_pixels": 10,
    }
    with pytest.raises(ConfigError, match="--rule min_pixels='many': give a int"):
        rule_values({"min_pixels": "many"})
    verdict = StopRule(max_relative_width=0.5).judge(snapshot(300, 0.1))
    reply = {
        "ok": True,
        "state": "running",
        "pause_reasons": [],
        "active_set": 0,
        "stop_rule": {"results": "tcp://127.0.0.1:5560", "verdict": verdict.to_dict()},
    }
    progress = {"state": "running", "total": 10, "measured": 3, "failed": 0, "remaining": 7, "this_run": 3}
    reply["progress"] = {**progress, "rate_px_s": 1.0, "elapsed_s": 3.0, "pause_reasons": [], "flagged": 1}
    assert reply_text("status", reply).endswith(
        "; stop rule met at 300 analysed pixels: the 90 % intervals of l_delta_nm 20 %, l_alpha_nm 20 %, "
        "rho_cross_0 20 % of the estimate (limit 50 %)"
    )
