"""Watch: follow a Nanonis ``.3ds`` grid while the controller writes it, and publish it as a run stream.

Contract: the controller writes the header first, then appends one record per grid point
(``docs/formats.md``). :func:`watch` waits for the header and the first complete record (its
sweep completes the set-point set), then publishes the run exactly as a replay of the finished
file would (:func:`~stslive.acquisition.replay.nanonis_start_fields`,
:func:`~stslive.acquisition.replay.grid_events`: the same documents, so the analyser and the
screen work unchanged): start, descriptor, one event per measured point as its record becomes
complete (a record still being written waits for the next look), a heartbeat while nothing new
comes, and a stop: ``success`` when every point of the grid has its record, ``abort`` on
interruption (Ctrl-C, ``stop`` set) or when nothing was appended for ``idle_timeout_s``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stslive.acquisition.formats.conditions import AmplitudeConvention
from stslive.acquisition.formats.documents import ArraySpec, StopDoc
from stslive.acquisition.formats.nanonis3ds import HEADER_END, NanonisGrid, open_3ds
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import channel_unit
from stslive.acquisition.replay import grid_events, nanonis_start_fields
from stslive.drivers.errors import ConfigError, NanonisFileError, StsliveError

__all__ = ["watch", "wait_for_grid"]

#: Seconds between heartbeats while no record arrives (the analyser and the screen show the run alive).
HEARTBEAT_S = 2.0


def wait_for_grid(
    path: Path,
    *,
    poll_s: float,
    timeout_s: float | None,
    stop: threading.Event,
    on_wait: Callable[[str], None] = lambda message: None,
    clock: Callable[[], float] = time.monotonic,
) -> NanonisGrid | None:
    """The grid once its header and first complete record are on disk; None when ``stop`` is set.

    ``on_wait(message)`` is called at every look that finds it not ready yet.

    Raises
    ------
    NanonisFileError
        The header is complete but malformed, or ``timeout_s`` passed without a first record.
    """
    t0 = clock()
    while not stop.is_set():
        message = "waiting for the file"
        if path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
            if HEADER_END in head:
                grid = open_3ds(path)  # a complete header that does not parse is an error, not a wait
                if grid.n_records:
                    return grid
                grid.close()
                message = "header written, waiting for the first point's record"
            else:
                message = "waiting for the header"
        if timeout_s is not None and clock() - t0 > timeout_s:
            raise NanonisFileError(path, f"{message} for over {timeout_s:g} s; is the controller writing it?")
        on_wait(message)
        stop.wait(poll_s)
    return None


def watch(
    path: str | os.PathLike[str],
    publisher: RunPublisher,
    *,
    poll_s: float = 0.5,
    idle_timeout_s: float | None = None,
    start_timeout_s: float | None = None,
    setpoint: tuple[float, float] | None = None,
    amplitude_convention: AmplitudeConvention | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StopDoc | None:
    """Follow the ``.3ds`` at ``path`` and publish its points on ``publisher`` as they are written.

    Parameters
    ----------
    poll_s
        Seconds between looks at the file.
    idle_timeout_s
        End the run (``abort``) when no record was appended for this long; None: wait until the
        grid is complete or ``stop``.
    start_timeout_s
        Give up (NanonisFileError) when the header and first record are not there within this
        long; None: wait.
    setpoint, amplitude_convention
        As :func:`~stslive.acquisition.replay.open_replay` (a header without a set-point; how
        ``Lock-in>Amplitude`` is meant).
    stop
        Set from another thread (or a signal handler) to end the watch: the run stops with
        ``abort``. A KeyboardInterrupt does the same and propagates.

    Returns
    -------
    StopDoc or None
        The stop document sent; None when stopped before the run started.
    """
    if poll_s <= 0 or (idle_timeout_s is not None and idle_timeout_s <= 0):
        raise ConfigError("the poll interval and the idle timeout must be positive seconds")
    path, stop = Path(path), stop or threading.Event()

    beat = [-HEARTBEAT_S]

    def waiting(message: str) -> None:
        if clock() - beat[0] >= HEARTBEAT_S:
            publisher.heartbeat("idle", message=f"{path.name}: {message}")
            beat[0] = clock()

    grid = wait_for_grid(path, poll_s=poll_s, timeout_s=start_timeout_s, stop=stop, on_wait=waiting, clock=clock)
    if grid is None:
        return None
    try:
        fields = nanonis_start_fields(path, grid, setpoint=setpoint, amplitude_convention=amplitude_convention)
    except BaseException:
        grid.close()
        raise
    fields["metadata"] = {**fields["metadata"], "watch_of": fields["metadata"].pop("replay_of")}
    names = list(grid.channel_names)
    spec = ArraySpec(
        dtype="<f4",
        shape=(len(names), grid.n_points),
        labels=tuple(names),
        units=tuple(channel_unit(n) for n in names),
    )
    publisher.start(**fields)
    total = grid.nx * grid.ny
    published = 0
    try:
        publisher.descriptor({"spectra": spec})
        last_new = last_beat = clock()
        while True:
            done = [divmod(k, grid.nx) for k in range(published, grid.n_records)]
            for event in grid_events(grid, [p for p in done if grid.measured[p]]):
                publisher.event(**event.body())
            if done:
                published, last_new = grid.n_records, clock()
            if published >= total:
                return publisher.stop("success", reason=f"watched {path}: grid complete ({total} points)")
            if stop.is_set():
                return publisher.stop("abort", reason=f"watch of {path} stopped at {published} of {total} points")
            if idle_timeout_s is not None and clock() - last_new > idle_timeout_s:
                idle = f"nothing appended for {idle_timeout_s:g} s, at {published} of {total} points"
                return publisher.stop("abort", reason=f"watch of {path}: {idle}")
            if clock() - last_beat >= HEARTBEAT_S:
                publisher.heartbeat("running", message=f"{published} of {total} points")
                last_beat = clock()
            stop.wait(poll_s)
            grid = _refreshed(grid, path)
    except (StsliveError, OSError, KeyboardInterrupt) as exc:
        publisher.stop("abort", reason=f"watch of {path} interrupted: {type(exc).__name__}: {exc}")
        raise
    finally:
        grid.close()


def _refreshed(grid: NanonisGrid, path: Path) -> NanonisGrid:
    """``grid`` with the records appended since; opened again if the controller rewrote the header."""
    try:
        grid.refresh()
        return grid
    except NanonisFileError:
        fresh = open_3ds(path)
        if (fresh.nx, fresh.ny, fresh.channel_names, fresh.n_points) != (
            grid.nx,
            grid.ny,
            grid.channel_names,
            grid.n_points,
        ) or fresh.n_records < grid.n_records:
            fresh.close()
            raise NanonisFileError(path, "the file was replaced by another grid while it was watched") from None
        grid.close()
        return fresh
