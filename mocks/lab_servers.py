"""The simulated instruments of one :class:`~stslive.mocks.lab.MockLab`, running on TCP ports.

Contract: :meth:`LabServers.start` starts the Nanonis server and, unless their port is None,
the SR830 and LakeShore 372 servers (port 0 = a free port); all share the lab's state and fault
plan. A failed start stops what had started. :class:`LabServers` is a context manager that
stops every server on exit; :attr:`LabServers.resources` gives the VISA resource strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from stslive.mocks.lab import MockLab
from stslive.mocks.ls372_server import LS372Server
from stslive.mocks.nanonis_server import NanonisServer
from stslive.mocks.sr830_server import SR830Server


@dataclass
class LabServers:
    """The running simulated instruments of one :class:`~stslive.mocks.lab.MockLab`.

    Use ``with LabServers.start(lab) as servers:``; the servers stop on exit.
    """

    nanonis: NanonisServer
    sr830: SR830Server | None = None
    thermometer: LS372Server | None = None

    @classmethod
    def start(
        cls,
        lab: MockLab,
        *,
        host: str = "127.0.0.1",
        nanonis_port: int = 0,
        sr830_port: int | None = 0,
        thermometer_port: int | None = 0,
        nanonis_options: Mapping[str, Any] | None = None,
    ) -> LabServers:
        """Start the Nanonis server and, unless their port is None, the SR830 and LakeShore 372.

        Parameters
        ----------
        lab
            The shared state every server answers from.
        host
            Interface to listen on.
        nanonis_port, sr830_port, thermometer_port
            TCP ports; 0 picks a free port, None does not start that instrument.
        nanonis_options
            Further :class:`~stslive.mocks.nanonis_server.NanonisServer` options: ``release`` (an
            older controller below R11798), ``unknown_command`` (``"error"`` or ``"silent"``).
        """
        servers = cls(NanonisServer(lab, host=host, port=nanonis_port, **dict(nanonis_options or {})))
        try:
            servers.nanonis.start()
            if sr830_port is not None:
                servers.sr830 = SR830Server(lab.lockin, host=host, port=sr830_port, faults=lab.faults).start()
            if thermometer_port is not None:
                servers.thermometer = LS372Server(
                    lab.thermometer, host=host, port=thermometer_port, faults=lab.faults
                ).start()
        except BaseException:
            servers.stop()
            raise
        return servers

    @property
    def resources(self) -> dict[str, str]:
        """Instrument name -> VISA resource string of each running server."""
        named = {"nanonis": self.nanonis, "sr830": self.sr830, "ls372": self.thermometer}
        return {name: server.resource for name, server in named.items() if server is not None}

    def stop(self) -> None:
        """Stop every server (safe to call twice)."""
        for server in (self.thermometer, self.sr830, self.nanonis):
            if server is not None:
                server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
