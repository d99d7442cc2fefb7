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
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from sd2_app.loading.hub import LoadProgressFn
from sd2_app.errors import LoadError
from sd2_app.manager.memory import module_bytes
from sd2_app.manager.plan import Plan, load_extras, load_part, make_plan, subfolders
from sd2_app.manager.state import Entry, Part
from sd2_app.checkpoints.catalog import CheckpointSpec, is_local

if TYPE_CHECKING:
    from sd2_app.manager.core import ModelManager

logger = logging.getLogger(__name__)

OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)
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


class OutOfMemoryDuringLoad(LoadError):
    """The device ran out of memory loading a checkpoint, even after everything else was moved off it."""


def _reason(error: BaseException, repo: str) -> str:
    if isinstance(error, LoadError):
        if error.repo.split("@")[0] == repo:
            return f"{error.file}: {error.reason}" if error.file else error.reason
        return str(error)
    return f"{type(error).__name__}: {error}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _load_plan(
    manager: ModelManager, spec: CheckpointSpec, plan: Plan, revision: str | None, report: LoadProgressFn
) -> None:
    """Make room, load or borrow every part, then register the checkpoint; undo everything on failure."""
    key = spec.key
    identities = [p.identity for p in plan.parts]
    existing = {i: manager._parts[i] for i in identities if i in manager._parts}
    needed = sum(p.estimate for p in plan.parts if p.identity not in existing)
    needed += sum(part.nbytes for part in existing.values() if part.tier != "device")
    manager._make_room(key, set(identities), needed)
    taken: list[str] = []
    done = False
    try:
        for step, planned in enumerate(plan.parts, start=1):
            part = manager._parts.get(planned.identity)
            if part is None:
                report(f"{key}: loading {planned.name} ({_gib(planned.estimate)}) [{step}/{len(plan.parts)}]")
                start = time.perf_counter()
                module, value = load_part(planned.name, plan.folder, manager.device, manager.dtype)
                part = Part(planned.identity, planned.name, module, value, module_bytes(module), "device")
                with manager._state_lock:
                    manager._parts[planned.identity] = part
                logger.info(
                    "%s: loaded %s (%s) on %s in %.2f s",
                    key, planned.name, _gib(part.nbytes), manager.device, time.perf_counter() - start,
                )  # fmt: skip
            else:
                report(f"{key}: sharing {planned.name} with {', '.join(sorted(part.users)) or 'nothing'}")
            with manager._state_lock:
                part.users.add(key)
            taken.append(planned.identity)
        extras = load_extras(spec, plan.folder)
        parts = {p.name: p.identity for p in plan.parts}
        entry = Entry(key, plan.repo, revision, plan.folder, parts, extras, "device", last_used=0)
        with manager._state_lock:
            manager._entries[key] = entry
        manager._sync(identities)  # borrowed parts that were offloaded come back to the device
        done = True
    finally:
        if not done:
            with manager._state_lock:
                manager._entries.pop(key, None)
                for identity in taken:
                    manager._parts[identity].users.discard(key)
            manager._sync(identities)


def _load_with_oom_retry(
    manager: ModelManager, spec: CheckpointSpec, plan: Plan, revision: str | None, report: LoadProgressFn
) -> None:
    try:
        _load_plan(manager, spec, plan, revision, report)
        return
    except OOM_ERRORS as first:
        logger.warning("%s: out of memory while loading (%s); moving everything else off and retrying", spec.key, first)
        report(f"{spec.key}: out of memory; moving other models off {manager.device} and retrying")
        manager._free_device(keep=None)
    try:
        _load_plan(manager, spec, plan, revision, report)
    except OOM_ERRORS as second:
        needs = sum(p.estimate for p in plan.parts)
        raise OutOfMemoryDuringLoad(
            plan.repo,
            None,
            f"out of memory loading {spec.key} (~{_gib(needs)}) on {manager.device}, "
            "even after moving every other model off it",
        ) from second


def load_checkpoint(manager: ModelManager, spec: CheckpointSpec, on_progress: LoadProgressFn | None) -> None:
    """Load `spec` into `manager` from the first of its repos that works; raise CheckpointUnavailable if none."""

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
            plan = make_plan(spec, repo, folder, manager.dtype, manager._hashes, is_hub=is_hub)
            _load_with_oom_retry(manager, spec, plan, revision, report)
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
