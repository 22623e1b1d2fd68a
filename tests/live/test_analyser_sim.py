"""A simulated run for the analyser tests: MockLab + FaultPlan, driven as the scan engine does.

:func:`measure_run` moves the simulated tip pixel by pixel, regulates at the set-point, reads the
thermometer, sweeps (``MockLab.run_sweep``, which counts spectra for the fault plan) and reads the
lock-in status as the SR830 simulation reports it, so every injected fault acts exactly as it
would through the simulated instruments. :func:`publish_run` sends the pixels as a run stream
(RunPublisher) and writes the same pixels to an archive (ArchiveWriter), like the scan engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stslive.acquisition.formats.archive import ArchiveWriter
from stslive.acquisition.formats.documents import ArraySpec, new_uid
from stslive.acquisition.formats.publisher import RunPublisher
from stslive.acquisition.formats.runmodel import GridGeometry, PixelMeta, SetpointSet
from stslive.drivers.protocols import CURRENT_CHANNEL, LOCKIN_X_CHANNEL
from stslive.live.run_context import PixelInput
from stslive.mocks.faults import FaultKind, FaultPlan
from stslive.mocks.film import FilmParams, make_film
from stslive.mocks.lab import SIGNAL_NAMES, MockLab

CHANNELS = [CURRENT_CHANNEL, LOCKIN_X_CHANNEL]
N_POINTS = 801  # 100 uV steps over +-40 mV: resolves the 1.2 meV gap, half the cost of 1601


@dataclass(frozen=True)
class Pixel:
    """One measured pixel: where, under which set, its spectra and metadata."""

    spectrum: int
    iy: int
    ix: int
    spectra: np.ndarray  # (2, N_POINTS) float32: current, lock-in X
    meta: PixelMeta


def make_sets(*, large_modulation_Vrms: float | None = None) -> list[SetpointSet]:
    """Set 0: the paper's spectroscopy set; set 1 (optional): same with a large modulation."""
    base = {
        "name": "spectroscopy",
        "bias_setpoint_V": -0.010,
        "current_setpoint_A": 150e-12,
        "sweep_start_V": -0.04,
        "sweep_end_V": 0.04,
        "n_points": N_POINTS,
        "lockin_frequency_Hz": 1000.0,
        "lockin_amplitude_Vrms": 50e-6,
        "lockin_time_constant_s": 1e-3,
        "lockin_sensitivity_V": 5e-3,
    }
    sets = [SetpointSet(id=0, **base)]
    if large_modulation_Vrms is not None:
        sets.append(
            SetpointSet(
                id=1,
                **{
                    **base,
                    "name": "wide modulation",
                    "lockin_amplitude_Vrms": large_modulation_Vrms,
                    "lockin_sensitivity_V": 0.1,
                },
            )
        )
    return sets


def make_lab(ny: int, nx: int, faults: FaultPlan, *, seed: int = 3) -> MockLab:
    film = make_film(FilmParams(ny=ny, nx=nx, seed=seed, n_points=N_POINTS))
    lab = MockLab(film, speed=0.0, faults=faults, seed=seed)
    lab.set_channels([SIGNAL_NAMES.index(CURRENT_CHANNEL), SIGNAL_NAMES.index(LOCKIN_X_CHANNEL)])
    return lab


def measure_run(lab: MockLab, sets: list[SetpointSet], set_of: Callable[[int, int], int]) -> Iterator[Pixel]:
    """Measure every pixel in raster order through the lab (faults act as in the instruments)."""
    divider = lab.lockin.snapshot().bias_divider
    for iy in range(lab.ny):
        for ix in range(lab.nx):
            s = sets[set_of(iy, ix)]
            lab.lockin.update(amplitude_v=s.lockin_amplitude_Vrms * divider, sensitivity_v=s.lockin_sensitivity_V)
            lab.move_tip(*lab.position_of(iy, ix))
            lab.set_feedback(True)
            lab.set_bias(s.bias_setpoint_V)
            lab.set_setpoint(s.current_setpoint_A)
            t0 = time.time()
            t_before = lab.thermometer.temperature()
            lab.set_feedback(False)
            sweep = lab.run_sweep()
            index = sweep.index
            overload = lab.faults.active(FaultKind.LOCKIN_OVERLOAD, spectrum=index) is not None
            status = lab.lockin.take_overload_bits(overload=overload)
            t_after = lab.temperature_K(spectrum=index)
            t1 = time.time()
            x_m, y_m = lab.position_of(iy, ix)
            meta = PixelMeta(
                x_m=x_m,
                y_m=y_m,
                setpoint_set_id=s.id,
                t_start=t0,
                t_sweep_start=t0,
                t_sweep_end=t1,
                t_end=t1,
                temperature_before_K=t_before,
                temperature_after_K=t_after,
                z_m=lab.z_m(),
                lockin_status=int(status),
                lockin_overload=bool(status & 1),
            )
            yield Pixel(index, iy, ix, np.ascontiguousarray(sweep.data[1:3], dtype=np.float32), meta)


