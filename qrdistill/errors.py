"""User-facing errors.

Anything a user can cause (bad config, bad data file, missing artifact) raises
`QRDistillError`; the CLI prints its message on one line and exits non-zero
without a traceback. Programming errors keep their tracebacks.
"""

from __future__ import annotations


class QRDistillError(Exception):
    """An error caused by user input, printed without a traceback."""


class ConfigError(QRDistillError):
    """A config value is invalid; the message names the field."""


class DataError(QRDistillError):
    """A data file is malformed; the message names the file and line."""


class MissingArtifactError(QRDistillError):
    """A stage needs an artifact that an earlier stage writes."""


class RunDirError(QRDistillError):
    """The run directory cannot be used (a file, not writable, or a directory that is not a run dir)."""
