"""The one channel rule (formats.channels): names taken apart, the current and the lock-in chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nanonis_samples import film_grid

from stslive.acquisition.cli import main
from stslive.acquisition.formats import channels
from stslive.acquisition.formats.channels import parse_channel_name, pick_channels
from stslive.acquisition.formats.recording import open_spectra
from stslive.drivers.errors import AnalysisError
from stslive.live import kernels
from stslive.live.kernels import KernelOptions
from stslive.live.pipeline import open_input

DAT_CHANNELS = ["Input 3 (A)", "Input 3 [bwd] (A)", "Input 3 (A) [filt]", "Input 3 (A) [bwd] [filt]"]


def test_names_are_taken_apart_wherever_the_tags_sit() -> None:
    assert parse_channel_name("Current (A)") == ("Current", "A", False, False, None)
    assert parse_channel_name("Current [bwd] (A)") == ("Current", "A", True, False, None)
    assert parse_channel_name("Input 3 (A) [bwd] [filt]") == ("Input 3", "A", True, True, None)
    assert parse_channel_name("LI Demod 1 X [AVG] (A)") == ("LI Demod 1 X", "A", False, False, "AVG")
    assert parse_channel_name("Current [00002] [bwd] (A)") == ("Current", "A", True, False, 2)
    assert parse_channel_name("X% LockIn (V)") == ("X% LockIn", "V", False, False, None)
    assert parse_channel_name("Phase") == ("Phase", "", False, False, None)
    assert parse_channel_name("Current [AVG] (A)").forward and not parse_channel_name("Current [00001] (A)").forward


def test_explicit_current_on_an_input_is_not_also_the_lockin() -> None:
    """Regression: --current 'Input 3 (A)' left the same channel picked as the lock-in."""
    assert pick_channels(DAT_CHANNELS, current="Input 3 (A)") == (0, None)
    assert pick_channels(["Input 3 (A)", "Input 2 (V)"], current="Input 3 (A)") == (0, 1)


def test_automatic_choice_skips_copies_and_current_inputs() -> None:
    # several sweeps saved: the average, never one sweep
    names = ["Current [00001] (A)", "LI Demod 1 X [00001] (A)", "Current [AVG] (A)", "LI Demod 1 X [AVG] (A)"]
    assert pick_channels(names) == (2, 3)
    # the controller's filtered copy is not the measurement
    assert pick_channels(["Current (A) [filt]", "Current (A)", "LIX 1 omega (A)"]) == (1, 2)
    # an input calibrated in amperes is a preamplifier's current, not an external lock-in
    with pytest.raises(AnalysisError, match="--current"):
        pick_channels(DAT_CHANNELS)
    assert pick_channels(["Current (A)", "Input 3 (A)", "Input 2 (V)"]) == (0, 2)


def test_one_rule_for_formats_and_kernels(tmp_path: Path) -> None:
    assert kernels.pick_channels is channels.pick_channels
    path, _ = film_grid(tmp_path / "g.3ds", channels=("Current [bwd] (A)", "Current (A)", "LI Demod 1 X (A)"))
    with open_spectra(path) as source:
        names = source.channel_names
        picked = pick_channels(names)
        assert (source.current_channel, source.lockin_channel) == (names[picked.current], names[picked.lockin])


def test_analyse_a_grid_whose_current_is_an_input(tmp_path: Path) -> None:
    """Regression: with only 'Input 3 (A)', --current named it but the analysis read it as dI/dV."""
    path, _ = film_grid(tmp_path / "in3.3ds", channels=("Input 3 (A)",), nx=8, ny=6)
    with open_input(path, options=KernelOptions(current="Input 3 (A)")) as source:
        assert (source.current_channel, source.lockin_channel) == ("Input 3 (A)", None)
    out = tmp_path / "out"
    assert main(["analyse", str(path), "--current", "Input 3 (A)", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["channels"] == {"current": "Input 3 (A)", "lockin": None}
    assert report["pixels_valid"] >= 0.9 * 48


def test_live_analyser_honours_the_current_it_is_given(tmp_path: Path) -> None:
    """Regression: the live path picked channels without the options (an 'Input 3 (A)' run could not start)."""
    from stslive.acquisition.replay import open_replay
    from stslive.live.flag_config import FlagConfig
    from stslive.live.run_context import PixelInput, RunContext

    path, _ = film_grid(tmp_path / "in3.3ds", channels=("Input 3 (A)",), nx=8, ny=6)
    with open_replay(path) as source:
        start, events = source.start_fields, list(source.events())
    with pytest.raises(AnalysisError, match="--current"):
        RunContext("r", start, options=KernelOptions(), flag_config=FlagConfig())
    ctx = RunContext("r", start, options=KernelOptions(current="Input 3 (A)"), flag_config=FlagConfig())
    ctx.process([PixelInput.from_event(e) for e in events])
    ctx.finish()
    assert ctx.model.maps["measured"].all() and ctx.model.maps["valid"].sum() >= 0.9 * 48
