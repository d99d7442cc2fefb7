"""Batching across users: queued requests that can share one UNet batch run as one (docs/DESIGN.md, "Batching
across users"; `--batch-users`).

The service hands every request it could batch (`batch_key` not None) to `Batcher.run` instead of passing the
GPU gate itself. Requests with the same key collect in an open group; the group's own thread waits its turn at
the gate (`api/gate.py`) like any job, and while it waits, more requests join. When its turn comes, it waits
at most `MAX_WAIT_S` longer for companions (counted from its first request's arrival, and only while the
service is busy, so a lone request on an idle app never waits), closes, and runs:

- one request: alone, exactly as without batching (the service's own run, with its fallback ladder);
- several: `pipelines.batch.run_batch`, each image computed from its own request's generator and prompt. A
  request whose part fails (a refused prompt, a NaN decode), or all of them when the shared loop fails (out of memory),
  run again alone, one after another, each with the fallback ladder: one bad request fails only itself. A
  batch out of memory caps its key's later batches at one image fewer than it held.

Each caller waits for its own request's outcome and polls its own Stop: Stop raises `Cancelled` in the
caller at once (within `POLL_S`); its image is dropped from the batch (pipelines/batch.py), the others go on.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sd2_app.api.gate import GpuGate
from sd2_app.api.requests import REQUEST_TYPES, TaskRequest
from sd2_app.api.tasks import TASKS, prepare_of
from sd2_app.errors import Cancelled
from sd2_app.lora_tags import lora_tags
from sd2_app.prompt_syntax import is_composable

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.components import Components
    from sd2_app.pipelines.batch import PrepareFn
    from sd2_app.pipelines.loop import LatentProgressFn
    from sd2_app.pipelines.output import PipelineOutput

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.1  # the longest a batch's first request waits for companions beyond its turn at the gate
MAX_IMAGES = 8  # images in one batch at most (a request's own images included)
BUSY_WINDOW_S = 1.0  # the service counts as busy for this long after a request arrives
POLL_S = 0.05  # how often a waiting caller looks at its Stop

SoloFn = Callable[[str, TaskRequest, "LatentProgressFn", dict[str, float]], "PipelineOutput"]


def batch_key(task: str, request: TaskRequest) -> Hashable | None:
    """What requests must share to run as one batch; None for a request that always runs alone.

    Prompts, negative prompts, seeds (seed extras included) and batch sizes may differ; the size, the sampler,
    its schedule, the guidance and the prompt's LoRAs (merged into the shared weights) may not. The hires fix,
    seamless tiling and composable prompts (parts joined by AND, or a part weight: more UNet rows per image, and
    their own guidance) never batch. The prompts' chunk count and prompt-editing phases are checked after encoding
    (pipelines/batch.py runs different ones in separate batches).
    """
    if TASKS.get(task) is None or TASKS[task].prepare is None or type(request) is not REQUEST_TYPES.get(task):
        return None
    if getattr(request, "hires", None) is not None or getattr(request, "tiling", False):
        return None
    if is_composable(request.prompt):
        return None
    image = getattr(request, "image", None)  # image to image: its size unless the request gives one
    width, height = (image.width, image.height) if image is not None else (None, None)
    s = request.sampling
    size = (getattr(request, "width", None) or width, getattr(request, "height", None) or height)
    return (task, request.checkpoint, size, s.sampler, s.steps, s.schedule, s.cfg_scale, s.guidance_rescale,
            s.eta, getattr(request, "strength", None), lora_tags(request.prompt))


@dataclass(eq=False)
class _Member:
    """One caller's request in a group, and what its caller waits for."""

    request: TaskRequest
    on_step: LatentProgressFn
    should_stop: Callable[[], bool] | None
    timings: dict[str, float]
    arrived: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: PipelineOutput | BaseException | None = None
    stopped: bool = False  # its caller has gone (Stop)

    def settle(self, outcome: PipelineOutput | BaseException) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


