"""Loading one checkpoint into a ModelManager: try each repo in turn, share parts, clean up on failure.

Kept apart from the manager's tier logic because this is the part that talks to the Hub and the disk.
Every failure of one repo is recorded with its reason; when all fail, the error lists them all.
A failed attempt leaves the manager as it was: parts it loaded are freed, parts it borrowed lose the
reference it took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from safetensors import SafetensorError

from sd2_app.loading.hub import LoadProgressFn
from sd2_app.errors import LoadError
from sd2_app.manager.memory import OOM_ERRORS, gib, module_bytes
from sd2_app.manager.identity import HashCache
from sd2_app.manager.plan import Plan, load_extras, load_part, make_plan, subfolders
from sd2_app.manager.state import Entry, Part
from sd2_app.checkpoints.catalog import CheckpointSpec, is_local

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

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


class LoadTarget(Protocol):
    """What loading may do to the model manager (`ModelManager` implements it); nothing else of its state.

    Callers hold the manager's job lock.
    """

    device: torch.device
    dtype: torch.dtype
    hashes: HashCache

    def find_part(self, identity: str) -> Part | None: ...

    def make_room(self, key: str, keep: set[str], needed: int) -> None: ...

    def keep_part(self, part: Part, user: str) -> None: ...

    def register(self, entry: Entry) -> None: ...

    def abandon(self, key: str, identities: list[str]) -> None: ...

    def free_memory(self) -> None: ...


class CheckpointUnavailable(LoadError):
    """No repo of a checkpoint could be loaded; `attempts` holds (repo, reason) for each one tried."""

    def __init__(self, key: str, attempts: list[tuple[str, str]]) -> None:
        self.attempts = attempts
        tried = "; ".join(f"{repo} ({why})" for repo, why in attempts) or "no repos configured"
        super().__init__(key, None, f"could not be loaded; tried {tried}")


class OutOfMemoryDuringLoad(LoadError):
    """The device ran out of memory loading a checkpoint, even after everything else was moved off it."""


def _reason(error: BaseException, repo: str) -> str:
    if isinstance(error, LoadError):
        if error.repo.split("@")[0] == repo:
            return f"{error.file}: {error.reason}" if error.file else error.reason
        return str(error)
    return f"{type(error).__name__}: {error}"


def _load_plan(target: LoadTarget, spec: CheckpointSpec, plan: Plan, revision: str | None,
               report: LoadProgressFn) -> None:
    """Make room, load or borrow every part, then register the checkpoint; undo everything on failure."""
    key = spec.key
    identities = [p.identity for p in plan.parts]
    existing = {i: part for i in identities if (part := target.find_part(i)) is not None}
    needed = sum(p.estimate for p in plan.parts if p.identity not in existing)
    needed += sum(part.nbytes for part in existing.values() if part.tier != "device")
    target.make_room(key, set(identities), needed)
    done = False
    try:
        for step, planned in enumerate(plan.parts, start=1):
            part = target.find_part(planned.identity)
            if part is None:
                report(f"{key}: loading {planned.name} ({gib(planned.estimate)}) [{step}/{len(plan.parts)}]")
                start = time.perf_counter()
                module, value = load_part(planned.name, plan.folder, target.device, target.dtype)
                part = Part(planned.identity, planned.name, module, value, module_bytes(module), "device")
                logger.info(
                    "%s: loaded %s (%s) on %s in %.2f s",
                    key, planned.name, gib(part.nbytes), target.device, time.perf_counter() - start,
                )  # fmt: skip
            else:
                report(f"{key}: sharing {planned.name} with {', '.join(sorted(part.users)) or 'nothing'}")
            target.keep_part(part, key)
        extras = load_extras(spec, plan.folder)
        parts = {p.name: p.identity for p in plan.parts}
        target.register(Entry(key, plan.repo, revision, plan.folder, parts, extras, "device", last_used=0))
        done = True
    finally:
        if not done:
            target.abandon(key, identities)


def _load_with_oom_retry(
    target: LoadTarget, spec: CheckpointSpec, plan: Plan, revision: str | None, report: LoadProgressFn
) -> None:
    try:
        _load_plan(target, spec, plan, revision, report)
        return
    except OOM_ERRORS as first:
        logger.warning("%s: out of memory while loading (%s); moving everything else off and retrying", spec.key, first)
        report(f"{spec.key}: out of memory; moving other models off {target.device} and retrying")
        target.free_memory()
    try:
        _load_plan(target, spec, plan, revision, report)
    except OOM_ERRORS as second:
        needs = sum(p.estimate for p in plan.parts)
        raise OutOfMemoryDuringLoad(
            plan.repo,
            None,
            f"out of memory loading {spec.key} (~{gib(needs)}) on {target.device}, "
            "even after moving every other model off it",
        ) from second


def load_checkpoint(target: LoadTarget, spec: CheckpointSpec, on_progress: LoadProgressFn | None) -> None:
    """Load `spec` into `target` (the model manager) from the first of its repos that works; raise
    CheckpointUnavailable if none does."""

    def report(message: str) -> None:
        if on_progress is not None:
            on_progress(message)

    from sd2_app.loading import resolve_repo

    attempts: list[tuple[str, str]] = []
    for repo in spec.repos:
        is_hub = not is_local(repo)
        revision = spec.revision if is_hub else None
        report(f"{spec.key}: trying {repo}" + (f"@{revision}" if revision else ""))
        try:
            folder = resolve_repo(repo, subfolders(spec), revision=revision, on_progress=on_progress)
            plan = make_plan(spec, repo, folder, target.dtype, target.hashes, is_hub=is_hub)
            _load_with_oom_retry(target, spec, plan, revision, report)
        except OutOfMemoryDuringLoad:
            raise
        except OOM_ERRORS:
            raise
        except LOAD_FAILURES as e:
            reason = _reason(e, repo)
            attempts.append((repo, reason))
            logger.warning("%s: %s failed: %s", spec.key, repo, reason)
            continue
        logger.info("%s: loaded from %s%s", spec.key, repo, f"@{revision}" if revision else "")
        report(f"{spec.key}: ready ({repo})")
        return
    raise CheckpointUnavailable(spec.key, attempts)


def load_tokenizer_only(spec: CheckpointSpec) -> CLIPTokenizer:
    """The checkpoint's tokenizer from the first repo that has its small tokenizer/ folder (downloaded alone
    when needed): the token counter uses it before any model of the checkpoint is loaded."""
    from sd2_app.loading import load_tokenizer, resolve_repo

    attempts: list[tuple[str, str]] = []
    for repo in spec.repos:
        revision = None if is_local(repo) else spec.revision
        try:
            return load_tokenizer(resolve_repo(repo, ["tokenizer"], revision=revision))
        except LOAD_FAILURES as e:
            attempts.append((repo, _reason(e, repo)))
    raise CheckpointUnavailable(spec.key, attempts)
