"""Live analyser across scan resumes (same run uid, seq from 0 again) and a missed start document.

In process with real ZeroMQ sockets: the scan is emulated by :class:`RunProducer` (archive +
stream, pixel by pixel); a SIGKILLed scan is a publisher closed without a stop (linger 0: what it
had not sent is lost) whose last pixel was archived but never published, and ``--resume`` a new
publisher on the same endpoint that opens the run again (``metadata.segment``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_analyser_sim import RunProducer, geometry, make_lab, make_sets, measure_run, start_fields

from stslive.acquisition.formats.documents import ArraySpec, StartDoc
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.drivers.errors import StreamError
from stslive.live.analyser import AnalyserService, AnalyserSettings
from stslive.live.kernels import KernelOptions
from stslive.live.pipeline import analyse_input
from stslive.mocks.faults import FaultPlan

NY, NX = 12, 16  # 192 pixels; kills after 80 and 140: every seq after a resume is below the last one seen
OPTIONS = KernelOptions(dynes_width_eV=0.1e-3)
SETS = make_sets()[:1]
SETTINGS = AnalyserSettings(snapshot_every=1000, publish_every_s=0.2, write_every_s=0.5)


@pytest.fixture(scope="module")
def pixels():
    return list(measure_run(make_lab(NY, NX, FaultPlan.from_list([]), seed=5), SETS, lambda iy, ix: 0))


def _service(endpoint: str, archive: Path | None, ctx: zmq.Context) -> AnalyserService:
    return AnalyserService(endpoint, archive=archive, options=OPTIONS, settings=SETTINGS, context=ctx).start()


def _rebind(endpoint: str, ctx: zmq.Context, *, timeout_s: float = 10.0) -> RunPublisher:
    """Bind the endpoint the killed publisher had: ZeroMQ releases a closed socket's port
    asynchronously (a new process would find it free), so retry briefly while it is in use."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return RunPublisher(endpoint, context=ctx)
        except StreamError as exc:
            if "already in use" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _resume(
    producer: RunProducer, run_uid: str, endpoint: str, ctx: zmq.Context, segment: int, shape: tuple[int, int]
) -> None:
    """A new scan process on the same endpoint: same run uid, seq from 0, ``metadata.segment``."""
    pub = _rebind(endpoint, ctx)
    pub.wait_for_subscribers(1, timeout_s=10)  # the analyser's SUB reconnects (the scan's bounded wait)
    fields = start_fields(geometry(NY, NX), SETS)
    fields["metadata"] = {**fields.get("metadata", {}), "resumed": True, "segment": segment}
    pub.start(run_uid=run_uid, **fields)
    pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=shape)})
    producer.publisher = pub


def _assert_equals_offline(svc: AnalyserService, archive: Path) -> None:
    live = svc.run.model
    offline = analyse_input(archive, options=OPTIONS)
    assert live.maps["measured"].all()
    np.testing.assert_array_equal(live.maps["measured"], offline.maps["measured"])
    for name in ("delta_eV", "alpha", "b", "valid", "reason"):
        np.testing.assert_allclose(
            live.maps[name].astype(float), offline.maps[name].astype(float), rtol=1e-4, equal_nan=True, err_msg=name
        )


