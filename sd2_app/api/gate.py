"""The one way to the GPU: every job of the Service (web UI, A1111 API, MCP, CLI) passes this gate in turn.

Gradio's queue orders the UI's events (concurrency id "gpu", limit 1), but the A1111 routes are plain
FastAPI routes beside Gradio and never enter that queue. So the Service itself admits one job at a time, in
arrival order (a ticket lock: `threading.Lock` promises no order), whoever sent it. A waiting job can still be
stopped: `enter` polls its `should_stop` and raises `Cancelled` while it waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sd2_app.errors import Cancelled


class GpuGate:
    """A first-come, first-served lock with a count of the jobs waiting."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0  # handed to the next arrival
        self._serving = 0  # the ticket allowed in now
        self._abandoned: set[int] = set()  # tickets whose holders stopped waiting
        self._poll_s = poll_s

    @property
    def waiting(self) -> int:
        """Jobs inside or waiting to get in."""
        with self._condition:
            return self._next_ticket - self._serving - len(self._abandoned)

    @contextmanager
    def enter(self, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the GPU for the body; raises `Cancelled` if `should_stop()` turns true while waiting."""
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while ticket != self._serving:
                    if should_stop is not None and should_stop():
                        raise Cancelled
                    self._condition.wait(self._poll_s)
            except BaseException:
                self._leave_queue(ticket)
                raise
        try:
            yield
        finally:
            with self._condition:
                self._advance()

    def _leave_queue(self, ticket: int) -> None:
        """A waiter gives up (called with the condition held): its turn will be skipped."""
        if ticket == self._serving:
            self._advance()
        else:
            self._abandoned.add(ticket)

    def _advance(self) -> None:
        """The next ticket still waiting is served (called with the condition held)."""
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._condition.notify_all()
