"""The run stream: documents, wire codec, publisher and subscriber over real ZeroMQ sockets.

The benchmark is ``stslive bench stream`` (acquisition/jobs/bench_stream.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from stslive.acquisition.formats.codec import MAX_HEADER_BYTES, MalformedMessage
from stslive.acquisition.formats.documents import (
    RUN_SCHEMA,
    RUN_SCHEMA_VERSION,
    ArraySpec,
    DescriptorDoc,
    EventDoc,
    FailedPixelDoc,
    HeartbeatDoc,
    StartDoc,
    StopDoc,
    decode,
    encode,
    topic_for,
)
from stslive.acquisition.formats.publisher import RunPublisher, check_local_endpoint
from stslive.acquisition.formats.subscriber import Gap, RunSubscriber, missing_pixels, recover_from_archive
from stslive.drivers.errors import StreamError

LOCAL = "tcp://127.0.0.1:0"
FORMATS = ("json", "msgpack")


# -- builders -----------------------------------------------------------------------------------
def start_fields(nx: int = 4, ny: int = 3, npts: int = 9) -> dict:
    return {
        "grid": {
            "centre_x_m": 0.0,
            "centre_y_m": 0.0,
            "width_m": 4e-9,
            "height_m": 3e-9,
            "nx": nx,
            "ny": ny,
            "angle_deg": 0.0,
            "order": "raster",
        },
        "channel_names": ("Bias (V)", "Current (A)", "LI Demod 1 X (A)"),
        "channel_units": ("V", "A", "A"),
        "n_points": npts,
        "setpoint_sets": (
            {
                "id": 0,
                "name": "spectroscopy",
                "bias_setpoint_V": -0.01,
                "current_setpoint_A": 1.5e-10,
                "sweep_start_V": -0.04,
                "sweep_end_V": 0.04,
                "n_points": npts,
                "feedback_hold": True,
            },
        ),
        "instruments": {"stm": "Nanonis SPM Controller (simulated)", "lockin": "SR830 (simulated)"},
        "software_version": "0.1.0",
        "metadata": {"sample": "NbN 2.1 nm", "T_K": 0.3},
    }


def spec(npts: int = 9) -> dict[str, ArraySpec]:
    return {
        "spectra": ArraySpec(
            dtype="<f4", shape=(3, npts), labels=("Bias (V)", "Current (A)", "LI Demod 1 X (A)"), units=("V", "A", "A")
        )
    }


def pixel_fields(i: int, nx: int = 4) -> dict:
    return {"ix": i % nx, "iy": i // nx, "x_m": (i % nx) * 1e-9, "y_m": (i // nx) * 1e-9, "setpoint_set_id": 0}


def event_kwargs(i: int, npts: int = 9, nx: int = 4) -> dict:
    t = 1.7e9 + i
    spectra = np.linspace(-1, 1, 3 * npts, dtype=np.float32).reshape(3, npts) * (i + 1)
    return {
        **pixel_fields(i, nx),
        "timestamps": {"t_start": t, "t_sweep_start": t + 0.1, "t_sweep_end": t + 1.0, "t_end": t + 1.1},
        "temperature_before_K": 0.301,
        "temperature_after_K": 0.302,
        "z_m": 1.5e-10,
        "lockin_status": 0,
        "lockin_overload": False,
        "arrays": {"spectra": spectra},
    }


def every_kind() -> list:
    run = "a" * 32
    desc = DescriptorDoc(run_uid=run, seq=1, data_keys=spec())
    nan_spectra = event_kwargs(0)
    nan_spectra["arrays"]["spectra"][1, 5:] = np.nan  # sweep cut short: allowed
    return [
        StartDoc(run_uid=run, uid=run, seq=0, **start_fields()),
        desc,
        EventDoc(run_uid=run, seq=2, descriptor_uid=desc.uid, **nan_spectra),
        FailedPixelDoc(
            run_uid=run, seq=3, reason="sr830: no reply within 1 s (3 attempts)", attempts=3, **pixel_fields(1)
        ),
        HeartbeatDoc(
            run_uid=run, seq=4, state="paused", last_run_uid=run, last_seq=3, message="temperature 0.52 K above band"
        ),
        HeartbeatDoc(run_uid=None, seq=-1, state="idle", last_seq=-1),
        HeartbeatDoc(run_uid=None, seq=-1, state="idle", last_run_uid=run, last_seq=5),
        StopDoc(run_uid=run, seq=5, exit_status="abort", reason="user", counts={"start": 1, "event": 1}),
    ]


def same(a, b) -> bool:
    if a.to_dict() != b.to_dict() or type(a) is not type(b):
        return False
    if isinstance(a, EventDoc):
        return a.arrays.keys() == b.arrays.keys() and all(
            np.array_equal(a.arrays[k], b.arrays[k], equal_nan=True) and a.arrays[k].dtype == b.arrays[k].dtype
            for k in a.arrays
        )
    return True


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def connected(pub: RunPublisher, ctx: zmq.Context, **kwargs) -> RunSubscriber:
    sub = RunSubscriber(pub.pub_endpoint, context=ctx, **kwargs)
    pub.wait_for_subscribers(1, timeout_s=5)  # the SUB handshake: nothing sent before this is seen
    return sub


# -- documents and codec -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_kind_round_trips(fmt: str) -> None:
    for doc in every_kind():
        frames = encode(doc, header_format=fmt)
        assert frames[0] == topic_for(doc.kind)
        back = decode(frames)
        assert same(doc, back), doc.kind
        header = back.to_dict()
        assert (header["schema"], header["version"]) == (RUN_SCHEMA, RUN_SCHEMA_VERSION)


def test_header_is_json_or_msgpack_and_arrays_are_raw_little_endian() -> None:
    ev = every_kind()[2]
    jf, mf = encode(ev, header_format="json"), encode(ev, header_format="msgpack")
    assert json.loads(jf[1])["arrays"] == [{"name": "spectra", "dtype": "<f4", "shape": [3, 9]}]
    assert msgpack.unpackb(mf[1])["kind"] == "event"
    assert jf[2] == mf[2] == ev.arrays["spectra"].astype("<f4").tobytes()
    big = dataclasses.replace(ev, arrays={"spectra": ev.arrays["spectra"].astype(">f4")})
    frames = encode(big)
    assert json.loads(frames[1])["arrays"][0]["dtype"] == "<f4" and frames[2] == jf[2]
    back = decode(frames).arrays["spectra"]
    assert back.dtype == np.float32 and not back.flags.writeable


def test_encoder_refuses_what_the_decoder_would_reject() -> None:
    ev = every_kind()[2]
    with pytest.raises(StreamError, match="inf"):
        encode(dataclasses.replace(ev, arrays={"spectra": np.full((3, 9), np.inf, np.float32)}))
    with pytest.raises(StreamError, match="dtype"):
        encode(dataclasses.replace(ev, arrays={"spectra": np.zeros((3, 9), np.complex64)}))
    for fmt in FORMATS:
        with pytest.raises(StreamError, match="finite"):
            encode(dataclasses.replace(ev, x_m=math.nan), header_format=fmt)
    with pytest.raises(StreamError, match="limit"):
        encode(HeartbeatDoc(run_uid=None, seq=-1, state="idle", last_seq=-1, message="x" * MAX_HEADER_BYTES))
    with pytest.raises(StreamError, match="run_uid"):
        StartDoc(run_uid="r", uid="other", seq=0, **start_fields())


def _event_header(**changes) -> dict:
    header = json.loads(encode(every_kind()[2])[1])
    header.update(changes)
    return header


def _frames(header: dict, *arrays: bytes, topic: bytes = b"stslive.run.event") -> list[bytes]:
    return [topic, json.dumps(header).encode(), *arrays]


def _nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


GOOD = np.zeros((3, 9), "<f4").tobytes()
MALFORMED: dict[str, tuple[list[bytes], str]] = {
    "one frame": ([b"stslive.run.event"], "frames"),
    "event without its array frame": (_frames(_event_header()), "frames"),
    "start with an extra frame": ([*encode(every_kind()[0]), b"x"], "frames"),
    "topic of another kind": (_frames(_event_header(), GOOD, topic=b"stslive.run.stop"), "topic"),
    "unknown schema": (_frames(_event_header(schema="bluesky.event"), GOOD), "schema"),
    "unknown version": (_frames(_event_header(version=RUN_SCHEMA_VERSION + 1), GOOD), "version"),
    "unknown kind": (_frames(_event_header(kind="datum"), GOOD, topic=b"stslive.run.datum"), "kind"),
    "bad json": ([b"stslive.run.event", b'{"schema": "stslive.run", ', GOOD], "header"),
    "bad msgpack": ([b"stslive.run.event", b"\x85\xa6schema\xc1", GOOD], "header"),
    "header not a map": ([b"stslive.run.event", b"[1, 2]", GOOD], "header"),
    "empty header": ([b"stslive.run.event", b"", GOOD], "header"),
    "nested json bomb": ([b"stslive.run.event", b"{" + b'"a":[' * 50_000, GOOD], "header"),  # RecursionError
    "huge json bomb": ([b"stslive.run.event", b"{" + b'"a":[' * 100_000, GOOD], "oversize"),
    "deep nesting in metadata": (
        [
            b"stslive.run.start",
            json.dumps({**json.loads(encode(every_kind()[0])[1]), "metadata": {"a": _nested(20)}}).encode(),
        ],
        "header",
    ),
    "object dtype": (
        _frames(_event_header(arrays=[{"name": "spectra", "dtype": "|O", "shape": [3, 9]}]), GOOD),
        "dtype",
    ),
    "big-endian dtype": (
        _frames(_event_header(arrays=[{"name": "spectra", "dtype": ">f4", "shape": [3, 9]}]), GOOD),
        "dtype",
    ),
    "size mismatch": (_frames(_event_header(), GOOD[:-4]), "shape"),
    "negative shape": (
        _frames(_event_header(arrays=[{"name": "spectra", "dtype": "<f4", "shape": [-3, -9]}]), GOOD),
        "field",
    ),
    "inf in array": (_frames(_event_header(), np.full((3, 9), np.inf, "<f4").tobytes()), "nonfinite"),
    "NaN in header (json)": (
        [b"stslive.run.event", json.dumps(_event_header(x_m=math.nan)).encode(), GOOD],
        "nonfinite",
    ),
    "NaN in header (msgpack)": ([b"stslive.run.event", msgpack.packb(_event_header(y_m=math.inf)), GOOD], "nonfinite"),
    "oversized header": ([b"stslive.run.event", b"{" + b" " * MAX_HEADER_BYTES + b"}", GOOD], "oversize"),
    "missing field": (_frames({k: v for k, v in _event_header().items() if k != "ix"}, GOOD), "field"),
    "unexpected field": (_frames(_event_header(shell="rm -rf /"), GOOD), "field"),
    "wrong field type": (_frames(_event_header(ix="3"), GOOD), "field"),
    "bool as integer": (_frames(_event_header(setpoint_set_id=True), GOOD), "field"),
    "negative seq": (_frames(_event_header(seq=-1), GOOD), "field"),
    "pickled header": ([b"stslive.run.event", pickle.dumps(_event_header()), GOOD], "header"),
    "pickled array frame": (_frames(_event_header(), pickle.dumps(np.zeros((3, 9), np.float32))), "shape"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_is_rejected_with_a_reason(case: str) -> None:
    frames, reason = MALFORMED[case]
    with pytest.raises(MalformedMessage) as info:
        decode(frames)
    assert info.value.reason == reason, str(info.value)
    assert isinstance(info.value, StreamError)


class _Exploding:
    """Stand-in for pickle.loads: fails the test if anything ever unpickles."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("the stream must never unpickle")


