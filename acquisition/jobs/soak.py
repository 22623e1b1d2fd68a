"""A long simulated run under scheduled faults, checked end to end (``stslive soak``).

Every part runs as its own ``stslive`` process, as a user would start them (the supervision
helpers of :mod:`stslive.acquisition.jobs.supervisor`): ``mock-lab --faults FILE`` at speed 0, ``scan``,
``analyser --once``, offscreen ``view --connect`` sessions and ``control``. Scheduled by the
progress of the run (pixels seen on the stream):

* instrument faults from a seeded fault file: connection drops, missing replies (timeouts),
  delays past the timeout and Nanonis error replies, single ones (the retry recovers the pixel)
  and three in a row (the pixel is recorded as failed with its reason);
* the scan SIGKILLed and continued with ``scan --resume`` ``--kills`` times;
* the analyser SIGKILLed and restarted (it backfills from the archive);
* a viewer SIGKILLed and another one started;
* ``control remeasure`` of one failed and one measured pixel (``pixel_recovered`` and
  ``pixel_replaced`` in the run log).

Checks (the JSON summary, also written to ``DIR/soak.json``): every pixel measured or failed,
never both or neither, each failure with its reason; no pixel delivered twice on the stream
except the re-measured ones; the analyser's final maps equal the offline analysis
(:func:`stslive.live.offline.analyse.analyse_to_directory`, the code of ``stslive analyse``, with the
analyser's options); peak RSS of the scan, analyser and lab in the first, middle and last third
(bounded: the last third's peak at most max(100 MB, 50 %) above the first's).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stslive.acquisition.formats.archive import open_archive
from stslive.acquisition.jobs.mocklab import film_pixel_m, lab_command, lab_resources, mock_lab_config
from stslive.acquisition.jobs.soak_watch import MemoryLog, StreamWatch
from stslive.acquisition.jobs.supervisor import Child, Supervisor, toml_text
from stslive.drivers.errors import ConfigError, ServiceError
from stslive.live.kernels import KernelOptions
from stslive.live.offline.analyse import analyse_to_directory
from stslive.live.results_io import load_maps_h5
from stslive.live.theory import TheoryConstants

#: Relative tolerance of live versus offline maps: float32 sums over batches of different sizes.
MAP_RTOL = 1e-4
#: Maps compared between the analyser's file and the offline analysis.
COMPARED_MAPS = ("delta_eV", "alpha", "b", "valid", "reason")
#: Seconds the first viewer gets to come up before the paused scan resumes.
VIEWER_SETTLE_S = 3.0


@dataclass(frozen=True)
class SoakSettings:
    """What one soak does (sizes in pixels, times in seconds)."""

    nx: int
    ny: int
    out: Path
    seed: int = 0
    points: int = 1601
    kills: int = 2
    analyser_kills: int = 1
    viewer_kills: int = 1
    remeasure: bool = True
    instrument_timeout_s: float = 0.5
    dynes_width_meV: float = 0.1
    duration_hint_s: float = 600.0
    viewer: bool = True
    analyser_first: bool = False

    @property
    def pixels(self) -> int:
        return self.nx * self.ny


def fault_entries(n_pixels: int, *, seed: int, timeout_s: float) -> tuple[list[dict[str, Any]], int]:
    """The seeded fault file's ``[[fault]]`` entries and how many pixels they should fail.

    Faults act on calls of ``BiasSpectr.Start`` (one per attempt), counted over the lab's life,
    so a call number is roughly a pixel number. Singles are recovered by the engine's retry;
    three in a row exhaust ``retries = 2`` and fail the pixel. Calls are spread over 5-95 % of
    the run, at least 4 calls apart so no two groups hit one pixel.
    """
    rng = random.Random(seed)
    once: list[tuple[str, dict[str, Any]]] = [
        ("connection_drop", {}),
        ("connection_drop", {}),
        ("no_reply", {}),
        ("no_reply", {}),
        ("delay", {"delay_s": 2.0 * timeout_s}),
        ("delay", {"delay_s": 0.2 * timeout_s}),
        ("error_reply", {"message": "soak: simulated controller error"}),
        ("error_reply", {}),
    ]
    thrice: list[tuple[str, dict[str, Any]]] = [
        ("error_reply", {"message": "soak: persistent controller error", "code": 7}),
        ("no_reply", {}),
    ]
    groups = [(1, kind, params) for kind, params in once] + [(3, kind, params) for kind, params in thrice]
    lo, hi = max(2, n_pixels // 20), max(3, n_pixels * 19 // 20)
    if hi - lo < 5 * len(groups):
        raise ConfigError(f"a {n_pixels}-pixel grid is too small for {len(groups)} fault groups; use at least 16x12")
    starts = sorted(rng.sample(range(lo, hi, 5), len(groups)))
    rng.shuffle(groups)
    entries: list[dict[str, Any]] = []
    for call, (repeat, kind, params) in zip(starts, groups, strict=True):
        for k in range(repeat):
            entry: dict[str, Any] = {
                "kind": kind,
                "instrument": "nanonis",
                "command": "BiasSpectr.Start",
                "at_call": call + k,
            }
            if params:
                entry["params"] = dict(params)
            entries.append(entry)
    failing = len(thrice)
    return entries, failing


def free_port() -> int:
    """A TCP port free on loopback now (fixed ports let a resumed scan and a restarted analyser
    come back where their clients already connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Soak:
    """One soak: builds the files, runs the processes under the schedule, checks the result."""

    def __init__(self, settings: SoakSettings, *, log: Callable[[str], None] = print) -> None:
        self.s = settings
        self.out = settings.out
        self.archive = self.out / "run.h5"
        self.log = log
        self.memory = MemoryLog()
        self.counts: Counter[str] = Counter()
        self.timeline: list[tuple[float, float, str]] = []
        self._t0 = time.monotonic()
        self._progress = 0.0
        self._remeasured: list[tuple[int, int]] = []
        self.watch: StreamWatch  # set in run(), on the scan's stream endpoint

    # -- helpers ------------------------------------------------------------------------------
    def note(self, what: str) -> None:
        t = time.monotonic() - self._t0
        self.timeline.append((round(t, 2), round(self._progress, 3), what))
        self.log(f"[soak {t:7.1f} s, {100 * self._progress:5.1f} %] {what}")

    def _start(self, sup: Supervisor, role: str, args: list[str], **options: Any) -> Child:
        self.counts[f"{role}_started"] += 1
        name = f"{role}-{self.counts[f'{role}_started']}"
        child = sup.start(name, args, **options)
        self.note(f"started {name} (pid {child.process.pid})")
        return child

    def _kill(self, sup: Supervisor, child: Child, role: str) -> None:
        alive = child.returncode is None
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()
        child.stop()
        del sup.children[child.name]
        self.counts[f"{role}_killed"] += 1
        if not alive:
            raise child.failure("had already exited when the soak came to kill it")
        self.note(f"SIGKILL {child.name}")

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the soak; returns the summary (``ok`` says whether every check passed)."""
        s = self.s
        if self.archive.exists():
            raise ConfigError(f"{self.archive} exists; give an empty --out folder")
        self.out.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # inherited by the viewer processes
        entries, planned_failures = fault_entries(s.pixels, seed=s.seed, timeout_s=s.instrument_timeout_s)
        faults = self.out / "faults.toml"
        faults.write_text(toml_text({"fault": entries}), encoding="utf-8")
        stream_ep, control_ep, results_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
        t_start = time.monotonic()
        with Supervisor(self.out / "logs") as sup:
            command = lab_command(nx=s.nx, ny=s.ny, seed=s.seed, speed=0.0, faults=faults)
            lab = self._start(sup, "lab", command, must_succeed=False)
            resources = lab_resources(lab, sup, timeout_s=300.0)
            config = self._config(resources, stream_ep, control_ep)
            self.watch = StreamWatch(stream_ep)
            try:
                self._scan_under_faults(sup, lab, config, stream_ep, control_ep, results_ep)
            finally:
                self.watch.close()
        wall = time.monotonic() - t_start
        self.note(f"all processes stopped after {wall:.1f} s; offline analysis and checks")
        summary: dict[str, Any] = {
            "grid": [s.nx, s.ny],
            "points": s.points,
            "seed": s.seed,
            "wall_s": round(wall, 1),
            "processes": dict(sorted(self.counts.items())),
            "faults_planned": {
                "entries": len(entries),
                "pixels_to_fail": planned_failures,
                "kinds": dict(Counter(e["kind"] for e in entries)),
            },
        }
        summary["pixels"] = self._check_pixels()
        summary["maps"] = self._check_maps()
        summary["rss_MB"] = {
            "peak": self.memory.peaks,
            "growth_end_minus_start": self.memory.growth(),
            "bounded": self.memory.bounded(),
            "samples": self.memory.samples,
        }
        summary["timeline"] = self.timeline
        summary["ok"] = bool(summary["pixels"]["ok"] and summary["maps"]["ok"] and summary["rss_MB"]["bounded"])
        (self.out / "soak.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return summary

    def _config(self, resources: dict[str, str], stream_ep: str, control_ep: str) -> Path:
        s = self.s
        config = mock_lab_config(
            resources,
            nx=s.nx,
            ny=s.ny,
            pixel_m=film_pixel_m(nx=s.nx, ny=s.ny, seed=s.seed),
            n_points=s.points,
            run={"name": "soak", "retries": 2, "max_consecutive_failures": 3},
            instruments={"nanonis": {"resource": resources["nanonis"], "timeout_s": s.instrument_timeout_s}},
            stream={"pub": stream_ep, "control": control_ep, "push": ""},
        )
        path = self.out / "run.toml"
        path.write_text(toml_text(config.to_dict()), encoding="utf-8")
        return path

    def _schedule(self) -> list[tuple[float, str]]:
        """(progress fraction, action) in order; the kills spread over 15-80 % of the run."""
        s = self.s
        plan: list[tuple[float, str]] = []
        for k in range(s.kills):
            plan.append((0.15 + 0.65 * (k + 0.5) / s.kills, "kill_scan"))
        for k in range(s.analyser_kills):
            at = 0.1 + 0.6 * (k + 0.3) / s.analyser_kills
            plan += [(at, "kill_analyser"), (at + 0.04, "start_analyser")]
        if s.viewer:
            for k in range(s.viewer_kills):
                plan.append((0.2 + 0.6 * (k + 0.6) / s.viewer_kills, "kill_viewer"))
        if s.remeasure:
            plan.append((0.85, "remeasure"))
        return sorted(plan)

    def _scan_under_faults(
        self, sup: Supervisor, lab: Child, config: Path, stream_ep: str, control_ep: str, results_ep: str
    ) -> None:
        s = self.s
        analyser_args = [
            "analyser",
            "--connect",
            stream_ep,
            "--archive",
            str(self.archive),
            "--bind",
            results_ep,
            "--dynes-width-meV",
            str(s.dynes_width_meV),
            "--once",
        ]
        viewer_args = ["view", "--connect", results_ep, "--timeout", "60"]
        scan_args = ["scan", "--config", str(config), "--out", str(self.archive)]
        analyser: Child | None
        if s.analyser_first:
            analyser = first = self._start(sup, "analyser", analyser_args, stop_signal=signal.SIGINT)
            first.wait_for_lines(lambda ls: len(ls) >= 1, timeout_s=120.0, check=sup.check)
            scan = self._start(sup, "scan", scan_args, stop_signal=signal.SIGINT)
        else:
            # The analyser joins the running scan (backfill from the archive, then the stream): an
            # analyser started first can miss the start document while its SUB socket connects
            # (ZeroMQ slow joiner) and then rejects every event; --analyser-first shows that.
            scan = self._start(sup, "scan", scan_args, stop_signal=signal.SIGINT)
            wait_until = time.monotonic() + 300.0
            while self.watch.seen() < 1:
                sup.check()
                if time.monotonic() > wait_until:
                    raise scan.failure("published no pixel within 300 s")
                time.sleep(0.05)
            # paused while the services start (seconds each): on a small grid the scan would
            # otherwise be half done before anyone watches it
            self._control(control_ep, "pause")
            analyser = first = self._start(sup, "analyser", analyser_args, stop_signal=signal.SIGINT)
        first.wait_for_lines(lambda ls: len(ls) >= 1, timeout_s=120.0, check=sup.check)
        viewer = self._start(sup, "viewer", viewer_args, must_succeed=False) if s.viewer else None
        if not s.analyser_first:
            time.sleep(VIEWER_SETTLE_S)
            sup.check()
            self._control(control_ep, "resume")
        plan = self._schedule()
        deadline = time.monotonic() + 3 * s.duration_hint_s + 300
        last_mem = 0.0
        next_report = 0.05
        while True:
            self._progress = self.watch.seen() / s.pixels
            if self._progress >= next_report:
                self.note(
                    f"progress; {s.pixels * self._progress / max(time.monotonic() - self._t0, 1e-9):.0f} "
                    "pixels/s since the soak started"
                )
                next_report += 0.05
            if time.monotonic() - last_mem >= 0.5:
                last_mem = time.monotonic()
                for role, child in (("lab", lab), ("scan", scan), ("analyser", analyser), ("viewer", viewer)):
                    if child is not None and child.returncode is None:
                        self.memory.sample(role, child.process.pid, self._progress)
            if scan.returncode == 0:
                break
            if scan.returncode is not None:
                raise scan.failure(f"exited with status {scan.returncode}")
            sup.check()
            if time.monotonic() > deadline:
                raise scan.failure(f"did not finish within {3 * s.duration_hint_s + 300:g} s; raise --duration-hint")
            while plan and self._progress >= plan[0][0]:
                _, action = plan.pop(0)
                if action == "kill_scan":
                    self._kill(sup, scan, "scan")
                    scan = self._start(sup, "scan", ["scan", "--resume", str(self.archive)], stop_signal=signal.SIGINT)
                elif action == "kill_analyser" and analyser is not None:
                    self._kill(sup, analyser, "analyser")
                    analyser = None
                elif action == "start_analyser":
                    analyser = self._start(sup, "analyser", analyser_args, stop_signal=signal.SIGINT)
                elif action == "kill_viewer" and viewer is not None:
                    self._kill(sup, viewer, "viewer")
                    viewer = self._start(sup, "viewer", viewer_args, must_succeed=False)
                elif action == "remeasure":
                    self._remeasure(control_ep)
            time.sleep(0.05)
        self.note(f"scan finished; {len(plan)} scheduled action(s) left undone: {[a for _, a in plan]}")
        self.counts["actions_not_done"] = len(plan)
        if analyser is None:
            raise ServiceError("soak", "the run ended before the analyser was restarted; use a larger --grid")
        sup.wait(analyser.name, timeout_s=120.0 + s.pixels / 200)
        self.note(f"analyser finished: {analyser.lines[-1] if analyser.lines else ''}")
        if viewer is not None:
            if viewer.returncode is not None:
                raise viewer.failure("the viewer quit during the run")
            self.counts["viewer_alive_at_end"] = 1
        self.memory.sample("lab", lab.process.pid, 1.0)

    def _remeasure(self, control_ep: str) -> None:
        """Ask the scan to re-measure one failed (if any yet) and one measured pixel."""
        failed, measured = self.watch.snapshot()
        pixels = ([failed[0]] if failed else []) + ([measured[len(measured) // 2]] if measured else [])
        if not pixels:
            return
        self._control(control_ep, "remeasure", "--pixels", *(f"{iy},{ix}" for iy, ix in pixels))
        self._remeasured = pixels

    def _control(self, control_ep: str, *args: str) -> None:
        """``stslive control --connect EP ARGS``; ServiceError if the scan refuses."""
        cmd = [sys.executable, "-m", "stslive.acquisition.cli", "control", "--connect", control_ep, *args]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        self.counts[f"control_{args[0]}"] += 1
        if done.returncode != 0:
            raise ServiceError("control", f"{' '.join(args)} refused: {done.stdout.strip()} {done.stderr.strip()}")
        self.note(f"stslive control {' '.join(args)}: {done.stdout.strip()}")

    # -- checks -------------------------------------------------------------------------------
    def _check_pixels(self) -> dict[str, Any]:
        """Every pixel measured or failed (not both, not neither), reasons, nothing measured twice."""
        with open_archive(self.archive) as reader:
            measured, failed = reader.measured, reader.failed
            failures, log = reader.failures, reader.log
            order = reader.geometry.visit_order()
            t_start = reader.pixel_meta["t_start"]
        replaced = {(r["iy"], r["ix"]) for r in log if r["event"] == "pixel_replaced"}
        recovered = {(r["iy"], r["ix"]) for r in log if r["event"] == "pixel_recovered"}
        reasons = {(r["iy"], r["ix"]): r["reason"] for r in failures}
        failed_px = {(int(a), int(b)) for a, b in zip(*np.nonzero(failed), strict=True)}
        without_reason = sorted(p for p in failed_px if not str(reasons.get(p, "")).strip())
        # the wire: each pixel's event once, except pixels re-measured on request
        events, failed_docs = self.watch.events, self.watch.failed
        twice = sorted(p for p, n in events.items() if n > 1 and p not in replaced | recovered)
        # first measurements follow the plan's visiting order (a resume never goes back)
        firsts = [(int(iy), int(ix)) for iy, ix in order if measured[iy, ix] and (iy, ix) not in replaced | recovered]
        t = np.array([t_start[p] for p in firsts])
        out_of_order = int(np.count_nonzero(np.diff(t) <= 0)) if t.size > 1 else 0
        result = {
            "total": int(measured.size),
            "measured": int(measured.sum()),
            "failed": int(failed.sum()),
            "both": int((measured & failed).sum()),
            "neither": int((~measured & ~failed).sum()),
            "failed_without_reason": without_reason,
            "failure_reasons": dict(Counter(str(r["reason"]).split(":")[0] for r in failures)),
            "pixel_replaced": sorted(replaced),
            "pixel_recovered": sorted(recovered),
            "resumes": sum(r["event"] == "resume" for r in log),
            "stream_events": int(sum(events.values())),
            "stream_failed_docs": int(sum(failed_docs.values())),
            "stream_events_twice": twice,
            "stream_malformed": self.watch.malformed,
            "stream_documents": dict(self.watch.kinds),
            "first_measurements_out_of_order": out_of_order,
            "remeasure_requested": self._remeasured,
        }
        result["ok"] = (
            result["both"] == 0
            and result["neither"] == 0
            and not without_reason
            and not twice
            and out_of_order == 0
            and result["resumes"] == self.s.kills
        )
        return result

    def _check_maps(self) -> dict[str, Any]:
        """The analyser's analysis file against the offline analysis with the same options."""
        t0 = time.perf_counter()
        options = KernelOptions(dynes_width_eV=self.s.dynes_width_meV * 1e-3)  # what `stslive analyser` uses
        offline_dir = self.out / "offline"
        analyse_to_directory(self.archive, offline_dir, options=options, constants=TheoryConstants(), examples=0)
        offline = load_maps_h5(offline_dir / "maps.h5").maps
        live_path = self.archive.with_suffix(".analysis.h5")
        if not live_path.is_file():  # the analyser never opened the run: a failed check, not a crash
            return {
                "ok": False,
                "offline_s": round(time.perf_counter() - t0, 1),
                "error": f"the analyser wrote no {live_path.name}; see its log in logs/",
            }
        live = load_maps_h5(live_path).maps
        result: dict[str, Any] = {
            "offline_s": round(time.perf_counter() - t0, 1),
            "measured_equal": bool(np.array_equal(live["measured"], offline["measured"])),
        }
        ok = result["measured_equal"]
        for name in COMPARED_MAPS:
            a, b = live[name].astype(float), offline[name].astype(float)
            close = np.isclose(a, b, rtol=MAP_RTOL, atol=0.0, equal_nan=True)
            both = np.isfinite(a) & np.isfinite(b)
            rel = np.abs(a - b)[both] / np.maximum(np.abs(b[both]), np.finfo(float).tiny)
            result[name] = {
                "mismatched_pixels": int((~close).sum()),
                "max_rel_diff": float(rel.max()) if rel.size else 0.0,
            }
            ok = ok and not (~close).any()
        result["valid_pixels"] = int(offline["valid"].sum())
        result["ok"] = bool(ok)
        return result
