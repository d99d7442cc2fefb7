"""Admission of the app's GPU jobs, whichever front end sent them: one count for the app's bound (--queue-size)
and for the per-address limit.

The web UI's jobs (and MCP tool calls) wait and run in Gradio's queue, where `sd2_app.ui.hosting.Visitors` finds
them (`queued`: how many each network address has there); the A1111 API's jobs never enter that queue
(`sd2_app.api.a1111_routes`), so each holds a place here while it waits or runs (`take` ... `release`), as a UI
job does while Gradio is still accepting it. Both bounds count both together:

- the app takes at most `queue_size` GPU jobs waiting or running, from every visitor and client together; the
  next is refused with `server_busy_message`, whichever front end it came through;
- a client that drops its cookies is a new visitor on every request, but not a new address
  (`sd2_app.api.addresses`), so one address may have at most `limit` of them: it cannot have `limit` jobs in the
  web UI and `limit` more through the API.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from sd2_app.api.addresses import ClientAddresses

# GPU jobs the app takes waiting or running at once, web UI, MCP and A1111 API together (--queue-size).
DEFAULT_QUEUE_SIZE = 16


def too_many_jobs_from_address_message(limit: int) -> str:
    return (f"Your network address already has {limit} job{'s' if limit != 1 else ''} queued or running; wait for "
            "one to finish before starting another.")


def server_busy_message(queue_size: int) -> str:
    """The refusal of a GPU job once the app has `queue_size` waiting or running (web UI, MCP and API alike)."""
    return (f"The server is busy: {queue_size} job{'s' if queue_size != 1 else ''} already waiting or running, as "
            "many as it takes at once; try again in a minute.")


class Refusal(NamedTuple):
    """Why a GPU job may not start now: `message` for the client; `busy`: the app's bound was reached (nothing
    the client did: the API answers 503), else the client's address has its share (429)."""

    message: str
    busy: bool


def _none_queued() -> Counter[str]:
    return Counter()


class JobAdmission:
    """Whether a new GPU job may start: the app's bound and each network address's share, counted over the jobs in
    Gradio's queue (`queued`) and the places held here.

    `queue_size` bounds them all together, `limit` those of one address (0 turns that limit off). `take` checks
    and holds under one lock, so jobs arriving at once from the web UI's event loop and the API's worker threads
    cannot all pass the check before any is counted.
    """

    def __init__(self, addresses: ClientAddresses | None = None, limit: int = 0, queue_size: int = DEFAULT_QUEUE_SIZE,
                 queued: Callable[[], Counter[str]] = _none_queued) -> None:
        self.addresses = addresses or ClientAddresses()
        self.limit = limit
        self.queue_size = max(1, queue_size)
        self.queued = queued
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, address: str) -> int:
        """GPU jobs of `address` queued or running, in Gradio's queue or holding a place here."""
        return self._held[address] + self.queued()[address]

    def total(self) -> int:
        """GPU jobs of every address queued or running, in Gradio's queue or holding a place here."""
        return sum(self._held.values()) + sum(self.queued().values())

    def refusal(self, address: str) -> Refusal | None:
        """Why `address` may not start another GPU job now; None when it may (one look at Gradio's queue)."""
        jobs = self._held + self.queued()
        if self.limit and jobs[address] >= self.limit:
            return Refusal(too_many_jobs_from_address_message(self.limit), busy=False)
        if jobs.total() >= self.queue_size:
            return Refusal(server_busy_message(self.queue_size), busy=True)
        return None

    def take(self, address: str) -> Refusal | None:
        """Hold a place for a new job of `address`: None when held (give it back with `release`), else why not."""
        with self._lock:
            refused = self.refusal(address)
            if refused is None:
                self._held[address] += 1
            return refused

    def release(self, address: str) -> None:
        """Give back a place `take` held."""
        with self._lock:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]  # no key stays behind for an address that has left
