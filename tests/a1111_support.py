"""What A1111's API answers an error with, for tests of our `/sdapi/v1` routes to compare whole bodies against."""

from __future__ import annotations


def a1111_error_body(status: int, detail: str) -> dict[str, str]:
    """A1111's error body (modules/api/api.py, `api_middleware`'s `handle_exception`) for an
    `HTTPException(status, detail)`: its type, detail, an empty body and its text as starlette writes it."""
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": f"{status}: {detail}"}
