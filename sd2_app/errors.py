"""The exception types sd2_app raises on purpose; everything else is a bug and keeps its traceback."""

from __future__ import annotations


class LoadError(RuntimeError):
    """A checkpoint or component could not be loaded; says which repo, which file and why."""

    def __init__(self, repo: str, file: str | None, reason: str) -> None:
        self.repo = repo
        self.file = file
        self.reason = reason
        where = f"{repo}: {file}" if file else repo
        super().__init__(f"{where}: {reason}")


class InvalidRequest(ValueError):
    """User input that we refuse, with a message meant for the user."""


class Busy(InvalidRequest):
    """A job the server cannot take now (nothing of it ran), with a message meant for the user: try again later."""


class Cancelled(Exception):
    """Raised from a step callback when the user pressed Stop; the sampling loop lets it through."""
