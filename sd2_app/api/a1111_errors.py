"""How our errors reach A1111 API clients: the one mapping of refusals and failures onto HTTP statuses, used by
every route that runs or reads something for a client (`a1111_routes.py`, `a1111_catalog.py`), and A1111's own
error body (`a1111_error`), which every error of the API's routes is answered with (`A1111Route`), as A1111's
`api_middleware` answers them: clients that read its four fields (modelfusion's `Automatic1111Error`, for one)
find them on each refusal, and those that read `detail` find our message there as before."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from sd2_app.errors import Busy, InvalidRequest, LoadError

log = logging.getLogger(__name__)

FAILED_MESSAGE = "The server failed on this request; the operator has the details."

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


def a1111_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the body A1111's API answers its errors with (modules/api/api.py, `api_middleware`'s
    `handle_exception`, for an `HTTPException(status, detail)`): the exception's type, its detail, an empty `body`
    and the exception's text ("<status>: <detail>", as starlette's `HTTPException.__str__` writes it)."""
    error = HTTPException(status, detail)
    return JSONResponse({"error": type(error).__name__, "detail": detail, "body": "", "errors": str(error)},
                        status_code=status, headers=headers)


class A1111Route(APIRoute):
    """A route of the A1111 API whose errors come in A1111's body (`a1111_error`): a refusal raised by the route
    or by its dependencies (basic auth's 401 keeps its `WWW-Authenticate` header) with its status and message, and
    anything unexpected as 500 with a generic message (the traceback goes to the log, not to the client, where
    A1111 sends the exception's text). A body that is not JSON stays FastAPI's 422 with its list of problems, as
    in A1111, whose handlers leave `RequestValidationError` to FastAPI."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def answered(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as error:
                return a1111_error(error.status_code, str(error.detail), error.headers)
            except RequestValidationError:
                raise
            except Exception:  # the API boundary: any failure is logged and answered, the server keeps serving
                log.exception("A1111 API: %s %s failed", request.method, request.url.path)
                return a1111_error(500, FAILED_MESSAGE)

        return answered
