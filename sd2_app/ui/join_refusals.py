"""How a queue join the app refuses (`sd2_app.ui.hosting`: the app busy, a visitor or address at its limit, a file
named by another site's URL) reaches each kind of client, with the app's message.

Gradio answers a refused join with HTTP 400 and the message as `detail` (gradio/routes.py, `queue_join_helper`):
the page's own client (which marks its joins `x-gradio-user: app`) shows that detail in a toast, and a raw HTTP
client reads it. gradio_client keeps only the status of such an answer (gradio_client/client.py, `Endpoint.send_data`:
`raise_for_status`; only a 503 and a 422 validator answer get words of their own, and not ours), so its callers,
and the MCP tools (gradio/mcp.py joins the queue through gradio_client), would read "400 Bad Request". Their joins
(marked `x-gradio-user: api` or `mcp`) are therefore accepted and completed at once with the message as the event's
error, as Gradio completes a join answered from its cache (gradio/queueing.py, `Queue.push`): gradio_client raises
`AppError` with the message, and the event never enters the queue, so it takes no place there either.

Gradio keeps such an event's id and its session's message queue until the client reads the stream (gradio/
routes.py, `queue_data`), keyed by the session hash the client chose (at most `MAX_SESSION_HASH_CHARS`: the
watcher refuses a longer one first, `sd2_app.ui.hosting`). A refusal costs the client nothing, so `JoinRefusals`
keeps only the newest `MAX_UNREAD_REFUSALS` refusals no client has read.
"""

from __future__ import annotations

from asyncio import Queue as AsyncQueue
from collections import deque
from typing import Any

from gradio.exceptions import Error
from gradio.queueing import Event
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import error_payload

CLIENT_HEADER = "x-gradio-user"  # what gradio_client ("api"), its MCP server ("mcp") and the page ("app") send
ERROR_ON_STREAM = ("api", "mcp")
MAX_SESSION_HASH_CHARS = 64  # gradio_client's is a uuid4 (36 characters), the page's about 11
SESSION_HASH_REFUSAL = f"A session hash is at most {MAX_SESSION_HASH_CHARS} characters."
MAX_UNREAD_REFUSALS = 1024  # refusals waiting for their client to read them; older ones are forgotten

Refused = tuple[bool, str, str]  # what Gradio's `Queue.push` returns: (accepted, event id or message, state)


class JoinRefusals:
    """Refused joins for one queue's watcher (`sd2_app.ui.hosting.Visitors`), the unread ones bounded."""

    def __init__(self, max_unread: int = MAX_UNREAD_REFUSALS) -> None:
        self.max_unread = max_unread
        self._unread: deque[tuple[str, str]] = deque()  # (session hash, event id), oldest first

    async def refuse(self, queue: Any, body: Any, request: Any, username: str | None, message: str) -> Refused:
        """`queue.push`'s answer to a join refused with `message` (`queue`: gradio.queueing.Queue; `body`,
        `request`: the join's): for a gradio_client or MCP join, the join accepted and its event completed at once
        with `message` as its error; for any other, the refusal (HTTP 400, `message` as its detail)."""
        fn = queue.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
        headers = getattr(request, "headers", None) or {}
        if fn is None or headers.get(CLIENT_HEADER) not in ERROR_ON_STREAM:
            return False, message, "error"
        event = Event(body.session_hash, fn, request, username)
        if body.session_hash is None:
            body.session_hash = event.session_hash
        async with queue.pending_message_lock:
            if body.session_hash not in queue.pending_messages_per_session:
                queue.pending_messages_per_session[body.session_hash] = AsyncQueue()
            if body.session_hash not in queue.pending_event_ids_session:
                queue.pending_event_ids_session[body.session_hash] = set()
            queue.pending_event_ids_session[body.session_hash].add(event._id)
            self._unread.append((body.session_hash, event._id))
            while len(self._unread) > self.max_unread:
                self._forget(queue, *self._unread.popleft())
        refusal = Error(message, print_exception=False)
        queue.send_message(event, ProcessCompletedMessage(output=error_payload(refusal, True), success=False))
        return True, event._id, "success"

    @staticmethod
    def _forget(queue: Any, session_hash: str, event_id: str) -> None:
        """Drop a refusal's event id (a no-op once its client has read it) and, when its session then waits for
        nothing, the session's message queue."""
        ids = queue.pending_event_ids_session.get(session_hash)
        if ids is None:
            return
        ids.discard(event_id)
        if not ids:
            del queue.pending_event_ids_session[session_hash]
            queue.pending_messages_per_session.pop(session_hash, None)
