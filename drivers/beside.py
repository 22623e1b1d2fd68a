"""Work run on the calling thread between sending a request and reading its reply.

Contract: :class:`Beside` runs its work at most once (a repeated exchange does not repeat it),
keeps the work's error for the caller to raise once the reply was read (so the connection stays
in step), and records whether the work ended before any reply byte had arrived (it then cost the
instrument's operation nothing; False when that cannot be told, e.g. without a socket).
"""

from __future__ import annotations

import select
from collections.abc import Callable

from pyvisa.resources import MessageBasedResource

from stslive.drivers.visa import underlying_socket


class Beside:
    """Work run once inside an exchange, between request and reply; keeps its error for later."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.ran = False
        self.hidden = False  # ended before any reply byte was there
        self.error: BaseException | None = None

    def run(self, resource: MessageBasedResource) -> None:
        if self.ran:  # a repeated exchange does not repeat the work
            return
        self.ran = True
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001  raised by run_spectrum_beside once the sweep has ended
            self.error = exc
            return
        sock = underlying_socket(resource)
        self.hidden = sock is not None and not select.select([sock], [], [], 0)[0]
