"""``stslive bench analyser`` on a small replay (the figures themselves: run the command)."""

from __future__ import annotations

import numpy as np
import pytest

from stslive.acquisition.cli import main
from stslive.acquisition.jobs.bench_analyser import film_spectra, replay
from stslive.drivers.errors import StreamError
from stslive.live.analyser import AnalyserSettings
from stslive.live.kernels import KernelOptions
from stslive.live.results import PixelResult, ResultsModel
from stslive.live.results_io import apply_message, decode_message, encode_message, pixels_message


@pytest.mark.parametrize("in_process", [True, False])
def test_replay_gets_every_result_with_latencies_and_stage_times(in_process: bool) -> None:
    spectra, ny, nx = film_spectra(120)
    out = replay(
        spectra,
        ny,
        nx,
        rate=None,
        # calibrated in full (gap, width, smoothing): no pixel is held for the calibration
        options=KernelOptions(dynes_width_eV=0.1e-3, gap_eV=1.2e-3, smoothing_points=9, lockin_smoothing_points=25),
        settings=AnalyserSettings(snapshot_every=10**9, publish_every_s=3600),
        in_process=in_process,
    )
    assert out.latencies_s.size == 120 and out.throughput > 0
    assert (out.latencies_s > 0).all() and (out.latencies_s < 60).all()
    assert 1 <= out.batches <= 120  # batched results: one message for several pixels
    assert out.stages_s["analyse"] > 0 and out.stages_s["receive+decode"] > 0


def test_calibrated_bench_analyses_without_provisional_results(capsys: pytest.CaptureFixture[str]) -> None:
    """--calibrated fixes gap, width and smoothing before the replays: no result is revised, none missing."""
    assert main(["bench", "analyser", "--calibrated", "-n", "600", "--latency-n", "200", "--rate", "2000"]) == 0
    out = capsys.readouterr().out
    assert "calibrated before the replays on the first 512 spectra" in out
    assert "(600 of 600 results" in out and "(200 of 200 results" in out


def test_bench_command_refuses_bad_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "analyser", "-n", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stslive bench: error: give -n") and "Traceback" not in err


def test_pixels_message_round_trip_and_refusals() -> None:
    cols = {
        "iy": np.array([0, 1, 1]),
        "ix": np.array([2, 0, 3]),
        "delta_eV": np.array([1e-3, np.nan, 2e-3]),
        "valid": np.array([True, False, True]),
        "flags": np.array([0, 8, 1]),
        "time": np.array([1.5, 2.5, 3.5]),
        "setpoint_set": np.array([0, 0, 1]),
    }
    topic, header, arrays = decode_message(encode_message(*pixels_message(cols)))
    assert topic == "pixels" and header["n"] == 3
    model = ResultsModel(2, 4, pixel_nm=1.0)
    apply_message(model, topic, header, arrays)
    assert model.maps["measured"].sum() == 3 and model.maps["flags"][1, 0] == 8
    assert model.maps["delta_eV"][1, 3] == np.float32(2e-3) and np.isnan(model.maps["delta_eV"][1, 0])
    assert model.status().current_set == 1
    # the same result as one pixel message
    single = ResultsModel(2, 4, pixel_nm=1.0)
    single.update_pixel(PixelResult(iy=1, ix=3, delta_eV=2e-3, valid=True, flags=1, time=3.5, setpoint_set=1))
    assert single.maps["delta_eV"][1, 3] == model.maps["delta_eV"][1, 3]
    with pytest.raises(StreamError, match="outside"):
        apply_message(ResultsModel(1, 1, pixel_nm=1.0), topic, header, arrays)
    with pytest.raises(StreamError, match="unknown"):
        pixels_message({"iy": [0], "ix": [0], "colour": [1]})
    with pytest.raises(StreamError, match="unequal"):
        pixels_message({"iy": [0, 1], "ix": [0]})
