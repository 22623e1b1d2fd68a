"""The run archive: one HDF5 file per run, NeXus-style, written while the run goes and read by anyone.

:class:`ArchiveWriter` creates and appends (:mod:`.writer`); :func:`open_archive` opens
(:mod:`.opener`, with :mod:`.health` for files cut short) and :class:`ArchiveReader` reads
(:mod:`.reader`; :meth:`ArchiveReader.events` and :meth:`ArchiveReader.start_document` turn the
archive back into run-stream documents); :mod:`.conditions` says what the run recorded of its
conditions; :mod:`.layout` is the one place that knows the layout, described in ``docs/formats.md``.
"""

from stslive.acquisition.formats.archive.health import ArchiveHealth
from stslive.acquisition.formats.archive.layout import ARCHIVE_VERSION, DOCUMENT_NAMES, VERSION_ATTR, GroundTruth
from stslive.acquisition.formats.archive.opener import open_archive
from stslive.acquisition.formats.archive.reader import EVENT_ORDERS, ArchiveReader, EventOrder, Pixel
from stslive.acquisition.formats.archive.writer import ArchiveWriter

__all__ = [
    "ARCHIVE_VERSION",
    "ArchiveHealth",
    "DOCUMENT_NAMES",
    "EVENT_ORDERS",
    "VERSION_ATTR",
    "ArchiveReader",
    "ArchiveWriter",
    "EventOrder",
    "GroundTruth",
    "Pixel",
    "open_archive",
]
