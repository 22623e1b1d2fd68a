"""Stream resume rule: segments per (run uid, resume), duplicates by measurement, bounded subscriber wait."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import zmq
from test_stream import LOCAL, connected, event_kwargs, spec, start_fields

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.documents import DescriptorDoc, EventDoc, StartDoc
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.acquisition.formats.subscriber import Gap, recover_from_archive
from stslive.acquisition.scan import wait_for_consumers


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def _segment(
    pub: RunPublisher, run_uid: str, pixels: range, *, segment: int, with_start: bool = True, shift: float = 0.0
) -> list[int]:
    """Publish one scan process's documents by hand: start (seq 0), descriptor, one event per pixel."""
    fields = start_fields()
    fields["metadata"] = {"resumed": segment > 0, "segment": segment}
    if with_start:
        pub.publish(StartDoc(run_uid=run_uid, uid=run_uid, seq=0, **fields))
    desc = DescriptorDoc(run_uid=run_uid, seq=1, data_keys=spec())
    pub.publish(desc)
    seqs = []
    for seq, i in enumerate(pixels, start=2):
        kw = event_kwargs(i)
        kw["timestamps"] = {k: v + shift for k, v in kw["timestamps"].items()}
        pub.publish(EventDoc(run_uid=run_uid, seq=seq, descriptor_uid=desc.uid, **kw))
        seqs.append(seq)
    return seqs


def test_resumed_segment_with_overlapping_seqs_delivers_every_event(ctx: zmq.Context) -> None:
    run = "r" * 32
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        _segment(pub, run, range(8), segment=0)  # seq 0..9
        _segment(pub, run, range(8, 12), segment=1)  # seq 0..5 again, all below 10
        got = [(type(d).__name__, d.seq) for d in sub.iter(idle_timeout_s=1)]
    assert len(got) == 10 + 6 and sub.duplicates == 0
    assert sub.seen_pixels(run) == {(i // 4, i % 4) for i in range(12)}
    assert sub.take_new_gaps() == [Gap(run, 0, -1, segment=1, resume=True)]  # check the archive
    assert sub.run(run).segment == 1 and sub.stats()["segments"] == {run: 1}


def test_same_measurement_is_a_duplicate_a_remeasure_is_not(ctx: zmq.Context) -> None:
    run = "d" * 32
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        seqs = _segment(pub, run, range(6), segment=0)
        desc_uid = None
        for d in sub.iter(idle_timeout_s=1):
            if isinstance(d, DescriptorDoc):
                desc_uid = d.uid
        # seq 3 again with the same measurement of pixel 1: a duplicate, dropped and counted
        pub.publish(EventDoc(run_uid=run, seq=seqs[1], descriptor_uid=desc_uid, **event_kwargs(1)))
        # seq 4 again, pixel 2 re-measured (new t_start): delivered, opens a segment (its start was missed)
        kw = event_kwargs(2)
        kw["timestamps"] = {k: v + 100.0 for k, v in kw["timestamps"].items()}
        pub.publish(EventDoc(run_uid=run, seq=seqs[2], descriptor_uid=desc_uid, **kw))
        got = list(sub.iter(idle_timeout_s=1))
    assert [(d.iy, d.ix, d.timestamps["t_start"]) for d in got] == [(0, 2, 1.7e9 + 102.0)]
    assert sub.duplicates == 1
    assert sub.take_new_gaps()[-1] == Gap(run, 0, seqs[2] - 1, segment=1, resume=True)
    assert sub.run(run).pixels[(0, 2)] == 1.7e9 + 102.0


def test_resume_whose_start_was_missed_opens_a_segment(ctx: zmq.Context) -> None:
    run = "m" * 32
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        _segment(pub, run, range(8), segment=0)
        _segment(pub, run, range(8, 11), segment=1, with_start=False)  # seq 1..4, start lost
        got = list(sub.iter(idle_timeout_s=1))
    assert len(got) == 10 + 4 and sub.duplicates == 0
    assert sub.gaps(run) == [Gap(run, 0, 0, segment=1, resume=True)]


def _archive(path: Path, n: int) -> dict[tuple[int, int], float]:
    """An archive of ``n`` pixels of the test grid; returns pixel -> t_start."""
    fields = start_fields()
    sset = SetpointSet.from_dict(fields["setpoint_sets"][0])
    times = {}
    with ArchiveWriter.create(
        path,
        geometry=GridGeometry.from_dict(fields["grid"]),
        channel_names=list(fields["channel_names"]),
        n_points=9,
        setpoint_sets=[sset],
        start_doc={"uid": "a" * 32, **fields},
    ) as writer:
        for i in range(n):
            kw = event_kwargs(i)
            meta = PixelMeta(
                x_m=kw["x_m"],
                y_m=kw["y_m"],
                setpoint_set_id=0,
                **kw["timestamps"],
                temperature_before_K=0.3,
                temperature_after_K=math.nan,
                z_m=kw["z_m"],
            )
            writer.write_pixel(kw["iy"], kw["ix"], kw["arrays"]["spectra"], meta)
            times[(kw["iy"], kw["ix"])] = kw["timestamps"]["t_start"]
    return times


def test_recovery_excludes_by_measurement(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    times = _archive(path, 6)
    seen: dict[tuple[int, int], float | None] = dict(times)
    seen[(0, 1)] = times[(0, 1)] - 50.0  # received an older measurement: the archive's is recovered
    seen[(0, 2)] = None  # time unknown: excluded by pixel
    del seen[(1, 0)]  # never received
    got = [(e.iy, e.ix) for e in recover_from_archive(path, exclude=seen)]
    assert got == [(0, 1), (1, 0)]
    assert [(e.iy, e.ix) for e in recover_from_archive(path, exclude=set(seen))] == [(1, 0)]  # by pixel only


def test_wait_for_consumers_is_bounded_and_sees_a_subscriber(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub:
        t0 = time.monotonic()
        assert wait_for_consumers(pub, 0.3) == 0  # nobody: the scan goes on after the bound
        assert 0.25 <= time.monotonic() - t0 < 2.0
        assert wait_for_consumers(pub, 0) == 0
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub.pub_endpoint)
        try:
            assert wait_for_consumers(pub, 5.0) == 1
            start = pub.start(**start_fields())
            assert sub.poll(2000)  # the start document reaches the subscriber that connected first
            assert sub.recv_multipart()[0] == b"stslive.run.start" and start.seq == 0
        finally:
            sub.close(linger=0)
