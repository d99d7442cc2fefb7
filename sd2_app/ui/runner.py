"""Runs a Service call in a worker thread and streams its progress to a Gradio generator handler.

`Service.run` is blocking and reports progress through callbacks; Gradio streams what a generator yields.
The bridge is a queue: the worker puts (done, total, preview) events, the handler drains them, moves the
progress bar and yields previews. Stop sets a per-session flag that the service checks at every step (and the
Stop button also cancels a job that is still waiting in the queue).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PIL import Image

from sd2_app.api.service import ProgressFn
from sd2_app.api.gpu_time import gpu  # noqa: F401  # re-exported: the UI's handlers import it from here
from sd2_app.errors import Cancelled, InvalidRequest

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"  # the one concurrency id of every event that may touch the GPU


class RunFlag(threading.Event):
    """A run's stop flag, with how far the run got (steps `done` of `total`) for the message after Stop."""

    def __init__(self) -> None:
        super().__init__()
        self.done = 0
        self.total = 0


class StopFlags:
    """One stop flag per browser session: Stop in one tab of the browser must not stop another user's run."""

    def __init__(self) -> None:
        self._flags: dict[str, RunFlag] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> RunFlag:
        """A cleared flag for a run that is starting now."""
        with self._lock:
            flag = self._flags[session] = RunFlag()
        return flag

    def release(self, session: str, flag: threading.Event) -> None:
        """Forget a finished run's flag (unless a newer run replaced it), so sessions do not pile up."""
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def stop(self, session: str) -> bool:
        """Set the session's flag; False when it has no run."""
        return self.stop_run(session) is not None

    def stop_run(self, session: str) -> RunFlag | None:
        """Set the session's flag and return it (None when the session has no run)."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()
        return flag


@functools.lru_cache(maxsize=1)
def _executor() -> ThreadPoolExecutor:
    # The GPU queue's concurrency limit (`Service.concurrency`) bounds how many of these threads run jobs.
    return ThreadPoolExecutor(max_workers=64, thread_name_prefix="sd2-run")


def stream(
    call: Callable[[ProgressFn, Callable[[], bool]], Any],
    flag: threading.Event,
    *,
    poll_s: float = 0.05,
) -> Iterator[tuple[int, int, Image.Image | None] | Any]:
    """Yield (done, total, preview) while `call(on_progress, should_stop)` runs; the last item is its result.

    Raises what the call raised (`InvalidRequest`, `Cancelled`, or a bug with its traceback).
    """
    events: queue.Queue[tuple[int, int, Image.Image | None]] = queue.Queue()
    future: Future[Any] = _executor().submit(call, lambda d, t, p: events.put((d, t, p)), flag.is_set)
    try:
        while True:
            try:
                yield events.get(timeout=poll_s)
            except queue.Empty:
                if future.done() and events.empty():
                    break
    finally:
        flag.set()  # the handler was closed (cancelled or the client left): stop the worker at its next step
    yield future.result()


def user_message(error: InvalidRequest | Cancelled) -> str:  # noqa: D103
    """The text the user sees for a refused or stopped run."""
    return "Stopped." if isinstance(error, Cancelled) else str(error)


def stopped_message(flag: RunFlag | None) -> str:
    """What Stop leaves in the info line: how far the run got."""
    if flag is None:
        return "Stopped before it started."
    if flag.total:
        return f"Stopped after {flag.done}/{flag.total} steps."
    return "Stopped before sampling began."
