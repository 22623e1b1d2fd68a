"""Which Nanonis software the driver talks to, and what follows for channel selection.

Contract: :class:`ControllerRelease` is what ``Util.VersionGet`` returns (product line, version,
host application and RT engine release numbers). Releases from :data:`FULL_SIGNAL_LIST_RELEASE`
on select sweep channels by signal index (0-127, ``Signals.NamesGet``); older ones by
Signals-Manager slot (0-23, ``Signals.InSlotsGet``), answer ``BiasSpectr.ChsGet`` without names
and do not know ``Util.VersionGet`` at all, so a controller that refuses (or ignores) it is
taken for an older one. The threshold is the RT engine release at which an independent,
version-aware client switches layouts; SPECS does not publish it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: First RT engine release whose BiasSpectr.ChsSet takes indexes into the full signal list.
FULL_SIGNAL_LIST_RELEASE = 11798


@dataclass(frozen=True)
class ControllerRelease:
    """The controller's software, from ``Util.VersionGet`` (or unknown for an older release).

    Parameters
    ----------
    product_line
        ``"Nanonis SPM Control Software"`` (or Tramea); ``""`` if unknown.
    version
        e.g. ``"Generic 5"``; ``""`` if unknown.
    host_release, rt_release
        Release numbers of the host application and the RT engine; 0 if unknown.
    """

    product_line: str = ""
    version: str = ""
    host_release: int = 0
    rt_release: int = 0

    @property
    def known(self) -> bool:
        """True if the controller reported its release."""
        return self.rt_release > 0

    @property
    def uses_slots(self) -> bool:
        """True if BiasSpectr.ChsSet takes Signals-Manager slots (releases before R11798 or unknown)."""
        return self.rt_release < FULL_SIGNAL_LIST_RELEASE

    def describe(self) -> str:
        """One line for identities and logs."""
        if not self.known:
            return "release unknown (no Util.VersionGet: before R11798), channels by Signals-Manager slot"
        return (
            f"{self.product_line} {self.version} (host R{self.host_release}, RT R{self.rt_release}), "
            f"channels by {'Signals-Manager slot' if self.uses_slots else 'signal index'}"
        )

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any]) -> ControllerRelease:
        """From the decoded ``Util.VersionGet`` reply."""
        return cls(
            str(reply["product_line"]), str(reply["version"]), int(reply["host_release"]), int(reply["rt_release"])
        )

    @classmethod
    def older(cls, rt_release: int = 0) -> ControllerRelease:
        """A controller that did not answer ``Util.VersionGet`` (or a configured older release)."""
        return cls(rt_release=rt_release)
