"""NanonisController.run_spectrum_beside: work runs between the Start request and its reply.

Replays recorded frames (``test_nanonis.RECORDED``'s configure + sweep exchanges, rebuilt with
the codec here) through a resource that logs the order of writes, reads and the work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pyvisa import constants
from pyvisa.errors import VisaIOError

from stslive.drivers import nanonis_codec as codec
from stslive.drivers.errors import ArchiveError, InstrumentTimeout
from stslive.drivers.nanonis import NanonisController
from stslive.drivers.visa import VisaSession, VisaSettings

RESOURCE = "TCPIP::192.0.2.10::6501::SOCKET"
DATA = np.array([[-0.02, 0.0, 0.02], [-1e-10, 0.0, 1e-10]], dtype=np.float32)


def _start_reply() -> bytes:
    return codec.encode_response("BiasSpectr.Start", [("Bias calc (V)", "Current (A)"), DATA, np.zeros(0, np.float32)])


def _sweep_exchanges(start_reply: bytes) -> list[tuple[bytes, bytes]]:
    """Set-point bias read, feedback read (on), feedback off, Start, the bias back, feedback back on."""
    return [
        (codec.encode_request("Bias.Get"), codec.encode_response("Bias.Get", [-0.01])),
        (codec.encode_request("ZCtrl.OnOffGet"), codec.encode_response("ZCtrl.OnOffGet", [1])),
        (codec.encode_request("ZCtrl.OnOffSet", 0), codec.encode_response("ZCtrl.OnOffSet")),
        (codec.encode_request("BiasSpectr.Start", 1, ""), start_reply),
        (codec.encode_request("Bias.Set", -0.01), codec.encode_response("Bias.Set")),
        (codec.encode_request("ZCtrl.OnOffSet", 1), codec.encode_response("ZCtrl.OnOffSet")),
    ]


#: What follows the Start request: the work, the reply, the set-point bias, the feedback back on.
AFTER_START = [
    "write BiasSpectr.Start",
    "work",
    "read",
    "read",
    "write Bias.Set",
    "read",
    "read",
    "write ZCtrl.OnOffSet",
    "read",
    "read",
]


class LoggingReplay:
    """Replays (request, reply) pairs; logs 'write <command>' and 'read' in ``order``."""

    def __init__(self, exchanges: list[tuple[bytes, bytes]], order: list[str]) -> None:
        self.exchanges, self.order = list(exchanges), order
        self.used, self.pending, self.timeout = 0, b"", 2000.0
        self.read_termination: str | None = None
        self.write_termination: str | None = None
        self.closed = False

    def set_visa_attribute(self, name: Any, value: Any) -> None:
        pass

    def write_raw(self, data: bytes) -> None:
        request, reply = self.exchanges[self.used]
        assert bytes(data) == request, f"exchange {self.used}: unexpected request {bytes(data)[:32]!r}"
        self.used += 1
        self.pending = reply
        self.order.append("write " + bytes(data)[:32].rstrip(b"\0").decode())

    def read_bytes(self, count: int, break_on_termchar: bool = False) -> bytes:
        if len(self.pending) < count:
            raise VisaIOError(constants.StatusCode.error_timeout)
        self.order.append("read")
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def close(self) -> None:
        self.closed = True


class Manager:
    def __init__(self, *resources: LoggingReplay) -> None:
        self.resources = list(resources)

    def open_resource(self, name: str, **kwargs: Any) -> LoggingReplay:
        return self.resources.pop(0)

    def close(self) -> None:
        pass


def _controller(*resources: LoggingReplay) -> NanonisController:
    settings = VisaSettings(RESOURCE, timeout_s=2.0, reconnect_attempts=0)
    session = VisaSession(settings, instrument="nanonis", resource_manager=Manager(*resources))  # type: ignore[arg-type]
    return NanonisController(settings, session=session)


def test_work_runs_after_start_is_sent_and_before_its_reply_is_read() -> None:
    order: list[str] = []
    replay = LoggingReplay(_sweep_exchanges(_start_reply()), order)
    stm = _controller(replay)
    spectrum, hidden = stm.run_spectrum_beside(lambda: order.append("work"))
    assert order == [
        "write Bias.Get",
        "read",
        "read",
        "write ZCtrl.OnOffGet",
        "read",
        "read",
        "write ZCtrl.OnOffSet",
        "read",
        "read",
        *AFTER_START,
    ]
    assert replay.used == len(replay.exchanges) and not replay.pending
    np.testing.assert_array_equal(spectrum.data, DATA)
    assert hidden is False  # no socket to look at: never claimed hidden


def test_error_in_the_work_is_raised_after_the_sweep_with_feedback_restored() -> None:
    order: list[str] = []
    replay = LoggingReplay(_sweep_exchanges(_start_reply()), order)
    stm = _controller(replay)

    def failing_work() -> None:
        order.append("work")
        raise ArchiveError("run.h5", "disk full")

    with pytest.raises(ArchiveError, match="disk full"):
        stm.run_spectrum_beside(failing_work)
    assert order[9:] == AFTER_START
    assert replay.used == len(replay.exchanges) and not replay.pending  # the session stays in step


def test_work_and_sweep_both_failing_raise_the_work_error_with_a_note() -> None:
    order: list[str] = []
    exchanges = _sweep_exchanges(b"")  # Start never answers: a timeout
    first = LoggingReplay(exchanges[:4], order)
    restore = LoggingReplay(exchanges[4:], order)  # the restore reconnects
    stm = _controller(first, restore)

    def failing_work() -> None:
        raise ArchiveError("run.h5", "disk full")

    with pytest.raises(ArchiveError, match="disk full") as info:
        stm.run_spectrum_beside(failing_work)
    assert any("InstrumentTimeout" in note for note in info.value.__notes__)
    assert isinstance(info.value.__cause__, InstrumentTimeout)
    assert restore.used == 2  # the set-point bias, then the feedback back on


def test_work_not_run_when_the_sweep_fails_before_start() -> None:
    order: list[str] = []
    replay = LoggingReplay([(codec.encode_request("Bias.Get"), b"")], order)  # no reply
    stm = _controller(replay)
    ran: list[bool] = []
    with pytest.raises(InstrumentTimeout):
        stm.run_spectrum_beside(lambda: ran.append(True))
    assert ran == []


def test_hidden_against_the_simulated_server() -> None:
    """Over a real socket, work that ends long before a slow sweep's reply counts as hidden."""
    from stslive.drivers.protocols import SpectroscopyConfig, SpectroscopyTiming
    from stslive.mocks.lab import MockLab
    from stslive.mocks.lab_servers import LabServers

    lab = MockLab.from_seed(seed=0, ny=2, nx=2, speed=1.0)
    with LabServers.start(lab, sr830_port=None, thermometer_port=None) as servers:
        with NanonisController(VisaSettings(servers.resources["nanonis"])) as stm:
            # 101 points x 1 ms: a ~0.1 s sweep, far longer than the work below
            stm.configure_spectroscopy(
                SpectroscopyConfig(
                    ("Current (A)",), -0.02, 0.02, 101, SpectroscopyTiming(settling_s=0.0, integration_s=1e-3)
                )
            )
            spectrum, hidden = stm.run_spectrum_beside(lambda: None)
            assert hidden and spectrum.data.shape == (2, 101)
            assert stm.get_feedback()
