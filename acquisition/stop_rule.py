"""The stop rule: end (or pause) a run once the analyser's correlation figures are pinned down.

A map worth days of microscope time is worth finishing only if its answer is not known yet. The
live analyser publishes correlation snapshots on its results stream, each figure with a 90 %
interval (``l_delta_nm`` with ``l_delta_nm_ci90 = [low, high]``, ...). :class:`StopRule` judges
a snapshot: met when, for every named figure, the interval's width over the magnitude of the
estimate is at most ``max_relative_width`` (an interval without an upper bound never is).
:class:`ResultsFollower` subscribes to the results stream in a thread and keeps the latest
snapshot (and the count of flagged pixels); the engine asks it between pixels. The rule comes
from the run config's ``[stop]`` table or the control socket's ``stop_rule`` command.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stslive.drivers.errors import ConfigError, StsliveError

#: Figures a rule may name: the snapshot's scalars that carry a ``<name>_ci90`` interval.
FIGURES = ("l_delta_nm", "l_alpha_nm", "l_cross_nm", "rho_cross_0")
ACTIONS = ("stop", "pause")
#: The ``[stop]`` table's keys and defaults (the run config holds the same table).
DEFAULTS: dict[str, Any] = {
    "results": "",
    "figures": ["l_delta_nm", "l_alpha_nm", "rho_cross_0"],
    "max_relative_width": 0.1,
    "action": "stop",
    "min_pixels": 0,
}


@dataclass(frozen=True)
class Verdict:
    """A snapshot judged: met or not, each figure's relative interval width, and why."""

    met: bool
    widths: dict[str, float]
    n_pixels: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (an unknown width as None), for the run log, the stop document and ``status``."""
        widths = {k: (v if math.isfinite(v) else None) for k, v in self.widths.items()}
        return {"met": self.met, "widths": widths, "n_pixels": self.n_pixels, "reason": self.reason}


@dataclass(frozen=True)
class StopRule:
    """When a run has its answer (see the module docstring).

    Attributes
    ----------
    results
        The analyser's results endpoint to follow (``tcp://HOST:PORT``); '' = the rule is off.
    figures
        Figures that must all be pinned down (:data:`FIGURES`).
    max_relative_width
        Largest ``(high - low) / |estimate|`` of a 90 % interval (0.1: within +-5 %).
    action
        ``stop``: end the run (exit success); ``pause``: pause it (reason ``stop_rule``) for the
        operator, who resumes or aborts; the rule then stays quiet.
    min_pixels
        Not before this many pixels were analysed (the snapshot's ``n_pixels``).
    """

    results: str = DEFAULTS["results"]
    figures: tuple[str, ...] = tuple(DEFAULTS["figures"])
    max_relative_width: float = DEFAULTS["max_relative_width"]
    action: str = DEFAULTS["action"]
    min_pixels: int = DEFAULTS["min_pixels"]

    def __post_init__(self) -> None:
        unknown = [f for f in self.figures if f not in FIGURES]
        if not self.figures or unknown:
            raise ConfigError(f"stop.figures {list(self.figures)}: name one or more of {list(FIGURES)}")
        width = self.max_relative_width
        if isinstance(width, bool) or not isinstance(width, int | float) or not (math.isfinite(width) and width > 0):
            raise ConfigError(f"stop.max_relative_width = {width!r}: give a number > 0, e.g. 0.1 (+-5 %)")
        if self.action not in ACTIONS:
            raise ConfigError(f"stop.action = {self.action!r}: give one of {list(ACTIONS)}")
        if isinstance(self.min_pixels, bool) or not isinstance(self.min_pixels, int) or self.min_pixels < 0:
            raise ConfigError(f"stop.min_pixels = {self.min_pixels!r}: give a whole number >= 0")
        if not isinstance(self.results, str):
            raise ConfigError(f"stop.results = {self.results!r}: give the analyser's results endpoint or ''")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> StopRule:
        """A rule from a ``[stop]`` table or a ``stop_rule`` command (missing keys: :data:`DEFAULTS`).

        Raises
        ------
        ConfigError
            An unknown key or a bad value, naming ``stop.KEY``.
        """
        unknown = sorted(set(table) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"stop: unknown key(s) {unknown}; keys are {sorted(DEFAULTS)}")
        values = {**DEFAULTS, **table}
        figures = values["figures"]
        if isinstance(figures, str) or not isinstance(figures, list | tuple):
            raise ConfigError(f"stop.figures = {figures!r}: give a list, e.g. {DEFAULTS['figures']}")
        return cls(**{**values, "figures": tuple(figures)})

    @property
    def enabled(self) -> bool:
        """Whether there is a results stream to follow."""
        return bool(self.results)

    def to_dict(self) -> dict[str, Any]:
        """The ``[stop]`` table of this rule."""
        return {
            "results": self.results,
            "figures": list(self.figures),
            "max_relative_width": self.max_relative_width,
            "action": self.action,
            "min_pixels": self.min_pixels,
        }

    def judge(self, snapshot: Mapping[str, Any]) -> Verdict:
        """Judge one snapshot's scalars (the results stream's ``snapshot`` header)."""
        n_pixels = int(snapshot.get("n_pixels") or 0)
        widths = {name: relative_width(snapshot, name) for name in self.figures}
        met = n_pixels >= self.min_pixels and all(w <= self.max_relative_width for w in widths.values())
        shown = ", ".join(f"{k} {100 * v:.3g} %" if math.isfinite(v) else f"{k} unbounded" for k, v in widths.items())
        reason = (
            f"stop rule {'met' if met else 'not met'} at {n_pixels} analysed pixels: the 90 % intervals of "
            f"{shown} of the estimate (limit {100 * self.max_relative_width:g} %"
            + (f", from {self.min_pixels} pixels)" if self.min_pixels else ")")
        )
        return Verdict(met=met, widths=widths, n_pixels=n_pixels, reason=reason)


def relative_width(snapshot: Mapping[str, Any], name: str) -> float:
    """``(high - low) / |estimate|`` of figure ``name`` in a snapshot; inf when unknown or unbounded.

    The estimate is the film's corrected figure (``<name>_corrected``) when the snapshot has one,
    else the plain ``<name>``; the interval is ``<name>_ci90``.
    """
    interval = snapshot.get(f"{name}_ci90")
    estimate = _number(snapshot.get(f"{name}_corrected"))
    if not math.isfinite(estimate):
        estimate = _number(snapshot.get(name))
    if not isinstance(interval, list | tuple) or len(interval) != 2:
        return math.inf
    low, high = _number(interval[0]), _number(interval[1])
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(estimate)) or estimate == 0:
        return math.inf
    return (high - low) / abs(estimate)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


@dataclass
class _Seen:
    snapshot: dict[str, Any] | None = None
    snapshots: int = 0
    flagged: dict[tuple[int, int], bool] = field(default_factory=dict)
    rejected: int = 0


class ResultsFollower:
    """Follows an analyser's results stream in a daemon thread: the latest snapshot, the flagged pixels.

    Malformed messages are counted (:attr:`rejected`) and skipped; the thread never stops the
    scan. :meth:`take_snapshot` hands each new snapshot out once.
    """

    def __init__(self, endpoint: str, *, context: Any = None) -> None:
        import zmq  # the scan machine has it; imported here so the rule's judging stays importable alone

        from stslive.acquisition.formats.subscriber import connect_socket

        self.endpoint = endpoint
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sock = connect_socket(self._ctx, endpoint, topics=(b"snapshot", b"pixel", b"maps"))
        self._lock = threading.Lock()
        self._seen = _Seen()
        self._new = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stslive-stop-rule", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from stslive.live.results_io import decode_message  # the results stream's one decoder

        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            frames = self._sock.recv_multipart()
            try:
                topic, header, arrays = decode_message(frames)
            except StsliveError:
                with self._lock:
                    self._seen.rejected += 1
                continue
            with self._lock:
                self._take(topic, header, arrays)

    def _take(self, topic: str, header: dict[str, Any], arrays: dict[str, Any]) -> None:
        seen = self._seen
        if topic == "snapshot":
            seen.snapshot, seen.snapshots, self._new = dict(header), seen.snapshots + 1, True
        elif topic == "pixel":
            result = header.get("result") or {}
            seen.flagged[(int(result.get("iy", -1)), int(result.get("ix", -1)))] = bool(result.get("flags"))
        elif topic == "pixels" and "flags" in arrays:
            for iy, ix, flags in zip(arrays["iy"], arrays["ix"], arrays["flags"], strict=True):
                seen.flagged[(int(iy), int(ix))] = bool(flags)
        elif topic == "maps" and "flags" in arrays and "measured" in arrays:
            flags, measured = arrays["flags"], arrays["measured"].astype(bool)
            seen.flagged = {(int(iy), int(ix)): bool(flags[iy, ix]) for iy, ix in zip(*measured.nonzero(), strict=True)}

    def take_snapshot(self) -> dict[str, Any] | None:
        """The latest snapshot if it was not handed out yet, else None."""
        with self._lock:
            if not self._new:
                return None
            self._new = False
            return self._seen.snapshot

    @property
    def flagged(self) -> int | None:
        """Pixels the analyser flagged so far (None before it reported any pixel)."""
        with self._lock:
            return sum(self._seen.flagged.values()) if self._seen.flagged else None

    @property
    def rejected(self) -> int:
        """Messages that could not be decoded."""
        with self._lock:
            return self._seen.rejected

    def close(self) -> None:
        """Stop the thread and close the socket; safe to call twice."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        if not self._sock.closed:
            self._sock.close()
        if self._own_context:
            self._ctx.term()


