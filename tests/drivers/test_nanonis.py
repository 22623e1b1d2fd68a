"""The Nanonis driver on recorded byte frames: every exchange checked and used.

The frames below were recorded from the simulated server (``mocks/nanonis_server.py``, film
seed 5, 4x4 pixels, 5-point sweep, an error reply scripted on the second Bias.Set) with the real
driver through pyvisa-py, then frozen here, so a change of the driver's requests or of its
parsing shows up byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pyvisa import constants
from pyvisa.errors import VisaIOError

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import (
    ConfigError,
    ControllerError,
    InstrumentReplyError,
    InstrumentTimeout,
    SafetyLimitError,
)
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.protocols import ScanFrame, SpectroscopyConfig, SpectroscopyTiming
from stslive.drivers.visa import VisaSession, VisaSettings

RESOURCE = "TCPIP::192.0.2.10::6501::SOCKET"

# (request, reply) hex pairs, in order: Bias.Get, Bias.Set, Bias.Set (error reply), then
# configure_spectroscopy (the release is read first: Util.VersionGet; the module opened, Reset
# Bias and the Z-controller hold set and read back, the rounded timing read back), run_spectrum
# (feedback held; after Start the set-point bias goes back before the feedback) and move_tip.
RECORDED: list[tuple[str, str]] = [
    (  # Bias.Get
        "426961732e4765740000000000000000000000000000000000000000000000000000000000010000",
        "426961732e4765740000000000000000000000000000000000000000000000000000000c00000000bc23d70a0000000000000000",
    ),
    (  # Bias.Set
        "426961732e53657400000000000000000000000000000000000000000000000000000004000100003ba3d70a",
        "426961732e53657400000000000000000000000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # Bias.Set
        "426961732e53657400000000000000000000000000000000000000000000000000000004000100003f000000",
        "426961732e5365740000000000000000000000000000000000000000000000000000001900000000000000010000001142696173206f7574206f662072616e6765",
    ),
    (  # Util.VersionGet
        "5574696c2e56657273696f6e47657400000000000000000000000000000000000000000000010000",
        "5574696c2e56657273696f6e47657400000000000000000000000000000000000000003d000000000000001c4e616e6f6e69732053504d20436f6e74726f6c20536f6674776172650000000947656e65726963203500003540000035400000000000000000",
    ),
    (  # Signals.NamesGet
        "5369676e616c732e4e616d6573476574000000000000000000000000000000000000000000010000",
        "5369676e616c732e4e616d6573476574000000000000000000000000000000000000007d000000000000006d000000080000000b43757272656e7420284129000000084269617320285629000000055a20286d29000000055820286d29000000055920286d29000000104c492044656d6f642031205820284129000000104c492044656d6f6420312059202841290000000b496e7075742032202856290000000000000000",
    ),
    (  # BiasSpectr.Open
        "426961735370656374722e4f70656e00000000000000000000000000000000000000000000010000",
        "426961735370656374722e4f70656e000000000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.ChsSet
        "426961735370656374722e43687353657400000000000000000000000000000000000008000100000000000100000000",
        "426961735370656374722e43687353657400000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.LimitsSet
        "426961735370656374722e4c696d6974735365740000000000000000000000000000000800010000bca3d70a3ca3d70a",
        "426961735370656374722e4c696d69747353657400000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.PropsSet
        "426961735370656374722e50726f70735365740000000000000000000000000000000014000100000000000000010002000000050000000000020002",
        "426961735370656374722e50726f70735365740000000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.TimingSet
        "426961735370656374722e54696d696e675365740000000000000000000000000000002000010000000000000000000000000000447a00003a83126f3a83126f0000000000000000",
        "426961735370656374722e54696d696e6753657400000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.AdvPropsSet
        "426961735370656374722e41647650726f70735365740000000000000000000000000008000100000001000100000000",
        "426961735370656374722e41647650726f70735365740000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.AdvPropsGet
        "426961735370656374722e41647650726f7073476574000000000000000000000000000000010000",
        "426961735370656374722e41647650726f707347657400000000000000000000000000100000000000010001000000000000000000000000",
    ),
    (  # BiasSpectr.TimingGet
        "426961735370656374722e54696d696e674765740000000000000000000000000000000000010000",
        "426961735370656374722e54696d696e674765740000000000000000000000000000002800000000000000000000000000000000447a00003a83126f3a83126f00000000000000000000000000000000",
    ),
    (  # ZCtrl.OnOffGet
        "5a4374726c2e4f6e4f66664765740000000000000000000000000000000000000000000000010000",
        "5a4374726c2e4f6e4f66664765740000000000000000000000000000000000000000000c00000000000000010000000000000000",
    ),
    (  # ZCtrl.OnOffSet
        "5a4374726c2e4f6e4f6666536574000000000000000000000000000000000000000000040001000000000000",
        "5a4374726c2e4f6e4f666653657400000000000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # BiasSpectr.Start
        "426961735370656374722e53746172740000000000000000000000000000000000000008000100000000000100000000",
        "426961735370656374722e5374617274000000000000000000000000000000000000008c0000000000000020000000020000000d426961732063616c63202856290000000b43757272656e74202841290000000200000005bca3d70abc23d70a000000003c23d70a3ca3d70ab06e9c8cafc4e0f0a9f5c53a2fc743463074330d0000000abca3d70a3ca3d70a00000000000000002ed94b60000000003a83126f3a83126f3f8000002ed94b600000000000000000",
    ),
    (  # Bias.Set
        "426961732e53657400000000000000000000000000000000000000000000000000000004000100003ba3d70a",
        "426961732e53657400000000000000000000000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # ZCtrl.OnOffSet
        "5a4374726c2e4f6e4f6666536574000000000000000000000000000000000000000000040001000000000001",
        "5a4374726c2e4f6e4f666653657400000000000000000000000000000000000000000008000000000000000000000000",
    ),
    (  # Scan.FrameGet
        "5363616e2e4672616d65476574000000000000000000000000000000000000000000000000010000",
        "5363616e2e4672616d65476574000000000000000000000000000000000000000000001c0000000000000000000000003189705f3189705f000000000000000000000000",
    ),
    (  # FolMe.XYPosSet
        "466f6c4d652e5859506f7353657400000000000000000000000000000000000000000014000100003e112e0be826d695be112e0be826d69500000001",
        "466f6c4d652e5859506f7353657400000000000000000000000000000000000000000008000000000000000000000000",
    ),
]
#: Index of each recorded exchange by command (the first occurrence).
AT = {bytes.fromhex(q)[:32].rstrip(b"\0").decode(): i for i, (q, _) in reversed(list(enumerate(RECORDED)))}


class ReplayResource:
    """A pyvisa resource that replays recorded exchanges and fails on any deviation."""

    def __init__(self, exchanges: list[tuple[bytes, bytes]]) -> None:
        self.exchanges = list(exchanges)
        self.used = 0
        self.pending = b""
        self.timeout = 2000.0
        self.read_termination: str | None = "\n"
        self.write_termination: str | None = "\n"
        self.attributes: dict[Any, Any] = {}
        self.closed = False

    def set_visa_attribute(self, name: Any, value: Any) -> None:
        self.attributes[name] = value

    def write_raw(self, data: bytes) -> None:
        assert not self.pending, f"request sent before the reply was read: {self.pending.hex()}"
        assert self.used < len(self.exchanges), f"unexpected extra request {bytes(data).hex()}"
        request, reply = self.exchanges[self.used]
        assert bytes(data) == request, f"exchange {self.used}: sent {bytes(data).hex()}, recorded {request.hex()}"
        self.used += 1
        self.pending = reply

    def read_bytes(self, count: int, break_on_termchar: bool = False) -> bytes:
        assert not break_on_termchar
        if len(self.pending) < count:
            raise VisaIOError(constants.StatusCode.error_timeout)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def close(self) -> None:
        self.closed = True

    def assert_all_used(self) -> None:
        assert self.used == len(self.exchanges), f"{len(self.exchanges) - self.used} recorded exchanges unused"
        assert not self.pending, "reply bytes left unread"


class ReplayManager:
    """Hands out replay resources in order, as ``pyvisa.ResourceManager.open_resource`` would."""

    def __init__(self, *resources: ReplayResource) -> None:
        self.resources = list(resources)
        self.opened: list[ReplayResource] = []

    def open_resource(self, name: str, **kwargs: Any) -> ReplayResource:
        assert name == RESOURCE
        resource = self.resources.pop(0)
        self.opened.append(resource)
        return resource

    def close(self) -> None:
        pass


def _pairs(hexes: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(bytes.fromhex(q), bytes.fromhex(a)) for q, a in hexes]


def _controller(*resources: ReplayResource, **options: Any) -> NanonisController:
    settings = VisaSettings(RESOURCE, timeout_s=2.0, reconnect_attempts=0)
    session = VisaSession(settings, instrument="nanonis", resource_manager=ReplayManager(*resources))  # type: ignore[arg-type]
    return NanonisController(settings, session=session, **options)


def test_recorded_session_replays_completely() -> None:
    replay = ReplayResource(_pairs(RECORDED))
    stm = _controller(replay)
    assert stm.get_bias() == pytest.approx(-0.010, rel=1e-6)
    stm.set_bias(0.005)
    with pytest.raises(ControllerError, match="Bias out of range") as info:
        stm.set_bias(0.5)
    assert info.value.code == 1 and info.value.command == "Bias.Set"  # the document's status: 1 = error
    stm.configure_spectroscopy(
        SpectroscopyConfig(("Current (A)",), -0.02, 0.02, 5, SpectroscopyTiming(settling_s=1e-3, integration_s=1e-3))
    )
    spectrum = stm.run_spectrum()
    stm.move_tip(1e-9, -1e-9)
    replay.assert_all_used()
    assert spectrum.channels == ("Bias calc (V)", "Current (A)")
    assert spectrum.data.dtype == np.float32 and spectrum.data.shape == (2, 5)
    np.testing.assert_allclose(spectrum.data[0], np.linspace(-0.02, 0.02, 5), atol=1e-8)
    assert np.all(np.isfinite(spectrum.data[1])) and spectrum.data[1][0] < 0 < spectrum.data[1][-1]


def test_session_binary_settings_and_nodelay() -> None:
    replay = ReplayResource(_pairs(RECORDED[:1]))
    stm = _controller(replay)
    stm.get_bias()
    replay.assert_all_used()
    assert replay.read_termination is None and replay.write_termination is None
    assert replay.attributes == {constants.ResourceAttribute.tcpip_nodelay: constants.VI_TRUE}


def test_reply_for_another_command_resets_the_connection() -> None:
    bias_get_request = bytes.fromhex(RECORDED[0][0])
    set_reply = bytes.fromhex(RECORDED[1][1])  # a Bias.Set reply: out of step
    first = ReplayResource([(bias_get_request, set_reply)])
    second = ReplayResource(_pairs(RECORDED[:1]))
    stm = _controller(first, second)
    with pytest.raises(InstrumentReplyError, match="out of step"):
        stm.get_bias()
    assert first.closed
    assert stm.get_bias() == pytest.approx(-0.010, rel=1e-6)  # a fresh connection
    first.assert_all_used()
    second.assert_all_used()


def test_truncated_reply_is_a_timeout() -> None:
    request, reply = _pairs(RECORDED[:1])[0]
    replay = ReplayResource([(request, reply[:-2])])
    stm = _controller(replay)
    with pytest.raises(InstrumentTimeout, match="Bias.Get"):
        stm.get_bias()
    assert replay.closed


def test_bias_and_feedback_restored_when_start_fails() -> None:
    # configure + OnOffGet + OnOffSet(0) recorded; then Start gets no reply, and the restore
    # (the set-point bias, then OnOffSet(1)) runs on a fresh connection.
    start = AT["BiasSpectr.Start"]
    first = ReplayResource([*_pairs(RECORDED[AT["Util.VersionGet"] : start]), (bytes.fromhex(RECORDED[start][0]), b"")])
    restore = ReplayResource(_pairs(RECORDED[start + 1 : start + 3]))
    stm = _controller(first, restore)
    stm._bias_setpoint_V = 0.005  # as set_bias(0.005) left it in the recording
    stm.configure_spectroscopy(
        SpectroscopyConfig(("Current (A)",), -0.02, 0.02, 5, SpectroscopyTiming(settling_s=1e-3, integration_s=1e-3))
    )
    with pytest.raises(InstrumentTimeout):
        stm.run_spectrum()
    first.assert_all_used()
    restore.assert_all_used()


# -- scan frame cache ------------------------------------------------------------------------------
FRAME_4NM = ScanFrame(0.0, 0.0, 4e-9, 4e-9)
FRAME_8NM = ScanFrame(0.0, 0.0, 8e-9, 8e-9)


def _frame_get(frame: ScanFrame) -> tuple[bytes, bytes]:
    values = (frame.center_x_m, frame.center_y_m, frame.width_m, frame.height_m, frame.angle_deg)
    return codec.encode_request("Scan.FrameGet"), codec.encode_response("Scan.FrameGet", values)


def _move(x_m: float, y_m: float, *, refused: bool = False) -> tuple[bytes, bytes]:
    reply = (
        codec.encode_error_response("FolMe.XYPosSet", 1, "tip move refused")
        if refused
        else codec.encode_response("FolMe.XYPosSet")
    )
    return codec.encode_request("FolMe.XYPosSet", x_m, y_m, 1), reply


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_recorded_frame_get_is_what_the_cache_sends() -> None:
    assert _frame_get(FRAME_4NM)[0] == bytes.fromhex(
        RECORDED[AT["Scan.FrameGet"]][0]
    )  # the cache speaks the recorded protocol


def test_frame_read_once_for_many_moves_within_max_age() -> None:
    clock = FakeClock()
    replay = ReplayResource([_frame_get(FRAME_4NM), _move(1e-9, 0.0), _move(0.0, 1e-9), _move(-1e-9, -1e-9)])
    stm = _controller(replay, clock=clock, frame_max_age_s=1.0)
    stm.move_tip(1e-9, 0.0)
    clock.now += 0.45
    stm.move_tip(0.0, 1e-9)
    clock.now += 0.45
    stm.move_tip(-1e-9, -1e-9)
    replay.assert_all_used()


def test_frame_reread_when_older_than_max_age() -> None:
    clock = FakeClock()
    replay = ReplayResource([_frame_get(FRAME_4NM), _move(1e-9, 0.0), _frame_get(FRAME_4NM), _move(0.0, 1e-9)])
    stm = _controller(replay, clock=clock, frame_max_age_s=1.0)
    stm.move_tip(1e-9, 0.0)
    clock.now += 1.0
    stm.move_tip(0.0, 1e-9)
    replay.assert_all_used()


def test_frame_max_age_zero_reads_before_every_move() -> None:
    replay = ReplayResource([_frame_get(FRAME_4NM), _move(1e-9, 0.0), _frame_get(FRAME_4NM), _move(1e-9, 0.0)])
    stm = _controller(replay, clock=FakeClock(), frame_max_age_s=0.0)
    stm.move_tip(1e-9, 0.0)
    stm.move_tip(1e-9, 0.0)
    replay.assert_all_used()


def test_target_outside_cached_frame_is_checked_against_a_fresh_frame() -> None:
    # the frame grew on the controller: the move outside the cached 4 nm frame goes ahead
    replay = ReplayResource(
        [_frame_get(FRAME_4NM), _move(1e-9, 0.0), _frame_get(FRAME_8NM), _move(3e-9, 0.0), _frame_get(FRAME_8NM)]
    )
    stm = _controller(replay, clock=FakeClock())
    stm.move_tip(1e-9, 0.0)
    stm.move_tip(3e-9, 0.0)
    # and still outside the fresh frame: refused, nothing sent
    with pytest.raises(SafetyLimitError, match="outside the scan frame"):
        stm.move_tip(5e-9, 0.0)
    replay.assert_all_used()


def test_non_finite_target_refused_without_any_exchange() -> None:
    replay = ReplayResource([])
    stm = _controller(replay, clock=FakeClock())
    with pytest.raises(SafetyLimitError, match="not finite"):
        stm.move_tip(float("nan"), 0.0)
    replay.assert_all_used()


def test_refused_move_drops_the_cached_frame() -> None:
    replay = ReplayResource(
        [_frame_get(FRAME_4NM), _move(1e-9, 0.0, refused=True), _frame_get(FRAME_4NM), _move(1e-9, 0.0)]
    )
    stm = _controller(replay, clock=FakeClock())
    with pytest.raises(ControllerError, match="tip move refused"):
        stm.move_tip(1e-9, 0.0)
    stm.move_tip(1e-9, 0.0)
    replay.assert_all_used()


def test_set_scan_frame_drops_the_cached_frame() -> None:
    frame_set = (
        codec.encode_request("Scan.FrameSet", 0.0, 0.0, 8e-9, 8e-9, 0.0),
        codec.encode_response("Scan.FrameSet"),
    )
    replay = ReplayResource(
        [_frame_get(FRAME_4NM), _move(1e-9, 0.0), frame_set, _frame_get(FRAME_8NM), _move(3e-9, 0.0)]
    )
    stm = _controller(replay, clock=FakeClock())
    stm.move_tip(1e-9, 0.0)
    stm.set_scan_frame(FRAME_8NM)
    stm.move_tip(3e-9, 0.0)
    replay.assert_all_used()


def test_reconnect_drops_the_cached_frame() -> None:
    # the first connection dies after the move (a timeout closes the session); the next move
    # runs on a new connection to a controller that may have restarted: the frame is read again
    bias_request = bytes.fromhex(RECORDED[0][0])
    first = ReplayResource([_frame_get(FRAME_4NM), _move(1e-9, 0.0), (bias_request, b"")])
    second = ReplayResource([_frame_get(FRAME_4NM), _move(0.0, 1e-9)])
    stm = _controller(first, second, clock=FakeClock())
    stm.move_tip(1e-9, 0.0)
    with pytest.raises(InstrumentTimeout):
        stm.get_bias()
    stm.move_tip(0.0, 1e-9)
    first.assert_all_used()
    second.assert_all_used()


def test_frame_max_age_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="frame_max_age_s"):
        _controller(ReplayResource([]), frame_max_age_s=-1.0)