def test_pickled_payload_never_reaches_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickle, "loads", _Exploding())
    monkeypatch.setattr(pickle, "load", _Exploding())
    monkeypatch.setattr(pickle, "Unpickler", _Exploding())
    # a pickled object array is the classic numpy vector: a header asking for it must not load it
    payload = pickle.dumps(np.array([object()], dtype=object), protocol=5)
    for dtype in ("|O", "O", "V8"):
        frames = _frames(_event_header(arrays=[{"name": "spectra", "dtype": dtype, "shape": [1]}]), payload)
        with pytest.raises(MalformedMessage, match="not allowed"):
            decode(frames)


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://192.168.1.20:5556", "tcp://eth0:5556", "tcp://10.0.0.1:0"]
)
def test_non_loopback_bind_refused_without_keys(endpoint: str, ctx: zmq.Context) -> None:
    with pytest.raises(StreamError, match="CURVE"):
        RunPublisher(endpoint, context=ctx)
    with pytest.raises(StreamError, match="CURVE"):
        RunPublisher(LOCAL, push_endpoint=endpoint, context=ctx)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5556",
        "tcp://localhost:1",
        "tcp://[::1]:5556",
        "tcp://127.1.2.3:9",
        "ipc:///tmp/run.sock",
        "inproc://run",
    ],
)
def test_loopback_and_local_transports_allowed(endpoint: str) -> None:
    check_local_endpoint(endpoint)


