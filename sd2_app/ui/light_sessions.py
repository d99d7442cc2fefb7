"""A new session costs what it uses: Gradio's per-session state without a copy of every component's settings.

Gradio keeps a `SessionState` per session hash a client names (gradio/state_holder.py, `StateHolder`), and its
constructor computes the settings of every component of the app (`config_values`: `config_for_block` of each
block), several hundred here, most of which the session never changes. Any client can name a new session hash
with every request, so each such request cost that whole copy in CPU and memory, up to `--max-sessions` of them.

`LightSessionState` starts with none of them: Gradio fills in a component's settings when an event of the session
changes it (`SessionState.__setitem__`, `_update_config`, `_update_value_in_config`, which computes a missing
entry itself), and the only reader of them all, the deep-link route (gradio/routes.py, `deep_link`, through
`SessionState.components`), gets the missing ones computed when it asks. `LightStateHolder` makes its sessions
of that kind; `light_sessions_lifespan` puts one in place of the server's holder when the server starts.

A call that names no session (POST /gradio_api/run/<name> without a session hash) got a `SessionState` of
Gradio's own class for that call alone, outside the holder (gradio/route_utils.py, `restore_session_state`), and
paid the whole copy each time (what that cost, and what a one-call session costs: docs/PERFORMANCE.md).
`one_call_session` gives such a call's body a session hash of its own, `ONE_CALL_PREFIX` and a random part (the
direct-call middleware, `sd2_app.ui.event_checks`, applies it); the holder makes a `LightSessionState` for a hash
of that kind and keeps none, so the call neither keeps a session nor pushes out anybody's. (Gradio's MCP server
builds one of its own for a tool call outside the queue, gradio/mcp.py `call_tool`: this app's tools are queued,
and nothing else is callable as a tool, `sd2_app.ui.mcp_server`.)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from gradio.state_holder import SessionState, StateHolder

from sd2_app.ui.lifespans import Lifespan, inner_state

ONE_CALL_PREFIX = "sd2-one-call-"  # a session hash the app gives a call that names none; such sessions are not kept


def one_call_session(data: bytes, body: dict[str, Any]) -> bytes:
    """A direct call's JSON body `data` (`body` parsed) with a session hash of its own when it names none (module
    docstring), else `data`. The member is written last, so it is the one a JSON parser keeps where `data` has a
    null one; the rest of the bytes stay as they came. A body in another encoding than UTF-8 (JSON allows UTF-16
    and UTF-32) is left as it is."""
    text = data.strip()
    if body.get("session_hash") is not None or not (text.startswith(b"{") and text.endswith(b"}")):
        return data
    member = f'"session_hash": "{ONE_CALL_PREFIX}{uuid.uuid4().hex}"'.encode()
    return text[:-1].rstrip() + (b", " if body else b"") + member + b"}"


class _NoBlocksToCopy:
    """What `SessionState.__init__` reads of the Blocks: the default config to copy, and no blocks whose settings
    it computes ahead."""

    def __init__(self, blocks: Any) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict[int, Any] = {}


class LightSessionState(SessionState):
    """Gradio's `SessionState` whose component settings are computed when first needed (module docstring)."""

    def __init__(self, blocks: Any) -> None:
        super().__init__(_NoBlocksToCopy(blocks))
        self._app_blocks = blocks.blocks

    @property
    def components(self) -> Iterator[dict]:
        """Every component's settings, as Gradio's: those not computed yet are computed now."""
        for key, block in self.blocks_config.blocks.items():
            if key in self._app_blocks and key not in self.config_values:
                self.config_values[key] = self.blocks_config.config_for_block(key, [], block)
        return super().components


class LightStateHolder(StateHolder):
    """Gradio's `StateHolder` whose new sessions are `LightSessionState`s; a one-call session (`one_call_session`)
    is made for its call and not kept."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id.startswith(ONE_CALL_PREFIX):
            return LightSessionState(self.blocks)
        if session_id not in self.session_data:
            self.session_data[session_id] = LightSessionState(self.blocks)
        return super().__getitem__(session_id)


def light_sessions_lifespan(inner: Lifespan | None = None,
                            make_holder: Callable[[], LightStateHolder] = LightStateHolder) -> Lifespan:
    """A FastAPI lifespan (`launch(app_kwargs={"lifespan": ...})`) that gives Gradio's server app a
    `LightStateHolder` (`make_holder()`) for the same Blocks when it starts, before any session exists, around
    `inner` when given."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        holder = make_holder()
        holder.set_blocks(app.state_holder.blocks)
        app.state_holder = holder
        async with inner_state(inner, app) as state:
            yield state

    return lifespan
