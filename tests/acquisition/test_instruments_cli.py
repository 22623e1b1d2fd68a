"""``stslive instruments`` against the simulated lab, and its failure report."""

from __future__ import annotations

import json
import socket

import pytest

from stslive.acquisition.cli import main
from stslive.mocks.ls372_server import LS372Server
from stslive.mocks.sr830_server import LockInState, SR830Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reports_lockin_and_thermometer_as_json(capsys):
    with SR830Server(LockInState(frequency_hz=973.0)) as lockin, LS372Server() as thermometer:
        code = main(
            [
                "instruments",
                "--lockin",
                lockin.resource,
                "--thermometer",
                thermometer.resource,
                "--timeout",
                "1",
                "--json",
            ]
        )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["lockin"]["ok"] and out["lockin"]["frequency_Hz"] == 973.0
    assert out["lockin"]["identity"].startswith("Stanford_Research_Systems,SR830")
    assert out["thermometer"]["temperature_K"] == pytest.approx(0.3)


def test_stm_through_the_mock_lab(capsys):
    from stslive.mocks.lab import MockLab
    from stslive.mocks.lab_servers import LabServers

    lab = MockLab.from_seed(ny=4, nx=4, speed=0)
    with LabServers.start(lab, sr830_port=None, thermometer_port=None) as servers:
        code = main(["instruments", "--stm", servers.resources["nanonis"], "--timeout", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bias" in out and "set-point" in out and "feedback" in out


def test_failure_names_the_instrument_and_others_are_still_checked(capsys, tmp_path):
    dead = f"TCPIP::127.0.0.1::{free_port()}::SOCKET"
    with LS372Server() as thermometer:
        config = tmp_path / "run.toml"
        config.write_text(
            f'[instruments]\nlockin = "{dead}"\n'
            f'thermometer = {{ resource = "{thermometer.resource}", channel = "A" }}\n'
        )
        code = main(["instruments", "--config", str(config), "--timeout", "0.5"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"lockin at {dead} failed" in captured.err
    assert "temperature 0.3000 K" in captured.out


def test_no_instrument_is_a_clear_error(capsys):
    assert main(["instruments"]) == 1
    assert "no instrument given" in capsys.readouterr().err
