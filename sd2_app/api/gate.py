"""The one way to the GPU: every job of the Service (web UI, A1111 API, MCP, CLI) passes this gate in turn.

Gradio's queue orders the UI's events (concurrency id "gpu", limit 1), but the A1111 routes are plain
FastAPI routes beside Gradio and never enter that queue. So the Service itself admits one job at a time, in
arrival order (a ticket lock: `threading.Lock` promises no order), whoever sent it. A waiting job can still be
stopped: `enter` polls its `should_stop` and raises `Cancelled` while it waits. `ahead_of(should_stop)` tells a
waiting job's caller its place (the caller knows its job by the `should_stop` it passed; the UI shows the place
the way Gradio's own queue does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sd2_app.errors import Cancelled
from sd2_app.fork_safety import renew_in_forked_child


class GpuGate:
    """A first-come, first-served lock with a count of the jobs waiting."""

    def __init__(self, poll_s: float = 0.05) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0  # handed to the next arrival
        self._serving = 0  # the ticket allowed in now
        self._abandoned: set[int] = set()  # tickets whose holders stopped waiting
        self._waiters: dict[int, Callable[[], bool]] = {}  # ticket -> its `should_stop`, while it waits
        self._poll_s = poll_s
        # A forked child (ZeroGPU's worker: sd2_app/fork_safety.py) starts with an open gate: the jobs inside or
        # waiting at the fork were the parent's threads, none of which runs there.
        renew_in_forked_child(self, _condition=threading.Condition, _next_ticket=int, _serving=int, _abandoned=set,
                              _waiters=dict)

    @property
    def waiting(self) -> int:
        """Jobs inside or waiting to get in."""
        with self._condition:
            return self._next_ticket - self._serving - len(self._abandoned)

    def ahead_of(self, should_stop: Callable[[], bool]) -> int | None:
        """How many jobs are inside or waiting before the one that waits with `should_stop` (compared with ==,
        so a bound method passed again matches); None when no such job is waiting (it is in, or gone)."""
        with self._condition:
            mine = [ticket for ticket, check in self._waiters.items() if check == should_stop]
            if not mine:
                return None
            ticket = min(mine)
            return ticket - self._serving - sum(1 for gone in self._abandoned if gone < ticket)

    @contextmanager
    def enter(self, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the GPU for the body; raises `Cancelled` if `should_stop()` turns true while waiting."""
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            if should_stop is not None:
                self._waiters[ticket] = should_stop
            try:
                while ticket != self._serving:
                    if should_stop is not None and should_stop():
                        raise Cancelled
                    self._condition.wait(self._poll_s)
            except BaseException:
                self._leave_queue(ticket)
                raise
            finally:
                self._waiters.pop(ticket, None)
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
