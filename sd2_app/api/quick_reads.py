"""Bounds on the quick CPU work visitors ask for outside the GPU queue: reading an image's PNG info.

A PNG info read decodes up to 25 MiB of base64 and walks the PNG's chunks. The web UI's reads wait in a queue of
their own in Gradio (`sd2_app.ui.pnginfo`): at most `PNG_INFO_CONCURRENCY` run at once and one network address
may have at most `MAX_QUICK_REQUESTS_PER_ADDRESS` waiting or running (`sd2_app.ui.hosting`). The A1111 API's
`/png-info` is a plain FastAPI route beside Gradio, so `QuickReads` gives it the same bounds (and `/extra-single-image`
with no upscaler, which decodes and re-encodes its image: `a1111_extras.py`): at most
`PNG_INFO_CONCURRENCY` reads run at once on worker threads, the others wait without holding a thread, at most
`QUICK_READ_PLACES` wait or run in all (the next gets 503) and one address at most `MAX_QUICK_REQUESTS_PER_ADDRESS`
(the next gets 429; off where the per-address job limit is off, `JobAdmission.limit` 0).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import HTTPException
from starlette.requests import Request

from sd2_app.api.addresses import ClientAddresses

T = TypeVar("T")

PNG_INFO_CONCURRENCY = 2  # PNG info reads running at once, in the web UI's queue and in the API alike
# Quick requests (PNG info, image checks, "Send to") of one network address waiting or running; each lasts well
# under a second, and a page sends one or two at a time.
MAX_QUICK_REQUESTS_PER_ADDRESS = 4
QUICK_READ_PLACES = 8  # the API's quick reads waiting or running, from every address; each holds its image


def too_many_quick_requests_message(limit: int) -> str:
    return f"Your network address already has {limit} requests waiting; try again when they are done."


def reads_busy_message(places: int) -> str:
    return (f"The server is busy: {places} quick reads (PNG info, images returned unscaled) already waiting or "
            "running, as many as it takes at once; try again in a moment.")


class QuickReads:
    """The A1111 API's PNG info reads: `running` at once, `places` waiting or running, `per_address` of one
    network address (`addresses` names it; 0: no per-address bound)."""

    def __init__(self, addresses: ClientAddresses, per_address: int = MAX_QUICK_REQUESTS_PER_ADDRESS,
                 running: int = PNG_INFO_CONCURRENCY, places: int = QUICK_READ_PLACES) -> None:
        self.addresses = addresses
        self.per_address = per_address
        self.places = places
        self._running = running
        self._limiter: anyio.CapacityLimiter | None = None  # made in the server's event loop, on first use
        self._held: Counter[str] = Counter()  # reads of each address waiting or running

    def waiting_or_running(self) -> int:
        return self._held.total()

    def refusal(self, address: str) -> HTTPException | None:
        """Why a read of `address` may not wait for its turn now: the address has its share (429), or every place
        is taken (503); None when it may."""
        if self.per_address and self._held[address] >= self.per_address:
            return HTTPException(429, too_many_quick_requests_message(self.per_address))
        if self._held.total() >= self.places:
            return HTTPException(503, reads_busy_message(self.places))
        return None

    async def run(self, client: Request, read: Callable[[], T]) -> T:
        """`read()` on a worker thread once one of the `running` turns is free; refused at once with an HTTP error
        when the caller's address (`client`: the HTTP request) or everyone has no place left (`refusal`)."""
        address = self.addresses.of(client)
        refused = self.refusal(address)
        if refused is not None:
            raise refused
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._running)
        self._held[address] += 1
        try:
            return await anyio.to_thread.run_sync(read, limiter=self._limiter)
        finally:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]  # an address that has left keeps no key
