"""``stslive scan``: run a grid (or line, or point list) from a TOML config, or resume a run.

``stslive scan --config RUN.toml --out RUN.h5`` creates the archive (the config is stored in
its start document) and runs; ``stslive scan --resume RUN.h5`` continues the run at the first
unmeasured pixel with only the archive. SIGINT/SIGTERM stop after the pixel in progress; a
SIGKILL loses at most the pixel in progress. On start the bound endpoints are printed, one
``name endpoint`` line each (``stream``, ``push``, ``control``). Exit status: 0 success,
3 aborted, 1 failed.

``[stream] keys = "KEYDIR"`` in the config (or ``--keys KEYDIR``) makes the run stream a CURVE
server for viewer and controller keys and the control socket one for controller keys only; only
then may the endpoints be beyond loopback (:mod:`stslive.acquisition.formats.security`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stslive.acquisition.config import RunConfig
from stslive.acquisition.plans import plan_from_config
from stslive.acquisition.preflight import Finding, preflight
from stslive.acquisition.scan import WAIT_SUBSCRIBERS_S, run_scan, stored_config
from stslive.drivers.errors import ConfigError, StsliveError


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