class StopRuleWatch:
    """The engine's side of the rule: the rule in force, its follower, the latest verdict.

    :meth:`poll` (between pixels) judges each new snapshot and returns the verdict once when the
    rule is met; the rule is then spent until :meth:`replace` sets one again (a run paused by the
    rule and resumed by the operator goes on to its end).
    """

    def __init__(self, table: Mapping[str, Any], *, context: Any = None) -> None:
        self._context = context
        self.rule = StopRule.from_table(table)
        self.follower: ResultsFollower | None = None
        self.verdict: Verdict | None = None
        self.spent = False
        self._flagged: int | None = None
        self._follow()

    def _follow(self) -> None:
        if self.follower is not None and self.follower.endpoint != self.rule.results:
            self.follower.close()
            self.follower = None
        if self.rule.enabled and self.follower is None:
            self.follower = ResultsFollower(self.rule.results, context=self._context)

    def replace(self, table: Mapping[str, Any]) -> None:
        """A new rule (the ``stop_rule`` command); it may be met again."""
        self.rule, self.spent, self.verdict = StopRule.from_table(table), False, None
        self._follow()

    def poll(self) -> Verdict | None:
        """The verdict on a new snapshot if it meets the rule (once), else None."""
        snapshot = None if self.follower is None else self.follower.take_snapshot()
        if snapshot is None:
            return None
        self.verdict = self.rule.judge(snapshot)
        if self.verdict.met and not self.spent:
            self.spent = True
            return self.verdict
        return None

    @property
    def flagged(self) -> int | None:
        """Pixels the followed analyser flagged (None without one); kept after :meth:`close`."""
        return self._flagged if self.follower is None else self.follower.flagged

    def status(self) -> dict[str, Any]:
        """The rule, whether it was met, and the latest verdict (JSON-safe)."""
        out: dict[str, Any] = {**self.rule.to_dict(), "spent": self.spent}
        if self.verdict is not None:
            out["verdict"] = self.verdict.to_dict()
        if self.follower is not None:
            out["rejected_messages"] = self.follower.rejected
        return out

    def close(self) -> None:
        """Stop following (the count of flagged pixels stays readable)."""
        if self.follower is not None:
            self._flagged = self.follower.flagged
            self.follower.close()
            self.follower = None
