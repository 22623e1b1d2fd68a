"""ResultsModel: statistics, per-set flags, status, maps.h5 round trip, wire round trip, threads."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from stslive.acquisition.jobs.bench_viewer import snapshot_of, synthetic_maps
from stslive.drivers.errors import AnalysisError, FileFormatError, StreamError
from stslive.live import results_io as rio
from stslive.live.results import MAP_SPECS, FlagKind, PixelResult, ResultsModel


def filled(ny: int = 24, nx: int = 30, seed: int = 3) -> ResultsModel:
    maps = synthetic_maps(ny, nx, seed=seed, length_px=3.0)
    model = ResultsModel(ny, nx, pixel_nm=1.5, topography=np.full((ny, nx), 1e-10, np.float32))
    model.update_block(slice(None), slice(None), **maps)
    model.set_snapshot(snapshot_of(maps["delta_eV"], maps["alpha"], pixel_nm=1.5))
    model.set_setpoint_sets({0: {"lockin_amplitude_Vrms": 1e-4}, 1: {"lockin_amplitude_Vrms": 8e-4}})
    model.update_status(state="running", current_set=1, last_seq=99, message="ok", temperature=(5.0, 0.31))
    return model


def assert_models_equal(a: ResultsModel, b: ResultsModel) -> None:
    ma, mb = a.copy_maps(), b.copy_maps()
    for name in MAP_SPECS:
        assert ma[name].dtype == mb[name].dtype, name
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
    np.testing.assert_array_equal(a.topography, b.topography)
    for field in ("r_nm", "rho_delta", "rho_cross", "cross_map"):
        np.testing.assert_array_equal(getattr(a.snapshot, field), getattr(b.snapshot, field))
    assert a.snapshot.l_delta_nm == b.snapshot.l_delta_nm
    assert a.snapshot.rho_cross_0 == b.snapshot.rho_cross_0
    assert a.flag_summary() == b.flag_summary()
    assert a.status_fields() == b.status_fields()


def test_statistics_match_numpy_and_follow_overwrites():
    model = ResultsModel(3, 4)
    rng = np.random.default_rng(0)
    delta = rng.normal(1.2e-3, 7e-5, 10).astype(np.float32)
    for k in range(10):
        model.update_pixel(PixelResult(iy=k // 4, ix=k % 4, delta_eV=float(delta[k]), alpha=0.3 + 0.01 * k, valid=True))
    model.update_pixel(PixelResult(iy=2, ix=2, reason=3, valid=False))  # measured, not valid: excluded
    st = model.statistics(bins=5)
    assert (st.n_measured, st.n_valid) == (11, 10)
    assert st.delta_mean_eV == pytest.approx(float(delta.mean()), rel=1e-6)
    assert st.delta_std_eV == pytest.approx(float(delta.std()), rel=1e-5)
    assert st.alpha_mean == pytest.approx(0.345, abs=1e-6)
    assert st.delta_hist.counts.sum() == 10 and st.delta_hist.edges.size == 6
    model.update_pixel(PixelResult(iy=0, ix=0, delta_eV=2e-3, alpha=0.3, valid=True))
    assert model.statistics(bins=5).delta_mean_eV == pytest.approx(
        float((delta.sum() - delta[0] + 2e-3) / 10), rel=1e-6
    )


def test_flag_summary_per_set_with_message_first_last_and_dominant():
    model = ResultsModel(10, 10, set_threshold=0.5)
    model.set_setpoint_sets({2: {"lockin_amplitude_Vrms": 8e-4}})
    t = 100.0
    for iy in range(10):
        for ix in range(10):
            in_set2 = iy >= 5
            flags = 0
            if in_set2 and (iy, ix) != (9, 9):
                flags = int(FlagKind.MODULATION)
            if (iy, ix) == (1, 1):
                flags = int(FlagKind.THERMAL | FlagKind.POOR_FIT)
            t += 1.0
            model.update_pixel(PixelResult(iy=iy, ix=ix, setpoint_set=2 if in_set2 else 1, flags=flags, time=t))
    by_set = {s.set_id: s for s in model.flag_summary()}
    s2, s1 = by_set[2], by_set[1]
    assert (s2.n_pixels, s2.n_flagged, s2.dominant, s2.flagged) == (50, 49, "modulation", True)
    assert s2.fraction == pytest.approx(0.98)
    assert s2.first_pixel == (5, 0) and s2.last_pixel == (9, 8)
    assert s2.message == "set 2: modulation 0.8 mV rms broadens peaks, 98 % of its pixels flagged"
    assert s1.counts == {"thermal": 1, "poor_fit": 1} and not s1.flagged
    flagged = model.flagged_pixels()
    assert len(flagged) == 50 and flagged[0] == (1, 1, int(FlagKind.THERMAL | FlagKind.POOR_FIT))


def test_status_rate_eta_and_versions():
    model = ResultsModel(10, 10)
    v0 = model.version
    for k in range(11):  # one pixel every 2 s -> 1800 pixels/hour
        model.update_pixel(PixelResult(iy=0 if k < 10 else 1, ix=k % 10, time=1000.0 + 2 * k, temperature_K=0.3))
    st = model.status()
    assert st.pixels_per_hour == pytest.approx(1800.0)
    assert st.eta_s == pytest.approx(89 * 2.0)
    assert st.progress == pytest.approx(0.11)
    assert st.temperature_K.size == 11
    assert model.maps_version > v0 and model.status_version == 0
    model.update_status(state="paused")
    assert model.status_version == model.version and model.status().state == "paused"
    with pytest.raises(AnalysisError):
        model.update_status(state="sleeping")
    with pytest.raises(AnalysisError):
        model.update_pixel(PixelResult(iy=10, ix=0))


def test_concurrent_writers_and_reader_lose_nothing():
    model = ResultsModel(40, 50)

    def write(rows: range) -> None:
        for iy in rows:
            for ix in range(50):
                model.update_pixel(PixelResult(iy=iy, ix=ix, delta_eV=1e-3, alpha=0.3, valid=True))

    threads = [threading.Thread(target=write, args=(range(k, 40, 2),)) for k in range(2)]
    for th in threads:
        th.start()
    seen = []
    while any(th.is_alive() for th in threads):
        maps = model.copy_maps(("measured", "valid"))
        assert np.array_equal(maps["measured"], maps["valid"])  # copies are consistent snapshots
        seen.append(int(maps["measured"].sum()))
    for th in threads:
        th.join()
    assert model.statistics().n_valid == 2000 and seen == sorted(seen)


def test_maps_h5_round_trip_and_layout(tmp_path):
    model = filled()
    path = tmp_path / "maps.h5"
    rio.save_maps_h5(model, path)
    with h5py.File(path, "r") as f:
        for name in rio.CORE_DATASETS:
            assert f[name].shape == (24, 30)
        assert f["delta"].attrs["units"] == "eV" and f["delta"].dtype == np.float32
        assert f["valid"].dtype == np.bool_ and np.issubdtype(f["reason"].dtype, np.integer)
        np.testing.assert_array_equal(f["delta"][()], model.maps["delta_eV"])
        assert "correlation" in f and f["topography"].attrs["units"] == "m"
    assert_models_equal(model, rio.load_maps_h5(path))


def test_bare_maps_file_loads_and_garbage_is_refused(tmp_path):
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        for name in ("delta", "alpha", "b", "alpha_pos", "alpha_neg"):
            f[name] = np.full((3, 4), 0.5, np.float32)
        f["valid"] = np.ones((3, 4), bool)
        f["reason"] = np.zeros((3, 4), np.int16)
    model = rio.load_maps_h5(bare)
    assert model.statistics().n_valid == 12 and model.maps["measured"].all()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        rio.load_maps_h5(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["delta"] = np.zeros((3, 4))
    with pytest.raises(FileFormatError, match="missing"):
        rio.load_maps_h5(tmp_path / "other.h5")


def test_wire_round_trip_rebuilds_the_model():
    model = filled()
    rebuilt = None
    for topic, header, arrays in rio.model_messages(model):
        frames = rio.encode_message(topic, header, arrays)
        assert all(isinstance(fr, bytes) for fr in frames)
        t, h, a = rio.decode_message(frames)
        rebuilt = rebuilt or rio.model_from_message(t, h)
        rio.apply_message(rebuilt, t, h, a)
    assert_models_equal(model, rebuilt)
    px = PixelResult(
        iy=3,
        ix=4,
        setpoint_set=1,
        delta_eV=1.1e-3,
        alpha=0.33,
        valid=True,
        reason=0,
        flags=int(FlagKind.TIP_CHANGE),
        time=123.5,
        temperature_K=0.3,
    )
    rio.apply_message(rebuilt, *rio.decode_message(rio.encode_message(*rio.pixel_message(px))))
    got = rebuilt.pixel(3, 4)
    assert got.flags == int(FlagKind.TIP_CHANGE) and got.valid and got.time == 123.5
    assert got.delta_eV == pytest.approx(1.1e-3) and np.isnan(got.b)


def test_malformed_messages_are_refused():
    model = filled()
    topic, header, arrays = rio.snapshot_message(model.snapshot)
    frames = rio.encode_message(topic, header, arrays)
    with pytest.raises(StreamError, match="not JSON"):
        rio.decode_message([frames[0], b"{nope", *frames[2:]])
    with pytest.raises(StreamError, match="bytes for shape"):
        rio.decode_message([*frames[:-1], frames[-1][:-4]])
    with pytest.raises(StreamError, match="array frames"):
        rio.decode_message(frames[:-1])
    import pickle

    bad = rio.encode_message("pixel", {**rio.pixel_message(PixelResult(iy=0, ix=0))[1]}, {})
    with pytest.raises(StreamError, match="not JSON"):
        rio.decode_message([bad[0], pickle.dumps({"schema": "stslive.results"})])
    head = dict(rio.pixel_message(PixelResult(iy=0, ix=0))[1], version=99)
    with pytest.raises(StreamError, match="version"):
        rio.decode_message(rio.encode_message("pixel", head, {}))
    with pytest.raises(StreamError, match="dtype"):
        rio.encode_message("snapshot", header, {"x": np.array(["a"], dtype=object)})
    other = ResultsModel(5, 5)
    with pytest.raises(StreamError, match="restart the viewer"):
        rio.apply_message(other, *rio.status_message(model))
    with pytest.raises(StreamError):
        rio.apply_message(other, *rio.pixel_message(PixelResult(iy=7, ix=0)))


def test_topography_origin_survives_maps_h5(tmp_path):
    from stslive.live.results_io import load_maps_h5, save_maps_h5

    model = ResultsModel(3, 4, pixel_nm=1.0)
    topo = np.arange(12, dtype=np.float32).reshape(3, 4) * 1e-11
    model.set_topography(topo, origin="tip height z at the set-point, plane removed")
    version = model.maps_version
    model.set_topography(topo, origin="tip height z at the set-point, plane removed")
    assert model.maps_version == version  # unchanged: a poller does not force a redraw
    save_maps_h5(model, tmp_path / "maps.h5")
    back = load_maps_h5(tmp_path / "maps.h5")
    assert back.topography_origin == model.topography_origin
    np.testing.assert_array_equal(back.topography, topo)


def test_pixel_result_from_dict_refuses_unknown_and_missing_fields():
    result = PixelResult(iy=1, ix=2, delta_eV=1.3e-3, valid=True)
    assert PixelResult.from_dict(result.to_dict()) == result
    with pytest.raises(AnalysisError, match=r"unknown key\(s\) \['gap'\].*update stslive|update stslive.*'gap'"):
        PixelResult.from_dict({**result.to_dict(), "gap": 1.0})
    with pytest.raises(AnalysisError, match=r"missing key\(s\) \['iy'\]"):
        PixelResult.from_dict({"ix": 2})
