"""Broadening from the recording, a gap-only sweep through the CLI, and a real Nanonis grid.

The temperature and the lock-in modulation of an archive reach the analysis without an option
(and an option overrides them); ``stslive analyse`` of a +-5 mV I(V)-only sweep gives a Delta map
and exit 0; the real KPFM grid (128 points, +0.2 -> -0.1 V, 2.4 mV steps) is refused for Delta
naming the step, not as NAN_INPUT everywhere, and its alpha is measured.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from reference_truth import reference_truth

from stslive.acquisition.cli import main
from stslive.acquisition.cli.simulate import write_film_archive
from stslive.live.kernels import KernelOptions, ReasonCode
from stslive.live.pipeline import analyse_input, instrument_settings, open_input
from stslive.mocks.film import FilmParams, make_film

NY, NX = 24, 32


def _film(tmp_path: Path, name: str, **knobs):
    film = make_film(FilmParams(ny=NY, nx=NX, seed=4, dynes_gamma_eV=0.08e-3, **knobs))
    path = tmp_path / f"{name}.h5"
    write_film_archive(film, path)
    return film, path


def _rms_meV(model, truth) -> float:
    valid = model.maps["valid_delta"]
    assert valid.mean() >= 0.95, np.unique(model.maps["reason_delta"], return_counts=True)
    return float(np.sqrt(np.mean((model.maps["delta_eV"][valid] - truth[valid]) ** 2)) * 1e3)


@pytest.mark.slow
def test_temperature_from_the_archive_and_from_the_option(tmp_path: Path) -> None:
    film, path = _film(tmp_path, "hot", temperature_K=1.2)
    truth = reference_truth(film).delta_eV
    with open_input(path, options=KernelOptions()) as source:
        assert instrument_settings(source).temperature_K == pytest.approx(1.2)
    from_header = analyse_input(path, options=KernelOptions())
    from_option = analyse_input(path, options=KernelOptions(temperature_K=1.2))
    assumed = analyse_input(path, options=KernelOptions(temperature_K=0.3))  # the option wins over the header
    figures = [_rms_meV(m, truth) for m in (from_header, from_option, assumed)]
    print(
        f"1.2 K film, lock-in Delta rms: header {figures[0]:.4f}, option {figures[1]:.4f}, 0.3 K {figures[2]:.4f} meV"
    )
    assert figures[0] <= 0.015 and figures[1] <= 0.015
    np.testing.assert_array_equal(from_header.maps["delta_eV"], from_option.maps["delta_eV"])
    assert not np.array_equal(assumed.maps["delta_eV"], from_header.maps["delta_eV"], equal_nan=True)


@pytest.mark.slow
def test_modulation_from_the_archive_is_removed_from_delta(tmp_path: Path) -> None:
    film, path = _film(tmp_path, "modulated", modulation_Vrms=200e-6)
    truth = reference_truth(film).delta_eV
    with open_input(path, options=KernelOptions()) as source:
        assert instrument_settings(source).modulation_Vrms == pytest.approx(200e-6)
    with_header = _rms_meV(analyse_input(path, options=KernelOptions()), truth)
    ignored = analyse_input(path, options=KernelOptions(modulation_Vrms=0.0))
    bias = float(np.nanmean(ignored.maps["delta_eV"] - truth)) * 1e3
    print(f"200 uV rms film, lock-in Delta rms {with_header:.4f} meV; modulation ignored: bias {bias:+.4f} meV")
    assert with_header <= 0.015
    assert bias > 0.03  # ignoring the modulation moves the peaks out: the header is what removes it


def test_a_gap_only_sweep_gives_a_delta_map_through_the_cli(tmp_path: Path) -> None:
    _, path = _film(tmp_path, "gap_only", bias_start_V=-0.005, bias_end_V=0.005, n_points=201)
    out = tmp_path / "out"
    assert main(["analyse", str(path), "--out", str(out), "--no-lockin"]) == 0
    with h5py.File(out / "maps.h5", "r") as f:
        valid_delta, delta, reason_alpha = (f[name][()] for name in ("valid_delta", "delta", "reason_alpha"))
    assert valid_delta.mean() >= 0.95 and np.isfinite(delta[valid_delta.astype(bool)]).all()
    assert (reason_alpha == ReasonCode.WINDOW_NOT_COVERED).all()


def test_the_cli_options_reach_the_kernels() -> None:
    import argparse

    from stslive.acquisition.cli import analyse as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["x.h5", "--out", "o", "--temperature-K", "1.2", "--modulation-Vrms", "2e-4"])
    options = cli.kernel_options(args)
    assert (options.temperature_K, options.modulation_Vrms, options.alpha_source) == (1.2, 2e-4, "current")
    args = parser.parse_args(["x.h5", "--out", "o", "--alpha-source", "lockin"])
    options = cli.kernel_options(args)
    assert options.alpha_source == "lockin" and options.temperature_K is None and options.smoothing_points is None
    assert (
        options.joint_fit_above > 0
        and cli.kernel_options(parser.parse_args(["x", "--out", "o", "--dynes-fit"])).joint_fit_above == 0
    )


def test_real_kpfm_grid_is_refused_for_delta_by_its_step_and_measured_for_alpha(shared_data: Path) -> None:
    model = analyse_input(shared_data / "nanonis-grid-kpfm-20x20.3ds", options=KernelOptions())
    assert model.maps["measured"].all()
    assert (model.maps["reason_delta"] == ReasonCode.BIAS_STEP_TOO_COARSE).all()  # 2.4 mV steps, not NAN_INPUT
    assert model.maps["valid_alpha"].all() and np.isfinite(model.maps["alpha"]).all()
    assert not model.maps["valid"].any()


@pytest.mark.parametrize("kind", ["archive", "3ds"])
def test_live_and_offline_read_one_temperature_and_one_modulation_from_the_recording(tmp_path: Path, kind: str) -> None:
    """A recording replayed into the live analyser and ``stslive analyse`` of it: the same broadening, the same maps.

    A ``.3ds`` states its temperature in the header once (no reading per pixel, so none in its
    events) and its modulation as ``Lock-in>Amplitude``, here with its convention stated
    (zero-to-peak; Nanonis itself does not say, docs/formats.md), which the set-point set the
    replay publishes carries; the analysis must take both from the same reading.
    """
    from stslive.acquisition.formats.nanonis3ds import write_3ds
    from stslive.acquisition.formats.runmodel import GridGeometry
    from stslive.acquisition.replay import open_replay
    from stslive.live.flag_config import FlagConfig
    from stslive.live.pipeline import calibrate_source
    from stslive.live.run_context import PixelInput, RunContext

    ny, nx, points = 12, 16, 801
    film = make_film(FilmParams(ny=ny, nx=nx, seed=5, n_points=points, temperature_K=1.2, modulation_Vrms=200e-6))
    if kind == "archive":
        path = tmp_path / "hot.h5"
        write_film_archive(film, path)
    else:
        path = tmp_path / "hot.3ds"
        spectra = film.spectra(*np.indices((ny, nx)))
        write_3ds(
            path,
            spectra=np.stack([spectra.current_A, spectra.lockin_x_A], 2),
            channel_names=["Current (A)", "LI Demod 1 X (A)"],
            geometry=GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=nx * 1e-9, height_m=ny * 1e-9, nx=nx, ny=ny),
            sweep_start=-0.04,
            sweep_end=0.04,
            n_points=points,
            header={
                "Bias>Bias (V)": "-1.000000E-2",
                "Current>Current (A)": "1.500000E-10",
                "Temperature 1>Temperature 1 (K)": "1.2E+0",
                "Bias Spectroscopy>Lock-In run": "TRUE",
                "Lock-in>Lock-in status": "ON",
                "Lock-in>Modulated signal": "Bias (V)",
                "Lock-in>Amplitude": f"{200e-6 * np.sqrt(2):.6E}",  # zero-to-peak
                "stslive>Lock-in amplitude convention": "peak",
            },
        )
    with open_input(path, options=KernelOptions()) as source:
        offline_options = calibrate_source(source, options=KernelOptions())
    offline = analyse_input(path, options=KernelOptions())
    with open_replay(path) as source:  # what `stslive replay` publishes
        live = RunContext("replay", source.start_fields, options=KernelOptions(), flag_config=FlagConfig())
        for event in source.events():
            live.process([PixelInput.from_event(event)])
    live.finish()
    for options in (offline_options, live.options):
        assert (options.temperature_K, options.modulation_Vrms) == (pytest.approx(1.2), pytest.approx(200e-6))
    assert live.options == offline_options
    for name in ("delta_eV", "valid_delta", "delta_sigma_eV", "alpha", "valid_alpha"):
        np.testing.assert_allclose(
            live.model.maps[name].astype(float), offline.maps[name].astype(float), rtol=1e-4, equal_nan=True,
            err_msg=name,
        )  # fmt: skip
    assert offline.maps["valid_delta"].mean() >= 0.95


_PEAK = {"stslive>Lock-in amplitude convention": "peak"}


@pytest.mark.parametrize(
    ("lockin", "modulation_Vrms"),
    [
        ({"Bias Spectroscopy>Lock-In run": "TRUE", "Lock-in>Modulated signal": "Bias (V)", **_PEAK}, 1e-3 / np.sqrt(2)),
        ({"Bias Spectroscopy>Lock-In run": "TRUE", **_PEAK}, None),  # the header does not say what it modulated
        ({"Lock-in>Lock-in status": "ON", "Lock-in>Modulated signal": "Bias (V)", **_PEAK}, 1e-3 / np.sqrt(2)),
        ({"Bias Spectroscopy>Lock-In run": "TRUE", "Lock-in>Modulated signal": "Bias (V)"}, None),  # rms or peak?
        ({"Bias Spectroscopy>Lock-In run": "TRUE", "Lock-in>Modulated signal": "Z (m)", **_PEAK}, None),  # dI/dz
        ({"Bias Spectroscopy>Lock-In run": "FALSE", "Lock-in>Lock-in status": "OFF"}, None),
    ],
)
def test_the_3ds_header_states_the_modulation_only_when_the_lockin_modulated_the_bias(
    tmp_path: Path, lockin: dict[str, str], modulation_Vrms: float | None
) -> None:
    from stslive.acquisition.formats.nanonis3ds import write_3ds
    from stslive.acquisition.formats.runmodel import GridGeometry

    path = tmp_path / "grid.3ds"
    write_3ds(
        path,
        spectra=np.zeros((2, 3, 1, 16), np.float32),
        channel_names=["Current (A)"],
        geometry=GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=2e-9, nx=3, ny=2),
        sweep_start=-0.01,
        sweep_end=0.01,
        n_points=16,
        header={
            "Bias>Bias (V)": "-1E-2",
            "Current>Current (A)": "1E-10",
            "Temperature 1>Temperature 1 (K)": "4.2E+0",
            "Lock-in>Amplitude": "1E-3",
            **lockin,
        },
    )
    with open_input(path, options=KernelOptions()) as source:
        settings = instrument_settings(source)
    assert settings.temperature_K == pytest.approx(4.2)
    assert settings.modulation_Vrms == (None if modulation_Vrms is None else pytest.approx(modulation_Vrms))
