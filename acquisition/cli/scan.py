"""``stslive scan``: run a grid (or line, or point list) from a TOML config, or resume a run.

``stslive scan --config RUN.toml --out RUN.h5`` creates the archive (the config is stored in
its start document) and runs; ``stslive scan --resume RUN.h5`` continues the run at the first
unmeasured pixel with only the archive (a run with nothing left says so and exits 0).
SIGINT/SIGTERM stop after the pixel in progress; a SIGKILL loses at most the pixel in progress.
On start the bound endpoints are printed, one ``name endpoint`` line each (``stream``, ``push``,
``control``); while it runs a progress line on stderr (pixels, failures, rate, time left, state
and pause reasons: in place on a terminal, every minute into a log); at the end one summary line
(measured, failed, flagged when known, duration, why it ended), also stored in the archive's stop
document. Exit status: 0 done, 3 aborted, 1 failed (``stslive --help`` lists every code).

``[stream] keys = "KEYDIR"`` in the config (or ``--keys KEYDIR``) makes the run stream a CURVE
server for viewer and controller keys and the control socket one for controller keys only; only
then may the endpoints be beyond loopback (:mod:`stslive.acquisition.formats.security`).
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path
from typing import TextIO

from stslive.acquisition.cli import EXIT_ABORTED, EXIT_ERROR
from stslive.acquisition.cli.common import say
from stslive.acquisition.config import RunConfig
from stslive.acquisition.engine import ScanEngine
from stslive.acquisition.plans import plan_from_config
from stslive.acquisition.preflight import Finding, preflight
from stslive.acquisition.progress import progress_line, summary_line
from stslive.acquisition.scan import WAIT_SUBSCRIBERS_S, archive_state, run_scan, stored_config
from stslive.drivers.errors import ConfigError, StsliveError

#: Seconds between progress lines on a terminal (rewritten in place) and into a file or pipe.
PROGRESS_TTY_S, PROGRESS_LOG_S = 1.0, 60.0


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
    parser.add_argument(
        "--progress",
        type=float,
        metavar="SECONDS",
        help=f"seconds between progress lines on stderr (default {PROGRESS_TTY_S:g} on a terminal, rewritten "
        f"in place; {PROGRESS_LOG_S:g} into a file or pipe; 0 = none)",
    )
    parser.epilog = "exit status: 0 done, 1 failed (the error says why), 3 aborted (control abort, Ctrl-C, SIGTERM)"


def run(args: argparse.Namespace) -> int:
    """Run or resume a scan; returns 0 when done, 3 on abort, 1 on failure."""
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
    if args.progress is not None and not (args.progress >= 0 and math.isfinite(args.progress)):
        raise ConfigError(f"--progress {args.progress:g}: give seconds >= 0 (0: no progress line)")
    if resume:
        state = archive_state(path, config, retry_failed=args.retry_failed)
        if state.remaining == 0:
            say(state.finished_text(path))
            return 0
    every = args.progress if args.progress is not None else PROGRESS_TTY_S if _tty(sys.stderr) else PROGRESS_LOG_S
    reporter = ProgressReporter(sys.stderr, every_s=every)
    try:
        engine = run_scan(
            config,
            path,
            resume=resume,
            retry_failed=args.retry_failed,
            overwrite=args.overwrite,
            handle_signals=True,
            wait_subscribers_s=args.wait_subscribers,
            on_ready=reporter.follow,
        )
    except BaseException:
        reporter.close()
        if reporter.engine is not None:  # the run began: say how far it got before the error line
            machine = reporter.engine.machine
            say(f"scan {path}: " + summary_line(reporter.engine.progress(), exit_status="fail", reason=machine.reason))
        raise
    reporter.close()
    status, reason = engine.machine.exit_status, engine.machine.reason
    say(f"scan {path}: " + summary_line(engine.progress(), exit_status=status, reason=reason))
    return {"success": 0, "abort": EXIT_ABORTED}.get(status, EXIT_ERROR)


def _tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is no terminal
        return False


class ProgressReporter:
    """Writes the engine's :func:`progress_line` every ``every_s`` seconds from its own thread.

    On a terminal the line is rewritten in place (carriage return, clear to the end of the line)
    and finished with a newline on :meth:`close`; anything else gets one full line each time.
    ``every_s`` 0: nothing is written.
    """

    def __init__(self, stream: TextIO, *, every_s: float) -> None:
        self.stream, self.every_s = stream, every_s
        self.engine: ScanEngine | None = None
        self._tty = _tty(stream)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written = False

    def follow(self, engine: ScanEngine) -> None:
        """Start reporting on ``engine`` (run_scan's ``on_ready``)."""
        self.engine = engine
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="stslive-progress", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def write(self) -> None:
        """One progress line now."""
        if self.engine is None:
            return
        line = "scan: " + progress_line(self.engine.progress())
        self.stream.write(f"\r{line}\x1b[K" if self._tty else line + "\n")
        self.stream.flush()
        self._written = True

    def close(self) -> None:
        """Stop the thread; end the terminal's line so the summary starts on a new one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._tty and self._written:
            self.stream.write("\n")
            self.stream.flush()


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
