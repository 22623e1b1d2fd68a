"""``stslive analyser``: follow a run stream, analyse and flag every pixel, publish and save results.

Examples::

    stslive analyser --connect tcp://127.0.0.1:5556 --archive run.h5 --bind tcp://127.0.0.1:5560
    stslive analyser --connect tcp://127.0.0.1:5556 --once --config flags.toml
    stslive analyser --connect tcp://127.0.0.1:5556 --keys KEYDIR --client analyser --bind tcp://0.0.0.0:5560

Remote monitoring: ``--keys KEYDIR`` (the layout of ``stslive keys``) makes the results
PUB a CURVE server with ``KEYDIR/server.key_secret`` that admits the keys in ``viewers/`` and
``controllers/``; only then may ``--bind`` be beyond loopback. ``--client NAME`` also connects to
a run stream bound with keys (``[stream] keys`` of the scan), with ``KEYDIR/clients/NAME.key_secret``;
without it the run stream is read without keys.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from stslive.acquisition.cli.common import parse_endpoint
from stslive.acquisition.formats.security import Security
from stslive.drivers.errors import ConfigError, ServiceError
from stslive.live.analyser import AnalyserService, AnalyserSettings, settle_gc
from stslive.live.analyser.settings import analysis_path_for
from stslive.live.flags import FlagConfig, load_flag_config
from stslive.live.kernels import KernelOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``analyser`` subcommand."""
    parser.add_argument("--connect", required=True, help="run stream endpoint, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--archive", help="the run archive RUN.h5: backfill on late join, fill seq gaps")
    parser.add_argument("--bind", default="tcp://127.0.0.1:5560", help="results PUB endpoint (loopback unless --keys)")
    parser.add_argument(
        "--keys",
        metavar="KEYDIR",
        help="CURVE key directory ('stslive keys'): the results PUB "
        "admits only its viewer and controller keys and may bind beyond loopback",
    )
    parser.add_argument(
        "--client",
        metavar="NAME",
        help="with --keys: read a run stream bound with keys as client NAME (KEYDIR/clients/NAME.key_secret)",
    )
    parser.add_argument("--out", help="analysis file (default: RUN.analysis.h5 beside the archive)")
    parser.add_argument("--config", help="TOML file with a [flags] table of flag thresholds")
    parser.add_argument(
        "--dynes-width-meV",
        type=float,
        default=None,
        help="fix the Dynes width of the peak templates, meV (default: fixed on the run's first "
        "spectra as `stslive analyse` does, so both give the same maps; until then the pixels are "
        "analysed at once with a provisional width and analysed again when it is fixed)",
    )
    parser.add_argument("--current", help="current channel name (default: first 'Current ...' channel)")
    parser.add_argument("--lockin", help="lock-in channel name (default: 'LI Demod n X ...', else 'Input n' in V)")
    parser.add_argument("--snapshot-every", type=int, default=500, help="pixels between correlation snapshots")
    parser.add_argument(
        "--snapshot-every-s",
        type=float,
        default=AnalyserSettings.snapshot_every_s,
        help="longest time between correlation snapshots while pixels arrive, s (default 30)",
    )
    parser.add_argument("--once", action="store_true", help="exit after the first run's stop document")


def writable_file(path: Path, option: str) -> None:
    """Refuse an analysis file that could not be written, before the service starts (not at its first save).

    Raises
    ------
    ConfigError
        The folder is missing or not writable, or the file exists and is not a writable file.
    """
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        missing = "is not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"cannot write the analysis file {path} ({option}): {folder} {missing}")
    if path.exists() and (not path.is_file() or not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write the analysis file {path} ({option}): it exists and is not a writable file")
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the analysis file {path} ({option}): folder {folder} is not writable")


def run(args: argparse.Namespace) -> int:
    """Run the service until interrupted (or, with ``--once``, until the run stops).

    Raises
    ------
    ServiceError
        The service lost its stream or could not go on; the message says why.
    """
    if args.client is not None and args.keys is None:
        raise ConfigError("--client NAME needs --keys KEYDIR (the client key pair is KEYDIR/clients/NAME.key_secret)")
    parse_endpoint(args.connect, example="tcp://127.0.0.1:5556")
    parse_endpoint(args.bind, option="--bind")
    if args.out is not None:
        writable_file(Path(args.out), "--out")
    elif args.archive is not None:
        writable_file(analysis_path_for(args.archive), "the analysis file beside --archive (or give --out)")
    flags = load_flag_config(args.config) if args.config else FlagConfig()
    service = AnalyserService(
        args.connect,
        archive=args.archive,
        bind=args.bind,
        out=args.out,
        security=None if args.keys is None else Security.from_dir(args.keys),
        stream_security=None if args.client is None else Security.from_dir(args.keys, client=args.client),
        options=KernelOptions(
            dynes_width_eV=None if args.dynes_width_meV is None else args.dynes_width_meV * 1e-3,
            current=args.current,
            lockin=args.lockin,
        ),
        flag_config=flags,
        settings=AnalyserSettings(snapshot_every=args.snapshot_every, snapshot_every_s=args.snapshot_every_s),
    )
    with service:
        settle_gc()
        print(
            f"stslive analyser: following {args.connect}, results on {service.results_endpoint}, "
            f"analysis file {service.out or '(none: give --archive or --out)'}",
            flush=True,
        )
        try:
            while True:
                if args.once and service.wait_for_stop(timeout_s=1.0):
                    break
                if not args.once:
                    time.sleep(1.0)
                if service.errors:
                    raise ServiceError("analyser", service.errors[0])
        finally:
            print(f"stslive analyser: {service.status_text()}", flush=True)
    return 0
