"""``stslive scan``: run a grid (or line, or point list) from a TOML config, or resume a run.

``stslive scan --config RUN.toml --out RUN.h5`` creates the archive (the config is stored in
its start document) and runs; ``stslive scan --resume RUN.h5`` continues the run at the first
unmeasured pixel with only the archive. SIGINT/SIGTERM stop after the pixel in progress (exit
status ``abort``); a SIGKILL loses at most the pixel in progress. On start the bound endpoints
are printed, one ``name endpoint`` line each (``stream``, ``push``, ``control``).

Remote monitoring (issue 6): ``[stream] keys = "KEYDIR"`` in the config (or ``--keys KEYDIR``)
makes the run stream a CURVE server for viewer and controller keys and the control socket one
for controller keys only (:mod:`stslive.acquisition.formats.security`); only then may the endpoints be
beyond loopback. Endpoints and keys are checked before the instruments are opened or the
archive is created.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from stslive.acquisition.config import RunConfig
from stslive.acquisition.engine import ScanEngine
from stslive.acquisition.formats.archive import ArchiveWriter, open_archive
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.security import Security, check_bind
from stslive.acquisition.plans import plan_from_config
from stslive.acquisition.preflight import Finding, preflight
from stslive.drivers.errors import ArchiveError, ConfigError, StreamError, StsliveError

log = logging.getLogger(__name__)

#: Default bound (s) of the wait for a stream subscriber before the start document: a SUB that is
#: already connecting reconnects every 100 ms (ZeroMQ default), so 1 s covers it, and a scan
#: without consumers loses only this once per start.
WAIT_SUBSCRIBERS_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive scan``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", type=Path, help="run config (TOML); see acquisition/example_run.toml")
    what.add_argument("--resume", type=Path, metavar="RUN.h5", help="continue the run in this archive")
    parser.add_argument("--out", type=Path, help="archive to create (with --config)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="print the preflight (limits, instrument ranges, signals, scan frame) and the estimated run time, "
        "then exit: connects to the instruments, moves nothing, writes no archive",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: measure failed pixels again")
    parser.add_argument("--pub", help="override stream.pub (ZeroMQ PUB endpoint)")
    parser.add_argument("--push", help="override stream.push ('' = none)")
    parser.add_argument("--control", help="override stream.control (ZeroMQ REP endpoint, '' = none)")
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=WAIT_SUBSCRIBERS_S,
        metavar="SECONDS",
        help="wait up to this long for a stream subscriber before the start document, so a "
        f"consumer started first does not miss it (default {WAIT_SUBSCRIBERS_S:g}; 0 = no wait)",
    )
    parser.add_argument(
        "--keys",
        metavar="KEYDIR",
        help="override stream.keys: CURVE key directory made by 'stslive keys' ('' = no keys, loopback only)",
    )


def run(args: argparse.Namespace) -> int:
    """Run or resume a scan; returns 0 on success, 3 on abort, 1 on failure."""
    overrides = {
        k: v
        for k, v in (("pub", args.pub), ("push", args.push), ("control", args.control), ("keys", args.keys))
        if v is not None
    }
    if args.check:
        return check_run(RunConfig.from_toml(args.config) if args.config is not None else stored_config(args.resume))
    if args.config is not None:
        if args.out is None:
            raise ConfigError("--out RUN.h5 is required with --config")
        config = RunConfig.from_toml(args.config)
        path, resume = args.out, False
    else:
        if args.out is not None:
            raise ConfigError("--out is not used with --resume: the run continues in its own archive")
        path, resume = args.resume, True
        config = stored_config(path)
    if overrides:
        config = config.with_overrides(stream=overrides)
    if args.wait_subscribers < 0:
        raise ConfigError(f"--wait-subscribers {args.wait_subscribers:g}: give seconds >= 0")
    engine = run_scan(
        config,
        path,
        resume=resume,
        retry_failed=args.retry_failed,
        overwrite=args.overwrite,
        handle_signals=True,
        wait_subscribers_s=args.wait_subscribers,
    )
    status = engine.machine.exit_status
    return {"success": 0, "abort": 3}.get(status, 1)


def check_run(config: RunConfig) -> int:
    """``--check``: the preflight with the instruments connected (nothing moves); 0 if it passes."""
    from stslive.acquisition.rig import open_instruments  # drivers only when the lab is checked

    plan = plan_from_config(config)
    try:
        instruments = open_instruments(config, preflight=False)
    except StsliveError as exc:
        report = preflight(config, plan)
        report.findings.append(Finding("error", "instruments", str(exc)))
    else:
        try:
            report = preflight(config, plan, instruments)
        finally:
            instruments.close()
    print(report.text(), flush=True)
    return 1 if report.errors else 0


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

    ``wait_subscribers_s`` bounds the wait for a stream subscriber before the start document
    (:func:`wait_for_consumers`). A resumed run's start document carries ``metadata["segment"]``,
    the number of resumes in the archive's run log (the stream's resume rule,
    :mod:`stslive.acquisition.formats.stream`).

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
    instruments = open_instruments(config)
    try:
        identities = instruments.identities()
        w = instruments.wiring
        wired = {"lockin_wiring": w.metadata(config.setpoint_sets)} if w.output_channel else {}
        if resume:
            writer = ArchiveWriter.open_for_resume(path)
        else:
            run_uid = str(uuid.uuid4())
            start = {
                "uid": run_uid,
                "time": time.time(),
                "instruments": identities,
                "metadata": {"config": config.to_dict(), "plan_kind": config.plan_kind, **wired},
            }
            # Created under a temporary name and renamed once SWMR is on: a kill during creation
            # leaves no half-made RUN.h5 that neither a reader nor --resume could open.
            creating = path.with_name(path.name + ".creating")
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
            os.replace(creating, path)
            writer.path = path
        with writer:
            stream = config.stream
            publisher = RunPublisher(
                stream["pub"] or None,
                push_endpoint=stream["push"] or None,
                header_format=stream["header_format"],
                context=context,
                security=security,
            )
            try:
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
                        "software_version": _version(),
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
                with _abort_on_signals(engine) if handle_signals else contextlib.nullcontext():
                    engine.run()
                return engine
            finally:
                publisher.close()
    finally:
        instruments.close()


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


class _abort_on_signals:
    """SIGINT/SIGTERM -> the abort command: the pixel in progress completes, the stop is written."""

    def __init__(self, engine: ScanEngine) -> None:
        self._engine = engine
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._engine.machine.state in ("running", "paused"):
            self._engine.machine.execute("abort", {})

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _version() -> str:
    from stslive.acquisition.cli import package_version

    return package_version()
