"""The exception types sd2_app raises on purpose; everything else is a bug and keeps its traceback."""

from __future__ import annotations

from typing import Any

MAX_SHOWN_CHARS = 60  # a message repeats at most this much of a value a visitor sent (`shown`)


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
    """Raised from a step callback when the user pressed Stop; the sampling loop lets it through.

    On its way out it collects what the run made so far (docs/DESIGN.md, "Errors"), each None where nothing was
    made (Stop before the first step, the hires fix's first pass): `at`, the (step, steps) of the
    run's progress when Stop ended it (the service's step callback, api/progress.py); `latents`, that step's x0
    estimate (pipelines/loop.py); `output`, the task's output decoded from it by the task's own finishing path
    (pipelines/sampling.py, `finished`); `result`, the Service's `Result` of that output (api/service.py,
    `produce`), which only a user-facing run keeps (`Service.run`); `so_far`, False where the run is a stage whose
    image so far nobody keeps (the SD2 x4 hires route's first pass and x4 stage), so none is decoded.
    """

    def __init__(self, *args: object, at: tuple[int, int] | None = None, so_far: bool = True) -> None:
        super().__init__(*args)
        self.at = at
        self.so_far = so_far  # False: the caller keeps no image so far (a stage of a longer job), none is made
        self.latents: Any = None
        self.output: Any = None
        self.result: Any = None


def shown(value: object) -> str:
    """A value a visitor sent, quoted for a message: text as its repr, cut after MAX_SHOWN_CHARS characters (a
    refusal never sends back, or logs, a whole megabyte that came in)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= MAX_SHOWN_CHARS else repr(value[:MAX_SHOWN_CHARS]) + "..."
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "..."
