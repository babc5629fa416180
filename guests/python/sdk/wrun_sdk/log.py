"""The job log.

Every line is masked by the host before it is stored or shown, so a secret
placeholder or a marked value never shows up in clear. ``print`` (stdout
and stderr) also ends up in the job log, but without a level.
"""

from wit_world.imports import log as _raw


def trace(message: str) -> None:
    """Appends a ``trace`` line to the job log."""
    _raw.log(_raw.Level.TRACE, str(message))


def debug(message: str) -> None:
    """Appends a ``debug`` line to the job log."""
    _raw.log(_raw.Level.DEBUG, str(message))


def info(message: str) -> None:
    """Appends an ``info`` line to the job log."""
    _raw.log(_raw.Level.INFO, str(message))


def warn(message: str) -> None:
    """Appends a ``warn`` line to the job log."""
    _raw.log(_raw.Level.WARN, str(message))


def error(message: str) -> None:
    """Appends an ``error`` line to the job log."""
    _raw.log(_raw.Level.ERROR, str(message))