def pixel_inputs(pixels: list[Pixel]) -> list[PixelInput]:
    """The pixels as the live analyser takes them from their events."""
    return [
        PixelInput(
            iy=p.iy,
            ix=p.ix,
            set_id=p.meta.setpoint_set_id,
            spectra=p.spectra,
            time=p.meta.t_end,
            temperatures_K=(p.meta.temperature_before_K, p.meta.temperature_after_K),
            lockin_status=p.meta.lockin_status,
            lockin_overload=p.meta.lockin_overload,
        )
        for p in pixels
    ]


def geometry(ny: int, nx: int) -> GridGeometry:
    return GridGeometry(centre_x_m=0.0, centre_y_m=0.0, width_m=nx * 1e-9, height_m=ny * 1e-9, nx=nx, ny=ny)


def start_fields(geom: GridGeometry, sets: list[SetpointSet]) -> dict:
    return {
        "grid": geom.to_dict(),
        "channel_names": tuple(CHANNELS),
        "channel_units": ("A", "A"),
        "n_points": N_POINTS,
        "setpoint_sets": tuple(s.to_dict() for s in sets),
        "instruments": {"stm": "mock"},
        "software_version": "test",
    }


class RunProducer:
    """Publishes pixels on a RunPublisher and writes them to an ArchiveWriter, pixel by pixel."""

    def __init__(self, publisher: RunPublisher, archive: Path, geom: GridGeometry, sets: list[SetpointSet]) -> None:
        self.publisher = publisher
        fields = start_fields(geom, sets)
        uid = new_uid()
        self.writer = ArchiveWriter.create(
            archive,
            geometry=geom,
            channel_names=CHANNELS,
            n_points=N_POINTS,
            setpoint_sets=sets,
            start_doc={"uid": uid, **fields},
        )
        publisher.start(run_uid=uid, **fields)
        publisher.descriptor({"spectra": ArraySpec(dtype="<f4", shape=(len(CHANNELS), N_POINTS))})

    def pixel(self, p: Pixel, *, publish: bool = True) -> None:
        self.writer.write_pixel(p.iy, p.ix, p.spectra, p.meta)
        if publish:
            m = p.meta
            self.publisher.event(
                arrays={"spectra": p.spectra},
                ix=p.ix,
                iy=p.iy,
                x_m=m.x_m,
                y_m=m.y_m,
                setpoint_set_id=m.setpoint_set_id,
                timestamps={"t_start": m.t_start, "t_end": m.t_end},
                temperature_before_K=m.temperature_before_K,
                temperature_after_K=m.temperature_after_K,
                z_m=m.z_m,
                lockin_status=m.lockin_status,
                lockin_overload=m.lockin_overload,
            )

    def stop(self) -> None:
        self.publisher.stop()
        self.writer.close()


def test_measure_run_applies_faults_through_the_lab() -> None:
    plan = FaultPlan.from_list([{"kind": "feedback_fail", "from_spectrum": 2, "to_spectrum": 4}])
    lab = make_lab(2, 3, plan)
    pixels = list(measure_run(lab, make_sets(), lambda iy, ix: 0))
    assert [p.spectrum for p in pixels] == list(range(6))
    assert plan.fired_spectra("feedback_fail") == {2, 3}
    at_set = [float(np.abs(p.spectra[0][300])) for p in pixels]  # bias -10 mV is point 300 of 801
    assert at_set[2] < 0.6 * at_set[0] and at_set[4] > 0.9 * at_set[0]
