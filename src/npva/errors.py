"""Errors raised for bad input: each names the file, the line where it applies, and what was expected."""

from __future__ import annotations

from pathlib import Path


class NpvaError(Exception):
    """Base class of the errors npva reports to users as a one-line reason."""


class FormatError(NpvaError):
    """A file exists but does not hold what its format requires."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class MissingFileError(NpvaError, FileNotFoundError):
    """A file the subject layout requires is absent."""

    def __init__(self, path: str | Path, what: str = "file"):
        self.path = Path(path)
        super().__init__(f"{self.path}: missing {what}")


class ConfigError(NpvaError, ValueError):
    """Settings that contradict each other; the message names the fields and what would fit."""


class NonFiniteError(NpvaError):
    """Values that must be finite are not (NaN or infinity): the networks diverged."""
