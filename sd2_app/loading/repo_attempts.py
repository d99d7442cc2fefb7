"""Trying a checkpoint's repos in turn: which failures mean "try the next repo", the error that lists every
attempt, and the tokenizer read alone. Torch-free: the model manager's loader uses it, and so does a front end
that holds no models (its token counter reads the tokenizer only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from sd2_app.checkpoints.catalog import CheckpointSpec, is_local, tokenizer_spec
from sd2_app.errors import LoadError
from sd2_app.loading.hub import resolve_repo
from sd2_app.loading.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

# What a bad repo, folder or file raises: missing (LoadError, OSError), corrupt (SafetensorError, ValueError,
# KeyError in a config), or weights that do not fit the network (RuntimeError from the strict load).
# Out-of-memory is also a RuntimeError, so it is always caught first and handled on its own.
LOAD_FAILURES: tuple[type[BaseException], ...] = (
    LoadError,
    OSError,
    ValueError,
    KeyError,
    SafetensorError,
    RuntimeError,
)


class CheckpointUnavailable(LoadError):
    """No repo of a checkpoint could be loaded; `attempts` holds (repo, reason) for each one tried."""

    def __init__(self, key: str, attempts: list[tuple[str, str]]) -> None:
        self.attempts = attempts
        tried = "; ".join(f"{repo} ({why})" for repo, why in attempts) or "no repos configured"
        super().__init__(key, None, f"could not be loaded; tried {tried}")


def failure_reason(error: BaseException, repo: str) -> str:
    """What went wrong with `repo`, in words for the list of attempts (the repo itself is named there)."""
    if isinstance(error, LoadError):
        if error.repo.split("@")[0] == repo:
            return f"{error.file}: {error.reason}" if error.file else error.reason
        return str(error)
    return f"{type(error).__name__}: {error}"


def load_tokenizer_only(spec: CheckpointSpec, registry: Mapping[str, CheckpointSpec]) -> CLIPTokenizer:
    """The checkpoint's tokenizer from the first repo that has its small tokenizer/ folder (downloaded alone
    when needed): the token counter uses it before any model of the checkpoint is loaded. A single-file
    checkpoint's is its template's (`catalog.tokenizer_spec`; `registry` holds the template)."""
    spec = tokenizer_spec(spec, registry)
    attempts: list[tuple[str, str]] = []
    for repo in spec.repos:
        revision = None if is_local(repo) else spec.revision
        try:
            return load_tokenizer(resolve_repo(repo, ["tokenizer"], revision=revision))
        except LOAD_FAILURES as e:
            attempts.append((repo, failure_reason(e, repo)))
    raise CheckpointUnavailable(spec.key, attempts)
