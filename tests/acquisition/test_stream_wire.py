"""The run stream's wire bytes are pinned: every document kind, JSON and msgpack, as recorded before
the stream module was split into codec, documents and publisher (commit 6d50dea's encoder).

A change here changes what every consumer in the field receives: bump ``RUN_SCHEMA_VERSION``
and say so in docs/formats.md instead of updating the pins.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from stslive.acquisition.formats.documents import (
    ArraySpec,
    DescriptorDoc,
    EventDoc,
    FailedPixelDoc,
    HeartbeatDoc,
    StartDoc,
    StopDoc,
    decode,
    encode,
)

RUN = "0123456789abcdef" * 2
T = 1700000000.25


def documents() -> dict[str, object]:
    """One document of every kind, every field set (fixed uids and times)."""
    grid = {
        "centre_x_m": 1e-9,
        "centre_y_m": -2e-9,
        "width_m": 4e-9,
        "height_m": 3e-9,
        "nx": 4,
        "ny": 3,
        "angle_deg": 0.0,
        "order": "serpentine",
    }
    names = ("Bias (V)", "Current (A)", "LI Demod 1 X (A)")
    spectra = np.linspace(-1, 1, 27, dtype=np.float32).reshape(3, 9)
    spectra[1, 7:] = np.nan
    sset = {
        "id": 0,
        "name": "spectroscopy",
        "bias_setpoint_V": -0.01,
        "current_setpoint_A": 1.5e-10,
        "sweep_start_V": -0.04,
        "sweep_end_V": 0.04,
        "n_points": 9,
        "feedback_hold": True,
    }
    times = {"t_start": T, "t_sweep_start": T + 0.1, "t_sweep_end": T + 0.9, "t_end": T + 1.0}
    return {
        "start": StartDoc(
            run_uid=RUN,
            uid=RUN,
            seq=0,
            time=T,
            grid=grid,
            channel_names=names,
            channel_units=("V", "A", "A"),
            n_points=9,
            setpoint_sets=(sset,),
            instruments={"stm": "Nanonis (simulated)", "lockin": "SR830 (simulated)"},
            software_version="0.1.0",
            metadata={"sample": "NbN 2.1 nm", "T_K": 0.3, "segment": 0, "nested": [1, None, "µ"]},
        ),
        "descriptor": DescriptorDoc(
            run_uid=RUN,
            seq=1,
            uid="d" * 32,
            time=T + 0.5,
            data_keys={"spectra": ArraySpec(dtype="<f4", shape=(3, 9), labels=names, units=("V", "A", "A"))},
        ),
        "event": EventDoc(
            run_uid=RUN,
            seq=2,
            uid="e" * 32,
            time=T + 1.0,
            descriptor_uid="d" * 32,
            ix=1,
            iy=2,
            x_m=1.5e-9,
            y_m=-2.5e-9,
            setpoint_set_id=0,
            timestamps=times,
            temperature_before_K=0.301,
            temperature_after_K=None,
            z_m=1.5e-10,
            lockin_status=3,
            lockin_overload=True,
            arrays={"spectra": spectra, "flags": np.arange(3, dtype="<i4")},
        ),
        "failed": FailedPixelDoc(
            run_uid=RUN,
            seq=3,
            uid="f" * 32,
            time=T + 2,
            ix=2,
            iy=1,
            x_m=0.0,
            y_m=1e-9,
            setpoint_set_id=0,
            reason="sr830: no reply",
            attempts=3,
        ),
        "heartbeat": HeartbeatDoc(
            run_uid=RUN,
            seq=4,
            uid="h" * 32,
            time=T + 3,
            state="paused",
            last_run_uid=RUN,
            last_seq=3,
            message="temperature",
        ),
        "heartbeat_idle": HeartbeatDoc(
            run_uid=None, seq=-1, uid="i" * 32, time=T + 4, state="idle", last_run_uid=None, last_seq=-1
        ),
        "stop": StopDoc(
            run_uid=RUN,
            seq=5,
            uid="s" * 32,
            time=T + 5,
            exit_status="abort",
            reason="user",
            counts={"start": 1, "event": 1, "stop": 1},
        ),
    }


# sha256 of every frame [topic, header, *arrays], recorded with the encoder before the split
DIGESTS = {
    "start/json": (
        "1b818d65f967dce374526ba4e14810297a61f2c7fb362e670e69b4325fefaf0a",
        "e0fc6f2eeaadc6ba9f53df9396bbc8745c3054ac333ff908191fab0b75208e2e",
    ),
    "start/msgpack": (
        "1b818d65f967dce374526ba4e14810297a61f2c7fb362e670e69b4325fefaf0a",
        "eea9a4410289c2a0e5a33e74142a92cee3fde210883a21623bed51c7e350f82b",
    ),
    "descriptor/json": (
        "ae349f401464950d97ef632984a9d45c7dc7fb89158f50bd77f52415c7a1c06e",
        "bf0c98d3099abbfd3f6a996aa18d2c32e71b74169bc35f9adc13962911a10654",
    ),
    "descriptor/msgpack": (
        "ae349f401464950d97ef632984a9d45c7dc7fb89158f50bd77f52415c7a1c06e",
        "2d3a611a77e09cff067917765a2f189830df9ded70b62c9064f739b1d6300de3",
    ),
    "event/json": (
        "a61e743333f2039fb3efe9f81435278fcb738807180eb1365c5d08cd5cfb9502",
        "07073ac47e437bc3caf0dca71573ff1a2aa0a8fe13ddbd732cfc6c063ddda690",
        "bd087aaf87a97227c73858474af7b4912f9c40f6989bb0794bec2459cc17edaa",
        "ad5dc1478de06a4c2728ea528bd9361a4b945e92a414bf4d180cedaaeaa5f4cc",
    ),
    "event/msgpack": (
        "a61e743333f2039fb3efe9f81435278fcb738807180eb1365c5d08cd5cfb9502",
        "120a7505e04500118e29fc1f93945b47be22e29ab0ef3f678b037936fd85327e",
        "bd087aaf87a97227c73858474af7b4912f9c40f6989bb0794bec2459cc17edaa",
        "ad5dc1478de06a4c2728ea528bd9361a4b945e92a414bf4d180cedaaeaa5f4cc",
    ),
    "failed/json": (
        "5ec53891c2fcbedbaa7db93553d2d79288d365757ee354d8251d2a035c645f49",
        "a91f729cc58996587f03cc752be5a66c07cd2871f29f983968bafd2f74a8aaad",
    ),
    "failed/msgpack": (
        "5ec53891c2fcbedbaa7db93553d2d79288d365757ee354d8251d2a035c645f49",
        "ce8fd2b4e71951a6c81c7974b3afc12f3e34c4c1bfa3acc49f9bce103fe2eeeb",
    ),
    "heartbeat/json": (
        "8b714c16730da9d1451cbf074241559055b79b6a8ec6f00eb1eb437dd4f95033",
        "a789c9479623abc6f56af419ae68a1ff51de426e37ee26d30b6c5a71b336428d",
    ),
    "heartbeat/msgpack": (
        "8b714c16730da9d1451cbf074241559055b79b6a8ec6f00eb1eb437dd4f95033",
        "145fe1ad1e6749afcba5037d6ffc3b0a8e4c03d55a9ef60b689695c6a16586a0",
    ),
    "heartbeat_idle/json": (
        "8b714c16730da9d1451cbf074241559055b79b6a8ec6f00eb1eb437dd4f95033",
        "a728f7575eb1e626d767f410cfe7391dee0858ad6f7a2bd703cecdcb22787d85",
    ),
    "heartbeat_idle/msgpack": (
        "8b714c16730da9d1451cbf074241559055b79b6a8ec6f00eb1eb437dd4f95033",
        "19805a4f6dd5e34f0e39909566cecb1a9ceb3e94c4e51c50267999d4edaf21f6",
    ),
    "stop/json": (
        "f9114a2e9f61ad71b2cddfdb54153186a01222c5936e5d806895ac3e311f9a2a",
        "97c1af73a251b4870faf630e8b597d724d8f34bfcfd5607c6f88637cdc937b26",
    ),
    "stop/msgpack": (
        "f9114a2e9f61ad71b2cddfdb54153186a01222c5936e5d806895ac3e311f9a2a",
        "a30b379d8ed5df766b96967ca14d7b519fbe15e51819d89e73fdcbaae6f7d9ad",
    ),
}

JSON_HEADERS = {
    "start": (
        '{"schema":"stslive.run","version":1,"kind":"start","run_uid":"0123456789abcdef0123456789abcdef",'
        '"seq":0,"uid":"0123456789abcdef0123456789abcdef","time":1700000000.25,"grid":{"centre_x_m":1e-09'
        ',"centre_y_m":-2e-09,"width_m":4e-09,"height_m":3e-09,"nx":4,"ny":3,"angle_deg":0.0,"order":"ser'
        'pentine"},"channel_names":["Bias (V)","Current (A)","LI Demod 1 X (A)"],"channel_units":["V","A"'
        ',"A"],"n_points":9,"setpoint_sets":[{"id":0,"name":"spectroscopy","bias_setpoint_V":-0.01,"curre'
        'nt_setpoint_A":1.5e-10,"sweep_start_V":-0.04,"sweep_end_V":0.04,"n_points":9,"feedback_hold":tru'
        'e}],"instruments":{"stm":"Nanonis (simulated)","lockin":"SR830 (simulated)"},"software_version":'
        '"0.1.0","metadata":{"sample":"NbN 2.1 nm","T_K":0.3,"segment":0,"nested":[1,null,"\\u00b5"]}}'
    ),
    "event": (
        '{"schema":"stslive.run","version":1,"kind":"event","run_uid":"0123456789abcdef0123456789abcdef",'
        '"seq":2,"uid":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","time":1700000001.25,"descriptor_uid":"dddddddd'
        'dddddddddddddddddddddddd","ix":1,"iy":2,"x_m":1.5e-09,"y_m":-2.5e-09,"setpoint_set_id":0,"timest'
        'amps":{"t_start":1700000000.25,"t_sweep_start":1700000000.35,"t_sweep_end":1700000001.15,"t_end"'
        ':1700000001.25},"temperature_before_K":0.301,"temperature_after_K":null,"z_m":1.5e-10,"lockin_st'
        'atus":3,"lockin_overload":true,"arrays":[{"name":"spectra","dtype":"<f4","shape":[3,9]},{"name":'
        '"flags","dtype":"<i4","shape":[3]}]}'
    ),
    "stop": (
        '{"schema":"stslive.run","version":1,"kind":"stop","run_uid":"0123456789abcdef0123456789abcdef","'
        'seq":5,"uid":"ssssssssssssssssssssssssssssssss","time":1700000005.25,"exit_status":"abort","coun'
        'ts":{"start":1,"event":1,"stop":1},"reason":"user"}'
    ),
}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("kind", sorted(documents()))
def test_wire_bytes_are_those_recorded_before_the_split(kind: str, fmt: str) -> None:
    frames = encode(documents()[kind], header_format=fmt)  # type: ignore[arg-type]
    assert tuple(hashlib.sha256(f).hexdigest() for f in frames) == DIGESTS[f"{kind}/{fmt}"]
    if fmt == "json" and kind in JSON_HEADERS:
        assert frames[1].decode() == JSON_HEADERS[kind]
    assert encode(decode(frames), header_format=fmt) == frames  # and a decoded document re-encodes the same
