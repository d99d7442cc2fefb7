"""Gradio's per-session event streams, kept while a session has an event waiting or running and bounded once it
has none.

Gradio's queue keeps, under each session hash a client names, a queue of messages for its event stream
(gradio/queueing.py, `Queue.pending_messages_per_session`: an LRUCache of 2,000, oldest first by first join) and
the ids of its events not yet read (`Queue.pending_event_ids_session`, a plain dict). The dict keeps an entry for
every session hash ever seen, an empty set once its stream was read, so joins under new hashes grow it without
end; and 2,000 joins under new hashes push the oldest session's message queue out of the LRUCache even while
its job runs: that visitor's stream ends with "404: Not Found" and the result never reaches them.

`LiveSessionMessages` takes the LRUCache's place (`keep_live_sessions`): past `capacity` sessions it forgets the
oldest ones with no event waiting or running (their messages and their ids, read or not), never a live one, and
the ids of sessions whose message queue is gone (Gradio drops it when a client leaves mid-stream) go the same
way. Live sessions are bounded by the queue's places (`sd2_app.ui.hosting`), so both stay within `capacity`
and the live ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from gradio.utils import LRUCache


class LiveSessionMessages(LRUCache):
    """`Queue.pending_messages_per_session` for the Gradio queue `queue`, at most `capacity` sessions besides the
    live ones (module docstring)."""

    def __init__(self, queue: Any, capacity: int) -> None:
        super().__init__(capacity)
        self._queue = queue

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self:
            self.move_to_end(key)
        OrderedDict.__setitem__(self, key, value)
        if len(self) > self.max_size:
            self._forget_finished(newest=key)
        if len(self._queue.pending_event_ids_session) > 2 * self.max_size:
            self._forget_stray_ids()

    def is_live(self, session_hash: str) -> bool:
        """Whether an event of the session waits or runs in the queue."""
        events = self._queue.event_ids_to_events
        return any(event_id in events for event_id in self._queue.pending_event_ids_session.get(session_hash, ()))

    def _forget_finished(self, newest: str) -> None:
        """Forget the oldest sessions with nothing waiting or running until `capacity` remain (or only live ones);
        `newest`, the session being added, whose event Gradio has not counted yet, stays."""
        for session_hash in list(self):
            if len(self) <= self.max_size:
                return
            if session_hash != newest and not self.is_live(session_hash):
                del self[session_hash]
                self._queue.pending_event_ids_session.pop(session_hash, None)

    def _forget_stray_ids(self) -> None:
        """Forget the event ids of sessions that have no message queue left and nothing waiting or running."""
        ids = self._queue.pending_event_ids_session
        for session_hash in [key for key in ids if key not in self and not self.is_live(key)]:
            del ids[session_hash]


def keep_live_sessions(queue: Any, capacity: int) -> None:
    """Put `LiveSessionMessages` in place of the Gradio queue `queue`'s message queues (keeping those it has)."""
    if isinstance(queue.pending_messages_per_session, LiveSessionMessages):
        return
    messages = LiveSessionMessages(queue, capacity)
    for session_hash, pending in queue.pending_messages_per_session.items():
        OrderedDict.__setitem__(messages, session_hash, pending)
    queue.pending_messages_per_session = messages
