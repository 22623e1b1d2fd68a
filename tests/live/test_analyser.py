"""Live analyser: flags recall/precision on injected faults, stream end-to-end, restart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_analyser_sim import (
    CHANNELS,
    N_POINTS,
    RunProducer,
    geometry,
    make_lab,
    make_sets,
    measure_run,
    pixel_inputs,
    start_fields,
)

from stslive.acquisition.cli import main
from stslive.acquisition.formats.documents import encode
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.drivers.errors import ConfigError
from stslive.live.analyser import AnalyserService, AnalyserSettings
from stslive.live.flag_config import FlagConfig, load_flag_config
from stslive.live.flag_kinds import FlagKind
from stslive.live.kernels import KernelOptions
from stslive.live.pipeline import analyse_input
from stslive.live.results_io import load_maps_h5
from stslive.live.run_context import RunContext
from stslive.mocks.faults import FaultPlan

NY = NX = 16
OPTIONS = KernelOptions(dynes_width_eV=0.1e-3)
DEFAULTS = KernelOptions()  # those of `stslive analyse`: the template width calibrated on the first spectra
FAULTS = [
    {
        "kind": "tip_change",
        "from_spectrum": 40,
        "to_spectrum": 60,
        "params": {"factor": 1.0, "extra_slope_per_eV": 8.0},
    },
    {"kind": "feedback_fail", "from_spectrum": 80, "to_spectrum": 95},
    {"kind": "lockin_overload", "from_spectrum": 100, "to_spectrum": 110},
    {"kind": "temperature_excursion", "from_spectrum": 120, "to_spectrum": 140, "params": {"kelvin": 1.0}},
    # a tip that changes for good (the one above goes back after 20 spectra)
    {"kind": "tip_change", "from_spectrum": 200, "params": {"factor": 1.0, "extra_slope_per_eV": -6.0}},
]
KIND_FLAG = {
    "tip_change": FlagKind.TIP_CHANGE,
    "feedback_fail": FlagKind.SETPOINT,
    "lockin_overload": FlagKind.LOCKIN_OVERLOAD,
    "temperature_excursion": FlagKind.THERMAL,
}
SETS = make_sets(large_modulation_Vrms=0.8e-3)


def set_of(iy: int, ix: int) -> int:
    return 1 if iy >= 12 else 0


@pytest.fixture(scope="module")
def faulted_run():
    plan = FaultPlan.from_list(FAULTS)
    pixels = list(measure_run(make_lab(NY, NX, plan), SETS, set_of))
    return plan, pixels


def _reference(pixels, options=OPTIONS):
    ctx = RunContext("ref", start_fields(geometry(NY, NX), SETS), options=options, flag_config=FlagConfig())
    ctx.process(pixel_inputs(pixels))
    ctx.finish()  # a run shorter than the calibration sample: analysed at its end
    return ctx.model


def test_flags_find_injected_faults(faulted_run) -> None:
    plan, pixels = faulted_run
    model = _reference(pixels)
    flags = model.maps["flags"]
    spectrum_of = {p.spectrum: (p.iy, p.ix) for p in pixels}
    for kind, bit in KIND_FLAG.items():
        truth = {spectrum_of[s] for s in plan.fired_spectra(kind)}
        found = {(int(a), int(b)) for a, b in zip(*np.nonzero(flags & int(bit)), strict=True)}
        assert len(truth) >= 10
        recall, precision = len(found & truth) / len(truth), len(found & truth) / max(1, len(found))
        assert recall >= 0.9 and precision >= 0.9, (kind, recall, precision, sorted(found ^ truth))
    truth = {(p.iy, p.ix) for p in pixels if p.meta.setpoint_set_id == 1}
    found = {(int(a), int(b)) for a, b in zip(*np.nonzero(flags & int(FlagKind.MODULATION)), strict=True)}
    assert len(found & truth) / len(truth) >= 0.9 and len(found & truth) / len(found) >= 0.9
    # every pixel measured with a changed tip carries its epoch: 0 before 40, 1 to 59, 0 again (the
    # tip went back), 2 from 200 on
    epoch_of = {p.spectrum: int(model.maps["tip_epoch"][p.iy, p.ix]) for p in pixels}
    want = {s: 1 if 40 <= s < 60 else 2 if s >= 200 else 0 for s in epoch_of}
    wrong = sorted(s for s in epoch_of if epoch_of[s] != want[s])
    assert len(wrong) <= 0.05 * len(pixels), wrong
    summary = {s.set_id: s for s in model.flag_summary()}
    assert summary[1].flagged and summary[1].dominant == "modulation" and summary[1].first_pixel == (12, 0)
    assert summary[1].message.startswith("set 1: modulation 0.8 mV rms broadens peaks, 100 % of its pixels")
    assert not summary[0].flagged


CLEAN_NY, CLEAN_NX = 24, 32


@pytest.fixture(scope="module")
def clean_run():
    """A run without faults (film seed 7), measured through the simulated lab in raster order."""
    return list(measure_run(make_lab(CLEAN_NY, CLEAN_NX, FaultPlan.from_list([]), seed=7), SETS[:1], lambda iy, ix: 0))


@pytest.mark.parametrize("order", ["raster", "serpentine"])
def test_clean_run_flags_under_one_percent_per_kind(clean_run, order) -> None:
    # the spectra of a clean run do not depend on when a pixel was measured, so the serpentine
    # run is the same pixels visited boustrophedon; the flags' history does depend on the order
    pixels = clean_run if order == "raster" else sorted(clean_run, key=lambda p: (p.iy, p.ix * (-1) ** p.iy))
    ctx = RunContext(
        "clean", start_fields(geometry(CLEAN_NY, CLEAN_NX), SETS[:1]), options=DEFAULTS, flag_config=FlagConfig()
    )
    inputs = pixel_inputs(pixels)
    for lo in range(0, len(inputs), 50):  # batches as the live service drains them
        ctx.process(inputs[lo : lo + 50])
    ctx.finish()
    flags = ctx.model.maps["flags"]
    assert ctx.model.maps["measured"].all()
    rates = {kind.name: float((flags & int(kind)).astype(bool).mean()) for kind in FlagKind}
    assert all(rate < 0.01 for rate in rates.values()), {k: v for k, v in rates.items() if v}


def _run_service(tmp_path: Path, pixels, *, restart_at: int | None) -> tuple[Path, object]:
    archive = tmp_path / "run.h5"
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    settings = AnalyserSettings(snapshot_every=100, publish_every_s=0.2, write_every_s=0.5)

    def service() -> AnalyserService:
        svc = AnalyserService(
            pub.pub_endpoint, archive=archive, bind="tcp://127.0.0.1:0", settings=settings, context=ctx
        ).start()  # default options, as `stslive analyser` without any
        pub.wait_for_subscribers(1)
        return svc

    svc = service()
    producer = RunProducer(pub, archive, geometry(NY, NX), SETS)
    for i, p in enumerate(pixels):
        if i == restart_at:
            svc.close()  # the analyser goes away mid-run; the scan goes on
        if restart_at is not None and restart_at <= i < restart_at + 20:
            producer.pixel(p)  # measured and published while no analyser listens
            continue
        if restart_at is not None and i == restart_at + 20:
            svc = service()  # restart: backfills the archive, then follows the stream
        producer.pixel(p)
    run_uid = pub.run_uid
    producer.stop()
    assert svc.wait_for_stop(run_uid, timeout_s=60)
    svc.close()
    pub.close()
    ctx.term()
    return archive, svc


@pytest.mark.parametrize("restart_at", [None, 100])
def test_service_equals_offline_and_survives_restart(tmp_path: Path, faulted_run, restart_at) -> None:
    _, pixels = faulted_run
    archive, svc = _run_service(tmp_path, pixels, restart_at=restart_at)
    live = svc.run.model
    assert live.maps["measured"].all() and svc.analysed >= len(pixels) - (restart_at or 0)
    offline = analyse_input(archive, options=KernelOptions())  # no option: the same rule by default
    # float32 sums over batches of different sizes (live: whatever arrived, offline: whole rows)
    # round differently: equal to float32 tolerance, not bit for bit
    for name in ("delta_eV", "alpha", "b", "valid", "reason"):
        np.testing.assert_allclose(
            live.maps[name].astype(float), offline.maps[name].astype(float), rtol=1e-4, equal_nan=True, err_msg=name
        )
    reference = _reference(pixels, DEFAULTS)
    np.testing.assert_array_equal(live.maps["flags"], reference.maps["flags"])
    # `stslive analyse` of the same archive: the same flags and tip epochs, bit for bit
    assert main(["analyse", str(archive), "--out", str(tmp_path / "offline"), "--examples", "0"]) == 0
    written = load_maps_h5(tmp_path / "offline" / "maps.h5")
    for name in ("flags", "tip_epoch"):
        np.testing.assert_array_equal(written.maps[name], live.maps[name], err_msg=name)
    assert (live.maps["flags"] & int(FlagKind.TIP_CHANGE)).any() and set(np.unique(live.maps["tip_epoch"])) == {0, 1, 2}
    assert live.status().message.count("Dynes width") == 1
    assert live.snapshot is not None and live.snapshot.n_pixels == int(live.maps["valid"].sum())
    # the snapshots taken while the run went on, for the screen's convergence plot
    history = live.history.arrays()
    assert len(live.history) >= 2 and np.all(np.diff(history["n_measured"]) >= 0)
    # (an early snapshot of a few pixels may find no 1/e length: NaN; the final one does)
    assert history["n_pixels"][-1] == live.snapshot.n_pixels and np.isfinite(history["l_alpha_nm"][-1])
    saved = archive.with_suffix(".analysis.h5")
    np.testing.assert_array_equal(load_maps_h5(saved).maps["flags"], live.maps["flags"])
    assert len(load_maps_h5(saved).history) == len(live.history)
    assert live.status().state == "done"
    # start, descriptor, one event per pixel, stop: the screen's "last seq" follows the stream, not only heartbeats
    assert live.status().last_seq >= len(pixels) + 2


def test_bad_input_is_counted_and_the_service_goes_on(tmp_path: Path, faulted_run) -> None:
    _, pixels = faulted_run
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    svc = AnalyserService(
        pub.pub_endpoint,
        bind="tcp://127.0.0.1:0",
        options=OPTIONS,
        settings=AnalyserSettings(publish_every_s=0.1),
        context=ctx,
    ).start()
    pub.wait_for_subscribers(1)
    raw = pub._pub
    raw.send_multipart([b"stslive.run.event", b"\x00garbage"])
    raw.send_multipart([b"stslive.run.event"])
    start = pub.start(**start_fields(geometry(NY, NX), SETS))
    from stslive.acquisition.formats.documents import ArraySpec

    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(len(CHANNELS), N_POINTS))})
    frames = encode(start)
    header = json.loads(frames[1])
    header["version"] = 99
    raw.send_multipart([frames[0], json.dumps(header).encode()])
    good = pixels[0]
    m = good.meta
    kw = {
        "x_m": m.x_m,
        "y_m": m.y_m,
        "setpoint_set_id": 0,
        "timestamps": {"t_end": m.t_end},
        "temperature_before_K": 0.3,
        "temperature_after_K": 0.3,
    }
    pub.event(arrays={"spectra": np.zeros((2, 10), np.float32)}, ix=0, iy=0, **kw)  # wrong length
    bad = good.spectra.copy()
    bad[0, 5] = np.inf
    event = pub.event(arrays={"spectra": good.spectra}, ix=1, iy=0, **kw)
    frames = encode(event)
    raw.send_multipart([*frames[:2], bad.tobytes()])  # inf in the array
    pub.event(arrays={"spectra": np.full((2, N_POINTS), np.nan, np.float32)}, ix=2, iy=0, **kw)  # NaN: not measured
    pub.event(arrays={"spectra": good.spectra}, ix=40, iy=0, **kw)  # outside the grid
    pub.event(arrays={"spectra": good.spectra}, ix=3, iy=0, **kw)
    pub.stop()
    assert svc.wait_for_stop(start.run_uid, timeout_s=30)
    model = svc.run.model
    assert model.maps["valid"][0, 1] and model.maps["valid"][0, 3]
    assert model.maps["measured"][0, 2] and not model.maps["valid"][0, 2]
    rejected = dict(svc.subscriber_stats["rejected"]) | dict(svc.rejected)
    assert {"header", "frames", "version", "descriptor", "nonfinite"} <= set(rejected)
    assert svc.rejected["pixel"] == 1
    assert "rejected" in model.status().message and "version 1" in model.status().message
    svc.close()
    pub.close()
    ctx.term()


def test_flag_config_toml(tmp_path: Path) -> None:
    good = tmp_path / "flags.toml"
    good.write_text("[flags]\nsetpoint_rel_tol = 0.2\ntip_band_V = [0.02, 0.03]\ntip_window = 40\n")
    cfg = load_flag_config(good)
    assert cfg.setpoint_rel_tol == 0.2 and cfg.tip_band_V == (0.02, 0.03) and cfg.tip_window == 40
    bad = tmp_path / "bad.toml"
    bad.write_text("[flags]\nsetpoint_tolerance = 0.2\n")
    with pytest.raises(ConfigError, match="setpoint_tolerance"):
        load_flag_config(bad)
    bad.write_text("[flags]\ntip_window = 2.5\n")
    with pytest.raises(ConfigError, match="tip_window"):
        load_flag_config(bad)
    bad.write_text("setpoint_rel_tol = 1\n")  # keys at top level; an integer where a float is meant
    assert load_flag_config(bad).setpoint_rel_tol == 1.0 and isinstance(load_flag_config(bad).setpoint_rel_tol, float)
    bad.write_text("[flags]\nsetpoint_rel_tol = 0.2\n[scan]\n")
    with pytest.raises(ConfigError, match="use \\[flags\\]"):
        load_flag_config(bad)
    with pytest.raises(ConfigError, match="is a folder"):
        load_flag_config(tmp_path)
    bad.write_bytes(b"[flags]\nsetpoint_rel_tol = 0.2 # \xb5\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_flag_config(bad)


def _write_archive(path: Path, pixels) -> None:
    """The faulted run's pixels as the scan engine archives them (no stream)."""
    from stslive.acquisition.formats.archive import ArchiveWriter

    writer = ArchiveWriter.create(
        path,
        geometry=geometry(NY, NX),
        channel_names=CHANNELS,
        n_points=N_POINTS,
        setpoint_sets=SETS,
        start_doc={"uid": "faulted", **start_fields(geometry(NY, NX), SETS)},
    )
    with writer:
        for p in pixels:
            writer.write_pixel(p.iy, p.ix, p.spectra, p.meta)


