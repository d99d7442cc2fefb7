"""GPU jobs per network address, whichever front end sent them: the per-address job limit's one count.

A client that drops its cookies is a new visitor on every request, but not a new address
(`sd2_app.api.addresses`), so the app lets one address have at most `limit` GPU jobs queued or running.
The web UI's jobs (and MCP tool calls) wait and run in Gradio's queue, where `sd2_app.ui.hosting.Visitors` finds
them (`queued`, a function of the address); the A1111 API's jobs never enter that queue
(`sd2_app.api.a1111_routes`), so each holds a place here while it waits or runs (`take` ... `release`), as a
UI job does while Gradio is still accepting it. An address's count is both together: it cannot have `limit` jobs
in the web UI and `limit` more through the API.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from sd2_app.api.addresses import ClientAddresses


def too_many_jobs_from_address_message(limit: int) -> str:
    return (f"Your network address already has {limit} job{'s' if limit != 1 else ''} queued or running; wait for "
            "one to finish before starting another.")


def _none_queued(address: str) -> int:
    return 0


class AddressJobs:
    """The GPU jobs of each network address: the ones in Gradio's queue (`queued`) and the places held here.

    `limit` 0 turns the limit off. `take` checks and holds under one lock, so jobs arriving at once from the
    web UI's event loop and the API's worker threads cannot all pass the check before any is counted.
    """

    def __init__(self, addresses: ClientAddresses | None = None, limit: int = 0,
                 queued: Callable[[str], int] = _none_queued) -> None:
        self.addresses = addresses or ClientAddresses()
        self.limit = limit
        self.queued = queued
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, address: str) -> int:
        """GPU jobs of `address` queued or running, in Gradio's queue or holding a place here."""
        return self._held[address] + self.queued(address)

    def refusal(self, address: str) -> str | None:
        """Why `address` may not start another GPU job now; None when it may."""
        if self.limit and self.count(address) >= self.limit:
            return too_many_jobs_from_address_message(self.limit)
        return None

    def take(self, address: str) -> str | None:
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
