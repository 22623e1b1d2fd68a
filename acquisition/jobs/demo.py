"""The main job in mock mode (``stslive demo``): simulated lab, scan, live analyser, screen.

Starts, each as its own supervised process on free loopback ports (:mod:`.supervisor`):
``stslive mock-lab`` (a seeded film of the grid size), ``stslive scan`` of the whole film,
``stslive analyser`` following the scan's stream and, unless headless, ``stslive view`` on the
analyser's results. If any of them dies the others are stopped and a
:class:`~stslive.drivers.errors.ServiceError` names it.

Ordering: the scan starts once the lab has reported its instruments; the demo pauses it through
its control socket as soon as it announces it, starts the analyser (which subscribes, then
backfills the pixels measured so far from the archive) and resumes the scan when the analyser
reports it is following. Nothing is lost either way: the analyser fills sequence gaps from the
archive.

After the run the output folder holds ``run.h5`` (archive), ``run.toml`` (its config),
``run.analysis.h5`` (the live analyser's results), ``maps.h5``, ``report.json`` and figures from
``stslive analyse run.h5`` (compared here with the analyser's maps), ``screen.png`` (headless
only) and ``logs/``: :data:`DemoPaths.OUTPUTS`, which the caller clears before a demo so that no
file of an earlier one is mixed in.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from stslive.acquisition.control import send_command
from stslive.acquisition.jobs.mocklab import lab_command, lab_resources, mock_lab_config
from stslive.acquisition.jobs.supervisor import Supervisor, toml_text
from stslive.drivers.errors import InstrumentTimeout, ServiceError
from stslive.mocks.film import FilmParams, make_film

#: Per-sweep timing of the demo's set-point set: 1601 points at 1 ms each, as a real map is taken.
INTEGRATION_S = 1e-3
#: Default speed with the screen: sweeps run this many times faster than real time
#: (1.6 s nominal sweeps -> ~3 ms, a few hundred pixels/s that one can watch fill in).
SCREEN_SPEED = 500.0
#: How long a child may take to announce itself (a cold start imports numpy, scipy, h5py, zmq).
START_TIMEOUT_S = 120.0
#: How long the demo waits for the scan's control socket to answer a command.
CONTROL_TIMEOUT_S = 10.0
#: A headless demo gives its scan this long plus :data:`SCAN_S_PER_PIXEL` per pixel (and the
#: nominal sweep time at its speed) before it calls the scan stuck: nobody watches to stop it.
SCAN_GRACE_S, SCAN_S_PER_PIXEL = 300.0, 0.1


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's files go (all in one folder, :meth:`in_folder`)."""

    out: Path
    archive: Path
    config: Path
    analysis: Path
    screen: Path
    logs: Path

    #: Everything a demo writes into its folder (names and glob patterns): the archive (and its
    #: name while it is created), config, analyses, report, figures, screen snapshot, logs.
    OUTPUTS: ClassVar[tuple[str, ...]] = (
        "run.h5",
        "run.h5.creating",
        "run.toml",
        "run.analysis.h5",
        "maps.h5",
        "report.json",
        "*.png",
        "logs",
    )

    @classmethod
    def in_folder(cls, out: Path) -> DemoPaths:
        """The demo's files in ``out``: ``run.h5``, ``run.toml``, ``run.analysis.h5``, ``screen.png``, ``logs/``."""
        return cls(out, out / "run.h5", out / "run.toml", out / "run.analysis.h5", out / "screen.png", out / "logs")


@dataclass(frozen=True)
class DemoSettings:
    """What one demo does: film size (pixels) and seed, sweep speed, faults, screen or not."""

    nx: int
    ny: int
    seed: int = 0
    #: sweep time scale: 1 real time, 0 as fast as possible
    speed: float = 0.0
    faults: Path | None = None
    headless: bool = True
    #: after the run keep the lab (and the screen) up until Ctrl-C
    keep_running: bool = False

    @property
    def film(self) -> FilmParams:
        """The film the mock lab simulates."""
        return FilmParams(ny=self.ny, nx=self.nx, seed=self.seed)


@dataclass(frozen=True)
class DemoTimes:
    """Wall times of a demo (s): all of it, the scan, and the scan plus the live analyser's finish."""

    wall_s: float
    scan_s: float
    analysed_s: float