def test_replayed_archive_equals_stslive_analyse(tmp_path: Path, faulted_run) -> None:
    """`stslive replay` into the live analyser and `stslive analyse` of the archive: one set of flags."""
    from stslive.acquisition.replay import open_replay, replay

    _, pixels = faulted_run
    archive = tmp_path / "faulted.h5"
    _write_archive(archive, pixels)
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    svc = AnalyserService(pub.pub_endpoint, settings=AnalyserSettings(publish_every_s=0.2), context=ctx).start()
    try:
        pub.wait_for_subscribers(1)
        with open_replay(archive) as source:
            stop = replay(source, pub)
        assert svc.wait_for_stop(stop.run_uid, timeout_s=60)
    finally:
        svc.close()
        pub.close()
        ctx.term()
    live = svc.run.model
    assert main(["analyse", str(archive), "--out", str(tmp_path / "out"), "--examples", "0"]) == 0
    offline = load_maps_h5(tmp_path / "out" / "maps.h5")
    for name in ("flags", "tip_epoch", "reason", "measured"):
        np.testing.assert_array_equal(offline.maps[name], live.maps[name], err_msg=name)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    counts = report["flags"]["counts"]
    for kind in (FlagKind.TIP_CHANGE, FlagKind.SETPOINT, FlagKind.LOCKIN_OVERLOAD, FlagKind.THERMAL):
        assert counts[kind.name.lower()] == int(np.count_nonzero(live.maps["flags"] & int(kind))) > 0
    assert [c["to_epoch"] for c in report["tip_epochs"]["changes"]] == [1, 0, 2]
    epochs = {e["epoch"]: e for e in report["tip_epochs"]["epochs"]}
    assert sum(e["pixels_measured"] for e in epochs.values()) == NY * NX
    assert epochs[2]["pixels_measured"] == int((live.maps["tip_epoch"] == 2).sum()) >= 50
    assert {w["code"] for w in report["warnings"]} >= {"tip_changed"}


def test_a_measurement_that_arrives_late_is_judged_in_its_time(faulted_run) -> None:
    """A pixel lost on the stream and filled from the archive later: the flags are those of time order."""
    _, pixels = faulted_run
    inputs = pixel_inputs(pixels)
    late = [*inputs[:120], *inputs[121:227], inputs[120], *inputs[227:]]  # spectrum 120 arrives after 226
    ctx = RunContext("late", start_fields(geometry(NY, NX), SETS), options=OPTIONS, flag_config=FlagConfig())
    for lo in range(0, len(late), 9):
        ctx.process(late[lo : lo + 9])
    reference = _reference(pixels)
    assert reference.maps["tip_epoch"][7, 8] == 0  # measured with the first tip, arriving after the change
    for name in ("flags", "tip_epoch"):
        np.testing.assert_array_equal(ctx.model.maps[name], reference.maps[name], err_msg=name)
