"""The simulated lab as the jobs use it: its command line, its resources, a run config over its film.

``stslive mock-lab`` runs as a child process on free loopback ports (as in a lab, where the
instruments are other machines) and prints one ``name resource`` line per instrument;
:func:`lab_resources` reads them. :func:`lab_in_process` runs the same servers in this process
instead (the tests' way). :func:`mock_lab_config` builds a run config that covers the film.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stslive.acquisition.config import RunConfig
from stslive.acquisition.jobs.supervisor import Child, Supervisor
from stslive.mocks.film import FilmParams
from stslive.mocks.lab import MockLab
from stslive.mocks.lab_servers import LabServers

#: How long ``stslive mock-lab`` may take to build its film and print its resources (s); a cold
#: start imports numpy, scipy, h5py and zmq first.
LAB_START_TIMEOUT_S = 120.0
#: The instruments ``stslive mock-lab`` reports, one line each, in this order.
LAB_INSTRUMENTS = ("nanonis", "sr830", "ls372")


def lab_command(*, nx: int, ny: int, seed: int, speed: float, faults: Path | None = None) -> list[str]:
    """Arguments of ``stslive mock-lab`` for a seeded ``nx`` x ``ny`` film on free loopback ports.

    ``speed`` is the sweep time scale (0: as fast as possible); ``faults`` a fault file.
    """
    args = ["mock-lab", "--grid", f"{nx}x{ny}", "--seed", str(seed), "--speed", repr(speed)]
    args += ["--nanonis-port", "0", "--sr830-port", "0", "--thermometer-port", "0"]
    return args + (["--faults", str(faults)] if faults is not None else [])


def lab_resources(lab: Child, sup: Supervisor, *, timeout_s: float = LAB_START_TIMEOUT_S) -> dict[str, str]:
    """Instrument name -> VISA resource, from the first lines a ``mock-lab`` child prints.

    Raises
    ------
    ServiceError
        The child exited, or printed fewer lines within ``timeout_s`` (s).
    """
    count = len(LAB_INSTRUMENTS)
    lines = lab.wait_for_lines(lambda ls: len(ls) >= count, timeout_s=timeout_s, check=sup.check)
    return dict(line.split(None, 1) for line in lines[:count])


def film_pixel_m(*, nx: int, ny: int, seed: int) -> float:
    """Pixel pitch (m) of the film ``stslive mock-lab --grid NXxNY --seed SEED`` simulates."""
    return float(FilmParams(ny=ny, nx=nx, seed=seed).pixel_m)


def mock_lab_config(
    resources: Mapping[str, str],
    *,
    nx: int,
    ny: int,
    pixel_m: float = 1e-9,
    n_points: int = 1601,
    lockin: bool = True,
    thermometer: bool = True,
    **sections: Mapping[str, Any],
) -> RunConfig:
    """A run config covering the whole film of a mock lab (``LabServers.start(lab).resources``).

    The grid matches the film's pixels exactly (centre 0, pitch ``pixel_m``); set 0 is the
    film's default set-point and sweep. ``sections`` override keys per section (``run``,
    ``stream``, ``suspender``, ``grid``), e.g. ``stream={"pub": "tcp://127.0.0.1:0"}``.
    """
    doc: dict[str, Any] = {
        "run": {"name": "mock-lab run", "heartbeat_s": 0.05},
        "instruments": {"nanonis": {"resource": resources["nanonis"], "timeout_s": 5.0}},
        "grid": {"width_m": nx * pixel_m, "height_m": ny * pixel_m, "nx": nx, "ny": ny},
        "setpoint_set": [
            {
                "id": 0,
                "name": "spectroscopy",
                "bias_setpoint_V": -0.010,
                "current_setpoint_A": 150e-12,
                "sweep_start_V": -0.04,
                "sweep_end_V": 0.04,
                "n_points": n_points,
            }
        ],
        "stream": {"pub": "tcp://127.0.0.1:0", "push": "", "control": "tcp://127.0.0.1:0"},
    }
    if lockin and "sr830" in resources:
        doc["instruments"]["lockin"] = {"resource": resources["sr830"]}
    if thermometer and "ls372" in resources:
        doc["instruments"]["thermometer"] = {"resource": resources["ls372"]}
    for name, table in sections.items():
        if name == "setpoint_set":
            doc[name] = list(table)
        else:
            doc.setdefault(name, {}).update(table)
    return RunConfig.from_dict(doc)


@contextlib.contextmanager
def lab_in_process(*, nx: int, ny: int, seed: int) -> Iterator[tuple[dict[str, str], float]]:
    """The mock lab's servers in this process at speed 0; yields (resources, pixel pitch in m)."""
    lab = MockLab.from_seed(seed=seed, ny=ny, nx=nx, speed=0)
    with LabServers.start(lab) as servers:
        yield servers.resources, float(lab.pixel_m)


@contextlib.contextmanager
def lab_subprocess(
    *, nx: int, ny: int, seed: int, timeout_s: float = LAB_START_TIMEOUT_S
) -> Iterator[tuple[dict[str, str], float]]:
    """``stslive mock-lab`` at speed 0 in a child process; yields (resources, pixel pitch in m).

    The child is stopped on exit (SIGTERM, its clean shutdown; killed if it does not stop).
    """
    with tempfile.TemporaryDirectory(prefix="stslive-lab-") as logs, Supervisor(Path(logs)) as sup:
        lab = sup.start("mock-lab", lab_command(nx=nx, ny=ny, seed=seed, speed=0.0), must_succeed=False)
        yield lab_resources(lab, sup, timeout_s=timeout_s), film_pixel_m(nx=nx, ny=ny, seed=seed)
