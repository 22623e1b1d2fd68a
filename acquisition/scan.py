"""Run a scan: open the instruments, archive and stream, run the engine, close them again.

:func:`run_scan` is the code behind ``stslive scan`` (and the benchmarks and tests that scan a
mock lab). A new run's archive is created under a temporary name and renamed once it can be
read; a resumed run (``resume=True``) continues the archive's run at its first unmeasured pixel
with the config stored in it (:func:`stored_config`). Endpoints and CURVE keys are checked
(:func:`stream_security`) before any instrument is opened or any file is created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from stslive.acquisition.config import RunConfig
from stslive.acquisition.engine import ScanEngine
from stslive.acquisition.formats.archive import ArchiveWriter, open_archive
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.security import Security, check_bind
from stslive.acquisition.formats.version import software_version
from stslive.acquisition.plans import Plan, plan_from_config
from stslive.acquisition.sizes import archive_bytes, require
from stslive.drivers.errors import ArchiveError, ConfigError, StreamError

log = logging.getLogger(__name__)

#: Default bound (s) of the wait for a stream subscriber before the start document: a SUB that is
#: already connecting reconnects every 100 ms (ZeroMQ default), so 1 s covers it, and a scan
#: without consumers loses only this once per start.
WAIT_SUBSCRIBERS_S = 1.0


def stored_config(path: Path) -> RunConfig:
    """The run config stored in an archive's start document (for ``--resume``)."""
    with open_archive(path, swmr=True) as reader:
        start = reader.documents.get("start", {})
    try:
        return RunConfig.from_dict(start["metadata"]["config"], source=str(path))
    except (KeyError, TypeError):
        raise ArchiveError(
            path,
            "no run config in the start document: this archive was not written by 'stslive scan' and cannot be resumed",
        ) from None


@dataclass(frozen=True)
class ArchiveState:
    """How far the run in an archive got: plan pixels, measured, failed, left to visit, its last stop."""

    total: int
    measured: int
    failed: int
    remaining: int
    stop: dict[str, Any]

    def finished_text(self, path: Path) -> str:
        """What ``--resume`` says when nothing is left to measure."""
        ended = self.stop.get("reason") or self.stop.get("exit_status") or "no stop document"
        text = (
            f"{path}: nothing left to measure: {self.measured} of {self.total} pixels measured, "
            f"{self.failed} failed (the run ended: {ended})"
        )
        return text + ("; --retry-failed measures the failed pixels again" if self.failed else "")


def archive_state(path: Path, config: RunConfig, *, retry_failed: bool = False) -> ArchiveState:
    """The state of the run in ``path`` against the plan of its ``config`` (nothing is opened for writing)."""
    plan = plan_from_config(config)
    with open_archive(path, swmr=True) as reader:
        measured, failed = reader.measured, reader.failed
        stop = reader.documents.get("stop") or {}
    done = measured if retry_failed else measured | failed
    return ArchiveState(
        total=len(plan),
        measured=int(measured.sum()),
        failed=int(failed.sum()),
        remaining=plan.remaining_count(done),
        stop=stop if isinstance(stop, dict) else {},
    )


def stream_security(config: RunConfig) -> Security | None:
    """The run's CURVE keys (``stream.keys``), checked before anything is opened; None without keys.

    Every endpoint of ``[stream]`` goes through :func:`~stslive.acquisition.formats.security.check_bind`
    (a non-loopback endpoint without keys is refused), and with keys the server key pair and the
    allowed-client folders must exist, so a mistake costs no archive and no instrument time.

    Raises
    ------
    StreamError
        An endpoint beyond loopback without ``stream.keys`` (the message says how to make keys).
    ConfigError
        ``stream.keys`` names a directory without the server key pair or the client folders.
    """
    stream = config.stream
    security = Security.from_dir(stream["keys"]) if stream["keys"] else None
    for name in ("pub", "push", "control"):
        if stream[name]:
            check_bind(stream[name], security)
    if security is not None:
        security.allowed_folders("data")  # viewers/ and controllers/ (control needs the latter only)
        for path in (security.server_secret, security.server_public):
            if path is None or not path.is_file():
                raise ConfigError(
                    f"stream.keys = {stream['keys']!r}: {path} not found; create the server key pair "
                    f"with 'stslive keys --dir {stream['keys']}'"
                )
    return security


