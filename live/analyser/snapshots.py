"""Correlation snapshots of the live analyser, computed off the pixel path.

The correlations of a 300 x 250 map take tens of ms: computed in the service thread they would
delay every pixel queued behind them by as much. :class:`SnapshotScheduler` computes them on its
own thread, on a copy of the maps (:func:`correlation_snapshot` copies under the model's lock),
at most one at a time: a request while one runs is merged into the next. The final snapshot of a
run is taken in the caller's thread (:meth:`SnapshotScheduler.take`) after :meth:`stop`, so it
sees every pixel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from stslive.drivers.errors import AnalysisError
from stslive.live.results import ResultsModel
from stslive.live.snapshots import correlation_snapshot

log = logging.getLogger(__name__)


class SnapshotScheduler:
    """Computes the correlation snapshot of the current run's model on request, on its own thread.

    Parameters
    ----------
    current_model
        Returns the model to take the snapshot of when the thread gets to it (None: no run).
    """

    def __init__(self, current_model: Callable[[], ResultsModel | None]) -> None:
        self._current_model = current_model
        self._thread: threading.Thread | None = None
        self._wanted = threading.Event()
        self._quit = False
        #: thread CPU seconds spent computing snapshots (all threads)
        self.seconds = 0.0

    def request(self) -> None:
        """Ask for a new snapshot (the thread starts on the first request)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="analyser-snapshots", daemon=True)
            self._thread.start()
        self._wanted.set()

    def stop(self) -> None:
        """Stop the thread after the snapshot it is computing (if any); a later request starts it again."""
        if self._thread is not None:
            self._quit = True
            self._wanted.set()
            self._thread.join()
            self._thread = None
            self._quit = False

    def take(self, model: ResultsModel) -> None:
        """Compute the snapshot of ``model`` now, in this thread, and store it in the model.

        Too few valid pixels yet: logged, the model keeps its previous snapshot.
        """
        t0 = time.thread_time()
        try:
            snap = correlation_snapshot(model)
        except AnalysisError as exc:  # too few valid pixels yet: the next snapshot will try again
            log.info("analyser: no correlation snapshot yet (%s)", exc)
            return
        finally:
            self.seconds += time.thread_time() - t0
        model.set_snapshot(snap)

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._quit:
                return
            model = self._current_model()
            if model is not None:
                self.take(model)