# -- publisher and subscriber over sockets -------------------------------------------------------
def run_small(pub: RunPublisher, n_events: int, *, npts: int = 9) -> None:
    pub.start(**start_fields(npts=npts))
    pub.descriptor(spec(npts))
    for i in range(n_events):
        pub.event(**event_kwargs(i, npts))


@pytest.mark.parametrize("fmt", FORMATS)
def test_publisher_to_subscriber_every_kind(fmt: str, ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx, header_format=fmt) as pub, connected(pub, ctx) as sub:
        pub.heartbeat()
        run_small(pub, 3)
        failed = pub.failed_pixel(reason="nanonis: Bias.Spectr timed out", attempts=3, **pixel_fields(3))
        pub.heartbeat("paused", message="temperature out of band")
        stop = pub.stop("success")
        docs = list(sub.iter(idle_timeout_s=2, until_stop=True))
    assert [d.kind for d in docs] == [
        "heartbeat",
        "start",
        "descriptor",
        "event",
        "event",
        "event",
        "failed",
        "heartbeat",
        "stop",
    ]
    assert docs[0].run_uid is None and docs[0].seq == -1
    assert [d.seq for d in docs[1:]] == list(range(8))
    assert same(docs[6], failed) and same(docs[-1], stop)
    assert stop.counts == {"start": 1, "descriptor": 1, "event": 3, "failed": 1, "heartbeat": 1, "stop": 1}
    assert (docs[7].seq, docs[7].last_seq, docs[7].state) == (6, 5, "paused")
    np.testing.assert_array_equal(docs[5].arrays["spectra"], event_kwargs(2)["arrays"]["spectra"])
    assert sub.gaps(docs[1].run_uid) == [] and sub.stats()["rejected"] == {}
    assert sub.seen_pixels(docs[1].run_uid) == {(0, 0), (0, 1), (0, 2)}


