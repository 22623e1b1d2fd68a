"""The run's state machine and its command table (thread-safe; the control socket calls in).

States and transitions (anything else is refused with a reason)::

    idle --begin--> running <--pause/resume--> paused
    running|paused --abort--> stopping --finish--> done
    running --(plan exhausted)--> stopping --finish--> done
    running|paused --(stop rule met)--> stopping --finish--> done
    any --fail--> failed

``paused`` is held while at least one *reason* stands: ``"user"`` (the pause command),
``"temperature"`` (the suspender), ``"failures"`` (too many failed pixels in a row) or
``"stop_rule"`` (the stop rule met, with ``action = "pause"``). The ``resume`` command clears
``user``, ``failures`` and ``stop_rule``; only the suspender clears ``temperature``, so an
operator cannot resume into an out-of-band temperature by accident. Every end records why in
:attr:`RunStateMachine.reason`.

Commands (JSON ``{"command": NAME, ...}`` on the control socket, see ``control.py``):

=========== ============================= ===========================================
command     arguments                     effect
=========== ============================= ===========================================
status      -                             nothing; the reply carries the state and the
                                          progress (pixels, rate, time left)
pause       -                             pause after the pixel in progress
resume      -                             clear the user/failure/stop-rule pause reasons
abort       reason: str (optional)        stop after the pixel in progress (exit abort)
stop_rule   keys of the [stop] table      change the stop rule (results '' turns it off)
remeasure   pixels: [[iy, ix], ...],      measure these cells next; a measured cell's
            reason: str (optional)        spectrum is replaced, the old record logged
set         setpoint_set: int             make this set the active one (single mode)
=========== ============================= ===========================================
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stslive.acquisition.formats.documents import RUN_STATES as STATES
from stslive.acquisition.stop_rule import StopRule
from stslive.drivers.errors import ConfigError, StsliveError

#: Reason recorded for a re-measure when the command gives none.
DEFAULT_REMEASURE_REASON = "remeasure command"
PAUSE_REASONS = ("user", "temperature", "failures", "stop_rule")
#: Pause reasons the ``resume`` command clears (the operator has looked and goes on).
RESUMABLE = ("user", "failures", "stop_rule")
#: The reason recorded when the plan runs out.
PLAN_DONE = "every pixel of the plan visited"


class CommandRefused(StsliveError, ValueError):
    """A control command is unknown, malformed or not allowed in the present state."""


@dataclass(frozen=True)
class Command:
    """One entry of the command table: allowed states and the handler (under the lock)."""

    allowed: frozenset[str]
    handler: Callable[[RunStateMachine, Mapping[str, Any]], None]
    doc: str


class RunStateMachine:
    """The run's state, pause reasons, remeasure queue and active set; every method is atomic.

    Parameters
    ----------
    setpoint_ids
        Ids of the run's set-point sets; the first is active at start.
    validate_pixel
        Called with ``(iy, ix)`` for remeasure requests; raises CommandRefused to refuse one.
    on_change
        Called (outside the lock) with ``(event, fields)`` after every transition, for the run log.
    report
        Returns more of the run (a JSON-safe map: progress, stop rule) for every reply; None: none.
    stop_rule
        The stop rule's ``[stop]`` table in force; the ``stop_rule`` command changes it.
    """

    def __init__(
        self,
        setpoint_ids: Iterable[int],
        *,
        validate_pixel: Callable[[int, int], None] | None = None,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
        report: Callable[[], dict[str, Any]] | None = None,
        stop_rule: Mapping[str, Any] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = "idle"
        self._reasons: set[str] = set()
        self._ids = tuple(setpoint_ids)
        if not self._ids:
            raise CommandRefused("a run needs at least one set-point set")
        self._active = self._ids[0]
        self._remeasure: collections.deque[tuple[int, int]] = collections.deque()
        self._remeasure_reason: dict[tuple[int, int], str] = {}
        self._validate_pixel = validate_pixel or (lambda iy, ix: None)
        self._on_change = on_change or (lambda event, fields: None)
        self._report = report
        self._stop_rule = dict(stop_rule or {})
        self._stop_rule_changed = False
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self.exit_status = ""
        self.reason = ""

    # -- queries -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def pause_reasons(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._reasons)

    @property
    def active_set(self) -> int:
        with self._lock:
            return self._active

    def pop_remeasure(self) -> tuple[int, int] | None:
        """The next cell queued by ``remeasure``, or None."""
        request = self.pop_remeasure_request()
        return None if request is None else request[0]

    def pop_remeasure_request(self) -> tuple[tuple[int, int], str] | None:
        """The next cell queued by ``remeasure`` with the reason given for it, or None."""
        with self._lock:
            if not self._remeasure:
                return None
            cell = self._remeasure.popleft()
            return cell, self._remeasure_reason.pop(cell, DEFAULT_REMEASURE_REASON)

    def pop_stop_rule(self) -> dict[str, Any] | None:
        """The stop rule's table if the ``stop_rule`` command changed it since the last call, else None."""
        with self._lock:
            if not self._stop_rule_changed:
                return None
            self._stop_rule_changed = False
            return dict(self._stop_rule)

    def wait_change(self, timeout_s: float) -> None:
        """Block until a transition or command, at most ``timeout_s`` (the paused loop's sleep)."""
        with self._changed:
            self._changed.wait(timeout_s)

    # -- transitions (engine side) ------------------------------------------------------------
    def begin(self) -> None:
        self._transition({"idle"}, "running", "run_started")

    def suspend(self, reason: str, **fields: Any) -> None:
        """Add a pause reason (running -> paused); no-op for a reason already standing."""
        if reason not in PAUSE_REASONS:
            raise CommandRefused(f"unknown pause reason {reason!r}")
        with self._lock:
            if reason in self._reasons or self._state not in ("running", "paused"):
                return
            self._reasons.add(reason)
            self._set_state("paused", "paused", reason=reason, **fields)
        self._flush()

    def release(self, reason: str, **fields: Any) -> None:
        """Remove a pause reason; back to running when none is left."""
        with self._lock:
            if reason not in self._reasons:
                return
            self._reasons.discard(reason)
            self._log("released", reason=reason, **fields)
            if not self._reasons and self._state == "paused":
                self._set_state("running", "resumed", reason=reason)
        self._flush()

    def finish_plan(self) -> None:
        """The plan is exhausted: running -> stopping (exit success)."""
        with self._lock:
            if self._state == "running":
                self.exit_status, self.reason = "success", PLAN_DONE
                self._set_state("stopping", "stopping", exit_status="success", reason=PLAN_DONE)
        self._flush()

    def conclude(self, reason: str, **fields: Any) -> None:
        """End the run before the plan does, as a success (the stop rule met): -> stopping."""
        with self._lock:
            if self._state in ("running", "paused"):
                self.exit_status, self.reason = "success", reason
                self._reasons.clear()
                self._set_state("stopping", "stopping", exit_status="success", reason=reason, **fields)
        self._flush()

    def finish(self) -> None:
        """stopping -> done."""
        self._transition({"stopping"}, "done", "done")

    def fail(self, reason: str) -> None:
        """Any state -> failed (an error the run cannot continue from)."""
        with self._lock:
            self.exit_status, self.reason = "fail", reason
            self._set_state("failed", "failed", reason=reason)
        self._flush()

    # -- commands (control side) --------------------------------------------------------------
    def execute(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run command ``name``; returns ``{"ok": True, "state": ...}`` or raises CommandRefused."""
        command = COMMANDS.get(name)
        if command is None:
            raise CommandRefused(f"unknown command {name!r}; commands are {sorted(COMMANDS)}")
        with self._lock:
            if self._state not in command.allowed:
                raise CommandRefused(
                    f"{name} is not allowed while {self._state} (allowed while {sorted(command.allowed)})"
                )
            command.handler(self, args)
            reply = self.snapshot()
        self._flush()
        return reply

    def snapshot(self) -> dict[str, Any]:
        """State, pause reasons, active set, queued remeasures and the progress (for replies)."""
        with self._lock:
            reply = {
                "ok": True,
                "state": self._state,
                "pause_reasons": sorted(self._reasons),
                "active_set": self._active,
                "remeasure_queued": len(self._remeasure),
            }
            if self._reason_text():
                reply["reason"] = self.reason
        if self._report is not None:
            reply.update(self._report())
        return reply

    def _reason_text(self) -> str:
        return self.reason if self._state in ("stopping", "done", "failed") else ""

    def _cmd_pause(self, args: Mapping[str, Any]) -> None:
        _no_args("pause", args)
        if "user" not in self._reasons:
            self._reasons.add("user")
            self._set_state("paused", "paused", reason="user")

    def _cmd_resume(self, args: Mapping[str, Any]) -> None:
        _no_args("resume", args)
        for reason in RESUMABLE:
            self._reasons.discard(reason)
        if self._reasons:
            self._log("resume_refused", reasons=sorted(self._reasons))
            raise CommandRefused(
                f"still paused for {sorted(self._reasons)}: the suspender resumes when the "
                "temperature is back in the band"
            )
        if self._state == "paused":
            self._set_state("running", "resumed", reason="user")

    def _cmd_abort(self, args: Mapping[str, Any]) -> None:
        reason = args.get("reason", "abort command")
        if set(args) - {"reason"} or not isinstance(reason, str) or not reason.strip():
            raise CommandRefused(f'abort takes an optional "reason" string, got {dict(args)}')
        self.exit_status, self.reason = "abort", reason
        self._set_state("stopping", "stopping", exit_status="abort", reason=reason)

    def _cmd_remeasure(self, args: Mapping[str, Any]) -> None:
        pixels = args.get("pixels")
        reason = args.get("reason", DEFAULT_REMEASURE_REASON)
        if set(args) - {"pixels", "reason"} or not isinstance(pixels, list) or not pixels:
            raise CommandRefused(
                'remeasure takes {"pixels": [[iy, ix], ...]} (a non-empty list) and an optional "reason" string'
            )
        if not isinstance(reason, str) or not reason.strip():
            raise CommandRefused(f"remeasure: reason must be a non-empty string, got {reason!r}")
        cells = []
        for p in pixels:
            if (
                not isinstance(p, list | tuple)
                or len(p) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in p)
            ):
                raise CommandRefused(f"remeasure: pixel {p!r} is not a pair of integers [iy, ix]")
            self._validate_pixel(int(p[0]), int(p[1]))
            cells.append((int(p[0]), int(p[1])))
        self._remeasure.extend(c for c in cells if c not in self._remeasure)
        self._remeasure_reason.update((c, reason) for c in cells)
        self._log("remeasure_queued", pixels=[list(c) for c in cells], reason=reason)

    def _cmd_set(self, args: Mapping[str, Any]) -> None:
        set_id = args.get("setpoint_set")
        if set(args) != {"setpoint_set"} or set_id not in self._ids or isinstance(set_id, bool):
            raise CommandRefused(f'set takes {{"setpoint_set": ID}} with ID one of {list(self._ids)}, got {dict(args)}')
        if set_id != self._active:
            self._active = int(set_id)
            self._log("setpoint_set_changed", setpoint_set=self._active)

    def _cmd_stop_rule(self, args: Mapping[str, Any]) -> None:
        table = {**self._stop_rule, **args}
        try:
            StopRule.from_table(table)
        except ConfigError as exc:
            raise CommandRefused(f"stop_rule: {exc}") from None
        self._stop_rule, self._stop_rule_changed = table, True
        self._log("stop_rule_set", **table)

    def _cmd_status(self, args: Mapping[str, Any]) -> None:
        _no_args("status", args)

    # -- internals ------------------------------------------------------------------------------
    def _transition(self, sources: set[str], target: str, event: str) -> None:
        with self._lock:
            if self._state not in sources:
                raise CommandRefused(f"cannot go from {self._state} to {target}")
            self._set_state(target, event)
        self._flush()

    def _set_state(self, state: str, event: str, **fields: Any) -> None:
        # caller holds the lock
        previous, self._state = self._state, state
        self._log(event, state=state, previous=previous, **fields)

    def _log(self, event: str, **fields: Any) -> None:
        # caller holds the lock; listeners run after it is released (they do I/O)
        self._pending.append((event, fields))
        self._changed.notify_all()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for event, fields in pending:
            self._on_change(event, fields)


def _no_args(name: str, args: Mapping[str, Any]) -> None:
    if args:
        raise CommandRefused(f"{name} takes no arguments, got {sorted(args)}")


_ACTIVE = frozenset({"running", "paused"})
#: The command table: name -> allowed states, handler, one line of help.
COMMANDS: dict[str, Command] = {
    "status": Command(frozenset(STATES), RunStateMachine._cmd_status, "report the state"),
    "pause": Command(_ACTIVE, RunStateMachine._cmd_pause, "pause after the pixel in progress"),
    "resume": Command(_ACTIVE, RunStateMachine._cmd_resume, "resume a user or failure pause"),
    "abort": Command(_ACTIVE, RunStateMachine._cmd_abort, "stop after the pixel in progress"),
    "remeasure": Command(
        _ACTIVE, RunStateMachine._cmd_remeasure, "queue pixels [[iy, ix], ...] to measure (again) next"
    ),
    "set": Command(_ACTIVE, RunStateMachine._cmd_set, "make set-point set ID the active one"),
    "stop_rule": Command(_ACTIVE, RunStateMachine._cmd_stop_rule, "change the stop rule ([stop] keys)"),
}