def demo(paths: DemoPaths, settings: DemoSettings, *, log: Callable[[str], None] = print) -> None:
    """Run the demo into ``paths.out`` and log its summary; with the screen (or ``keep_running``)
    wait until it is closed (or Ctrl-C).

    Raises
    ------
    ServiceError
        A part failed or did not start; the message names it and quotes its error output.
    """
    paths.out.mkdir(parents=True, exist_ok=True)
    with Supervisor(paths.logs) as sup:
        log(run_demo(sup, paths, settings))
        if settings.keep_running:
            log("stslive demo: the lab keeps running; Ctrl-C to stop")
            sup.watch()
        elif not settings.headless:
            log("stslive demo: close the screen (or Ctrl-C) to end")
            sup.watch(until=lambda: sup.children["viewer"].returncode is not None)


def run_demo(sup: Supervisor, paths: DemoPaths, settings: DemoSettings) -> str:
    """Start the lab, scan, analyser (and screen); wait for the run and its analysis; return the summary."""
    s = settings
    t0 = time.perf_counter()
    command = lab_command(nx=s.nx, ny=s.ny, seed=s.seed, speed=s.speed, faults=s.faults)
    lab = sup.start("mock-lab", command, must_succeed=False)
    resources = lab_resources(lab, sup, timeout_s=START_TIMEOUT_S)

    sweep = {"settle_s": 0.0, "integration_s": INTEGRATION_S}
    config = mock_lab_config(resources, nx=s.nx, ny=s.ny, pixel_m=s.film.pixel_m)
    doc = config.to_dict()
    doc["run"]["name"] = f"stslive demo, film seed {s.seed}"
    doc["setpoint_set"] = [{**sp, **sweep} for sp in doc["setpoint_set"]]
    paths.config.write_text(toml_text(doc), encoding="utf-8")

    scan = sup.start(
        "scan",
        ["scan", "--config", str(paths.config), "--out", str(paths.archive)],
        stop_signal=signal.SIGINT,
    )
    lines = scan.wait_for_lines(
        lambda ls: any(ln.startswith("control ") for ln in ls), timeout_s=START_TIMEOUT_S, check=sup.check
    )
    endpoints = dict(line.split(None, 1) for line in lines if line.split(None, 1)[0] in ("stream", "control"))
    _hold_scan(endpoints["control"], sup)

    analyser_args = ["analyser", "--connect", endpoints["stream"], "--archive", str(paths.archive)]
    analyser_args += ["--bind", "tcp://127.0.0.1:0", "--out", str(paths.analysis), "--once"]
    analyser = sup.start("analyser", analyser_args, stop_signal=signal.SIGINT)
    lines = analyser.wait_for_lines(
        lambda ls: any("results on " in ln for ln in ls), timeout_s=START_TIMEOUT_S, check=sup.check
    )
    results = next(ln for ln in lines if "results on " in ln).split("results on ", 1)[1].split(",", 1)[0]
    if not s.headless:
        sup.start("viewer", ["view", str(paths.archive), "--connect", results, "--timeout", "60"], must_succeed=True)
    t_scan = time.perf_counter()
    _command(endpoints["control"], "resume", sup)
    if s.headless:  # nobody at a screen can resume a scan that paused itself: say so instead of waiting forever
        deadline = time.monotonic() + scan_timeout_s(s)
        sup.watch(
            until=lambda: (
                scan.returncode is not None or time.monotonic() > deadline or _paused_for_failures(endpoints["control"])
            ),
            poll_s=0.5,
        )
        if scan.returncode is None and time.monotonic() > deadline:
            raise ServiceError("scan", f"not done within {scan_timeout_s(s):.0f} s (see {scan.log_path})")
        if scan.returncode is None:
            raise ServiceError(
                "scan",
                f"paused itself after repeated failed pixels (see {scan.log_path}); "
                "with the screen, `stslive control ... resume` would continue it",
            )
    sup.wait("scan")
    scan_s = time.perf_counter() - t_scan
    sup.wait("analyser", timeout_s=120.0)
    analysed_s = time.perf_counter() - t_scan

    sup.start("analyse", ["analyse", str(paths.archive), "--out", str(paths.out)])
    sup.wait("analyse", timeout_s=600.0)
    if s.headless:
        # the live analyser's file: the screen as the control room saw it (sets, flags, run status)
        snapshot_args = ["view", str(paths.archive), "--analysis", str(paths.analysis)]
        sup.start("snapshot", [*snapshot_args, "--snapshot", str(paths.screen), "--timeout", "60"])
        sup.wait("snapshot", timeout_s=300.0)
    times = DemoTimes(wall_s=time.perf_counter() - t0, scan_s=scan_s, analysed_s=analysed_s)
    report = json.loads((paths.out / "report.json").read_text(encoding="utf-8"))
    return summary_text(paths, settings, report=report, times=times)


