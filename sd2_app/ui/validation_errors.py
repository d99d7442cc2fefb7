"""FastAPI's answer to a request body of the wrong shape, sendable whatever the body held.

A route's body is checked against its model before the route runs (Gradio's queue join and direct calls,
gradio/data_classes.py `PredictBody`), and FastAPI answers 422 with each error and the value it was given
(fastapi/exception_handlers.py, `request_validation_exception_handler`). A JSON body may hold 1e400 or NaN
(Python's json reads them as infinity and NaN), which the answer cannot hold (Starlette's JSONResponse writes
strict JSON): `{"fn_index": 1e400}` was an HTTP 500 with a traceback in the log for every such request.
`validation_error_answer` answers the same 422 with such numbers written as text.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse


def finite(value: Any) -> Any:
    """`value` (JSON-able data) with every infinite or NaN float written as text ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


async def validation_error_answer(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a body of the wrong shape, its numbers all sendable (module docstring)."""
    return JSONResponse(status_code=422, content={"detail": finite(jsonable_encoder(error.errors()))})
