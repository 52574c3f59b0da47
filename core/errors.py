"""Errors that reach users: each names the file (if any), what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path


class KilnError(Exception):
    """A problem a user can act on. ``str()`` is the message shown in the UI and the API."""

    def __init__(self, problem: str, *, path: str | Path | None = None, hint: str | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.hint:
            text += f" — {self.hint}"
        return text


class ModelFileError(KilnError):
    """A model file that cannot be read, is unsafe, or is not what its folder says."""


class InvalidParameterError(KilnError):
    """A generation parameter out of range; ``field`` names it (the API returns 422)."""

    def __init__(self, field: str, problem: str, hint: str | None = None):
        self.field = field
        super().__init__(f"{field}: {problem}", hint=hint)


class JobInterrupted(Exception):
    """Raised inside a job's step callback when the user pressed Interrupt."""


class JobSkipped(Exception):
    """Raised inside a job's step callback when the user pressed Skip (this image only)."""
