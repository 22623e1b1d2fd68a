"""The live analyser's analysis file: the results model written periodically, crash-safely.

:class:`AnalysisFileWriter` writes the model in the ``maps.h5`` layout
(:func:`stslive.live.results_io.save_maps_h5`) to a temporary file beside the target and renames
it over the target, so a reader (the screen, a crash) only ever sees a complete file. A place
that cannot be written is refused when the writer is made, before any run arrives.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from stslive.drivers.errors import ConfigError
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

    Raises
    ------
    ConfigError
        The file cannot be written there (no such folder, not a folder, no permission).
    """

    def __init__(self, path: str | os.PathLike[str], *, every_s: float) -> None:
        self.path = Path(path)
        self.every_s = float(every_s)
        self._last = 0.0
        tmp = self._tmp()
        try:  # the temporary file is what write() creates first: try it now
            with open(tmp, "xb"):
                pass
            tmp.unlink()
        except FileExistsError:  # left by a killed analyser: it is overwritten at the next write
            pass
        except OSError as exc:
            raise ConfigError(
                f"cannot write the analysis file {self.path} ({exc.strerror or exc}); give --out a writable path"
            ) from None

    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

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
        tmp = self._tmp()
        save_maps_h5(model, tmp)
        os.replace(tmp, self.path)
