"""Nanonis point spectra (.dat, folders of them), MLS grids, and the conditions a recording states."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from nanonis_samples import DAT_HEADER, film_grid, film_line_dats, write_dat

from stslive.acquisition.cli import main
from stslive.acquisition.formats.nanonis3ds import open_3ds
from stslive.acquisition.formats.nanonis_dat import open_dat, read_dat
from stslive.acquisition.formats.recording import open_recording, open_spectra, recording_kind
from stslive.acquisition.jobs.simulate import write_film_archive
from stslive.acquisition.replay import open_replay
from stslive.drivers.errors import AnalysisError, ConfigError, NanonisFileError
from stslive.live.flag_config import FlagConfig
from stslive.live.flag_kinds import FlagKind
from stslive.live.kernels import KernelOptions
from stslive.live.run_context import PixelInput, RunContext
from stslive.mocks.film import FilmParams, make_film

DAT = "nanonis-point-spectrum-iv.dat"
#: MLS grid header quoted from a real file (docs/formats.md): two segments, 30 + 10 steps -> 39 points
MLS_SEGMENTS = "300E-3,0E+0,10E-3,100E-3,30,0E+0,0E+0;0E+0,-500E-3,10E-3,100E-3,10,0E+0,0E+0"


# -- .dat point spectra -------------------------------------------------------------------------
def test_real_point_spectrum(shared_data: Path) -> None:
    s = read_dat(shared_data / DAT)
    assert s.sweep_signal == "Bias calc (V)" and s.n_points == 1024
    assert s.channel_names == ["Input 3 (A)", "Input 3 [bwd] (A)", "Input 3 (A) [filt]", "Input 3 (A) [bwd] [filt]"]
    np.testing.assert_allclose(s.sweep[[0, -1]], [-0.2, 0.2], atol=1e-6)
    assert s.data[0, 1] == pytest.approx(-132.523e-12) and s.data[0, 2] == pytest.approx(-150.893e-12)
    assert math.isnan(s.data[0, 3])  # the filtered copy starts with NaN
    assert s.position_m() == pytest.approx((-19.4904e-9, -73.1801e-9))
    assert recording_kind(shared_data / DAT) == "nanonis-dat"
    with open_recording(shared_data / DAT) as rec:
        assert rec.shape == (1, 1) and rec.measured.all() and rec.conditions().temperature_K is None


def test_real_point_spectrum_is_analysed_with_its_current_named(shared_data: Path, tmp_path: Path) -> None:
    """Regression: a .dat was refused with a message about a truncated .3ds header."""
    out = tmp_path / "out"
    assert main(["analyse", str(shared_data / DAT), "--current", "Input 3 (A)", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["format"] == "nanonis-dat" and report["pixels_measured"] == 1
    assert report["inputs"]["channels"]["current"] == "Input 3 (A)"
    with pytest.raises(AnalysisError, match="name the current|--current"):
        open_spectra(shared_data / DAT)  # no 'Current' channel: the user must say which one


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_dat_layout_and_values(tmp_path: Path, newline: str) -> None:
    bias = np.linspace(-0.01, 0.01, 5)
    data = np.stack([bias, bias * 1e-8, -bias * 1e-8, np.full(5, np.nan)], axis=1)
    columns = ["Bias calc (V)", "Current (A)", "Current [bwd] (A)", "Current (A) [filt]"]
    head = {**DAT_HEADER, "X (m)": "1E-9", "Y (m)": "2E-9"}
    path = write_dat(tmp_path / "a.dat", header=head, columns=columns, data=data, newline=newline)
    s = read_dat(path)
    assert s.header["Final Z (m)"] == "N/A" and s.header["User"] == "" and s.columns == columns
    np.testing.assert_allclose(s.data[:, :3], data[:, :3], rtol=1e-6)
    with open_spectra(path) as source:
        assert source.kind == "nanonis-dat" and source.current_channel == "Current (A)"
        assert source.lockin_channel is None and source.shape == (1, 1)
        np.testing.assert_allclose(source.bias, bias, rtol=1e-6)
        block = next(source.iter_blocks())
        np.testing.assert_allclose(block.current[0, 0], data[:, 1], rtol=1e-6)
        c = source.conditions
        assert c.temperature_K == 1.2 and "Temperature 1>Temperature 1 (K)" in c.sources["temperature_K"]
        assert c.lockin_amplitude_V == 100e-6 and c.modulation_Vrms is None  # convention unstated
        assert c.bias_calibration_V_per_V == 1.0 and c.lockin_frequency_Hz == 973.0


def test_damaged_dat_files_raise_typed_errors(tmp_path: Path) -> None:
    good = write_dat(
        tmp_path / "g.dat",
        header=DAT_HEADER,
        columns=["Bias calc (V)", "Current (A)"],
        data=np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]),
    )
    raw = good.read_bytes()
    cases = {
        "no [DATA]": raw.replace(b"[DATA]", b"[DATUM]"),
        "column names": raw[: raw.index(b"[DATA]") + 8],
        "1 values for 2 columns": raw.replace(b"1.000000E+00\t2.000000E+00", b"1.000000E+00"),
        "not a number": raw.replace(b"2.000000E+00\t3.000000E+00", b"2.000000E+00\tabc"),
        "at least 2 points": raw[: raw.index(b"1.000000E+00\t2.000000E+00")],
    }
    for match, content in cases.items():
        bad = tmp_path / "bad.dat"
        bad.write_bytes(content)
        with pytest.raises(NanonisFileError, match=re.escape(match)):
            open_dat(bad)


def test_folder_of_dat_on_a_line_is_one_input(tmp_path: Path) -> None:
    _, f = film_line_dats(tmp_path / "line", 12)
    assert recording_kind(tmp_path / "line") == "nanonis-dat"
    with open_recording(tmp_path / "line") as rec:
        assert rec.shape == (1, 12) and rec.regular
        x, y = rec.geometry.pixel_xy(np.zeros(12, int), np.arange(12))
        np.testing.assert_allclose(x, rec.positions_m[0], atol=1e-15)
        np.testing.assert_allclose(y, rec.positions_m[1], atol=1e-15)
        assert rec.geometry.pixel_size_m[0] == pytest.approx(math.hypot(1.5e-9, 0.5e-9))
    out = tmp_path / "out"
    assert main(["analyse", str(tmp_path / "line"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (
        report["pixels_measured"] == 12 and report["pixels_valid"] >= 11 and report["inputs"]["format"] == "nanonis-dat"
    )
    truth = f.definition_truth().delta_pp_eV[0]  # type: ignore[attr-defined]
    from stslive.live.results_io import load_maps_h5

    maps = load_maps_h5(out / "maps.h5").maps
    ok = maps["valid"][0]
    assert np.abs(maps["delta_eV"][0][ok] - truth[ok]).max() < 0.05e-3


def test_hand_placed_points_keep_their_positions(tmp_path: Path) -> None:
    film_line_dats(tmp_path / "set", 6, jitter_m=3e-9)
    with open_spectra(tmp_path / "set") as source:
        assert not source.regular_grid
        x, y = source.positions_m
        with open_dat(tmp_path / "set") as rec:
            np.testing.assert_array_equal(x[0], rec.positions_m[0])
            np.testing.assert_array_equal(y[0], rec.positions_m[1])


def test_folder_of_different_spectra_is_refused(tmp_path: Path) -> None:
    film_line_dats(tmp_path / "mix", 3)
    write_dat(
        tmp_path / "mix" / "z.dat",
        header=DAT_HEADER,
        columns=["Z rel (m)", "Current (A)"],
        data=np.zeros((4, 2)),
    )
    with pytest.raises(NanonisFileError, match="one kind"):
        open_recording(tmp_path / "mix")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NanonisFileError, match="without .dat"):
        open_recording(empty)


def test_content_decides_the_kind_not_the_name(tmp_path: Path) -> None:
    paths, _ = film_line_dats(tmp_path / "d", 1)
    named = tmp_path / "spectrum.3ds"
    named.write_bytes(paths[0].read_bytes())
    assert recording_kind(named) == "nanonis-dat"
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"neither format")
    with pytest.raises(NanonisFileError, match="neither an stslive archive"):
        open_recording(junk)


def test_dat_folder_replays_with_recorded_positions(tmp_path: Path, shared_data: Path) -> None:
    film_line_dats(tmp_path / "line", 4)
    with open_replay(tmp_path / "line") as source, open_dat(tmp_path / "line") as rec:
        sp = source.start_fields["setpoint_sets"][0]
        assert (sp["bias_setpoint_V"], sp["current_setpoint_A"]) == (10e-3, 150e-12)
        assert source.start_fields["metadata"]["source_kind"] == "nanonis-dat"
        events = list(source.events())
        assert [(e.iy, e.ix) for e in events] == [(0, k) for k in range(4)]
        np.testing.assert_allclose([e.x_m for e in events], rec.positions_m[0])
        np.testing.assert_allclose(events[2].arrays["spectra"], rec.read_block()[0, 2], rtol=0)
    # an old .dat does not record its set-point: replay asks for it instead of inventing one
    with pytest.raises(NanonisFileError, match="--setpoint"):
        open_replay(shared_data / DAT)
    with open_replay(shared_data / DAT, setpoint=(0.2, 200e-12)) as source:
        assert source.start_fields["setpoint_sets"][0]["current_setpoint_A"] == 200e-12


# -- MLS grids ------------------------------------------------------------------------------------
def _real_mls_grid(path: Path) -> Path:
    """A grid with the header keys of a published MLS file; 2 x 1 points, 4 channels."""
    channels = "Current [AVG] (A);LI Demod 1 X [AVG] (A);Current [00001] (A);LI Demod 1 X [00001] (A)"
    params = "X (m);Y (m);Z (m);Z offset (m);Z-Ctrl hold;Final Z (m);Scan:Current (A)"
    lines = [
        'Grid dim="2 x 1"',
        "Grid settings=0E+0;0E+0;2E-9;1E-9;0E+0",
        "Filetype=MLS",
        'Sweep Signal="Bias (V)"',
        'Fixed parameters="Sweep Start;Sweep End"',
        f'Experiment parameters="{params}"',
        "# Parameters (4 byte)=9",
        "Experiment size (bytes)=624",
        "Points=39",
        f'Channels="{channels}"',
        "Segment Start (V), Segment End (V), Settling (s), Integration (s), Steps (xn), Lockin, Init. Settling (s)="
        + MLS_SEGMENTS,
        "Bias>Bias (V)=300E-3",
        "Current>Current (A)=100E-12",
    ]
    header = ("\r\n".join(lines) + "\r\n:HEADER_END:\r\n").encode("latin-1")
    rng = np.random.default_rng(0)
    records = rng.normal(size=(2, 9 + 4 * 39)).astype(">f4")
    records[:, :2] = [0.3, -0.5]
    path.write_bytes(header + records.tobytes())
    return path


def test_real_mls_header_gives_the_segment_sweep(tmp_path: Path) -> None:
    """Regression: Filetype=MLS was refused."""
    with open_3ds(_real_mls_grid(tmp_path / "mls.3ds")) as g:
        axis = g.nominal_sweep()
        assert axis.size == 39 and g.n_records == 2 and g.measured.all()
        np.testing.assert_allclose(axis[:30], [*np.linspace(0.3, 0.0, 30)[:29].tolist(), 0.0])
        np.testing.assert_allclose(axis[29:], np.linspace(0.0, -0.5, 10))
        assert g.sweep_axes().shape == (1, 2, 39)
        recorded = g.read_block(slice(0, 1), ["Current [AVG] (A)"])[0, 1, 0]
    with open_spectra(tmp_path / "mls.3ds") as source:
        assert source.current_channel == "Current [AVG] (A)" and source.lockin_channel == "LI Demod 1 X [AVG] (A)"
        assert not source.bias_per_pixel and source.resampled_from == 39
        # on a uniform grid of the finest step (0.3 V / 29 over 0.8 V), by linear interpolation
        step = 0.3 / 29
        assert source.n_points == round(0.8 / step) + 1
        np.testing.assert_allclose(np.diff(source.bias), -0.8 / (source.n_points - 1))
        current = source.read_block(slice(0, 1)).current[0, 1]
        np.testing.assert_allclose(current, np.interp(-source.bias, -axis, recorded), rtol=1e-5)


def test_mls_header_that_disagrees_with_points_is_refused(tmp_path: Path) -> None:
    path = _real_mls_grid(tmp_path / "bad.3ds")
    path.write_bytes(path.read_bytes().replace(b",30,0E+0", b",31,0E+0"))
    with pytest.raises(NanonisFileError, match="MLS segments make 40 points"):
        open_3ds(path)
    path.write_bytes(path.read_bytes().replace(b"Segment Start", b"Segmant Start"))
    with pytest.raises(NanonisFileError, match="segment table"):
        open_3ds(path)


def test_mls_grid_is_analysed_offline_and_refused_by_replay(tmp_path: Path) -> None:
    # dense across the gap, sparse outside: the reason labs use MLS for superconductors
    segments = [(0.04, 0.006, 0.0, 0.0, 86), (0.006, -0.006, 0.0, 0.0, 241), (-0.006, -0.04, 0.0, 0.0, 86)]
    path, f = film_grid(tmp_path / "mls.3ds", mls=segments, nx=6, ny=4)
    with open_3ds(path) as g:
        assert g.header["Filetype"] == "MLS" and g.n_points == 86 + 241 + 86 - 2
        assert np.diff(g.nominal_sweep()[84:90]).std() > 0  # two different steps: not linear
    out = tmp_path / "out"
    assert main(["analyse", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pixels_measured"] == 24 and report["inputs"]["resampled_from_points"] == 411
    from stslive.live.results_io import load_maps_h5

    maps = load_maps_h5(out / "maps.h5").maps
    truth = f.definition_truth().delta_pp_eV  # type: ignore[attr-defined]
    ok = maps["valid"]
    assert ok.sum() >= 22
    assert np.sqrt(np.mean((maps["delta_eV"][ok] - truth[ok]) ** 2)) < 0.02e-3  # meV-level accuracy kept
    with pytest.raises(NanonisFileError, match="not linear"):
        open_replay(path)


# -- conditions ------------------------------------------------------------------------------------
def test_grid_conditions_from_the_header(tmp_path: Path) -> None:
    lockin = {
        "Lock-in>Lock-in status": "OFF",
        "Lock-in>Modulated signal": '"Bias (V)"',
        "Lock-in>Amplitude": "200E-6",
        "Lock-in>Frequency (Hz)": "911E+0",
        "Lock-in>Harmonic D1": "1",
        "Bias Spectroscopy>Lock-In run": "TRUE",
        "Temperature 1>Temperature 1 (K)": "1.2E+0",
        "Temperature 2>Temperature 2 (K)": "518E+0",
    }
    path, _ = film_grid(tmp_path / "g.3ds", header=lockin)
    with open_3ds(path) as g:
        unknown = g.conditions()
        assert unknown.temperature_K == 1.2 and unknown.lockin_amplitude_V == 200e-6
        assert unknown.modulation_Vrms is None and unknown.amplitude_convention is None
        assert "convention" in unknown.sources["modulation_Vrms"]
        assert unknown.lockin_harmonic == 1 and unknown.lockin_frequency_Hz == 911.0
        assert g.conditions(amplitude_convention="peak").modulation_Vrms == pytest.approx(200e-6 / math.sqrt(2))
        assert g.conditions(amplitude_convention="rms").modulation_Vrms == 200e-6
    path, _ = film_grid(tmp_path / "off.3ds", header={**lockin, "Bias Spectroscopy>Lock-In run": "FALSE"})
    with open_3ds(path) as g:
        assert g.conditions().modulation_Vrms == 0.0  # modulation off during the sweeps: no broadening
    with pytest.raises(ConfigError, match="peak"):
        open_spectra(path, amplitude_convention="pp")  # type: ignore[arg-type]


def test_archive_conditions(tmp_path: Path) -> None:
    film = make_film(FilmParams(ny=3, nx=4, seed=1, temperature_K=1.2, modulation_Vrms=200e-6, dynes_gamma_eV=0.15e-3))
    write_film_archive(film, tmp_path / "film.h5")
    with open_spectra(tmp_path / "film.h5") as source:
        c = source.conditions
    assert c.temperature_K == 1.2 and c.sources["temperature_K"].startswith("pixels")
    assert c.modulation_Vrms == 200e-6 and c.amplitude_convention == "rms" and c.modulation_Vrms_by_set == {0: 200e-6}
    assert c.dynes_width_eV == 0.15e-3 and "film_params" in c.sources["dynes_width_eV"]
    assert c.bias_divider is None and c.magnetic_field_T is None  # not recorded: unknown, no default


def test_exported_grid_states_its_amplitude_convention(tmp_path: Path) -> None:
    from stslive.acquisition.formats.nanonis3ds import export_archive

    film = make_film(FilmParams(ny=3, nx=4, seed=1, modulation_Vrms=80e-6))
    write_film_archive(film, tmp_path / "film.h5")
    export_archive(tmp_path / "film.h5", tmp_path / "film.3ds")
    with open_3ds(tmp_path / "film.3ds") as g:
        assert g.conditions().modulation_Vrms == pytest.approx(80e-6)  # round trip: rms stays rms


# -- replayed lock-in settings ---------------------------------------------------------------------
def test_replayed_grid_carries_unknown_lockin_settings_as_unknown(tmp_path: Path) -> None:
    """Regression: a replayed .3ds got a 1 V sensitivity and the live flags marked every pixel
    LOCKIN_SENSITIVITY; its modulation was taken as zero-to-peak without evidence."""
    header = {
        "Lock-in>Lock-in status": "ON",
        "Lock-in>Modulated signal": '"Bias (V)"',
        "Lock-in>Amplitude": "100E-6",
        "Lock-in>Frequency (Hz)": "973E+0",
        "Bias Spectroscopy>Lock-In run": "TRUE",
    }
    path, _ = film_grid(tmp_path / "g.3ds", header=header, nx=8, ny=7)
    with open_replay(path) as source:
        fields = source.start_fields
        events = list(source.events())
    sp = fields["setpoint_sets"][0]
    assert sp["lockin_sensitivity_V"] is None and sp["lockin_time_constant_s"] is None
    assert sp["lockin_amplitude_Vrms"] is None and sp["lockin_frequency_Hz"] == 973.0
    assert fields["metadata"]["conditions"]["lockin_amplitude_V"] == 100e-6
    ctx = RunContext("r", fields, options=KernelOptions(), flag_config=FlagConfig())
    ctx.process([PixelInput.from_event(e) for e in events])
    ctx.finish()
    flags = ctx.model.maps["flags"]
    assert ctx.model.maps["measured"].all()
    assert not (flags & np.uint32(FlagKind.LOCKIN_SENSITIVITY)).any()
    with open_replay(path, amplitude_convention="peak") as source:
        assert source.start_fields["setpoint_sets"][0]["lockin_amplitude_Vrms"] == pytest.approx(100e-6 / math.sqrt(2))


def test_a_gap_refused_at_the_headers_temperature_says_so(tmp_path: Path) -> None:
    """A header whose thermometer reads 1.2 K over 0.3 K-sharp peaks: the warning names the temperature used."""
    film_line_dats(tmp_path / "line", 6, header={"Temperature 1>Temperature 1 (K)": "1.2E+0"})
    assert main(["analyse", str(tmp_path / "line"), "--out", str(tmp_path / "out"), "--examples", "0"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    few = next(w for w in report["warnings"] if w["code"] == "few_valid_delta")
    assert "T = 1.2 K" in few["message"] and "--temperature-K" in few["message"]
    assert (
        main(
            [
                "analyse",
                str(tmp_path / "line"),
                "--out",
                str(tmp_path / "out3"),
                "--examples",
                "0",
                "--temperature-K",
                "0.3",
            ]
        )
        == 0
    )
    fixed = json.loads((tmp_path / "out3" / "report.json").read_text())
    assert fixed["pixels_valid_delta"] == 6 and not [w for w in fixed["warnings"] if w["code"] == "few_valid_delta"]


def test_start_document_says_whether_the_sweep_limits_vary_per_point(tmp_path: Path) -> None:
    """From the per-point Sweep Start/End parameters: one grid with fixed limits, one whose start moves."""
    from stslive.acquisition.formats.nanonis3ds import write_3ds
    from stslive.acquisition.formats.runmodel import GridGeometry
    from stslive.acquisition.formats.start_document import start_fields

    geometry = GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=3e-9, height_m=2e-9, nx=3, ny=2)
    header = {"Bias>Bias (V)": "-1E-2", "Current>Current (A)": "1E-10"}
    spectra = np.ones((2, 3, 1, 16), np.float32)
    starts = {"fixed": -0.01, "moving": np.array([[-0.01, -0.01, -0.01], [-0.01, -0.012, -0.01]])}
    for name, start in starts.items():
        path = tmp_path / f"{name}.3ds"
        write_3ds(path, spectra=spectra, channel_names=["Current (A)"], geometry=geometry, sweep_start=start,
                  sweep_end=0.01, n_points=16, header=header)  # fmt: skip
        with open_recording(path) as rec:
            assert start_fields(rec)["metadata"]["sweep_limits_vary_per_point"] is (name == "moving")