def test_publisher_refuses_documents_outside_a_run(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub:
        with pytest.raises(StreamError, match="start"):
            pub.event(**event_kwargs(0))
        pub.start(**start_fields())
        with pytest.raises(StreamError, match="descriptor"):
            pub.event(**event_kwargs(0))
        with pytest.raises(StreamError, match="still open"):
            pub.start(**start_fields())


def test_subscriber_survives_garbage_and_counts_it(ctx: zmq.Context) -> None:
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    with RunSubscriber(f"tcp://127.0.0.1:{port}", context=ctx) as sub:
        doc = every_kind()[0]
        deadline = time.monotonic() + 5
        while sub.poll(0.02) is None:  # handshake: resend the start until the SUB has it
            raw.send_multipart(encode(doc))
            assert time.monotonic() < deadline, "subscriber never connected"
        while sub.poll(0.05) is not None:
            pass
        for frames, _ in MALFORMED.values():
            if frames[0].startswith(b"stslive.run."):
                raw.send_multipart(frames)
        raw.send_multipart(encode(every_kind()[1]))
        good = sub.poll(5)
        assert isinstance(good, DescriptorDoc), "subscriber stopped after malformed input"
        expected: dict[str, int] = {}
        for frames, reason in MALFORMED.values():
            if frames[0].startswith(b"stslive.run."):
                expected[reason] = expected.get(reason, 0) + 1
        assert sub.rejected == expected
        # an event that contradicts its run's descriptor is rejected too and leaves a gap
        bad = EventDoc(
            run_uid=doc.run_uid,
            seq=2,
            descriptor_uid=good.uid,
            **{**event_kwargs(0), "arrays": {"spectra": np.zeros((3, 8), np.float32)}},
        )
        raw.send_multipart(encode(bad))
        ok = EventDoc(run_uid=doc.run_uid, seq=3, descriptor_uid=good.uid, **event_kwargs(1))
        raw.send_multipart(encode(ok))
        assert sub.poll(5).seq == 3
        assert sub.rejected["descriptor"] == 1
        assert sub.gaps(doc.run_uid) == [Gap(doc.run_uid, 2, 2)]
    raw.close(linger=0)


def test_gaps_duplicates_and_late_fill(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        start = pub.start(**start_fields())
        desc = pub.descriptor(spec())
        sent = [pub.event(**event_kwargs(i)) for i in range(2)]  # seq 2, 3
        ev = lambda seq, i: EventDoc(run_uid=start.run_uid, seq=seq, descriptor_uid=desc.uid, **event_kwargs(i))
        for seq, i in [(6, 4), (7, 5), (5, 3), (7, 5), (10, 8)]:  # drop 4, 8, 9; 5 arrives late; 7 twice
            pub.publish(ev(seq, i))
        got = [d.seq for d in sub.iter(idle_timeout_s=1)]
    assert sent[-1].seq == 3
    assert got == [0, 1, 2, 3, 6, 7, 5, 10]
    assert sub.gaps(start.run_uid) == [Gap(start.run_uid, 4, 4), Gap(start.run_uid, 8, 9)]
    assert sub.take_new_gaps() == [Gap(start.run_uid, 4, 5), Gap(start.run_uid, 8, 9)]
    assert sub.take_new_gaps() == []
    assert sub.duplicates == 1
    assert not sub.run(start.run_uid).late_join


def test_late_join_is_reported(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub:
        run_small(pub, 5)  # seq 0..6 go to nobody
        with connected(pub, ctx) as sub:
            pub.event(**event_kwargs(5))
            pub.stop()
            docs = list(sub.iter(idle_timeout_s=2, until_stop=True))
            run_uid = docs[0].run_uid
            assert [d.seq for d in docs] == [7, 8]
            assert sub.gaps(run_uid) == [Gap(run_uid, 0, 6, late_join=True)]
            assert sub.stats()["late_joins"] == [run_uid]


@pytest.mark.parametrize("mode", ["sub", "pull"])
def test_burst_of_20000_events_arrives_without_gap(mode: str, ctx: zmq.Context) -> None:
    n, npts, hwm = 20_000, 201, 100_000
    push = LOCAL if mode == "pull" else None
    with RunPublisher(
        LOCAL if mode == "sub" else None, push_endpoint=push, context=ctx, header_format="msgpack", hwm=hwm
    ) as pub:
        endpoint = pub.pub_endpoint if mode == "sub" else pub.push_endpoint
        with RunSubscriber(endpoint, mode=mode, context=ctx, hwm=hwm) as sub:
            if mode == "sub":
                pub.wait_for_subscribers(1)
            spectra = {"spectra": np.ones((3, npts), np.float32)}
            fields = {k: v for k, v in event_kwargs(0, npts).items() if k != "arrays"}
            t0 = time.perf_counter()
            pub.start(**start_fields(npts=npts))
            pub.descriptor(spec(npts))
            for _ in range(n):  # as fast as the publisher can go; nobody reads yet
                pub.event(arrays=spectra, **fields)
            pub.stop()
            publish_s = time.perf_counter() - t0
            docs = sum(1 for _ in sub.iter(idle_timeout_s=5, until_stop=True))
            run_uid = sub.runs[0]
            assert docs == n + 3
            assert sub.gaps(run_uid) == [] and sub.rejected == {} and sub.duplicates == 0
            assert pub.push_dropped == 0
            print(f"\n{mode}: {n} events published in {publish_s:.2f} s ({n / publish_s:,.0f}/s), all received")


def test_push_without_peer_never_blocks_and_delivers_backlog_later(ctx: zmq.Context) -> None:
    with RunPublisher(None, push_endpoint=LOCAL, context=ctx) as pub:
        t0 = time.perf_counter()
        run_small(pub, 500)  # no consumer connected: a blocking PUSH would hang here
        assert time.perf_counter() - t0 < 5
        assert pub.backlog == 502
        with RunSubscriber(pub.push_endpoint, mode="pull", context=ctx) as sub:
            pub.stop()  # sending retries the backlog first, so order is kept
            assert pub.flush(timeout_s=5)
            seqs = [d.seq for d in sub.iter(idle_timeout_s=2, until_stop=True)]
        assert seqs == list(range(503))


def test_push_backlog_is_bounded_and_losses_show_as_gaps(ctx: zmq.Context) -> None:
    one = len(b"".join(encode(EventDoc(run_uid="r", seq=9, descriptor_uid="d", **event_kwargs(0)))))
    with RunPublisher(None, push_endpoint=LOCAL, context=ctx, push_backlog_bytes=10 * one) as pub:
        run_small(pub, 30)
        assert pub.push_dropped > 0 and pub.backlog <= 10
        with RunSubscriber(pub.push_endpoint, mode="pull", context=ctx) as sub:
            pub.stop()
            pub.flush(timeout_s=5)
            docs = list(sub.iter(idle_timeout_s=2, until_stop=True))
        run_uid = docs[0].run_uid
        first = docs[0].seq
        assert first == pub.push_dropped  # the oldest went first
        assert sub.gaps(run_uid) == [Gap(run_uid, 0, first - 1, late_join=True)]


# -- recovery from the archive -------------------------------------------------------------------
def test_recover_lost_events_from_the_archive(tmp_path: Path, ctx: zmq.Context) -> None:
    from stslive.acquisition.formats.archive import ArchiveWriter
    from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet

    nx, ny, npts = 4, 3, 9
    fields = start_fields(nx, ny, npts)
    sset = SetpointSet.from_dict(fields["setpoint_sets"][0])
    geometry = GridGeometry.from_dict(fields["grid"])
    path = tmp_path / "run.h5"
    lost = {(0, 2), (1, 1), (2, 2)}
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        start = pub.start(**fields)
        desc = pub.descriptor(spec(npts))
        with ArchiveWriter.create(
            path,
            geometry=geometry,
            channel_names=list(fields["channel_names"]),
            n_points=npts,
            setpoint_sets=[sset],
            start_doc=start.to_dict(),
        ) as writer:
            for i in range(nx * ny - 1):  # the last pixel is never measured
                kw = event_kwargs(i, npts, nx)
                meta = PixelMeta(
                    x_m=kw["x_m"],
                    y_m=kw["y_m"],
                    setpoint_set_id=0,
                    **kw["timestamps"],
                    temperature_before_K=kw["temperature_before_K"],
                    temperature_after_K=math.nan,
                    z_m=kw["z_m"],
                )
                writer.write_pixel(kw["iy"], kw["ix"], kw["arrays"]["spectra"], meta)
                if (kw["iy"], kw["ix"]) in lost:
                    pub._next("event")  # simulate the network dropping this event: its seq is used
                else:
                    pub.event(**kw)
            pub.stop()
            list(sub.iter(idle_timeout_s=2, until_stop=True))
            assert len(sub.gaps(start.run_uid)) == 3
            assert missing_pixels(writer.measured, sub.seen_pixels(start.run_uid)) == sorted(lost)
            recovered = list(sub.recover(path, start.run_uid))  # while the writer still holds it (SWMR)
    assert sorted((e.iy, e.ix) for e in recovered) == sorted(lost)
    for ev in recovered:
        i = ev.iy * nx + ev.ix
        want = event_kwargs(i, npts, nx)
        assert ev.descriptor_uid == desc.uid
        np.testing.assert_array_equal(ev.arrays["spectra"], want["arrays"]["spectra"])
        assert ev.timestamps == want["timestamps"] and ev.x_m == want["x_m"] and ev.z_m == want["z_m"]
        assert ev.temperature_before_K == want["temperature_before_K"] and ev.temperature_after_K is None
        assert ev.seq == -1 and ev.run_uid == start.run_uid
    assert sub.gaps(start.run_uid) == []
    assert len(sub.seen_pixels(start.run_uid)) == nx * ny - 1
    with pytest.raises(StreamError, match="holds run"):
        list(recover_from_archive(path, run_uid="another-run"))
    assert [(e.iy, e.ix) for e in recover_from_archive(path, pixels=[(2, 3), (2, 2)])] == [(2, 2)]


def test_two_subscribers_with_the_same_filter_are_both_seen(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub:
        subs = [RunSubscriber(pub.pub_endpoint, context=ctx) for _ in range(2)]
        assert pub.wait_for_subscribers(2, timeout_s=5) == 2
        pub.heartbeat()
        assert all(isinstance(s.poll(5), HeartbeatDoc) for s in subs)
        for s in subs:
            s.close()
        with pytest.raises(StreamError, match="subscription"):
            pub.wait_for_subscribers(3, timeout_s=0.2)


def test_lost_stop_is_seen_from_the_next_idle_heartbeat(ctx: zmq.Context) -> None:
    with RunPublisher(LOCAL, context=ctx) as pub, connected(pub, ctx) as sub:
        run_small(pub, 2)  # seq 0..3
        run_uid = pub.run_uid
        sub.poll(2), sub.poll(2), sub.poll(2), sub.poll(2)
        sub._sock.setsockopt(zmq.UNSUBSCRIBE, b"stslive.run.")  # the network eats the tail ...
        time.sleep(0.2)
        pub.event(**event_kwargs(2))
        pub.stop()  # seq 4, 5: never arrive
        sub._sock.setsockopt(zmq.SUBSCRIBE, b"stslive.run.")
        time.sleep(0.2)
        pub.wait_for_subscribers(1, timeout_s=5)  # the re-subscription has reached the publisher
        hb = pub.heartbeat()
        got = sub.poll(5)
    assert isinstance(got, HeartbeatDoc) and (got.last_run_uid, got.last_seq) == (run_uid, 5) == (hb.last_run_uid, 5)
    assert sub.gaps(run_uid) == [Gap(run_uid, 4, 5)]
