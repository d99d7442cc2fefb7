"""How our errors reach A1111 API clients: the one mapping of refusals and failures onto HTTP statuses, used by
every route that runs or reads something for a client (`a1111_routes.py`, `a1111_catalog.py`), and A1111's own
error body for what this server does not offer (`a1111_error`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from sd2_app.errors import Busy, InvalidRequest, LoadError

log = logging.getLogger(__name__)

T = TypeVar("T")


def errors_as_http(call: Callable[[], T]) -> T:
    """Our refusals as 422 with the message (503 for `Busy`: nothing ran, try again later); load failures as 500
    with a generic message (detail in the log)."""
    try:
        return call()
    except Busy as error:  # nothing ran: as the API's own refusal when the app is full
        raise HTTPException(503, str(error)) from error
    except InvalidRequest as error:
        raise HTTPException(422, str(error)) from error
    except LoadError as error:
        log.warning("A1111 API: load failed: %s", error)
        raise HTTPException(500, "The model could not be loaded; the operator has the details.") from error


def a1111_error(status: int, detail: str) -> JSONResponse:
    """An error in the body A1111's API answers its errors with (modules/api/api.py, `api_middleware`'s
    `handle_exception`, for an `HTTPException(status, detail)`): the exception's type, its detail, an empty `body`
    and the exception's text ("<status>: <detail>", as starlette's `HTTPException.__str__` writes it)."""
    error = HTTPException(status, detail)
    return JSONResponse({"error": type(error).__name__, "detail": detail, "body": "", "errors": str(error)},
                        status_code=status)
