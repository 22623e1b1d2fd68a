"""Offline analysis of recordings into folders: the library behind ``stslive analyse``.

An input is an stslive archive, a Nanonis ``.3ds``, a Nanonis ``.dat`` or a folder of ``.dat``
files (one point set); :func:`expand_inputs` also takes folders of them. :func:`analyse_inputs`
analyses each into its output folder (:func:`output_dirs`: the folder itself for one input,
``OUT/<stem>/`` each for several) and, for several inputs, writes a campaign summary beside them
(:mod:`stslive.live.offline.campaign`), where an input that cannot be analysed (a Z sweep, a
damaged file) is listed with its reason instead of stopping the campaign. Each output folder receives
``maps.h5`` (:func:`stslive.live.results_io.save_maps_h5`), ``report.json``
(:mod:`stslive.live.offline.report`) and the figures of :mod:`stslive.live.offline.analysis_figures`. The
kernels run in this process or on a Dask cluster (:mod:`stslive.live.offline.dask`); both go
through :mod:`stslive.live.pipeline`, the code path of the live analyser, and write the same files.
The flags and tip epochs come from :func:`stslive.live.flags_run.flag_recording`, the live
analyser's rules in its order. Everything lands in ``OUT`` only when all inputs succeeded
(:class:`~stslive.live.offline.outputs.OutputFolder`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
from tqdm import tqdm

from stslive.acquisition.formats.archive import VERSION_ATTR
from stslive.acquisition.formats.nanonis_dat import dat_files
from stslive.acquisition.formats.recording import SpectraSource
from stslive.drivers.errors import ConfigError, StsliveError
from stslive.live.flag_config import FlagConfig
from stslive.live.flags_run import RunFlags, flag_recording
from stslive.live.kernels import KernelOptions
from stslive.live.offline.analysis_figures import collect_figure_inputs, write_analysis_figures
from stslive.live.offline.campaign import write_campaign
from stslive.live.offline.outputs import OutputFolder
from stslive.live.offline.report import build_report, write_report
from stslive.live.pipeline import analyse_source, calibrate_source, open_input, uses_lockin
from stslive.live.results import ResultsModel
from stslive.live.results_io import save_maps_h5
from stslive.live.snapshots import correlation_snapshot
from stslive.live.theory import TheoryConstants

__all__ = [
    "INPUT_SUFFIXES",
    "DEFAULT_BLOCK_BYTES",
    "AnalysedRun",
    "OfflineAnalysis",
    "expand_inputs",
    "output_dirs",
    "prepare_out",
    "analyse_inputs",
    "analyse_to_directory",
    "analyse_many_dask",
    "write_outputs",
]

log = logging.getLogger(__name__)

#: File suffixes a folder input is searched for (HDF5 ones must also be stslive archives).
INPUT_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".3ds")
#: Spectra per Dask task (bytes of whole grid rows): the single-process path's row blocks, so both
#: paths give bit-identical maps.
DEFAULT_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class AnalysedRun:
    """One analysed input: the file, the folder its outputs went to, and its report (``report.json``)."""

    path: Path
    out: Path
    report: dict[str, Any]


@dataclass(frozen=True)
class OfflineAnalysis:
    """What :func:`analyse_inputs` did: the runs in input order and the campaign files (several inputs)."""

    runs: list[AnalysedRun]
    campaign: list[Path] = field(default_factory=list)
    #: inputs of a campaign that could not be analysed, with the reason
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def prepare_out(out: Path) -> None:
    """Create ``out`` (a directory); ConfigError when it is a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)


