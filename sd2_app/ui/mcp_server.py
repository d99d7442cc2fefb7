"""The app's adjustments of Gradio's MCP server, made when the server starts: only tools are callable, and image
arguments are described as this server takes them (`sd2_app.ui.mcp_schema`).

Gradio 6.31's MCP server names a tool for every named endpoint of the app (gradio/mcp.py,
`get_tool_to_endpoint`) and lists only those whose function is a tool (`list_tools` skips an `_mcp_type` other
than "tool"), but `call_tool` runs any name of that table. So a call named after one of the web UI's functions,
which `sd2_app.ui.mcp_tools.add_mcp_tools` hides from the list ("count", "rows", "current", "stop", ...), ran it;
one outside the queue ran with a session state Gradio made for that call alone (`call_tool`, a `SessionState`:
the settings of every component). `tools_only` removes those names from the server's table: a call by such a
name answers Gradio's "Unknown tool for this Gradio app: <name>", as any unknown name does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sd2_app.ui.lifespans import Lifespan, inner_state
from sd2_app.ui.mcp_schema import truthful_file_arguments

CALLABLE_TYPES = (None, "tool", "resource", "prompt")  # what Gradio's MCP server serves (`_mcp_type`; None: a tool)


def tools_only(server: Any) -> None:
    """Drop from Gradio's MCP server `server` the names of functions that it does not list (module docstring)."""
    table = server.tool_to_endpoint
    for name, endpoint in list(table.items()):
        block_fn = server.get_block_fn_from_endpoint_name(endpoint)
        fn = getattr(block_fn, "fn", None)
        if getattr(getattr(fn, "__func__", fn), "_mcp_type", None) not in CALLABLE_TYPES:
            del table[name]


def ready_mcp_server(blocks: Any, inner: Lifespan | None = None) -> Lifespan:
    """A FastAPI lifespan (`launch(app_kwargs={"lifespan": ...})`; Gradio runs it inside its own, after making
    its MCP server) that applies `tools_only` and `truthful_file_arguments` to `blocks`' MCP server, where it has
    one, around `inner` when given."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        if blocks.mcp_server_obj is not None:
            tools_only(blocks.mcp_server_obj)
            truthful_file_arguments(blocks.mcp_server_obj)
        async with inner_state(inner, app) as state:
            yield state

    return lifespan
