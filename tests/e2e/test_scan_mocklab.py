"""The scan engine end to end against the simulated lab's TCP servers (in-process, port 0).

A scan runs in a thread through ``run_scan`` (the code behind ``stslive scan``); the test
reads the stream over PULL (lossless), drives the control socket and checks the archive.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stslive.acquisition.control import send_command
from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.formats.documents import EventDoc, FailedPixelDoc, HeartbeatDoc, StopDoc
from stslive.acquisition.formats.subscriber import RunSubscriber
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.scan import run_scan
from stslive.mocks.faults import FaultPlan
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

NX, NY, POINTS = 5, 4, 101
pytestmark = pytest.mark.timeout(60)


@contextmanager
def scan(lab: MockLab, path: Path, **sections: Any) -> Iterator[tuple[RunSubscriber, str, dict[str, Any]]]:
    """Run a scan over the whole film in a thread; yields (PULL subscriber, control endpoint, result)."""
    with LabServers.start(lab) as servers:
        sections.setdefault("stream", {}).update(push="tcp://127.0.0.1:0")
        config = mock_lab_config(
            servers.resources, nx=lab.nx, ny=lab.ny, pixel_m=lab.pixel_m, n_points=POINTS, **sections
        )
        ready: queue.Queue = queue.Queue()
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["engine"] = run_scan(
                    config,
                    path,
                    announce=False,
                    on_ready=lambda e: ready.put((e.publisher.push_endpoint, e.control_endpoint)),
                )
            except BaseException as exc:  # noqa: BLE001  handed to the test thread, which re-raises it
                result["error"] = exc
                ready.put(None)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        endpoints = ready.get(timeout=20)
        if endpoints is None:
            raise result["error"]
        with RunSubscriber(endpoints[0], mode="pull") as sub:
            yield sub, endpoints[1], result
            thread.join(timeout=30)
        assert not thread.is_alive(), "scan did not finish"
        if "error" in result:
            raise result["error"]


def collect(sub: RunSubscriber, until: Any = None, timeout_s: float = 20.0) -> list[Any]:
    """Documents until the stop document (or until ``until(docs)`` is true)."""
    docs: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = sub.poll(0.05)
        if doc is None:
            continue
        docs.append(doc)
        if isinstance(doc, StopDoc) or (until is not None and until(docs)):
            return docs
    raise AssertionError(f"timed out after {len(docs)} documents")


def events(docs: list[Any]) -> list[EventDoc]:
    return [d for d in docs if isinstance(d, EventDoc)]


def test_small_grid_completes_matches_film_and_streams_every_pixel_in_order(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=3, ny=NY, nx=NX, speed=0)
    path = tmp_path / "run.h5"
    with scan(lab, path) as (sub, _, result):
        docs = collect(sub)
    assert result["engine"].machine.state == "done"
    seqs = [d.seq for d in docs]
    assert seqs == list(range(len(docs))), "stream has a gap or reorders"
    assert sub.gaps(docs[0].run_uid) == []
    assert [(e.iy, e.ix) for e in events(docs)] == [(iy, ix) for iy in range(NY) for ix in range(NX)]
    assert isinstance(docs[-1], StopDoc) and docs[-1].exit_status == "success"
    with open_archive(path) as reader:
        assert reader.measured.all() and not reader.failed.any()
        assert reader.channel_names == ["Bias (V)", "Current (A)", "LI Demod 1 X (A)"]
        data = reader.read_pixels()
        meta = reader.pixel_meta
        assert reader.run_uid == docs[0].run_uid
    # the archive holds what the film predicts at the same pixels (noise off; tolerance 8 sigma)
    bias = np.linspace(-0.04, 0.04, POINTS)
    iy, ix = np.mgrid[:NY, :NX]
    truth = lab.film.spectra(iy, ix, bias_V=bias, noise=False, dtype=np.float64)
    params = lab.film.params
    assert np.allclose(data[:, :, 0], bias, atol=1e-7)
    assert np.abs(data[:, :, 1] - truth.current_A).max() < 8 * params.current_noise_A
    assert (
        np.abs(data[:, :, 2] * 1.0 - truth.lockin_x_A).max()
        < 8 * params.lockin_noise_A + 1e-3 * np.abs(truth.lockin_x_A).max()
    )
    # stream arrays are the archived ones; temperatures and phases are recorded
    first = events(docs)[0]
    assert np.array_equal(first.arrays["spectra"], data[0, 0])
    assert np.allclose(meta["temperature_before_K"], params.temperature_K)
    assert np.all(meta["t_start"] <= meta["t_sweep_start"]) and np.all(meta["t_sweep_end"] <= meta["t_end"])
    assert np.all(np.isfinite(meta["z_m"])) and np.all(meta["setpoint_set_id"] == 0)


def test_pause_resume_abort_via_control_socket(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=1, ny=6, nx=6, speed=1.0)
    path = tmp_path / "run.h5"
    slow = {
        "id": 0,
        "name": "slow",
        "bias_setpoint_V": -0.010,
        "current_setpoint_A": 150e-12,
        "sweep_start_V": -0.04,
        "sweep_end_V": 0.04,
        "n_points": POINTS,
        "integration_s": 2e-4,
    }  # 20 ms sweep
    with scan(lab, path, setpoint_set=[slow]) as (sub, control, result):
        docs = collect(sub, until=lambda d: len(events(d)) >= 3)
        assert send_command(control, "pause")["state"] == "paused"
        docs += collect(sub, until=lambda d: sum(isinstance(x, HeartbeatDoc) for x in d) >= 3)
        n_paused = len(events(docs))
        docs += collect(sub, until=lambda d: sum(isinstance(x, HeartbeatDoc) for x in d) >= 6)
        assert len(events(docs)) == n_paused, "a pixel was measured while paused"
        assert send_command(control, "resume")["state"] == "running"
        docs += collect(sub, until=lambda d: len(events(d)) >= n_paused + 2)
        assert send_command(control, "abort")["state"] == "stopping"
        docs += collect(sub)
    assert docs[-1].exit_status == "abort" and result["engine"].machine.state == "done"
    n = len(events(docs))
    assert n_paused + 2 <= n < 36
    with open_archive(path) as reader:
        assert int(reader.measured.sum()) == n
        log_events = [r["event"] for r in reader.log]
    assert log_events.count("paused") == 1 and log_events.count("resumed") == 1 and "stopping" in log_events


def test_temperature_excursion_pauses_and_resumes(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=2, ny=NY, nx=NX, speed=0)
    lab.thermometer.update(excursion_k=1.0)  # 1.3 K: outside the band from the first pixel
    with scan(
        lab, tmp_path / "run.h5", suspender={"enabled": True, "min_K": 0.1, "max_K": 0.5, "hold_s": 0.2, "poll_s": 0.02}
    ) as (sub, _, _result):
        docs = collect(sub, until=lambda d: any(isinstance(x, HeartbeatDoc) for x in d))
        assert not events(docs)
        lab.thermometer.update(excursion_k=0.0)
        docs += collect(sub)
    assert len(events(docs)) == NX * NY and docs[-1].exit_status == "success"
    with open_archive(tmp_path / "run.h5") as reader:
        log = reader.log
        temps = reader.pixel_meta["temperature_before_K"]
    paused = [r for r in log if r["event"] == "paused"]
    assert paused and paused[0]["reason"] == "temperature" and paused[0]["kelvin"] > 1.0
    released = [r for r in log if r["event"] == "released"]
    assert released and released[0]["time"] - paused[0]["time"] >= 0.2
    assert np.all(temps < 0.5), "a pixel was measured out of band"


def test_injected_faults_give_failed_pixels_and_the_run_continues(tmp_path: Path) -> None:
    # Sweeps 3..11 get an error reply: with 2 retries pixels 2, 3, 4 fail (3 attempts each),
    # then three failures in a row pause the run until the operator resumes it.
    faults = FaultPlan.from_list(
        [
            {"kind": "error_reply", "instrument": "nanonis", "command": "BiasSpectr.Start", "at_call": n}
            for n in range(3, 12)
        ]
    )
    lab = MockLab.from_seed(seed=4, ny=NY, nx=NX, speed=0, faults=faults)
    path = tmp_path / "run.h5"
    with scan(lab, path, run={"retries": 2, "max_consecutive_failures": 3}) as (sub, control, result):
        docs = collect(sub, until=lambda d: any(isinstance(x, HeartbeatDoc) for x in d))
        assert send_command(control, "resume")["state"] == "running"
        docs += collect(sub)
    failed = [d for d in docs if isinstance(d, FailedPixelDoc)]
    assert [(d.iy, d.ix) for d in failed] == [(0, 2), (0, 3), (0, 4)]
    assert all(d.attempts == 3 and "ControllerError" in d.reason for d in failed)
    assert len(events(docs)) == NX * NY - 3 and docs[-1].exit_status == "success"
    with open_archive(path) as reader:
        assert reader.failed.sum() == 3 and not (reader.failed & reader.measured).any()
        assert (reader.failed | reader.measured).all()
        assert np.isnan(reader.read_pixels()[0, 2]).all(), "a failed pixel holds data"
        reasons = reader.failures
    assert [r["code"] for r in reasons] == [3, 3, 3] and all("simulated" in r["reason"] or r["reason"] for r in reasons)
    assert result["engine"].stats.retries == 6


def test_line_cut_with_two_alternating_setpoint_sets(tmp_path: Path) -> None:
    lab = MockLab.from_seed(seed=6, ny=NY, nx=NX, speed=0)
    base = {"name": "a", "current_setpoint_A": 150e-12, "sweep_start_V": -0.04, "sweep_end_V": 0.04, "n_points": POINTS}
    sets = [{**base, "id": 0, "bias_setpoint_V": -0.010}, {**base, "id": 3, "name": "b", "bias_setpoint_V": -0.020}]
    with LabServers.start(lab) as servers:
        config = mock_lab_config(
            servers.resources,
            nx=NX,
            ny=NY,
            pixel_m=lab.pixel_m,
            n_points=POINTS,
            run={"setpoint_mode": "alternate"},
            setpoint_set=sets,
        )
        doc = config.to_dict()
        del doc["grid"]
        doc["line"] = {"start_x_m": -2e-9, "start_y_m": -1e-9, "end_x_m": 2e-9, "end_y_m": -1e-9, "n": 5}
        from stslive.acquisition.config import RunConfig

        run_scan(RunConfig.from_dict(doc), tmp_path / "line.h5", announce=False)
    with open_archive(tmp_path / "line.h5") as reader:
        assert reader.geometry.shape == (1, 5) and reader.measured.all()
        meta = reader.pixel_meta
        data = reader.read_pixels()[0]
        assert sorted(reader.setpoint_sets) == [0, 3]
    assert meta["setpoint_set_id"][0].tolist() == [0, 3, 0, 3, 0]
    assert np.allclose(meta["x_m"][0], np.linspace(-2e-9, 2e-9, 5)) and np.allclose(meta["y_m"][0], -1e-9)
    # each spectrum is normalised at its own set-point: I(V_set) = -150 pA
    bias = np.linspace(-0.04, 0.04, POINTS)
    for k, v_set in enumerate([-0.010, -0.020] * 2 + [-0.010]):
        assert abs(np.interp(v_set, bias, data[k, 1]) + 150e-12) < 5e-12


def test_remeasure_a_failed_and_a_measured_pixel_through_the_control_command(tmp_path: Path) -> None:
    """A failed pixel re-measured ends measured and not failed; a measured one is replaced, old record logged."""
    from stslive.acquisition.cli import main

    faults = FaultPlan.from_list(
        [{"kind": "error_reply", "instrument": "nanonis", "command": "BiasSpectr.Start", "at_call": n} for n in (2, 3)]
    )
    lab = MockLab.from_seed(seed=7, ny=6, nx=6, speed=1.0, faults=faults)
    slow = {
        "id": 0,
        "name": "slow",
        "bias_setpoint_V": -0.010,
        "current_setpoint_A": 150e-12,
        "sweep_start_V": -0.04,
        "sweep_end_V": 0.04,
        "n_points": POINTS,
        "integration_s": 2e-4,
    }
    path = tmp_path / "run.h5"
    with scan(lab, path, setpoint_set=[slow], run={"retries": 1}) as (sub, control, _):
        docs = collect(sub, until=lambda d: any(isinstance(x, FailedPixelDoc) for x in d))
        assert main(["control", "--connect", control, "remeasure", "--pixels", "0,1"]) == 0
        reply = send_command(control, "remeasure", pixels=[[0, 0]], reason="tip change flagged")
        assert reply["ok"]
        docs += collect(sub)
    cells = [(e.iy, e.ix) for e in events(docs)]
    assert cells.count((0, 1)) == 1 and cells.count((0, 0)) == 2 and len(cells) == 37
    assert docs[-1].exit_status == "success"
    first_00 = next(e for e in events(docs) if (e.iy, e.ix) == (0, 0))
    with open_archive(path) as reader:
        assert reader.measured.all() and not reader.failed.any() and reader.failure_codes[0, 1] == 0
        assert [(f["iy"], f["ix"]) for f in reader.failures] == [(0, 1)]  # the failure stays on record
        log = reader.log
        t_00 = reader.pixel(0, 0).t_start
    assert "remeasure_queued" in [r["event"] for r in log]
    assert [(r["iy"], r["ix"]) for r in log if r["event"] == "pixel_recovered"] == [(0, 1)]
    (replaced,) = [r for r in log if r["event"] == "pixel_replaced"]
    assert (replaced["iy"], replaced["ix"], replaced["reason"]) == (0, 0, "tip change flagged")
    assert replaced["previous"]["t_start"] == pytest.approx(first_00.timestamps["t_start"])
    assert t_00 > replaced["previous"]["t_start"]  # the archive holds the new spectrum


def test_bench_scan_subcommand_reports_overhead_of_every_pixel(capsys: pytest.CaptureFixture[str]) -> None:
    from stslive.acquisition.cli import main

    assert main(["bench", "scan", "--grid", "4x3", "--points", "51"]) == 0
    out = capsys.readouterr().out
    assert "12 pixels x 51 points" in out
    match = re.search(r"all: p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms", out)
    assert match is not None, out
    assert 0 < float(match[1]) <= float(match[2])
    assert main(["bench", "scan", "--points", "1"]) == 1  # ConfigError, printed without a traceback
