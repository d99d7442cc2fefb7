"""FastAPI lifespans (`launch(app_kwargs={"lifespan": ...})`; Gradio runs the app's inside its own) that wrap one
another: `Lifespan`, and `inner_state`, what a wrapping lifespan runs inside (Starlette's lifespan protocol:
starlette/routing.py, `Router.lifespan`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def inner_state(inner: Lifespan | None, app: Any) -> AsyncIterator[Any]:
    """`inner`'s lifespan of `app`, giving its state; with no `inner`, None."""
    if inner is None:
        yield None
    else:
        async with inner(app) as state:
            yield state