def scan_timeout_s(settings: DemoSettings) -> float:
    """How long a headless demo's scan may take (s): generous, so only a stuck scan exceeds it."""
    sweep_s = 1601 * INTEGRATION_S / settings.speed if settings.speed > 0 else 0.0
    return SCAN_GRACE_S + settings.nx * settings.ny * (SCAN_S_PER_PIXEL + 2 * sweep_s)


def _command(endpoint: str, command: str, sup: Supervisor) -> dict[str, Any]:
    try:
        reply = send_command(endpoint, command, timeout_s=CONTROL_TIMEOUT_S)
    except InstrumentTimeout:
        sup.check()  # a scan that died is the cause to report, not the silence on its socket
        raise
    if not reply.get("ok"):
        raise ServiceError("scan", f"refused {command!r} ({reply.get('error')}, state {reply.get('state')})")
    return reply


def _paused_for_failures(endpoint: str) -> bool:
    try:
        reply = send_command(endpoint, "status", timeout_s=2.0)
    except InstrumentTimeout:  # the scan is closing its control socket at the end of the run
        return False
    return reply.get("state") == "paused" and "failures" in reply.get("pause_reasons", ())


def _hold_scan(endpoint: str, sup: Supervisor, *, timeout_s: float = 30.0) -> None:
    """Pause the scan as soon as its run begins (it is idle for a moment after announcing the socket)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sup.check()
        try:
            reply = send_command(endpoint, "pause", timeout_s=CONTROL_TIMEOUT_S)
        except InstrumentTimeout:
            sup.check()  # a scan that died is the cause to report, not the silence on its socket
            raise
        if reply.get("ok"):
            return
        if reply.get("state") != "idle" or time.monotonic() > deadline:
            raise ServiceError(
                "scan",
                f"could not be paused to let the analyser attach ({reply.get('error')}, "
                f"state {reply.get('state')}); the run may have ended already",
            )
        time.sleep(0.005)


def flag_counts(analysis: Path) -> dict[int, dict[str, Any]]:
    """Per set-point set: measured pixels, flagged pixels and pixels per flag, from an analysis file.

    Reads the ``maps.h5`` layout (``flags`` bit map with its ``bits`` attribute, ``setpoint_set``,
    ``measured``) with h5py, so the acquisition side needs no analysis code.
    """
    with h5py.File(analysis, "r") as f:
        flags = f["flags"][()].astype(np.int64)
        bits = json.loads(f["flags"].attrs["bits"])
        sets = f["setpoint_set"][()]
        measured = f["measured"][()].astype(bool)
    out: dict[int, dict[str, Any]] = {}
    for set_id in np.unique(sets[measured]):
        here = measured & (sets == set_id)
        per_flag = {name: int(((flags & bit) != 0)[here].sum()) for name, bit in bits.items()}
        out[int(set_id)] = {
            "pixels": int(here.sum()),
            "flagged": int((flags[here] != 0).sum()),
            "by_flag": {k: v for k, v in per_flag.items() if v},
        }
    return out


def compare_maps(live: Path, offline: Path) -> dict[str, float]:
    """Largest |live - offline| of Delta (meV) and alpha over pixels valid in both, and the count
    of pixels valid in only one of them."""
    with h5py.File(live, "r") as a, h5py.File(offline, "r") as b:
        valid = a["valid"][()] & b["valid"][()]
        only_one = int((a["valid"][()] != b["valid"][()]).sum())
        d = np.abs(a["delta"][()].astype(float) - b["delta"][()].astype(float))[valid] * 1e3
        al = np.abs(a["alpha"][()].astype(float) - b["alpha"][()].astype(float))[valid]
    return {
        "delta_meV": float(d.max(initial=0.0)),
        "alpha": float(al.max(initial=0.0)),
        "valid_differs": only_one,
        "both_valid": int(valid.sum()),
    }


def truth_errors(maps: Path, film: FilmParams) -> dict[str, float]:
    """RMS error of the offline maps against the simulated film's definition truth (docs/physics.md:
    peak-to-peak Delta and the 5-30 mV alpha of each pixel's noise-free dI/dV), over valid pixels.

    ``film`` is the :class:`~stslive.mocks.film.FilmParams` the mock lab simulated; the truth is
    recomputed here from the same seeded parameters (the model's mean gap is not the measured
    quantity: thermal and Dynes broadening shift the peaks).
    """
    truth = make_film(film).definition_truth()
    with h5py.File(maps, "r") as h5:
        valid = h5["valid"][()]
        delta = h5["delta"][()].astype(float)
        alpha = h5["alpha"][()].astype(float)
    d = (delta - truth.delta_pp_eV)[valid] * 1e3
    a = (alpha - truth.alpha_def)[valid]
    n = int(valid.sum())
    return {
        "delta_truth_meV": float(np.mean(truth.delta_pp_eV) * 1e3),
        "delta_rms_meV": float(np.sqrt(np.mean(d**2))) if n else math.nan,
        "alpha_truth": float(np.mean(truth.alpha_def)),
        "alpha_rms": float(np.sqrt(np.mean(a**2))) if n else math.nan,
        "pixels": n,
    }


def summary_text(paths: DemoPaths, settings: DemoSettings, *, report: dict[str, Any], times: DemoTimes) -> str:
    """The short text printed at the end of a demo."""

    def f(key: str, fmt: str = ".3g") -> str:
        v = report.get(key)
        return "n/a" if v is None else format(v, fmt)

    pixels = int(report["pixels_measured"])
    agree = compare_maps(paths.analysis, paths.out / "maps.h5")
    truth = truth_errors(paths.out / "maps.h5", settings.film)
    lines = [
        f"stslive demo: {pixels} of {report['pixels_in_grid']} pixels measured and analysed "
        f"({report['pixels_valid']} valid), "
        + ("sweeps as fast as the mock lab runs" if settings.speed == 0 else f"sweeps {settings.speed:g} x real time"),
        f"  wall {times.wall_s:.1f} s: scan {times.scan_s:.1f} s ({pixels / times.scan_s:.0f} pixels/s), live "
        f"analysis done {times.analysed_s - times.scan_s:.1f} s after it, then offline analysis"
        + (" and snapshot" if settings.headless else ""),
        f"  Delta {f('delta_mean_meV')} +- {f('delta_std_meV')} meV, alpha {f('alpha_mean')} +- {f('alpha_std')}",
        f"  against the film's truth (peak-to-peak Delta {truth['delta_truth_meV']:.3g} meV, alpha "
        f"{truth['alpha_truth']:.3g} on average): rms error Delta {truth['delta_rms_meV']:.3g} meV, "
        f"alpha {truth['alpha_rms']:.3g} over {truth['pixels']} valid pixels",
        f"  correlation lengths: l_Delta {f('l_delta_nm')} nm, l_alpha {f('l_alpha_nm')} nm, "
        f"l_cross {f('l_cross_nm')} nm; rho_cross(0) {f('rho_cross_0')}",
    ]
    for set_id, c in flag_counts(paths.analysis).items():
        reasons = ", ".join(f"{k} {v}" for k, v in c["by_flag"].items()) or "none"
        lines.append(f"  flags, set {set_id}: {c['flagged']} of {c['pixels']} pixels ({reasons})")
    lines.append(
        f"  live analyser vs offline analysis of the archive: max |dDelta| {agree['delta_meV']:.2g} meV, "
        f"max |dalpha| {agree['alpha']:.2g} over {agree['both_valid']} pixels; "
        f"validity differs on {agree['valid_differs']}"
    )
    files = [paths.archive, paths.analysis, paths.out / "maps.h5", paths.out / "report.json"]
    if settings.headless:
        files.append(paths.screen)
    lines.append("  files: " + ", ".join(str(p) for p in files) + f"; figures *.png and logs/ in {paths.out}")
    return "\n".join(lines)
