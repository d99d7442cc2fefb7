"""Sessions per network address: one address's new sessions push out its own oldest, never another's.

Gradio keeps each session's state (`gr.State` values, component settings) in a capacity-bounded store that drops
the least recently used session of anyone once it is full (gradio/state_holder.py, `StateHolder.update`). A
client that names a new session hash with each request (raw HTTP makes that trivial) thereby pushed out every
real visitor's session: their "Reuse last seed", their tabs' settings, silently reset.

`AddressBoundStateHolder` also keeps each network address's sessions in their order of use, at most `limit` of
them (--max-sessions-per-address): past it, that address's least recently used session goes. So one address holds
at most `limit` of the store's places, and pushing out other visitors' sessions takes as many addresses as the
store has places over `limit` (an IPv6 client counts per /64: `sd2_app.api.addresses`).

The store is reached with a session hash alone (`StateHolder.__getitem__`, from Gradio's routes: the queue's join,
`/run`, `/call`, `/component_server`), so the address comes from the request being answered:
`RequestAddressMiddleware` names it, with the app's own reading of the address (`ClientAddresses.of`, the one
the per-address job limit uses), in a context variable for the time the request is answered. Work that outlives
its request (the queue runs events in tasks of its own) finds no address there, and a session it uses keeps the
address it had.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from starlette.requests import Request as StarletteRequest

from sd2_app.api.addresses import ClientAddresses
from sd2_app.ui.light_sessions import LightStateHolder
from sd2_app.ui.visitors import ASGIApp, Message, Scope

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Answering:
    """The address of a request while it is answered; None once it is (tasks it started keep this object)."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address: str | None = address


# A request's own value (each request's context has its own), not state shared between requests.
_ANSWERING: ContextVar[_Answering | None] = ContextVar("sd2_answering", default=None)


def answering_address() -> str | None:
    """The network address of the request being answered, or None outside one."""
    answering = _ANSWERING.get()
    return answering.address if answering is not None else None


class RequestAddressMiddleware:
    """ASGI middleware: the request's network address is `answering_address()` while it is answered."""

    def __init__(self, app: ASGIApp, addresses: ClientAddresses) -> None:
        self.app = app
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answering = _Answering(self.addresses.of(StarletteRequest(scope)))
        token = _ANSWERING.set(answering)
        try:
            await self.app(scope, receive, send)
        finally:
            answering.address = None  # a task this request started (Gradio's queue: at /startup-events) outlives it
            _ANSWERING.reset(token)


class SessionsByAddress:
    """Each network address's sessions, least recently used first, at most `limit` of each (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._address_of: dict[str, str] = {}
        self._sessions: dict[str, OrderedDict[str, None]] = {}

    def used(self, session: str, address: str | None) -> list[str]:
        """`session` was used just now by a request from `address` (None: not known, the session keeps the
        address it had); the sessions that address now holds over `limit`, its least recently used, which it
        forgets."""
        address = address or self._address_of.get(session)
        if address is None or not self.limit:
            return []
        if self._address_of.get(session) != address:
            self.forget(session)  # a new session, or a visitor whose address changed (a phone off Wi-Fi)
            self._address_of[session] = address
        sessions = self._sessions.setdefault(address, OrderedDict())
        sessions[session] = None
        sessions.move_to_end(session)
        over = []
        while len(sessions) > self.limit:
            oldest, _ = sessions.popitem(last=False)
            del self._address_of[oldest]
            over.append(oldest)
        return over

    def forget(self, session: str) -> None:
        address = self._address_of.pop(session, None)
        if address is not None:
            sessions = self._sessions[address]
            sessions.pop(session, None)
            if not sessions:
                del self._sessions[address]  # no key stays behind for an address that has no session left

    def of(self, address: str) -> list[str]:
        """The sessions of `address`, least recently used first."""
        return list(self._sessions.get(address, ()))


class AddressBoundStateHolder(LightStateHolder):
    """Gradio's session store (`LightStateHolder`) whose sessions of one network address are at most `limit`,
    that address's least recently used going first (module docstring)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.by_address = SessionsByAddress(limit)

    def update(self, session_id: str) -> None:
        """Called by `StateHolder.__getitem__` on each use of a session: it becomes the most recently used of the
        store and of its address; past the address's limit its own least recently used go, past the store's
        capacity (`launch(state_session_capacity=...)`, --max-sessions) the store's."""
        with self.lock:
            if session_id in self.session_data:
                self.session_data.move_to_end(session_id)
                for over in self.by_address.used(session_id, answering_address()):
                    self._drop(over)
            while len(self.session_data) > self.capacity:
                self._drop(next(iter(self.session_data)))

    def _drop(self, session_id: str) -> None:
        self.session_data.pop(session_id, None)
        self.time_last_used.pop(session_id, None)
        self.by_address.forget(session_id)
