"""ModelManager: the one piece of shared mutable state. Lazy loads, two memory tiers, shared parts, one lock.

Memory model: a checkpoint is a set of parts (text encoder, VAE, UNet, depth model) known by content
hash. A part lives on the device while any checkpoint using it is on the device, in (pinned) host memory
while its users are all offloaded, and is dropped when no loaded checkpoint uses it. Budgets are in bytes
of parameters and buffers; when a load would exceed the device budget, the least recently used
checkpoints are offloaded, and when the host budget overflows, the least recently used offloaded ones are
dropped. On CPU both tiers are host memory, but the same accounting runs, which is what the tests check.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sd2_app.accel import AccelOptions, Accelerator, setup_backends
from sd2_app.checkpoints.components import Components
from sd2_app.loading.hub import LoadProgressFn
from sd2_app.errors import InvalidRequest, LoadError
from sd2_app.fork_safety import renew_in_forked_child
from sd2_app.manager import memory
from sd2_app.manager.derived import DerivedModules
from sd2_app.manager.memory import OOM_ERRORS, gib
from sd2_app.manager.identity import HashCache, default_cache_dir
from sd2_app.loading.repo_attempts import load_tokenizer_only
from sd2_app.manager.loader import OutOfMemoryDuringLoad, load_checkpoint
from sd2_app.manager.state import Entry, MemorySummary, ModelStatus, Part, Tier
from sd2_app.checkpoints.catalog import REGISTRY, CheckpointSpec

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)


class ModelManager:
    """Loads checkpoints on first use and keeps what fits on the device; one GPU job at a time.

    `device_budget` / `offload_budget` are bytes (defaults: device memory less a margin for activations;
    a quarter of the RAM). `registry` is the (already overridden) checkpoint table. `tiny` points every
    checkpoint at tiny random-weight repos (written on first use under `cache_dir`/tiny), so the whole app
    runs without the Hub. `cache_dir` (default $SD2APP_CACHE or ~/.cache/sd2-app) also keeps the hashes
    of local files between runs.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        registry: Mapping[str, CheckpointSpec] | None = None,
        device_budget: int | None = None,
        offload_budget: int | None = None,
        preload: Sequence[str] = (),
        tiny: bool = False,
        cache_dir: Path | None = None,
        use_pinned_memory: bool | None = None,
        accel: AccelOptions | None = None,
    ) -> None:
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            logger.warning("%s on CPU is slow and lossy; the default there is float32", self.dtype)
        self.cache_dir = cache_dir = cache_dir or default_cache_dir()
        self.registry: dict[str, CheckpointSpec] = dict(registry if registry is not None else REGISTRY)
        if tiny:
            from sd2_app.testing.tiny import tiny_checkpoints  # writes the tiny repos on first use only

            self.registry = tiny_checkpoints(self.registry, cache_dir)
        self.device_budget = device_budget if device_budget is not None else memory.default_device_budget(self.device)
        self.offload_budget = offload_budget if offload_budget is not None else memory.default_offload_budget()
        self._pin = self.device.type == "cuda" if use_pinned_memory is None else use_pinned_memory
        self.hashes = HashCache(cache_dir / "hashes.json")  # content hashes of local files, kept between runs
        self._job_lock = threading.RLock()  # one GPU job (or load/offload) at a time
        self._state_lock = threading.Lock()  # short: guards the dicts so status() never waits for a job
        renew_in_forked_child(self, _job_lock=threading.RLock, _state_lock=threading.Lock)  # ZeroGPU forks workers
        self._entries: dict[str, Entry] = {}
        self._parts: dict[str, Part] = {}
        self._errors: dict[str, str] = {}
        self._clock = 0
        self._active: str | None = None  # key of the job holding the lock
        # Speed switches (CUDA graphs, fused ops, compile) apply on CUDA only; on CPU the modules run as loaded.
        self._accel = Accelerator(accel) if self.device.type == "cuda" else None
        self._derived = DerivedModules(then=self._accel.on_moved if self._accel is not None else None)
        self._on_moved: Callable[[torch.nn.Module], None] = self._derived.moved  # a part moved or is freed
        if self._accel is not None:
            setup_backends(self.device, allow_tf32=self._accel.options.tf32,
                           cudnn_benchmark=self._accel.options.cudnn_benchmark)
        for key in preload:
            self.load(key)

    def add_checkpoints(self, specs: Mapping[str, CheckpointSpec]) -> None:
        """Make more checkpoints loadable (the operator's allow-listed repos); known keys stay as they are."""
        with self._state_lock:
            for key, spec in specs.items():
                self.registry.setdefault(key, spec)

    # ---- views -------------------------------------------------------------------------------------
    def _spec(self, key: str) -> CheckpointSpec:
        if key not in self.registry:
            raise InvalidRequest(f"unknown checkpoint {key!r}; known: {', '.join(self.registry)}")
        return self.registry[key]

    def _used(self, tier: Tier) -> int:
        return sum(part.nbytes for part in self._parts.values() if part.tier == tier)

    def status(self) -> list[ModelStatus]:
        """One line per registry checkpoint, in registry order; never waits for a running job."""
        with self._state_lock:
            rows = []
            for key, spec in self.registry.items():
                entry = self._entries.get(key)
                if entry is None:
                    rows.append(ModelStatus(key, spec.label, "none", "", None, None, 0, (), self._errors.get(key)))
                    continue
                parts = [self._parts[identity] for identity in entry.parts.values()]
                where = str(self.device) if entry.tier == "device" else ("pinned cpu" if self._pin else "cpu")
                shared = tuple(part.name for part in parts if len(part.users) > 1)
                size = sum(part.nbytes for part in parts)
                rows.append(ModelStatus(key, spec.label, entry.tier, where, entry.repo, entry.revision, size, shared))
            return rows

    def report(self) -> tuple[list[ModelStatus], MemorySummary]:
        """`status()` and `memory()` together (the `ModelHost` view the Service shows)."""
        return self.status(), self.memory()

    def memory(self) -> MemorySummary:
        """Bytes used per tier against the budgets (and the driver's free memory on CUDA)."""
        with self._state_lock:
            device_used, offload_used = self._used("device"), self._used("offloaded")
        return MemorySummary(
            str(self.device),
            device_used,
            self.device_budget,
            memory.device_free_bytes(self.device),
            offload_used,
            self.offload_budget,
        )

    def loaded_keys(self, tier: Tier | None = None) -> list[str]:
        """Loaded checkpoints, least recently used first (optionally only those in `tier`)."""
        with self._state_lock:
            entries = sorted(self._entries.values(), key=lambda e: e.last_used)
            return [e.key for e in entries if tier is None or e.tier == tier]

    def tokenizer(self, key: str) -> CLIPTokenizer:
        """`key`'s tokenizer without loading its models: the loaded one, else read on its own (raises
        CheckpointUnavailable). Never waits for the GPU job lock."""
        with self._state_lock:
            entry = self._entries.get(key)
        return entry.extras.tokenizer if entry is not None else load_tokenizer_only(self._spec(key), self.registry)

    # ---- public operations ---------------------------------------------------------------------------
    @contextmanager
    def use(self, key: str, on_progress: LoadProgressFn | None = None) -> Iterator[Components]:
        """Hold the GPU for one job on checkpoint `key`, loading or bringing it back first."""
        with self._job_lock:
            self._ensure_on_device(key, on_progress)
            previous, self._active = self._active, key
            try:
                yield self._components(key)
            finally:
                self._active = previous
                self._touch(key)

    def load(self, key: str, on_progress: LoadProgressFn | None = None) -> ModelStatus:
        """Load `key` onto the device (from pinned memory if it is there: the fast path)."""
        with self._job_lock:
            self._ensure_on_device(key, on_progress)
            self._touch(key)
        return next(row for row in self.status() if row.key == key)

    def offload(self, key: str) -> None:
        """Move `key` to host memory (pinned on CUDA); parts still used on the device by others stay."""
        with self._job_lock:
            entry = self._entries.get(key)
            if entry is not None and entry.tier == "device":
                self._offload_entry(entry, keep=set())

    def unload(self, key: str) -> bool:
        """Forget `key`; its parts are freed unless another loaded checkpoint uses them. False: it was not loaded."""
        with self._job_lock:
            if loaded := key in self._entries:
                self._drop_entry(self._entries[key])
        return loaded

    def free_memory(self) -> None:
        """Inside `use(key)`: move every other checkpoint off the device and return cached blocks to the driver.

        The fallback ladder's out-of-memory rung (sd2_app/api/fallback.py) calls it before its retry.
        """
        with self._job_lock:
            self._free_device(keep=self._active)

    # ---- what loading may do (loader.LoadTarget; the caller holds the job lock) ------------------------
    def find_part(self, identity: str) -> Part | None:
        """The loaded part with this content identity, to share instead of loading it again."""
        return self._parts.get(identity)

    def keep_part(self, part: Part, user: str) -> None:
        """Count `user` among `part`'s users, adding the part when it is new."""
        with self._state_lock:
            self._parts.setdefault(part.identity, part).users.add(user)

    def register(self, entry: Entry) -> None:
        """A loaded checkpoint; borrowed parts that were offloaded come back to the device."""
        with self._state_lock:
            self._entries[entry.key] = entry
        self._sync(entry.parts.values())

    def abandon(self, key: str, identities: list[str]) -> None:
        """Undo a failed load of `key`: forget it and its references; parts nobody uses are freed."""
        with self._state_lock:
            self._entries.pop(key, None)
            for identity in identities:
                if identity in self._parts:
                    self._parts[identity].users.discard(key)
        self._sync(identities)

    # ---- internals (callers hold the job lock) -------------------------------------------------------

    def _touch(self, key: str) -> None:
        with self._state_lock:
            self._clock += 1
            if key in self._entries:
                self._entries[key].last_used = self._clock

    def _components(self, key: str) -> Components:
        entry = self._entries[key]
        value = {name: self._parts[identity].value for name, identity in entry.parts.items()}
        depth_model, depth_processor = value.get("depth_estimator", (None, None))
        components = Components(
            key=key, repo=entry.repo, model_hash=entry.model_hash,
            unet=value["unet"],
            vae=value["vae"],
            text_encoder=value["text_encoder"],
            tokenizer=entry.extras.tokenizer,
            scheduler_config=entry.extras.scheduler_config,
            device=self.device,
            dtype=self.dtype,
            low_res_scheduler_config=entry.extras.low_res_scheduler_config,
            max_noise_level=entry.extras.max_noise_level,
            depth_estimator=depth_model, depth_processor=depth_processor, derived=self._derived,
        )
        return self._accel.prepare(components) if self._accel is not None else components

    def _ensure_on_device(self, key: str, on_progress: LoadProgressFn | None) -> None:
        spec = self._spec(key)
        entry = self._entries.get(key)
        if entry is not None and entry.tier == "device":
            return
        if entry is not None:
            needed = sum(p.nbytes for p in self._parts_of(entry) if p.tier != "device")
            self.make_room(key, set(entry.parts.values()), needed)
            start = time.perf_counter()
            with self._state_lock:
                entry.tier = "device"
            try:
                self._sync(entry.parts.values())
            except OOM_ERRORS as first:
                logger.warning("out of memory bringing %s back (%s); moving everything else off", key, first)
                self._free_device(keep=key)
                try:
                    self._sync(entry.parts.values())
                except OOM_ERRORS as second:
                    with self._state_lock:
                        entry.tier = "offloaded"
                    self._sync(entry.parts.values())
                    raise OutOfMemoryDuringLoad(
                        entry.repo, None, f"out of memory moving {key} back to {self.device}, even when alone there"
                    ) from second
            logger.info("%s back on %s in %.2f s", key, self.device, time.perf_counter() - start)
            return
        try:
            load_checkpoint(self, spec, on_progress)
        except LoadError as e:
            with self._state_lock:
                self._errors[key] = str(e)
            raise
        with self._state_lock:
            self._errors.pop(key, None)

    def _parts_of(self, entry: Entry) -> list[Part]:
        return [self._parts[identity] for identity in entry.parts.values()]

    def make_room(self, key: str, keep: set[str], needed: int) -> None:
        """Offload least recently used checkpoints (never `key` or the active job's) until `needed` fits."""
        while self._used("device") + needed > self.device_budget:
            victims = [
                e for e in self._entries.values() if e.tier == "device" and e.key not in (key, self._active)
            ]
            if not victims:
                logger.warning(
                    "%s needs %s; with %s already on %s it exceeds the budget of %s; trying anyway",
                    key, gib(needed), gib(self._used("device")), self.device, gib(self.device_budget),
                )  # fmt: skip
                return
            self._offload_entry(min(victims, key=lambda e: e.last_used), keep, incoming=key)

    def _offload_entry(self, entry: Entry, keep: set[str], incoming: str | None = None) -> None:
        """Move `entry` to the host tier, dropping older offloaded checkpoints (or it) to fit the host budget.

        `incoming` is the checkpoint being brought to the device (its parts in `keep`): its host bytes are
        about to leave the host tier, so they do not count and it is never the one dropped.
        """
        adds = sum(
            p.nbytes
            for p in self._parts_of(entry)
            if p.tier == "device" and p.identity not in keep and not self._other_device_users(p, entry.key)
        )
        leaving = sum(self._parts[i].nbytes for i in keep if i in self._parts and self._parts[i].tier == "offloaded")
        while self._used("offloaded") - leaving + adds > self.offload_budget:
            older = [
                e
                for e in self._entries.values()
                if e.tier == "offloaded" and e.key not in (entry.key, incoming)
            ]
            if not older:
                logger.info("%s does not fit the host budget (%s); dropping it", entry.key, gib(self.offload_budget))
                self._drop_entry(entry, keep)
                return
            self._drop_entry(min(older, key=lambda e: e.last_used), keep)
        start = time.perf_counter()
        with self._state_lock:
            entry.tier = "offloaded"
        self._sync(entry.parts.values(), keep)
        logger.info("%s offloaded to host memory (%s) in %.2f s", entry.key, gib(adds), time.perf_counter() - start)

    def _other_device_users(self, part: Part, key: str) -> bool:
        return any(self._entries[u].tier == "device" for u in part.users if u != key and u in self._entries)

    def _drop_entry(self, entry: Entry, keep: set[str] | None = None) -> None:
        with self._state_lock:
            del self._entries[entry.key]
            for identity in entry.parts.values():
                self._parts[identity].users.discard(entry.key)
        self._sync(entry.parts.values(), keep or set())
        logger.info("%s unloaded", entry.key)

    def _sync(self, identities: Iterable[str], keep: set[str] | None = None) -> None:
        """Put each part where its users need it: device, host, or nowhere (refcount zero)."""
        keep = keep or set()
        released = False
        for identity in list(identities):
            part = self._parts.get(identity)
            if part is None:
                continue
            users = [self._entries[u] for u in part.users if u in self._entries]
            if not users and identity not in keep:
                self._on_moved(part.module)
                with self._state_lock:
                    del self._parts[identity]
                logger.info("freed %s %s (%s)", part.name, identity[:12], gib(part.nbytes))
                released = True
                continue
            want: Tier = "device" if identity in keep or any(u.tier == "device" for u in users) else "offloaded"
            if part.tier != want:
                target = self.device if want == "device" else torch.device("cpu")
                try:
                    memory.move_module(part.module, target, pin=self._pin)
                except OOM_ERRORS:
                    if want == "device":  # undo a half move, so the part is wholly where its tier says
                        memory.move_module(part.module, torch.device("cpu"), pin=self._pin)
                    raise
                self._on_moved(part.module)
                with self._state_lock:
                    part.tier = want
        # Only a freed part may sit in reference cycles and leave blocks worth returning to the driver. An
        # offloaded part's device tensors are released by refcount as they are re-pointed at host memory,
        # and their cached blocks are what the incoming checkpoint reuses: a gc pass and an empty_cache there
        # would lengthen every swap and buy nothing (docs/PERFORMANCE.md).
        if released:
            gc.collect()
            memory.empty_device_cache(self.device)

    def _free_device(self, keep: str | None) -> None:
        """Offload every checkpoint but `keep` and return cached blocks to the driver (before an OOM retry).

        `keep`'s parts are reported to accel as moved too: its CUDA graphs of other shapes hold memory.
        """
        for entry in list(self._entries.values()):
            if entry.tier == "device" and entry.key != keep:
                keep_parts = set(self._entries[keep].parts.values()) if keep in self._entries else set()
                self._offload_entry(entry, keep_parts, incoming=keep)
        for identity in self._entries[keep].parts.values() if keep in self._entries else ():
            self._on_moved(self._parts[identity].module)
        gc.collect()
        memory.empty_device_cache(self.device)