@dataclass(eq=False)
class _Group:
    """Requests with one key that will run together, in arrival order."""

    key: Hashable
    task: str
    arrived: float  # its first request's arrival (time.monotonic); -inf when it formed on an idle service
    members: list[_Member] = field(default_factory=list)
    gate_check: Callable[[], bool] | None = None  # the `should_stop` its thread waits at the gate with

    @property
    def images(self) -> int:
        return sum(m.request.sampling.batch_size for m in self.members if not m.stopped)

    def live(self) -> list[_Member]:
        return [m for m in self.members if not m.stopped]


class Batcher:
    """Groups requests by `batch_key` and runs each group at its turn at the gate; see the module docstring."""

    def __init__(
        self,
        gate: GpuGate,
        run_solo: SoloFn,
        # Service.use_checkpoint: one job on a checkpoint, with the LoRAs a prompt names
        use: Callable[[str, str], AbstractContextManager[Components]],
        *,
        prepare: Callable[[str], PrepareFn] = prepare_of,  # the task table's `prepare` for a task
        max_wait_s: float = MAX_WAIT_S,
        max_images: int = MAX_IMAGES,
    ) -> None:
        self._gate, self._run_solo, self._use, self._prepare = gate, run_solo, use, prepare
        self.max_wait_s, self.max_images = max_wait_s, max_images
        self._lock = threading.Condition()  # guards the groups, the members' `stopped` and the counters
        self._open: dict[Hashable, _Group] = {}  # the group a request with that key joins
        self._groups: list[_Group] = []  # every group until its thread ends, open or full (`ahead_of`)
        self._caps: dict[Hashable, int] = {}  # a smaller limit of images for a key whose batch ran out of memory
        self._in_flight = 0  # requests inside `run`
        self._last_arrival = -math.inf
        self.batches_run = 0  # groups of two or more requests run as one batch (for tests and the benchmark)
        self.group_sizes: Counter[int] = Counter()  # requests per group run (1: alone), for the benchmark

    @property
    def in_flight(self) -> int:
        """Requests inside `run`: waiting for a group's turn, or running."""
        with self._lock:
            return self._in_flight

    def takes(self, task: str, request: TaskRequest) -> bool:
        """Whether `request` may share a batch (`batch_key`); the service runs the others itself."""
        return batch_key(task, request) is not None

    def run(
        self, task: str, request: TaskRequest, on_step: LatentProgressFn, timings: dict[str, float],
        should_stop: Callable[[], bool] | None = None,
    ) -> PipelineOutput:
        """The request's output, computed alone or in a batch; raises `Cancelled` at once when it is stopped."""
        key = batch_key(task, request)
        assert key is not None, "the service sends only requests with a batch key"
        member = _Member(request, on_step, should_stop, timings)
        with self._lock:
            busy = self._in_flight > 0 or time.monotonic() - self._last_arrival < BUSY_WINDOW_S
            self._in_flight += 1
            self._last_arrival = time.monotonic()
            group = self._open.get(key)
            if group is None or group.images + request.sampling.batch_size > self._caps.get(key, self.max_images):
                group = self._open[key] = _Group(key, task, time.monotonic() if busy else -math.inf)
                group.gate_check = functools.partial(self._abandoned, group)
                self._groups.append(group)
                threading.Thread(target=self._serve, args=(group,), name=f"batch-{task}", daemon=True).start()
            group.members.append(member)
            self._lock.notify_all()
        try:
            return self._wait_for(member)
        finally:
            with self._lock:
                self._in_flight -= 1

    def ahead_of(self, should_stop: Callable[[], bool]) -> int | None:
        """The gate's `ahead_of` for the group of the request whose caller polls `should_stop` (compared with
        ==); None when that request is not waiting for its group's turn."""
        with self._lock:
            groups = [g for g in self._groups if any(m.should_stop == should_stop for m in g.members)]
        checks = [group.gate_check for group in groups if group.gate_check is not None]
        return self._gate.ahead_of(checks[0]) if checks else None

    def _wait_for(self, member: _Member) -> PipelineOutput:
        while not member.done.wait(POLL_S):
            if member.should_stop is not None and member.should_stop():
                with self._lock:
                    member.stopped = True
                raise Cancelled
        assert member.outcome is not None
        if isinstance(member.outcome, BaseException):
            raise member.outcome
        return member.outcome

    # ---- the group's thread ------------------------------------------------------------------------
    def _abandoned(self, group: _Group) -> bool:
        """Every member stopped: the group closes (nobody joins it any more) and leaves the gate's queue."""
        with self._lock:
            if group.live():
                return False
            self._close(group)
            return True

    def _close(self, group: _Group) -> None:
        """No request joins `group` any more (called with the lock held)."""
        if self._open.get(group.key) is group:
            del self._open[group.key]

    def _gather(self, group: _Group) -> list[_Member]:
        """At the group's turn: wait for companions until the deadline (a group that arrived on an idle service has
        none), then close the group; its members still waiting."""
        with self._lock:
            deadline = group.arrived + self.max_wait_s
            while group.images < self._caps.get(group.key, self.max_images) and (now := time.monotonic()) < deadline:
                self._lock.wait(deadline - now)
            self._close(group)
            members = group.live()
        started = time.perf_counter()
        for member in members:
            member.timings["gate"] = member.timings.get("gate", 0.0) + started - member.arrived
        return members

    def _serve(self, group: _Group) -> None:
        try:
            with self._gate.enter(group.gate_check):
                members = self._gather(group)
                if members:
                    self.group_sizes[len(members)] += 1
                if len(members) == 1:
                    members[0].settle(self._solo(group.task, members[0]))
                elif members:
                    self._together(group, members)
        except BaseException as error:  # noqa: BLE001  # Cancelled at the gate, or a bug: every caller is told
            for member in group.members:
                member.settle(error if not isinstance(error, Cancelled) else Cancelled())
        finally:
            with self._lock:
                self._close(group)
                self._groups.remove(group)
            for member in group.members:
                member.settle(Cancelled())  # only a stopped member can still be waiting here; its caller has gone

    def _solo(self, task: str, member: _Member) -> PipelineOutput | BaseException:
        try:
            return self._run_solo(task, member.request, member.on_step, member.timings)
        except BaseException as error:  # noqa: BLE001  # the caller raises it
            return error

    def _together(self, group: _Group, members: list[_Member]) -> None:
        """Run `members` as one batch; each one whose part failed runs again alone. A batch that ran out of
        memory caps its key's later batches below its own number of images."""
        from sd2_app.api.fallback import out_of_memory_errors  # imports torch too
        from sd2_app.pipelines.batch import run_batch  # torch: imported by the first batch, not with the service

        timings: dict[str, float] = {}
        try:
            started = time.perf_counter()
            with self._use(members[0].request.checkpoint, members[0].request.prompt) as components:
                loaded = time.perf_counter()
                outcomes = run_batch(components, [m.request for m in members],
                                     [m.on_step for m in members], self._prepare(group.task))
            timings = {"load": loaded - started, "run": time.perf_counter() - loaded}
            self.batches_run += 1
            log.info("ran %d requests (%d images) as one batch", len(members),
                     sum(m.request.sampling.batch_size for m in members))
        except Exception as error:  # the shared loop failed: each request alone, with its own fallback ladder
            log.warning("a batch of %d requests failed (%s); running each alone", len(members), error)
            outcomes = [error] * len(members)
            if isinstance(error, out_of_memory_errors()):
                with self._lock:
                    self._caps[group.key] = max(1, sum(m.request.sampling.batch_size for m in members) - 1)
        for member, outcome in zip(members, outcomes):
            if isinstance(outcome, Cancelled) or member.stopped:
                member.settle(Cancelled())
            elif isinstance(outcome, BaseException):
                member.settle(self._solo(group.task, member))
            else:
                member.timings.update({name: member.timings.get(name, 0.0) + s for name, s in timings.items()})
                member.settle(outcome)


def enable(service: Service, *, max_wait_s: float = MAX_WAIT_S, max_images: int = MAX_IMAGES) -> Batcher:
    """Turn batching across users on for `service` (app.py's `--batch-users`), before its UI is built: its
    batchable requests go through a `Batcher`, and Gradio's GPU queue lets in as many as one batch holds (the
    gate still runs one job at a time)."""
    service.batcher = Batcher(service.gate, service.run_on_gpu, service.use_checkpoint, max_wait_s=max_wait_s,
                              max_images=max_images)
    service.concurrency = max(service.concurrency, max_images)
    return service.batcher
