"""The one error hierarchy of stslive.

Contract: every error derives from :class:`StsliveError`, carries structured fields and, where
one fits, also inherits the matching builtin (``InstrumentTimeout`` is a ``TimeoutError``), so
callers can catch either; messages say what went wrong and what to do. Every error pickles with
its fields and message (errors cross process boundaries in the Dask path). This module imports
nothing, so every layer, a viewing machine without pyvisa included, may import it.
"""

from __future__ import annotations

from typing import Any


class StsliveError(Exception):
    """Root of every error stslive raises on purpose.

    Pickles whatever its subclass's ``__init__`` takes: the default reduction calls
    ``cls(*self.args)``, and ``args`` holds the formatted message, not the constructor's
    arguments, so the error is rebuilt without calling ``__init__`` and its fields restored.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args), self.__dict__


def _rebuild(cls: type[StsliveError], args: tuple[Any, ...]) -> StsliveError:
    """An instance of ``cls`` with ``args`` and no ``__init__`` call (its fields follow from the state)."""
    error = cls.__new__(cls, *args)
    error.args = args  # OSError subclasses (InstrumentTimeout) leave args to the __init__ not called here
    return error


# -- instruments -------------------------------------------------------------------------------
class InstrumentError(StsliveError):
    """An instrument could not do what was asked.

    Parameters
    ----------
    instrument
        Short name of the instrument (``"nanonis"``, ``"sr830"``, ``"ls372"``).
    message
        What happened and what to do.
    """

    def __init__(self, instrument: str, message: str) -> None:
        super().__init__(f"{instrument}: {message}")
        self.instrument = instrument
        self.detail = message


class InstrumentTimeout(InstrumentError, TimeoutError):
    """No (complete) reply within the configured timeout."""


class InstrumentConnectionError(InstrumentError, ConnectionError):
    """The connection could not be opened or was lost (and reconnects were exhausted)."""


class InstrumentReplyError(InstrumentError, ValueError):
    """The instrument replied with something the driver cannot parse (malformed, wrong size)."""


class ControllerError(InstrumentError):
    """The instrument reported an error itself (a Nanonis error section, an SR830 error bit)."""

    def __init__(self, instrument: str, message: str, *, command: str = "", code: int = 0) -> None:
        super().__init__(instrument, message if not command else f"{command}: {message}")
        self.command = command
        self.code = code


class SweepStopped(InstrumentError):
    """A sweep was stopped on request (an abort) before it ended; it produced no spectrum.

    The driver has set the set-point bias and restored the feedback before raising it; the pixel
    stays unmeasured (not failed), so a resumed run measures it.
    """


class LockInOverload(InstrumentError):
    """The lock-in reported an input/reserve or output overload; its readings are not data."""


class SafetyLimitError(InstrumentError, ValueError):
    """A requested value lies outside the configured safety limits; nothing was sent."""


# -- files, streams, configuration --------------------------------------------------------------
class FileFormatError(StsliveError, ValueError):
    """A file is not what it claims to be (wrong format, version, truncated or corrupt).

    Parameters
    ----------
    path
        The file concerned.
    message
        What is wrong and what to do.
    """

    def __init__(self, path: object, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.detail = message


class ArchiveError(FileFormatError):
    """A run archive is missing, of another version, incomplete or corrupt."""


class NanonisFileError(FileFormatError):
    """A Nanonis ``.3ds`` grid file cannot be read (header, layout or size)."""


class StreamError(StsliveError, ValueError):
    """A stream document is malformed, of an unknown schema version, or inconsistent."""


class ConfigError(StsliveError, ValueError):
    """A configuration file or option is invalid; the message names the key and the fix."""


class AnalysisError(StsliveError, ValueError):
    """An analysis cannot run on the given input (wrong sweep kind, missing channel, bad option)."""


class ServiceError(StsliveError, RuntimeError):
    """A service process of a composed job (``stslive demo``) failed or did not start.

    Parameters
    ----------
    service
        Name of the failed part (``"mock-lab"``, ``"scan"``, ``"analyser"``, ...).
    message
        What happened (exit status, last lines of its error output) and what to do.
    """

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.detail = message