def run_scan(
    config: RunConfig,
    path: Path,
    *,
    resume: bool = False,
    retry_failed: bool = False,
    overwrite: bool = False,
    announce: bool = True,
    handle_signals: bool = False,
    context: Any = None,
    on_ready: Callable[[ScanEngine], None] | None = None,
    wait_subscribers_s: float = WAIT_SUBSCRIBERS_S,
) -> ScanEngine:
    """Open everything, run the engine, close everything; returns the finished engine.

    Order: the stream's sockets are bound and the instruments opened before a new archive is
    created, and a new archive is removed again if the run cannot start (the control socket's
    port taken, say), so a failed start leaves nothing that blocks the next attempt.

    ``wait_subscribers_s`` bounds the wait for a stream subscriber before the start document
    (:func:`wait_for_consumers`). A resumed run's start document carries ``metadata["segment"]``,
    the number of resumes in the archive's run log (the stream's resume rule,
    :mod:`stslive.acquisition.formats.documents`).

    ``on_ready(engine)`` is called just before the run starts (tests and benchmarks take the
    control endpoint or the state machine from it); ``handle_signals`` makes SIGINT/SIGTERM
    abort the run (main thread only).
    """
    from stslive.acquisition.rig import open_instruments  # drivers only when a scan really runs

    plan = plan_from_config(config)
    security = stream_security(config)
    skip = None
    segment = 0
    if not resume and path.exists() and not overwrite:
        raise ArchiveError(path, "file exists; resume it with --resume, choose another --out, or pass --overwrite")
    if resume:
        with open_archive(path, swmr=True) as reader:
            if reader.geometry != plan.geometry:
                raise ArchiveError(path, "grid in the archive differs from its stored config; the file is inconsistent")
            run_uid = reader.run_uid
            skip = None if retry_failed else reader.failed
            segment = 1 + sum(r.get("event") == "resume" for r in reader.log)  # this resume logs one more
    else:
        require(
            f"the grid of {plan.geometry.nx}x{plan.geometry.ny} pixels",
            disk_bytes=archive_bytes(len(plan), channels=len(config.archive_channels), points=config.n_points),
            disk_path=path.parent,
        )
    with contextlib.ExitStack() as stack:
        stream = config.stream
        publisher = stack.enter_context(
            RunPublisher(
                stream["pub"] or None,
                push_endpoint=stream["push"] or None,
                header_format=stream["header_format"],
                context=context,
                security=security,
            )
        )
        instruments = open_instruments(config)
        stack.callback(instruments.close)
        identities = instruments.identities()
        w = instruments.wiring
        wired = {"lockin_wiring": w.metadata(config.setpoint_sets)} if w.output_channel else {}
        if resume:
            writer = ArchiveWriter.open_for_resume(path)
        else:
            run_uid = str(uuid.uuid4())
            writer = _create_archive(config, plan, path, run_uid, identities, wired)
        started = False  # True once the run begins: from then on the archive is the run's record
        try:
            with writer:
                engine = ScanEngine(
                    config,
                    plan,
                    writer,
                    publisher,
                    instruments,
                    run_uid=run_uid,
                    skip=skip,
                    control_endpoint=stream["control"] or None,
                    context=context,
                    security=security,
                    start_fields={
                        "instruments": identities,
                        "software_version": software_version(),
                        "metadata": {
                            "config": config.to_dict(),
                            "resumed": resume,
                            "segment": segment,
                            "archive": str(path),
                            **wired,
                        },
                    },
                )
                if announce:
                    for name, endpoint in (
                        ("stream", publisher.pub_endpoint),
                        ("push", publisher.push_endpoint),
                        ("control", engine.control_endpoint),
                    ):
                        if endpoint:
                            print(f"{name} {endpoint}", flush=True)
                if on_ready is not None:
                    on_ready(engine)
                wait_for_consumers(publisher, wait_subscribers_s)
                started = True
                with _AbortOnSignals(engine) if handle_signals else contextlib.nullcontext():
                    engine.run()
                return engine
        finally:
            if not started and not resume:  # nothing was measured: leave no archive to trip over
                path.unlink(missing_ok=True)


def _create_archive(
    config: RunConfig, plan: Plan, path: Path, run_uid: str, identities: Any, wired: dict[str, Any]
) -> ArchiveWriter:
    start = {
        "uid": run_uid,
        "time": time.time(),
        "instruments": identities,
        "metadata": {"config": config.to_dict(), "plan_kind": config.plan_kind, **wired},
    }
    # Created under a temporary name and renamed once SWMR is on: a kill during creation
    # leaves no half-made RUN.h5 that neither a reader nor --resume could open.
    creating = path.with_name(path.name + ".creating")
    try:
        writer = ArchiveWriter.create(
            creating,
            geometry=plan.geometry,
            channel_names=config.archive_channels,
            n_points=config.n_points,
            setpoint_sets=config.setpoint_sets,
            start_doc=start,
            overwrite=True,
            data_attrs={"lockin_wiring": json.dumps(wired["lockin_wiring"])} if wired else None,
        )
    except BaseException:
        creating.unlink(missing_ok=True)
        raise
    os.replace(creating, path)
    writer.path = path
    return writer


def wait_for_consumers(publisher: RunPublisher, timeout_s: float) -> int:
    """Wait up to ``timeout_s`` (s) for one subscription to the run stream; returns how many arrived.

    A SUB that connected before the scan (an analyser started first) only receives what is
    published after its subscription reached the PUB socket, so the start document waits for it;
    bounded, because a scan without consumers must not wait: they can join later from the archive.
    """
    if publisher.pub_endpoint is None or timeout_s <= 0:
        return 0
    try:
        return publisher.wait_for_subscribers(1, timeout_s=timeout_s)
    except StreamError:  # nobody subscribed: run anyway, late consumers backfill from the archive
        log.info("no stream subscriber within %g s; starting without one", timeout_s)
        return 0


class _AbortOnSignals:
    """SIGINT/SIGTERM -> the abort command: the pixel in progress completes, the stop is written."""

    def __init__(self, engine: ScanEngine) -> None:
        self._engine = engine
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._engine.machine.state in ("running", "paused"):
            name = signal.Signals(signum).name
            reason = f"interrupted ({name}{', Ctrl-C' if signum == signal.SIGINT else ''})"
            self._engine.machine.execute("abort", {"reason": reason})

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
