"""The live analyser's analysis file: the results model written periodically, crash-safely.

:class:`AnalysisFileWriter` writes the model in the ``maps.h5`` layout
(:func:`stslive.live.results_io.save_maps_h5`) to a temporary file beside the target and renames
it over the target, so a reader (the screen, a crash) only ever sees a complete file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from stslive.live.results import ResultsModel
from stslive.live.results_io import save_maps_h5


class AnalysisFileWriter:
    """Writes one results model to ``path`` at most every ``every_s`` seconds (or when told).

    Parameters
    ----------
    path
        The analysis file (``RUN.analysis.h5``).
    every_s
        Interval of the periodic writes, s (:meth:`due`).
    """

    def __init__(self, path: str | os.PathLike[str], *, every_s: float) -> None:
        self.path = Path(path)
        self.every_s = float(every_s)
        self._last = 0.0

    def due(self, now: float) -> bool:
        """Whether ``every_s`` have passed since the last write (``now``: ``time.monotonic()``)."""
        return now - self._last >= self.every_s

    def write(self, model: ResultsModel) -> None:
        """Write ``model`` to a temporary file beside the target, then rename it over the target.

        Raises
        ------
        OSError, StsliveError
            The file cannot be written; the target keeps its previous content.
        """
        self._last = time.monotonic()
        tmp = self.path.with_name(self.path.name + ".tmp")
        save_maps_h5(model, tmp)
        os.replace(tmp, self.path)
