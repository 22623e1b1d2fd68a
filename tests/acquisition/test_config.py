"""Run config: the example parses, defaults fill in, every bad key or value names itself."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import stslive.acquisition.config as config_module
from stslive.acquisition.config import RUN_CONFIG_KEYS, RunConfig
from stslive.drivers.errors import ConfigError

EXAMPLE = Path(config_module.__file__).with_name("example_run.toml")


def minimal() -> dict:
    return {
        "instruments": {"nanonis": {"resource": "TCPIP::127.0.0.1::6501::SOCKET"}},
        "grid": {"width_m": 10e-9, "height_m": 8e-9, "nx": 5, "ny": 4},
        "setpoint_set": [
            {
                "id": 0,
                "name": "a",
                "bias_setpoint_V": -0.01,
                "current_setpoint_A": 1e-10,
                "sweep_start_V": -0.04,
                "sweep_end_V": 0.04,
                "n_points": 101,
            }
        ],
    }


def test_example_file_parses_and_round_trips() -> None:
    config = RunConfig.from_toml(EXAMPLE)
    assert config.plan_kind == "grid" and config.plan["nx"] == 32
    assert config.suspender["enabled"] and "thermometer" in config.instruments
    again = RunConfig.from_dict(config.to_dict())
    assert again == config


def test_defaults_filled_in() -> None:
    config = RunConfig.from_dict(minimal())
    assert config.run["retries"] == 2 and config.run["setpoint_mode"] == "single"
    assert config.stream["pub"] == "tcp://127.0.0.1:5556"
    assert config.instruments["nanonis"]["timeout_s"] == 5.0
    assert config.n_points == 101


def test_every_schema_key_is_documented_in_the_module_docstring() -> None:
    for section, keys in RUN_CONFIG_KEYS.items():
        for name, key in keys.items():
            assert f"{section}.{name}" in config_module.__doc__
            assert key.doc


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["grid"].update(nxx=3), r"\[grid\]: unknown key\(s\) \['nxx'\]"),
        (lambda d: d.update(stream={"pubb": "x"}), r"\[stream\]: unknown key\(s\) \['pubb'\]; known keys: \['control'"),
        (lambda d: d.update(run={"retries": "two"}), "run.retries"),
        (lambda d: d.update(run={"setpoint_mode": "random"}), "run.setpoint_mode"),
        (lambda d: d["instruments"]["nanonis"].pop("resource"), "instruments.nanonis.resource"),
        (lambda d: d["instruments"].update(scope={}), r"\[instruments\]: unknown key\(s\) \['scope'\]"),
        (lambda d: d.update(suspender={"enabled": True}), "thermometer"),
        (
            lambda d: d.update(line={"start_x_m": 0, "start_y_m": 0, "end_x_m": 1e-9, "end_y_m": 0, "n": 3}),
            "exactly one",
        ),
        (lambda d: d["setpoint_set"][0].update(bias_setpoint_V=0.0), "bias_setpoint_V"),
        (lambda d: d["setpoint_set"].append(dict(d["setpoint_set"][0])), "unique"),
        (lambda d: d.update(gird={}), r"top level: unknown key\(s\) \['gird'\]"),
        (lambda d: d["grid"].update(order="spiral"), "order"),
        (lambda d: d.update(stream={"header_format": "pickle"}), "header_format"),
    ],
)
def test_bad_keys_and_values_name_the_key(edit, named: str) -> None:
    doc = copy.deepcopy(minimal())
    edit(doc)
    with pytest.raises(ConfigError, match=named):
        RunConfig.from_dict(doc)


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        RunConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_toml(tmp_path / "missing.toml")


def test_overrides_are_rechecked() -> None:
    config = RunConfig.from_dict(minimal())
    assert config.with_overrides(stream={"control": ""}).stream["control"] == ""
    with pytest.raises(ConfigError, match="header_format"):
        config.with_overrides(stream={"header_format": "xml"})