def _is_archive(path: Path) -> bool:
    """An HDF5 file carrying the stslive archive version attribute (maps.h5 and others do not)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return VERSION_ATTR in f.attrs
    except OSError:
        return True  # a damaged archive is still an input: its analysis reports the damage clearly


def _skipped_note(path: Path) -> None:
    log.warning("skipping %s: an HDF5 file but not an stslive run archive", path)


def expand_inputs(items: Sequence[Path], *, on_skip: Callable[[Path], None] = _skipped_note) -> list[Path]:
    """Input files from files and folders (a folder: its archives and ``.3ds`` files, sorted by name).

    Parameters
    ----------
    items
        Files and folders, as given; a folder's ``.dat`` files make one input, the folder itself.
    on_skip
        Called with each HDF5 file of a folder that is not an stslive archive (e.g. an earlier
        ``maps.h5``), which is left out; default: a warning in the log.

    Raises
    ------
    ConfigError
        A folder holds no input, or a path is given twice.
    """
    files: list[Path] = []
    for item in items:
        if not item.is_dir():
            files.append(item)
            continue
        found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        picked = [p for p in found if p.suffix.lower() == ".3ds" or _is_archive(p)]
        for skipped in (p for p in found if p not in picked):
            on_skip(skipped)
        if dat_files(item):
            picked.append(item)
        if not picked:
            raise ConfigError(f"{item} holds no stslive archive or .3ds file; give the files or another folder")
        files.extend(picked)
    seen: set[Path] = set()
    for f in files:
        if f.resolve() in seen:
            raise ConfigError(f"{f} is given twice (directly or through its folder); give each run once")
        seen.add(f.resolve())
    return files


def output_dirs(inputs: Sequence[Path], out: Path) -> list[Path]:
    """``out`` for one input; ``out/<stem>`` per input for several (``<stem>_<suffix>`` when stems repeat)."""
    if len(inputs) == 1:
        return [out]
    stems = [p.stem for p in inputs]
    names = [f"{p.stem}_{p.suffix.lstrip('.')}" if stems.count(p.stem) > 1 else p.stem for p in inputs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"several inputs would write to {out}/{clash[0]}; rename them or analyse them separately")
    return [out / n for n in names]


def analyse_inputs(
    files: Sequence[Path],
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int = 3,
    dask: bool = False,
    address: str | None = None,
    workers: int | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    show_progress: bool = False,
    flag_config: FlagConfig | None = None,
    overwrite: bool = False,
    on_unsuitable: Callable[[Path, str], None] | None = None,
) -> OfflineAnalysis:
    """Analyse input files into ``out``: one folder per input, plus the campaign summary for several.

    Parameters
    ----------
    files
        Input files (:func:`expand_inputs` turns folders into files).
    out
        Output folder (:func:`output_dirs` says where each input's files go).
    options, constants
        Kernel options and the theory constants of Eqs. (2), (3).
    examples
        Example spectra drawn in ``spectra.png``.
    dask, address, workers, max_block_bytes
        Run the kernels on Dask: the scheduler at ``address`` (None: a LocalCluster of
        ``workers`` processes, default one per core), ``max_block_bytes`` of spectra per task.
    show_progress
        Progress bars on stderr.
    flag_config
        Flag thresholds (default: the live analyser's defaults).
    overwrite
        Replace an earlier analysis in ``out`` (else ``out`` must be new or empty). Everything
        is written beside ``out`` first and moved in only when all inputs succeeded
        (:class:`~stslive.live.offline.outputs.OutputFolder`).
    on_unsuitable
        Called with each input of several that cannot be analysed and the reason; it is left
        out of the analysis and listed in the campaign table (one input: the error is raised).

    Raises
    ------
    ConfigError
        Two inputs would write into the same folder, ``out`` is a file, it holds files that
        ``overwrite`` may not clear, or none of several inputs can be analysed.
    """
    output_dirs(files, out)  # two inputs into one folder: refused before anything runs
    flag_config = flag_config or FlagConfig()
    folder = OutputFolder(out, overwrite=overwrite)
    with folder as stage:
        analysis = _analyse_into(
            files,
            stage,
            options=options,
            constants=constants,
            examples=examples,
            dask=dask,
            address=address,
            workers=workers,
            max_block_bytes=max_block_bytes,
            show_progress=show_progress,
            flag_config=flag_config,
            on_unsuitable=on_unsuitable,
        )
    # the files now sit in out: name them there
    return OfflineAnalysis(
        [AnalysedRun(r.path, out / r.out.relative_to(stage), r.report) for r in analysis.runs],
        [out / p.relative_to(stage) for p in analysis.campaign],
        analysis.skipped,
    )


def _analyse_into(
    files: Sequence[Path],
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int,
    dask: bool,
    address: str | None,
    workers: int | None,
    max_block_bytes: int,
    show_progress: bool,
    flag_config: FlagConfig,
    on_unsuitable: Callable[[Path, str], None] | None,
) -> OfflineAnalysis:
    """:func:`analyse_inputs` into a fresh folder ``out``."""
    outs = output_dirs(files, out)
    skipped: list[tuple[Path, str]] = []
    if len(files) > 1:
        for path in files:
            try:
                with open_input(path, options=options):
                    pass
            except StsliveError as exc:
                skipped.append((path, str(exc)))
        outs = [o for p, o in zip(files, outs, strict=True) if p not in dict(skipped)]
        files = [p for p in files if p not in dict(skipped)]
        for path, reason in skipped:
            if on_unsuitable is not None:
                on_unsuitable(path, reason)
        if not files:
            raise ConfigError("no input can be analysed: " + "; ".join(reason for _, reason in skipped))
    if dask:
        reports = analyse_many_dask(
            list(files),
            outs,
            address=address,
            options=options,
            constants=constants,
            examples=examples,
            workers=workers,
            max_block_bytes=max_block_bytes,
            show_progress=show_progress,
            flag_config=flag_config,
        )
    else:
        reports = []
        for path, folder in zip(list(files), list(outs), strict=True):
            try:
                reports.append(
                    analyse_to_directory(
                        path,
                        folder,
                        options=options,
                        constants=constants,
                        examples=examples,
                        show_progress=show_progress,
                        flag_config=flag_config,
                    )
                )
            except StsliveError as exc:
                if len(files) + len(skipped) < 2:
                    raise
                skipped.append((path, str(exc)))
                files, outs = [p for p in files if p != path], [o for o in outs if o != folder]
                if on_unsuitable is not None:
                    on_unsuitable(path, str(exc))
    runs = [AnalysedRun(p, o, r) for p, o, r in zip(files, outs, reports, strict=True)]
    if len(runs) + len(skipped) < 2:
        return OfflineAnalysis(runs)
    table = [(run.out.name, run.path, run.report) for run in runs]
    return OfflineAnalysis(runs, write_campaign(out, table, skipped=skipped), skipped)


def analyse_to_directory(
    path: Path,
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int = 3,
    show_progress: bool = False,
    flag_config: FlagConfig | None = None,
) -> dict[str, Any]:
    """The whole analysis of one input, in this process, into ``out``; returns the report dictionary.

    The kernels run on row blocks; the flags and tip epochs then follow the pixels in the order
    the live analyser receives them (:func:`stslive.live.flags_run.flag_recording`).
    """
    t0 = time.perf_counter()
    prepare_out(out)
    with open_input(path, options=options) as source:
        options = calibrate_source(source, options=options)  # one template width, recorded in the report
        bar = tqdm(
            total=int(source.measured.sum()), unit="px", desc=path.name, disable=not show_progress, file=sys.stderr
        )

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        with bar:
            model = analyse_source(source, options=options, progress=progress)
        flags = flag_recording(
            path, model, config=flag_config or FlagConfig(), current=options.current, lockin=options.lockin
        )
        return write_outputs(
            source, model, out, options=options, constants=constants, examples=examples, t0=t0, flags=flags
        )


def analyse_many_dask(
    inputs: list[Path],
    outs: list[Path],
    *,
    address: str | None,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int,
    workers: int | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    show_progress: bool = False,
    flag_config: FlagConfig | None = None,
) -> list[dict[str, Any]]:
    """Every input through :func:`stslive.live.offline.dask.analyse_inputs_dask`; reports in input order.

    The flags are computed here, in the client, as by the single path (they need acquisition order).
    """
    from stslive.live.offline.dask import analyse_inputs_dask, dask_client  # optional extra: imported when used

    for out in outs:
        prepare_out(out)
    t0 = time.perf_counter()
    target = dict(zip(inputs, outs, strict=False))
    reports: dict[Path, dict[str, Any]] = {}
    with dask_client(address, workers=workers) as client:
        bar = tqdm(unit="px", desc="dask", disable=not show_progress, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bar:
            for run in analyse_inputs_dask(
                inputs, client=client, options=options, progress=progress, max_block_bytes=max_block_bytes
            ):
                flags = flag_recording(
                    run.path,
                    run.model,
                    config=flag_config or FlagConfig(),
                    current=run.options.current,
                    lockin=run.options.lockin,
                )
                with open_input(run.path, options=run.options) as source:
                    # elapsed_s of a dask run: from the start of the whole campaign to this run's files
                    reports[run.path] = write_outputs(
                        source,
                        run.model,
                        target[run.path],
                        options=run.options,
                        constants=constants,
                        examples=examples,
                        t0=t0,
                        flags=flags,
                    )
    return [reports[p] for p in inputs]


def write_outputs(
    source: SpectraSource,
    model: ResultsModel,
    out: Path,
    *,
    options: KernelOptions,
    constants: TheoryConstants,
    examples: int,
    t0: float,
    flags: RunFlags | None = None,
) -> dict[str, Any]:
    """Correlations, ``maps.h5``, ``report.json`` and figures of an analysed ``source`` into ``out``.

    Shared by the single-process path and the Dask path, so both write the same files; ``t0`` is
    the ``time.perf_counter()`` the analysis started at; ``flags`` the run's flag state (tip
    events, rules not judged) for the report.
    """
    prepare_out(out)
    dy_dx = (source.pixel_size_m[1], source.pixel_size_m[0])  # geometry gives (dx, dy)
    if int(model.maps["valid"].sum()) >= 3:
        model.set_snapshot(correlation_snapshot(model, pixel_size_m=dy_dx, constants=constants))
    lockin = source.lockin_channel if uses_lockin(options) else None
    inputs = {
        "file": str(source.path.resolve()),
        "format": source.kind,
        "sweep_signal": source.sweep_signal,
        # the lock-in the analysis used (open_spectra may read one that --no-lockin leaves unused)
        "channels": {"current": source.current_channel, "lockin": lockin},
        # where Delta and alpha came from: "auto" resolved to the channel read
        "channels_used": {
            "delta": " + ".join(
                str(lockin if channel == "lockin" else source.current_channel)
                for channel in options.gap_channels(
                    lockin_given=lockin is not None, current_given=source.current_channel is not None
                )
            ),
            "alpha": lockin if options.alpha_source == "lockin" and lockin is not None else source.current_channel,
        },
        "available_channels": source.channel_names,
        "n_points": source.n_points,
        "damage": source.damage or None,
        "resampled_from_points": source.resampled_from,
    }
    figure_inputs = collect_figure_inputs(source, model, options=options, examples=examples)
    save_maps_h5(model, out / "maps.h5")
    report = build_report(
        model,
        pixel_size_m=dy_dx,
        inputs=inputs,
        options=options,
        constants=constants,
        elapsed_s=time.perf_counter() - t0,
        ground_truth=source.ground_truth,
        not_judged=None if flags is None else flags.unjudged(),
        tip_events=() if flags is None else flags.tip_events,
    )
    write_analysis_figures(out, figure_inputs, report)
    report["elapsed_s"] = time.perf_counter() - t0  # now including the figures
    write_report(report, out / "report.json")
    return report
