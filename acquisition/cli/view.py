"""``stslive view``: the control-room screen on a run archive, an analysis file or a live stream.

    stslive view RUN.h5 [--analysis maps.h5] [--snapshot FILE.png]
    stslive view [RUN.h5] --connect tcp://127.0.0.1:5560
    stslive view --connect tcp://scanpc:5560 --keys KEYDIR --client screen

``--keys KEYDIR --client NAME`` follows an analyser bound with CURVE keys, as client NAME
(``KEYDIR/clients/NAME.key_secret``) of the server ``KEYDIR/server.key`` (``stslive keys`` layout).

``--snapshot`` renders the window offscreen to a PNG of ``--size`` pixels and exits (tests,
sharing); without it the window opens and follows the source until closed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stslive.acquisition.cli.common import client_security, parse_endpoint, parse_grid
from stslive.drivers.errors import ConfigError

#: Smallest window (px) the screen can be drawn in.
MIN_SIZE = (400, 300)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stslive view``."""
    parser.add_argument("archive", nargs="?", type=Path, help="run archive RUN.h5 (finished or still running)")
    parser.add_argument(
        "--analysis",
        type=Path,
        help="analysis file (maps.h5); default: maps.h5 or RUN.analysis.h5 beside the archive when present",
    )
    parser.add_argument(
        "--connect", metavar="ENDPOINT", help="follow the analyser's results stream, e.g. tcp://127.0.0.1:5560"
    )
    parser.add_argument(
        "--keys",
        metavar="KEYDIR",
        help="with --connect: CURVE key directory (server.key and "
        "clients/NAME.key_secret) for an analyser bound with keys",
    )
    parser.add_argument("--client", metavar="NAME", help="with --keys: this viewer's key pair name")
    parser.add_argument(
        "--current",
        metavar="NAME",
        help="current channel for the spectra (default: the first channel named 'Current ...')",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the first stream message or for the files to load (default 10)",
    )
    parser.add_argument("--snapshot", type=Path, metavar="FILE.png", help="render offscreen to a PNG and exit")
    parser.add_argument("--size", metavar="WIDTHxHEIGHT", help="window size in pixels (default 1600x1000)")
    parser.add_argument(
        "--pixel",
        type=int,
        nargs=2,
        metavar=("IY", "IX"),
        help="pixel whose spectrum the snapshot shows (default: the valid pixel nearest the centre)",
    )


def _display() -> bool:
    """Whether Qt can open a window here (a platform is chosen, or X11/Wayland is reachable)."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    """Open the source, then show the window (or render the snapshot)."""
    if args.snapshot is not None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    elif not _display():  # Qt would abort the process with a page about platform plugins
        raise ConfigError("no display to open the screen on: give --snapshot FILE.png, or run where there is one")
    if args.connect is None and args.archive is None and args.analysis is None:
        raise ConfigError("give a run archive (stslive view RUN.h5), --analysis maps.h5, or --connect ENDPOINT")
    if args.keys is not None and args.connect is None:
        raise ConfigError("--keys KEYDIR and --client NAME go with --connect ENDPOINT: they follow an analyser")
    security = client_security(args.keys, args.client)
    size = None
    if args.size is not None:
        size = parse_grid(
            args.size, option="--size", what="width x height in pixels", minimum=MIN_SIZE, example="1800x1100"
        )
    connect = None if args.connect is None else parse_endpoint(args.connect)
    # Qt only now: QT_QPA_PLATFORM must be set before it loads
    from stslive.live.viewer.archive_source import FileSource
    from stslive.live.viewer.sources import DataSource
    from stslive.live.viewer.stream_source import StreamSource
    from stslive.live.viewer.window import (
        DEFAULT_SIZE,
        ControlRoomWindow,
        check_window_size,
        dispose,
        qt_app,
        render_snapshot,
    )

    size = check_window_size(*(size or DEFAULT_SIZE))  # refuses what no screen can show, in one line
    app = qt_app()
    source: DataSource
    if connect is not None:
        if args.analysis is not None:
            raise ConfigError("--analysis goes with a file view; with --connect the analyser supplies the results")
        source = StreamSource.connect(
            connect, timeout_s=args.timeout, archive=args.archive, current=args.current, security=security
        )
    else:
        source = FileSource(args.archive, analysis=args.analysis, current=args.current, timeout_s=args.timeout)
    source.start()
    window = ControlRoomWindow(source.model, source, size=size)
    if args.snapshot is None:
        window.show()
        code = app.exec()
        dispose(window)
        return int(code)
    size = (window.width(), window.height())
    try:
        loaded = getattr(source, "loaded", None)
        if loaded is not None and not loaded.wait(args.timeout):
            raise ConfigError(f"files did not load within {args.timeout:.0f} s; raise --timeout")
        path = render_snapshot(window, args.snapshot, pixel=tuple(args.pixel) if args.pixel else None)
    finally:
        dispose(window)
    print(f"wrote {path} ({size[0]}x{size[1]} px)")
    return 0