def test_run_killed_and_resumed_twice_equals_offline_with_every_pixel(
    tmp_path: Path, pixels, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "run.h5"
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    endpoint = pub.pub_endpoint
    svc = _service(endpoint, archive, ctx)  # no archive yet: it follows the stream from the start
    pub.wait_for_subscribers(1)
    producer = RunProducer(pub, archive, geometry(NY, NX), SETS)
    run_uid = pub.run_uid
    kills = {80: 1, 140: 2}
    for i, p in enumerate(pixels):
        if i in kills:
            # SIGKILL between the archive write and the event: archived, never published
            producer.pixel(p, publish=False)
            producer.publisher.close(linger_s=0)
            _resume(producer, run_uid, endpoint, ctx, kills[i], p.spectra.shape)
            continue
        producer.pixel(p)
    # re-measure one pixel (new t_start): analysed again, exactly once
    again = pixels[10]
    shift = 1000.0
    meta = dataclasses.replace(
        again.meta,
        t_start=again.meta.t_start + shift,
        t_sweep_start=again.meta.t_sweep_start + shift,
        t_sweep_end=again.meta.t_sweep_end + shift,
        t_end=again.meta.t_end + shift,
    )
    new = dataclasses.replace(again, spectra=pixels[20].spectra, meta=meta)
    monkeypatch.setattr(
        producer.writer, "write_pixel", functools.partial(producer.writer.rewrite_pixel, reason="remeasure")
    )
    producer.pixel(new)
    producer.stop()
    assert svc.wait_for_stop(run_uid, timeout_s=60)
    svc.close()
    producer.publisher.close()
    ctx.term()
    _assert_equals_offline(svc, archive)
    assert svc.analysed == len(pixels) + 1  # every measurement once, the re-measured pixel twice
    assert svc.subscriber_stats["duplicates"] == 0
    assert svc.subscriber_stats["segments"] == {run_uid: 2}
    assert "run resumed 2 time(s)" in svc.status_text()


@pytest.mark.parametrize("with_archive", [True, False])
def test_analyser_started_before_the_scan_that_misses_the_start(tmp_path: Path, pixels, with_archive) -> None:
    archive = tmp_path / "run.h5"
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    svc = _service(pub.pub_endpoint, archive if with_archive else None, ctx)
    pub.wait_for_subscribers(1)
    send = pub.publish
    pub.publish = lambda doc: [] if isinstance(doc, StartDoc) else send(doc)  # lost as by a slow joiner
    producer = RunProducer(pub, archive, geometry(NY, NX), SETS)
    run_uid = pub.run_uid
    for p in pixels[:60]:
        producer.pixel(p)
    producer.stop()
    assert svc.wait_for_stop(run_uid, timeout_s=60)
    svc.close()
    pub.close()
    ctx.term()
    if with_archive:  # start taken from the archive: every pixel analysed, as offline
        assert svc.run is not None and svc.analysed == 60 and not svc.missing_start
        assert "no_start" not in svc.rejected
        offline = analyse_input(archive, options=OPTIONS)
        np.testing.assert_array_equal(svc.run.model.maps["measured"], offline.maps["measured"])
        np.testing.assert_allclose(svc.run.model.maps["delta_eV"], offline.maps["delta_eV"], rtol=1e-4, equal_nan=True)
    else:  # nothing to take it from: every event rejected, and the status says what is missing and why
        assert svc.run is None and svc.analysed == 0 and svc.rejected["no_start"] == 60
        text = svc.status_text()
        assert f"run {run_uid} missed its start document" in text and "--archive" in text


def test_regression_failed_pixel_documents_are_recorded_not_rejected() -> None:
    """A pixel the scan could not measure is a fact of the run, not bad input: the analyser lists
    it and says so in its status instead of counting it under "rejected"."""
    ctx = zmq.Context()
    pub = RunPublisher("tcp://127.0.0.1:0", context=ctx)
    svc = _service(pub.pub_endpoint, None, ctx)
    try:
        pub.wait_for_subscribers(1)
        pub.start(**start_fields(geometry(NY, NX), SETS))
        run_uid = pub.run_uid
        pub.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(3, 801))})
        pub.failed_pixel(ix=3, iy=2, x_m=0.0, y_m=0.0, setpoint_set_id=0, reason="InstrumentTimeout", attempts=3)
        pub.stop("success")
        assert svc.wait_for_stop(run_uid, timeout_s=30)
        assert svc.scan_failures == {(2, 3): "InstrumentTimeout"}
        assert "failed_pixel" not in svc.rejected
        assert "1 pixel(s) failed in the scan" in svc.status_text()
    finally:
        svc.close()
        pub.close()
        ctx.term()
