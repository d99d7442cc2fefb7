"""An A1111 API client that disconnects stops its job: a request timeout, curl's Ctrl+C, a closed script.

The generation routes (`a1111_routes.py`) are plain HTTP: the client waits on its connection for the answer, and
has no other way to say it has given up. A job used to run to its end for nobody (all its steps and `n_iter`
batches), holding the GPU from the clients behind it. `run_while_connected` runs the job on a worker thread, as
FastAPI runs a plain route (starlette.concurrency, `run_in_threadpool`), while it waits for the ASGI
`http.disconnect` message on the request's connection (the ASGI HTTP spec: the server sends it when the client
closes the connection; uvicorn at once, as the socket closes); the job's `stop` event is set then, the same event
/interrupt sets: a waiting job leaves the GPU gate, a running one ends at its next step. Only that request's job
stops.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

log = logging.getLogger(__name__)

T = TypeVar("T")
STRAY_MESSAGE_PAUSE_S = 0.05  # after a message that is not the disconnect (none is expected once the body is read)


async def run_while_connected(client: Request, call: Callable[[threading.Event], T]) -> T:
    """`call(stop)` on a worker thread; `stop` is set if the client of the HTTP request `client` disconnects
    before it returns (module docstring). Call it once the request's body has been read."""
    stop = threading.Event()
    watcher = asyncio.ensure_future(_set_when_gone(client, stop))
    try:
        return await run_in_threadpool(call, stop)
    finally:
        watcher.cancel()


async def _set_when_gone(client: Request, stop: threading.Event) -> None:
    """Wait for the connection's `http.disconnect`, then set `stop`."""
    while (await client.receive())["type"] != "http.disconnect":
        await asyncio.sleep(STRAY_MESSAGE_PAUSE_S)
    log.info("A1111 API: the client disconnected; stopping its job")
    stop.set()
