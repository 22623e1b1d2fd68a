"""The live analyser's provisional template width, as a run status field (results stream, analysis file, screen).

Until a run's peak-template width is fixed on its first spectra, the live analyser analyses
each pixel at once with a provisional width and analyses every pixel again once the width is
fixed; :class:`ProvisionalWidth` says so in the run status, in numbers a screen can show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stslive.drivers.errors import AnalysisError
from stslive.drivers.tomlfile import dataclass_from_mapping

__all__ = ["ProvisionalWidth"]


@dataclass(frozen=True, slots=True)
class ProvisionalWidth:
    """The live analyser's peak-template width while it is provisional (every result so far is redone once fixed).

    Attributes
    ----------
    spectra : int
        Spectra of the run's calibration sample that have arrived.
    needed : int
        Spectra that fix the run's width (``KernelOptions.chunk``; a shorter run fixes it at its end).
    width_eV : float
        The provisional width the latest results used, eV (NaN: none estimated yet).
    """

    spectra: int
    needed: int
    width_eV: float = float("nan")

    def __post_init__(self) -> None:
        counts = (
            isinstance(self.spectra, int) and isinstance(self.needed, int) and self.spectra >= 0 and self.needed > 0
        )
        if not (counts and isinstance(self.width_eV, int | float)):
            raise AnalysisError(
                f"provisional width: {self.spectra!r} of {self.needed!r} spectra, width {self.width_eV!r} eV; "
                "give counts >= 0 (needed > 0) and a width in eV"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe once NaN is null)."""
        return {"spectra": self.spectra, "needed": self.needed, "width_eV": self.width_eV}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProvisionalWidth:
        """Inverse of :meth:`to_dict` (a null width is NaN); AnalysisError on unknown or missing keys."""
        values = dict(d)
        if values.get("width_eV", 0.0) is None:
            values["width_eV"] = float("nan")
        return dataclass_from_mapping(cls, values, what="provisional width status", error=AnalysisError)
