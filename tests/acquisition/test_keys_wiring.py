"""CURVE keys chosen from the config and the command line: refusals and option checks.

Every non-loopback address here is refused by check_bind before anything is created or bound;
the keyed sockets themselves are exercised on 127.0.0.1 (here and in tests/e2e/test_remote_keys.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from stslive.acquisition import config as config_module
from stslive.acquisition.cli import main
from stslive.acquisition.cli import scan as scan_cli
from stslive.acquisition.cli.common import client_security
from stslive.acquisition.config import RunConfig
from stslive.acquisition.formats.security import Security
from stslive.acquisition.jobs.mocklab import mock_lab_config
from stslive.acquisition.scan import run_scan, stream_security
from stslive.drivers.errors import ConfigError, StreamError
from stslive.live.analyser import AnalyserService

# nothing listens here: a scan that got as far as opening the instruments would fail on it instead
RESOURCES = {"nanonis": "TCPIP::127.0.0.1::1::SOCKET"}


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    assert main(["keys", "--dir", str(root), "--client", "alice", "--role", "control"]) == 0
    return root


def config(**stream: str) -> RunConfig:
    return mock_lab_config(RESOURCES, nx=2, ny=2, n_points=11, lockin=False, thermometer=False, stream=stream)


def test_stream_keys_default_empty_and_checked() -> None:
    assert config().stream["keys"] == ""
    assert stream_security(config()) is None
    with pytest.raises(ConfigError, match="stream.keys"):
        config(keys=3)  # type: ignore[arg-type]
    assert "stream.keys" in config_module.__doc__  # the key table of the module docstring


def test_stream_keys_give_security_from_the_key_directory(keydir: Path) -> None:
    security = stream_security(config(keys=str(keydir)))
    assert security is not None
    assert security.server_secret == keydir / "server.key_secret"
    assert security.allowed_folders("control") == (keydir / "controllers",)


@pytest.mark.parametrize("key", ["pub", "push", "control"])
def test_scan_binding_beyond_loopback_without_keys_refuses_before_the_archive(tmp_path: Path, key: str) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(StreamError, match="refusing to bind 'tcp://0.0.0.0:5556' without authentication.*stslive keys"):
        run_scan(config(**{key: "tcp://0.0.0.0:5556"}), path, announce=False)
    assert not path.exists() and not path.with_name("run.h5.creating").exists()


def test_scan_cli_refuses_config_on_all_interfaces_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(f"""
[instruments.nanonis]
resource = "{RESOURCES["nanonis"]}"
[grid]
width_m = 2e-9
height_m = 2e-9
nx = 2
ny = 2
[[setpoint_set]]
id = 0
name = "spectroscopy"
bias_setpoint_V = -0.01
current_setpoint_A = 1.5e-10
sweep_start_V = -0.04
sweep_end_V = 0.04
n_points = 11
[stream]
pub = "tcp://0.0.0.0:5556"
""")
    assert main(["scan", "--config", str(toml), "--out", str(tmp_path / "run.h5")]) == 1
    err = capsys.readouterr().err
    assert "refusing to bind 'tcp://0.0.0.0:5556' without authentication" in err and "--keys KEYDIR" in err
    assert not (tmp_path / "run.h5").exists()
    # the --control override is checked the same way
    assert (
        main(
            [
                "scan",
                "--config",
                str(toml),
                "--out",
                str(tmp_path / "run.h5"),
                "--pub",
                "tcp://127.0.0.1:0",
                "--control",
                "tcp://*:5557",
            ]
        )
        == 1
    )
    assert "refusing to bind 'tcp://*:5557'" in capsys.readouterr().err


def test_scan_keys_without_server_pair_refuses_before_the_archive(tmp_path: Path) -> None:
    empty = tmp_path / "nokeys"
    (empty / "viewers").mkdir(parents=True)
    (empty / "controllers").mkdir()
    with pytest.raises(ConfigError, match=r"server.key_secret not found.*stslive keys --dir"):
        run_scan(config(keys=str(empty), pub="tcp://0.0.0.0:5556"), tmp_path / "run.h5", announce=False)
    with pytest.raises(ConfigError, match="allowed-client folder"):
        run_scan(config(keys=str(tmp_path / "absent")), tmp_path / "run.h5", announce=False)
    assert not (tmp_path / "run.h5").exists()


def test_analyser_bind_beyond_loopback_without_keys_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StreamError, match="refusing to bind 'tcp://0.0.0.0:5560' without authentication"):
        AnalyserService("tcp://127.0.0.1:5556", bind="tcp://0.0.0.0:5560")
    assert main(["analyser", "--connect", "tcp://127.0.0.1:5556", "--bind", "tcp://192.168.1.20:5560"]) == 1
    assert "refusing to bind 'tcp://192.168.1.20:5560' without authentication" in capsys.readouterr().err
    assert main(["analyser", "--connect", "tcp://127.0.0.1:5556", "--client", "alice"]) == 1
    assert "--client NAME needs --keys KEYDIR" in capsys.readouterr().err


def test_analyser_with_missing_server_key_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "viewers").mkdir()
    (tmp_path / "controllers").mkdir()
    with pytest.raises(ConfigError, match="server.key_secret"):
        AnalyserService("tcp://127.0.0.1:5556", bind="tcp://127.0.0.1:0", security=Security.from_dir(tmp_path))


def test_analyser_missing_client_key_is_a_receiver_error(keydir: Path) -> None:
    service = AnalyserService("tcp://127.0.0.1:5556", stream_security=Security.from_dir(keydir, client="nobody"))
    with service:
        assert service.errors and "nobody.key_secret not found" in service.errors[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["control", "--keys", "K", "status"], "--keys KEYDIR and --client NAME go together"),
        (["control", "--client", "alice", "status"], "--keys KEYDIR and --client NAME go together"),
        (["view", "--connect", "tcp://127.0.0.1:5560", "--keys", "K"], "--keys KEYDIR and --client NAME go together"),
        (["view", "run.h5", "--keys", "K", "--client", "screen"], "with --connect ENDPOINT"),
    ],
)
def test_cli_key_options_go_together(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_control_client_security_uses_the_client_pair(keydir: Path) -> None:
    assert client_security(None, None) is None
    security = client_security(str(keydir), "alice")
    assert security is not None
    assert security.client_secret == keydir / "clients" / "alice.key_secret"
    assert security.server_public == keydir / "server.key"


def test_control_with_unknown_client_key_names_the_file(keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "control",
                "--connect",
                "tcp://127.0.0.1:1",
                "--keys",
                str(keydir),
                "--client",
                "nobody",
                "--timeout",
                "0.2",
                "status",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "nobody.key_secret not found" in err and "stslive keys" in err


def test_scan_keys_option_overrides_stream_keys() -> None:
    parser = argparse.ArgumentParser()
    scan_cli.add_arguments(parser)
    assert parser.parse_args(["--config", "x.toml", "--keys", "K"]).keys == "K"
