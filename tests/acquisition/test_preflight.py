"""Preflight at load and at connect, the lock-in wiring, ``scan --check`` and abort mid-sweep."""

from __future__ import annotations

import copy
import math
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import stslive.acquisition.config as config_module
from stslive.acquisition.cli import main
from stslive.acquisition.config import RunConfig
from stslive.acquisition.jobs.bench_scan import mock_lab_config
from stslive.acquisition.pixel import PixelProcedure
from stslive.acquisition.plans import plan_from_config
from stslive.acquisition.preflight import estimate_run, preflight
from stslive.acquisition.rig import open_instruments
from stslive.drivers.errors import ConfigError, InstrumentTimeout
from stslive.live.flags import conditions_for
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

EXAMPLE = Path(config_module.__file__).with_name("example_run.toml")


def _example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def _with_set(**changes: Any) -> dict[str, Any]:
    doc = _example()
    doc["setpoint_set"][0].update(changes)
    return doc


def test_the_example_records_the_lockin_it_configures_and_the_junction_amplitude() -> None:
    config = RunConfig.from_toml(EXAMPLE)
    assert config.archive_channels == ("Bias (V)", "Current (A)", "Input 2 (A/V)")
    sset = config.setpoint_sets[0]
    assert sset.lockin_amplitude_Vrms == 50e-6  # at the junction; 50 mV leave the lock-in
    # what the flags read: 50 uV at the junction, not 50 mV
    conditions = conditions_for(
        temperatures_K=[0.3], lockin_overload=False, lockin_status=0, setpoint_set=sset.to_dict()
    )
    assert conditions.modulation_Vrms == pytest.approx(50e-6)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"lockin_frequency_Hz": 0.0}, "lockin_amplitude_Vrms is set but lockin_frequency_Hz is 0"),
        ({"bias_setpoint_V": 0.5}, r"bias set-point 0.5 V outside the safety limits"),
        ({"sweep_end_V": 0.2}, "sweep end 0.2 V outside"),
        ({"current_setpoint_A": 5e-9}, "set-point 5e-09 A outside"),
        ({"lockin_amplitude_Vrms": 0.05}, "sine output"),  # 50 mV at the junction: 50 V out of the lock-in
        ({"lockin_frequency_Hz": 150e3}, "frequency"),
        ({"lockin_time_constant_s": 2e-3}, "not a table value"),
    ],
)
def test_a_set_the_run_could_not_measure_is_refused_at_load(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        RunConfig.from_dict(_with_set(**changes))
    assert "setpoint_set[0]" in str(info.value)


def test_harmonic_times_frequency_and_wiring_are_checked_at_load() -> None:
    doc = _example()
    doc["instruments"]["lockin"]["harmonic"] = 200  # 200 x 973 Hz > 102 kHz
    with pytest.raises(ConfigError, match="harmonic 200"):
        RunConfig.from_dict(doc)
    doc = _example()
    doc["run"]["channels"] = ["Current (A)", "LI Demod 1 X (A)"]
    with pytest.raises(ConfigError, match="output_channel 'Input 2 \\(V\\)' is not in run.channels"):
        RunConfig.from_dict(doc)
    doc["instruments"]["lockin"]["output_channel"] = ""  # not wired: the internal demodulator is noted
    report = preflight(RunConfig.from_dict(doc), plan_from_config(RunConfig.from_dict(doc)))
    assert any(f.level == "note" and "internal demodulator" in f.text for f in report.findings)


def test_run_time_estimate() -> None:
    doc = _example()
    doc["grid"].update(nx=4, ny=3, width_m=4e-9, height_m=3e-9, order="raster")
    doc["setpoint_set"][0].update(n_points=101, settle_s=0.01, integration_s=1e-3)
    doc["run"].update(move_settle_s=0.05, tip_speed_m_per_s=1e-9)
    config = RunConfig.from_dict(doc)
    estimate = estimate_run(config, plan_from_config(config))
    assert estimate.pixels == 12
    assert estimate.sweeps_s == pytest.approx(12 * (0.01 + 101e-3))
    assert estimate.settling_s == pytest.approx(12 * 0.05)
    # raster: 3 steps of 1 nm per row, 2 returns of hypot(3, 1) nm, at 1 nm/s
    assert estimate.moves_s == pytest.approx(9 + 2 * math.hypot(3, 1))


# -- with the simulated lab -------------------------------------------------------------------------
def _lab_config(servers: LabServers, lab: MockLab, **sections: Any) -> RunConfig:
    return mock_lab_config(servers.resources, nx=lab.nx, ny=lab.ny, pixel_m=lab.pixel_m, n_points=101, **sections)


def _wired(config: RunConfig) -> RunConfig:
    doc = copy.deepcopy(config.to_dict())
    doc["run"]["channels"] = ["Current (A)", "LI Demod 1 X (A)", "Input 2 (V)"]
    doc["instruments"]["lockin"].update(output_channel="Input 2 (V)", bias_divider=1000.0)
    doc["setpoint_set"][0].update(
        lockin_frequency_Hz=973.0, lockin_amplitude_Vrms=50e-6, lockin_time_constant_s=1e-3, lockin_sensitivity_V=5e-3
    )
    return RunConfig.from_dict(doc)


def test_wired_lockin_gets_the_divided_amplitude_and_the_input_is_archived_in_a_per_v() -> None:
    lab = MockLab.from_seed(seed=1, ny=3, nx=3, speed=0)
    with LabServers.start(lab) as servers:
        config = _wired(_lab_config(servers, lab))
        instruments = open_instruments(config)
        try:
            procedure = PixelProcedure(instruments, channels=config.run["channels"])
            assert procedure.channel_names == config.archive_channels
            assert config.archive_channels == ("Bias (V)", "Current (A)", "LI Demod 1 X (A)", "Input 2 (A/V)")
            point = plan_from_config(config)[4]
            pixel = procedure.measure(point, config.setpoint_sets[0], temperature_before_K=0.3)
        finally:
            instruments.close()
    snap = lab.lockin.snapshot()
    assert snap.amplitude_v == pytest.approx(0.05) and snap.modulation_at_bias_v_rms == pytest.approx(50e-6)
    internal, didv = pixel.spectra[2].astype(float), pixel.spectra[3].astype(float)
    # the SR830's output converted back: dI/dV = I_ac / V_mod, the internal demodulator over 50 uV
    np.testing.assert_allclose(didv, internal / 50e-6, rtol=2e-3, atol=1e-3 * np.abs(internal / 50e-6).max())


def test_connect_time_preflight_names_a_missing_signal_and_a_point_outside_the_frame() -> None:
    lab = MockLab.from_seed(seed=1, ny=3, nx=3, speed=0)
    with LabServers.start(lab) as servers:
        config = _lab_config(servers, lab, run={"channels": ["Current (A)", "Input 7 (V)"]})
        with pytest.raises(ConfigError, match="no signal named 'Input 7 \\(V\\)'"):
            open_instruments(config)
        config = _lab_config(servers, lab, grid={"width_m": 30e-9})
        with pytest.raises(ConfigError, match="outside the controller's scan frame"):
            open_instruments(config)
    assert (lab.stm.x_m, lab.stm.y_m) == (0.0, 0.0)  # nothing moved


def test_scan_check_prints_the_preflight_and_the_estimate_without_moving(tmp_path: Path, capsys: Any) -> None:
    lab = MockLab.from_seed(seed=1, ny=3, nx=3, speed=0)
    with LabServers.start(lab) as servers:
        config = _wired(_lab_config(servers, lab))
        path = tmp_path / "run.toml"
        path.write_text(_toml(config.to_dict()))
        code = main(["scan", "--config", str(path), "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "estimate 9 pixels" in out and "within the limits" in out and "signals recorded" in out
    assert (lab.stm.x_m, lab.stm.y_m) == (0.0, 0.0) and lab.faults.spectrum == 0
    assert not list(tmp_path.glob("*.h5"))


def test_instruments_cli_takes_the_run_config_format(tmp_path: Path, capsys: Any) -> None:
    lab = MockLab.from_seed(seed=1, ny=3, nx=3, speed=0)
    with LabServers.start(lab) as servers:
        doc = _example()
        doc["instruments"]["nanonis"]["resource"] = servers.resources["nanonis"]
        doc["instruments"]["lockin"]["resource"] = servers.resources["sr830"]
        doc["instruments"]["thermometer"]["resource"] = servers.resources["ls372"]
        path = tmp_path / "run.toml"
        path.write_text(_toml(doc))
        code = main(["instruments", "--config", str(path), "--timeout", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Stanford_Research_Systems,SR830" in out and "R13632" in out and "temperature" in out


def test_abort_stops_the_sweep_in_progress_and_leaves_the_tip_regulating_at_the_set_point(tmp_path: Path) -> None:
    from stslive.acquisition.cli.scan import run_scan

    lab = MockLab.from_seed(seed=1, ny=2, nx=2, speed=1.0)
    with LabServers.start(lab) as servers:
        config = _lab_config(servers, lab)
        doc = config.to_dict()
        doc["setpoint_set"][0].update(integration_s=20e-3)  # 101 x 20 ms: a 2 s sweep
        config = RunConfig.from_dict(doc)
        engines: list[Any] = []
        aborted_at: list[float] = []

        def abort_mid_sweep() -> None:
            while not engines or not lab.stm.sweeping:
                time.sleep(0.01)
            time.sleep(0.2)
            aborted_at.append(time.perf_counter())
            engines[0].machine.execute("abort", {})

        threading.Thread(target=abort_mid_sweep, daemon=True).start()
        engine = run_scan(config, tmp_path / "run.h5", announce=False, on_ready=engines.append, wait_subscribers_s=0)
        ended = time.perf_counter()
    assert engine.machine.exit_status == "abort"
    assert ended - aborted_at[0] < 1.0, "abort waited for the sweep to end"
    assert engine.stats.measured == 0 and engine.stats.failed == 0  # the pixel stays unmeasured
    assert lab.stm.feedback_on and lab.stm.bias_V == pytest.approx(-0.010)
    assert lab.stm.regulated_bias_V == pytest.approx(-0.010)


def _toml(doc: dict[str, Any]) -> str:
    """A minimal TOML writer for the plain run-config dicts of these tests."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    def table(name: str, t: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = {k: v for k, v in t.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {value(v)}" for k, v in t.items() if not isinstance(v, dict))
        for k, v in subs.items():
            table(f"{name}.{k}", v)

    for name, t in doc.items():
        if name == "setpoint_set":
            for s in t:
                lines.append("[[setpoint_set]]")
                lines.extend(f"{k} = {value(v)}" for k, v in s.items())
        elif name == "instruments":
            for inst, it in t.items():
                table(f"instruments.{inst}", it)
        else:
            table(name, t)
    return "\n".join(lines) + "\n"


def test_a_scan_on_an_older_controller_records_the_channels_asked_for(tmp_path: Path) -> None:
    from stslive.acquisition.cli.scan import run_scan
    from stslive.acquisition.formats.archive import open_archive

    lab = MockLab.from_seed(seed=1, ny=2, nx=2, speed=0)
    with LabServers.start(lab, nanonis_options={"release": 10862, "unknown_command": "silent"}) as servers:
        config = _lab_config(servers, lab, run={"channels": ["Current (A)", "Z (m)"]})
        engine = run_scan(config, tmp_path / "run.h5", announce=False, wait_subscribers_s=0)
    assert engine.stats.measured == 4 and engine.stats.failed == 0
    with open_archive(tmp_path / "run.h5") as reader:
        assert list(reader.channel_names) == ["Bias (V)", "Current (A)", "Z (m)"]
        z = reader.read_pixels(channels=["Z (m)"])[0, 0, 0]
    assert np.all(np.abs(z) < 1e-8)  # a height in metres, not the bias or the current


def test_a_wired_scan_records_the_conversion_in_the_archive_and_the_start_document(tmp_path: Path) -> None:
    import json

    import h5py

    from stslive.acquisition.cli.scan import run_scan
    from stslive.acquisition.formats.archive import open_archive

    lab = MockLab.from_seed(seed=1, ny=2, nx=2, speed=0)
    with LabServers.start(lab) as servers:
        config = _wired(_lab_config(servers, lab))
        engine = run_scan(config, tmp_path / "run.h5", announce=False, wait_subscribers_s=0)
    assert engine.stats.measured == 4
    factor = 5e-3 / (10.0 * 1e9 * 50e-6)  # sensitivity / (full scale x gain x junction modulation)
    with h5py.File(tmp_path / "run.h5", "r") as f:
        attrs = json.loads(f["entry/data"].attrs["lockin_wiring"])
    assert attrs["archived_channel"] == "Input 2 (A/V)" and attrs["bias_divider"] == 1000.0
    assert attrs["didv_A_per_V_per_input_V"]["0"] == pytest.approx(factor)
    with open_archive(tmp_path / "run.h5") as reader:
        assert "Input 2 (A/V)" in reader.channel_names
        metadata = reader.documents["start"]["metadata"]
    assert metadata["lockin_wiring"]["didv_A_per_V_per_input_V"]["0"] == pytest.approx(factor)


def test_the_run_config_terminations_and_interface_reach_an_rs232_lockin() -> None:
    from stslive.mocks.sr830_server import SR830Server

    lab = MockLab.from_seed(seed=1, ny=2, nx=2, speed=0)
    with LabServers.start(lab, sr830_port=None) as servers, SR830Server(interface="rs232", outx=1) as serial:
        base = _lab_config(servers, lab).to_dict()
        base["instruments"]["lockin"] = {"resource": serial.resource, "interface": "rs232", "timeout_s": 1.0}
        instruments = open_instruments(RunConfig.from_dict(base))
        try:
            assert instruments.lockin is not None and instruments.lockin.get_frequency() == 1000.0
        finally:
            instruments.close()
        base["instruments"]["lockin"].update(interface="gpib", read_termination="\n", reconnect_attempts=0)
        with pytest.raises(InstrumentTimeout):  # taken for a GPIB lock-in: OUTX 1, no reply on this port
            open_instruments(RunConfig.from_dict(base))
