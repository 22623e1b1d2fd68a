"""Settings of the live analyser service, where its analysis file goes, and the process setup it wants.

:class:`AnalyserSettings` holds the service's tunables (pixels and seconds);
:func:`analysis_path_for` is the analysis file's default place beside the archive (where the
screen looks for it); :func:`settle_gc` is the process-wide garbage-collector setup a process
that runs the analyser calls once.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AnalyserSettings:
    """Tunables of the service (counts are pixels, times seconds).

    Attributes
    ----------
    batch
        Largest batch analysed at once. Only a service behind the stream reaches it; two kernel
        chunks (``KernelOptions.chunk`` = 512) let the kernels use both cores then
        (``stslive bench analyser``: 4,179 spectra/s at 256, 4,920 at 1,024). At 1,000
        spectra/s batches are 1-5 pixels.
    snapshot_every
        Pixels analysed between two correlation snapshots.
    publish_every_s
        Interval of the full model messages (maps, snapshot, status) on the results stream, s.
    write_every_s
        Interval of the analysis-file writes, s.
    hwm
        High-water mark of the stream subscription and of the results publisher, messages.
    """

    batch: int = 1024
    snapshot_every: int = 500
    publish_every_s: float = 2.0
    write_every_s: float = 10.0
    hwm: int = 100_000


def analysis_path_for(archive: str | os.PathLike[str]) -> Path:
    """Default analysis file beside the archive: ``RUN.analysis.h5`` (the viewer looks there)."""
    return Path(archive).with_suffix(".analysis.h5")


def settle_gc() -> None:
    """Keep the objects the process holds once set up out of the garbage collector's full passes.

    The service allocates a few dicts per message, which now and then triggers a full collection
    that walks the tens of thousands of objects numpy, scipy, h5py and zmq leave behind at import:
    a pause of tens of ms that every queued pixel waits out. ``gc.freeze()`` moves them to the
    permanent generation. Process-wide: call it where the analyser owns the process
    (``stslive analyser``, the benchmark).
    """
    gc.collect()
    gc.freeze()
