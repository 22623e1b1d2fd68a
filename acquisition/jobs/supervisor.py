"""Supervised service processes for the jobs (demo, soak): start, watch, stop, name the one that failed.

Each child is ``python -m stslive.acquisition.cli ARGS`` in its own session (a Ctrl-C reaches only
the supervisor, which stops the children newest first) and, on Linux, dies with the supervisor
(``PR_SET_PDEATHSIG``), so even a SIGKILLed demo leaves no orphans. Its stdout lines are collected
(services announce their endpoints there); its stderr goes to ``LOGDIR/NAME.log``, whose tail is
quoted when it fails. :meth:`Supervisor.check` raises :class:`~stslive.drivers.errors.ServiceError`
naming the first child that exited when it should not have.
"""

from __future__ import annotations

import collections
import ctypes
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stslive.drivers.errors import ServiceError

#: Seconds a child gets to stop after its polite signal before it is killed.
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux only; elsewhere the session split still keeps Ctrl-C from reaching children directly.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One service process: ``stslive ARGS...`` with its stdout lines and stderr log.

    Parameters
    ----------
    name
        Name used in messages (``"scan"``).
    args
        Arguments after ``stslive`` (the subcommand first).
    log_dir
        Folder of ``NAME.log`` (stderr, then stdout appended line by line).
    stop_signal
        Polite stop signal: SIGINT for services that finish their work on it (scan, analyser),
        SIGTERM otherwise.
    must_succeed
        If True an exit with status 0 is expected and fine (a finite job); if False the child is
        supposed to run until stopped, so any exit is a failure.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        log_dir: Path,
        stop_signal: int = signal.SIGTERM,
        must_succeed: bool = True,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.stop_signal = stop_signal
        self.must_succeed = must_succeed
        self.log_path = log_dir / f"{name}.log"
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._log = self.log_path.open("w", encoding="utf-8")
        cmd = [sys.executable, "-m", "stslive.acquisition.cli", *self.args]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  runs before exec, no other thread touches the child
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running."""
        return self.process.poll()

    def wait_for_lines(
        self, ready: Callable[[list[str]], bool], *, timeout_s: float, check: Callable[[], None]
    ) -> list[str]:
        """Wait until ``ready(lines)`` holds for the stdout lines so far; returns them.

        ``check`` is called while waiting (the supervisor's failure check); a child that exits
        or stays silent past ``timeout_s`` raises :class:`ServiceError`.
        """
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while not ready(self.lines):
                check()
                if self.returncode is not None and not self._reader.is_alive():
                    raise self.failure(f"exited with status {self.returncode} before it was ready")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.failure(f"not ready within {timeout_s:g} s (stdout so far: {self.lines[-3:]!r})")
                self._new_line.wait(min(left, 0.1))
            return list(self.lines)

    def error_tail(self, count: int = 6) -> str:
        """The last ``count`` non-empty lines of its stderr log (the error, usually)."""
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        tail = collections.deque((ln for ln in text.splitlines() if ln.strip()), maxlen=count)
        return " | ".join(tail)

    def failure(self, what: str) -> ServiceError:
        """A ServiceError naming this child, with its stderr tail and the log path."""
        tail = self.error_tail()
        return ServiceError(
            self.name,
            f"{what}; {('its last error output: ' + tail) if tail else 'no error output'} (full log: {self.log_path})",
        )

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send the polite signal, wait, kill if it does not go; returns the exit status."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(self.stop_signal)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        return int(self.process.returncode)


class Supervisor:
    """Starts :class:`Child` processes, watches them, stops them all (reverse start order).

    Use as a context manager: leaving it stops every child still running, also on an exception
    or Ctrl-C.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}
        self.finished: dict[str, int] = {}

    def start(self, name: str, args: Sequence[str], **options: Any) -> Child:
        """Start ``stslive ARGS`` as the child ``name`` (options: see :class:`Child`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, args, log_dir=self.log_dir, **options)
        self.children[name] = child
        return child

    def check(self) -> None:
        """Raise ServiceError for the first child that failed (non-zero exit, or a service that quit)."""
        for child in self.children.values():
            code = child.returncode
            if code is None or child.name in self.finished:
                continue
            if code != 0 or not child.must_succeed:
                raise child.failure(f"exited with status {code}" + ("" if code else " while it should still run"))
            self.finished[child.name] = code

    def wait(self, name: str, *, timeout_s: float | None = None, poll_s: float = 0.05) -> int:
        """Wait for child ``name`` to finish (0) while watching all; ServiceError on any failure."""
        child = self.children[name]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.check()
            if child.returncode == 0:
                return 0
            if deadline is not None and time.monotonic() > deadline:
                raise child.failure(f"did not finish within {timeout_s:g} s")
            time.sleep(poll_s)

    def watch(self, *, until: Callable[[], bool] | None = None, poll_s: float = 0.1) -> None:
        """Watch every child until ``until()`` holds (forever if None); raises ServiceError on a failure."""
        while until is None or not until():
            self.check()
            time.sleep(poll_s)

    def stop_all(self) -> dict[str, int]:
        """Stop every child, newest first (the lab, started first, goes last); returns exit statuses."""
        return {child.name: child.stop() for child in reversed(list(self.children.values()))}

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def toml_text(doc: Mapping[str, Any]) -> str:
    """A run-config dict (:meth:`RunConfig.to_dict`) as TOML text.

    Hand-written because the standard library reads TOML but does not write it, and a config is
    only tables of strings, numbers, booleans and lists of them: JSON spells those values the
    way TOML does (basic strings, ``1e-09``, ``[...]``), except booleans, written here.
    """

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v != v:
            raise ValueError("NaN has no place in a run config")
        return json.dumps(v)

    lines: list[str] = []

    def table(header: str, body: Mapping[str, Any], *, array: bool = False) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        lines.append(f"[[{header}]]" if array else f"[{header}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if isinstance(v, Mapping):
                table(f"{header}.{k}", v)

    for name, section in doc.items():
        if isinstance(section, list):
            for entry in section:
                table(name, entry, array=True)
        else:
            table(name, section)
    return "\n".join(lines)
