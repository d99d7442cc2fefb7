"""Gradio's session store with at most --max-sessions-per-address sessions of one network address, without a
server (through the served app: tests/reliability/test_reliability_addresses.py,
`test_new_sessions_from_one_address_push_out_only_that_addresss_own`)."""

from __future__ import annotations

import asyncio

import gradio as gr

from sd2_app.api.addresses import ClientAddresses
from sd2_app.ui.session_addresses import (AddressBoundStateHolder, RequestAddressMiddleware, SessionsByAddress,
                                          answering_address)


def test_an_address_over_its_limit_loses_its_own_least_recently_used_session() -> None:
    sessions = SessionsByAddress(limit=3)
    assert [sessions.used(s, "203.0.113.7") for s in ("a1", "a2", "a3")] == [[], [], []]
    assert sessions.used("b1", "198.51.100.1") == []
    assert sessions.used("a1", "203.0.113.7") == []  # used again: now its most recent
    assert sessions.used("a4", "203.0.113.7") == ["a2"]  # its least recently used, not another address's b1
    assert sessions.of("203.0.113.7") == ["a3", "a1", "a4"] and sessions.of("198.51.100.1") == ["b1"]
    assert sessions.used("a3", None) == [] and sessions.of("203.0.113.7") == ["a1", "a4", "a3"]  # address unknown
    assert sessions.used("unowned", None) == [] and sessions.of("unknown") == []
    assert sessions.used("a1", "198.51.100.1") == []  # the visitor's address changed: it counts there now
    assert (sessions.of("203.0.113.7"), sessions.of("198.51.100.1")) == (["a4", "a3"], ["b1", "a1"])
    for session in ("a3", "a4", "b1", "a1"):
        sessions.forget(session)
    assert sessions._sessions == {} and sessions._address_of == {}  # nothing left behind
    off = SessionsByAddress(limit=0)
    assert [off.used(f"s{n}", "203.0.113.7") for n in range(5)] == [[]] * 5 and off.of("203.0.113.7") == []


def _holder(limit: int, capacity: int) -> AddressBoundStateHolder:
    with gr.Blocks() as demo:
        gr.Textbox()
    holder = AddressBoundStateHolder(limit)
    holder.set_blocks(demo)
    holder.capacity = capacity
    return holder


async def _asked(holder: AddressBoundStateHolder, session: str, forwarded_for: str,
                 later: list[asyncio.Task]) -> None:
    """A request through a trusted proxy from `forwarded_for` that uses `session` (as Gradio's routes do) and
    starts a task that outlives it (`later`), as Gradio's /startup-events starts the queue's."""

    async def after_the_request() -> str | None:
        await asyncio.sleep(0.01)
        return answering_address()

    async def route(scope: dict, receive: object, send: object) -> None:
        holder[session]
        later.append(asyncio.create_task(after_the_request()))

    scope = {"type": "http", "method": "POST", "path": "/", "client": ("10.0.0.2", 51000),
             "headers": [(b"x-forwarded-for", forwarded_for.encode())]}
    await RequestAddressMiddleware(route, ClientAddresses(trusted_hops=1))(scope, None, None)


def test_the_store_drops_an_addresss_own_oldest_and_everyones_past_capacity() -> None:
    holder, later = _holder(limit=2, capacity=5), []

    async def visits() -> list[str | None]:
        await _asked(holder, "visitor", "203.0.113.40", later)
        for n in range(4):
            await _asked(holder, f"flood-{n}", "198.51.100.66", later)
        assert list(holder.session_data) == ["visitor", "flood-2", "flood-3"]
        assert holder.by_address.of("198.51.100.66") == ["flood-2", "flood-3"]
        holder["visitor"]  # the queue's own work, in no request: the session keeps its address
        assert holder.by_address.of("203.0.113.40") == ["visitor"] and list(holder.session_data)[-1] == "visitor"
        for n, address in enumerate(("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1", "203.0.113.9")):
            await _asked(holder, f"other-{n}", address, later)  # one /64 twice; past capacity: everyone's oldest
        return await asyncio.gather(*later)

    assert asyncio.run(visits()) == [None] * 9  # tasks a request started find no address once it is answered
    assert list(holder.session_data) == ["visitor", "other-0", "other-1", "other-2", "other-3"]
    assert holder.by_address.of("198.51.100.66") == [] and set(holder.time_last_used) == set(holder.session_data)
    assert holder.by_address.of("2001:db8:1:2::/64") == ["other-0", "other-1"]
