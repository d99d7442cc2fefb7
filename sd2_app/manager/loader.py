"""Loading one checkpoint into a ModelManager: try each repo in turn, share parts, clean up on failure.

Kept apart from the manager's tier logic because this is the part that talks to the Hub and the disk.
Every failure of one repo is recorded with its reason; when all fail, the error lists them all.
A failed attempt leaves the manager as it was: parts it loaded are freed, parts it borrowed lose the
reference it took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from sd2_app.loading.hub import LoadProgressFn, resolve_configs, resolve_repo
from sd2_app.loading.repo_attempts import LOAD_FAILURES, CheckpointUnavailable, failure_reason
from sd2_app.errors import LoadError
from sd2_app.manager.memory import OOM_ERRORS, gib, module_bytes
from sd2_app.manager.identity import HashCache
from sd2_app.manager.plan import Plan, load_extras, load_part, make_plan, subfolders
from sd2_app.manager.state import Entry, Part
from sd2_app.checkpoints.catalog import CheckpointSpec, is_checkpoint_file, is_local

logger = logging.getLogger(__name__)

class LoadTarget(Protocol):
    """What loading may do to the model manager (`ModelManager` implements it); nothing else of its state.

    Callers hold the manager's job lock.
    """

    device: torch.device
    dtype: torch.dtype
    hashes: HashCache
    registry: Mapping[str, CheckpointSpec]  # the checkpoints a single file borrows configs from
    cache_dir: Path  # where single files are converted

    def find_part(self, identity: str) -> Part | None: ...

    def make_room(self, key: str, keep: set[str], needed: int) -> None: ...

    def keep_part(self, part: Part, user: str) -> None: ...

    def register(self, entry: Entry) -> None: ...

    def abandon(self, key: str, identities: list[str]) -> None: ...

    def free_memory(self) -> None: ...


class OutOfMemoryDuringLoad(LoadError):
    """The device ran out of memory loading a checkpoint, even after everything else was moved off it."""


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
        target.register(Entry(key, plan.repo, revision, plan.folder, parts, extras, "device", last_used=0,
                              model_hash=plan.model_hash))
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


def _file_folder(target: LoadTarget, path: Path, report: LoadProgressFn) -> tuple[Path, str]:
    """The Hub-layout folder of a single-file checkpoint, its configs from the first repo of the template
    checkpoint that has them (sd2_app/loading/single_file.py), and the file's A1111 short hash (its sha256's
    first 10 hex digits, which A1111 writes as "Model hash"; the hash cache keeps it between runs)."""
    from sd2_app.loading.single_file import prepare

    def configs_of(key: str) -> Path:
        template = target.registry[key]
        failures = []
        for repo in template.repos:
            try:
                return resolve_configs(repo, revision=None if is_local(repo) else template.revision)
            except LoadError as e:
                failures.append(f"{repo}: {failure_reason(e, repo)}")
        raise LoadError(str(path), None, f"no configs from the {key} checkpoint ({'; '.join(failures)})")

    folder = prepare(path, configs_of, target.cache_dir, report)
    report(f"{path.name}: hashing")
    return folder, target.hashes.sha256(path)[:10]


def load_checkpoint(target: LoadTarget, spec: CheckpointSpec, on_progress: LoadProgressFn | None) -> None:
    """Load `spec` into `target` (the model manager) from the first of its repos that works; raise
    CheckpointUnavailable if none does."""

    def report(message: str) -> None:
        if on_progress is not None:
            on_progress(message)

    attempts: list[tuple[str, str]] = []
    for repo in spec.repos:
        is_hub = not is_local(repo)
        revision = spec.revision if is_hub else None
        report(f"{spec.key}: trying {repo}" + (f"@{revision}" if revision else ""))
        try:
            model_hash = ""
            if is_checkpoint_file(repo):
                (folder, model_hash), is_hub = _file_folder(target, Path(repo), report), False
            else:
                folder = resolve_repo(repo, subfolders(spec), revision=revision, on_progress=on_progress)
            plan = replace(make_plan(spec, repo, folder, target.dtype, target.hashes, is_hub=is_hub),
                           model_hash=model_hash)
            _load_with_oom_retry(target, spec, plan, revision, report)
        except OutOfMemoryDuringLoad:
            raise
        except OOM_ERRORS:
            raise
        except LOAD_FAILURES as e:
            reason = failure_reason(e, repo)
            attempts.append((repo, reason))
            logger.warning("%s: %s failed: %s", spec.key, repo, reason)
            continue
        logger.info("%s: loaded from %s%s", spec.key, repo, f"@{revision}" if revision else "")
        report(f"{spec.key}: ready ({repo})")
        return
    raise CheckpointUnavailable(spec.key, attempts)
