"""User-facing errors: one clear line that names the problem and the fix."""

from __future__ import annotations


class FTPError(Exception):
    """An error caused by user input (bad file, bad flag, unsupported model).

    The CLI prints ``error: <message>`` on one line and exits with status 2; it
    never prints a traceback for these.
    """


class ScheduleError(FTPError):
    """A schedule JSON or its router weights failed validation."""


class UnsupportedModelError(FTPError):
    """The model's architecture is not one the routed implementation covers."""

