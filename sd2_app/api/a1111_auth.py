"""HTTP basic auth of the A1111-compatible API (`--api-auth user:pass[,user2:pass2]`, as A1111's flag)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials


def parse_auth(value: str | None) -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` -> pairs; a pair without ':' or with an empty part is an error."""
    pairs = []
    for item in (value or "").split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth wants user:password pairs separated by commas, got {item.strip()!r}")
        pairs.append((user, password))
    return pairs


def basic_auth(pairs: Sequence[tuple[str, str]]) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request's basic credentials are one of `pairs` (none: open)."""
    basic = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if not pairs:
            return
        if credentials is not None:
            for user, password in pairs:
                user_ok = secrets.compare_digest(credentials.username.encode(), user.encode())
                if user_ok & secrets.compare_digest(credentials.password.encode(), password.encode()):
                    return
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return check
