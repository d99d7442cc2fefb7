"""ZeroGPU runs each GPU call in a worker forked from the app's process (sd2_app/fork_safety.py): a lock another
thread held at the fork must not stay held in the child. Each test holds a lock in a thread, forks for real
(os.fork), and the child does what needs the lock under a 3 s alarm: exit code 0 when it got through, 1 when it
raised, -14 (SIGALRM) when it waited for a lock nobody in the child can release. The last two fork after the
parent ran torch on two threads, whose OpenMP workers the child does not have."""

from __future__ import annotations

import gc
import os
import signal
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

GOT_THROUGH, FAILED, WAITED_FOREVER = 0, 1, -signal.SIGALRM


def child_exit_code(hold: Callable[[], Any], release: Callable[[], Any], in_child: Callable[[], Any],
                    alarm_s: int = 3) -> int:
    """Fork while a thread is between `hold()` and `release()`; the child runs `in_child()` and exits (0 once
    it returns, 1 when it raised; killed by SIGALRM after `alarm_s` seconds)."""
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        hold()
        held.set()
        done.wait(30)
        release()

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: nothing of pytest's runs here
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(alarm_s)
        code = FAILED
        try:
            in_child()
            code = GOT_THROUGH
        finally:
            os._exit(code)
    done.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_kept_prompt_plans_can_be_used_in_a_child_forked_while_a_thread_held_their_lock() -> None:
    from sd2_app.pipelines.prompt_plan import PromptPlans

    plans = PromptPlans()
    lock = plans._lock
    assert child_exit_code(lock.acquire, lock.release, lambda: plans._keep(("key",), _kept())) == GOT_THROUGH


def _kept() -> Any:
    from sd2_app.pipelines.prompt_plan import _Kept

    return _Kept(plan=None, tokenizer=None, embeddings={}, chunks=1)


def test_the_token_counters_tokenizer_lock_and_slots_are_fresh_in_a_forked_child() -> None:
    from sd2_app.api.prompt_tools import COUNTER_SLOTS
    from sd2_app.api.service import Service
    from tests.ui_doubles import FakeManager

    tools = Service(FakeManager(), outputs_dir=None, allowed_repos=())._prompt_tools
    lock = tools._tokenizer_lock
    assert child_exit_code(lock.acquire, lock.release, lambda: tools._tokenizer_lock.acquire()) == GOT_THROUGH
    slots = tools._slots

    def take_all(semaphore: Callable[[], threading.BoundedSemaphore]) -> None:
        for _ in range(COUNTER_SLOTS):
            semaphore().acquire()

    def give_back_all() -> None:
        for _ in range(COUNTER_SLOTS):
            slots.release()

    assert child_exit_code(lambda: take_all(lambda: slots), give_back_all,
                           lambda: take_all(lambda: tools._slots)) == GOT_THROUGH


def test_the_model_managers_locks_are_fresh_in_a_forked_child(tmp_path: Path) -> None:
    """A job (or load) running in another thread at the fork holds the job lock; the state lock is held for a
    moment by every status read. The child's own jobs and reads go ahead."""
    from sd2_app.manager import ModelManager

    manager = ModelManager("cpu", registry={}, cache_dir=tmp_path)
    job_lock, state_lock = manager._job_lock, manager._state_lock
    assert child_exit_code(job_lock.acquire, job_lock.release, lambda: manager.offload("absent")) == GOT_THROUGH
    assert child_exit_code(state_lock.acquire, state_lock.release, manager.status) == GOT_THROUGH


def test_the_child_of_a_fork_waits_on_a_lock_it_cannot_renew() -> None:
    """The check itself: a plain lock held by a thread at the fork is still held in the child."""
    lock = threading.Lock()
    assert child_exit_code(lock.acquire, lock.release, lock.acquire) == WAITED_FOREVER
    assert child_exit_code(lock.acquire, lock.release, lambda: 1 / 0) == FAILED  # an error is not getting through


def test_renewal_holds_its_owner_weakly_and_renews_only_the_named_locks() -> None:
    from sd2_app.fork_safety import renew_in_forked_child

    class Owner:
        def __init__(self) -> None:
            self.lock, self.other = threading.Lock(), threading.Lock()
            renew_in_forked_child(self, lock=threading.Lock)

    owner = Owner()
    lock, other = owner.lock, owner.other
    assert child_exit_code(lock.acquire, lock.release, lambda: owner.lock.acquire()) == GOT_THROUGH
    assert child_exit_code(other.acquire, other.release, lambda: owner.other.acquire()) == WAITED_FOREVER
    alive = weakref.ref(owner)
    del owner
    gc.collect()
    assert alive() is None  # the registered callback does not keep it
    assert child_exit_code(lambda: None, lambda: None, lambda: None) == GOT_THROUGH  # its dead owner: no effect


def test_the_gpu_gate_is_open_in_a_child_forked_while_a_job_held_it() -> None:
    """A job inside the gate at the fork (its thread is not in the child), or a thread holding the gate's own lock
    for a moment (a place-in-queue read): the child's job goes in."""
    from sd2_app.api.gate import GpuGate

    gate = GpuGate()
    inside = gate.enter()
    assert child_exit_code(inside.__enter__, lambda: inside.__exit__(None, None, None),
                           lambda: gate.enter().__enter__()) == GOT_THROUGH
    condition = gate._condition
    assert child_exit_code(condition.acquire, condition.release, lambda: gate.enter().__enter__()) == GOT_THROUGH


def test_the_stop_flags_and_job_threads_are_fresh_in_a_forked_child() -> None:
    """The web run's body arms its flag and starts its job on the app's threads (`ui.run_stream.stream_result`),
    in the worker too. A pool that had an idle thread at the fork counted it as idle in the child and started
    none, so the child's job never ran."""
    from sd2_app.ui.hosting import Visitors
    from sd2_app.ui.runner import StopFlags

    flags = StopFlags(Visitors())
    lock = flags._lock
    assert child_exit_code(lock.acquire, lock.release, lambda: flags.arm("visitor")) == GOT_THROUGH
    assert flags.threads.submit(lambda: None).result(10) is None  # the parent's pool now has an idle thread
    assert child_exit_code(lambda: None, lambda: None,
                           lambda: flags.threads.submit(lambda: None).result()) == GOT_THROUGH


def test_the_loaders_locks_are_fresh_in_a_forked_child(tmp_path: Path) -> None:
    """A worker loads the checkpoints itself: the model build's lock (`loading.checkpoint.params_on_meta`), the
    file hashes' cache and the derived modules' table."""
    from torch import nn

    from sd2_app.loading import checkpoint
    from sd2_app.manager.derived import DerivedModules
    from sd2_app.manager.identity import HashCache

    build = checkpoint._BUILD_LOCK
    assert child_exit_code(build.acquire, build.release, lambda: checkpoint.params_on_meta().__enter__()) == GOT_THROUGH
    (tmp_path / "weights").write_bytes(b"w")
    hashes = HashCache(tmp_path / "hashes.json")
    lock = hashes._lock
    assert child_exit_code(lock.acquire, lock.release, lambda: hashes.sha256(tmp_path / "weights")) == GOT_THROUGH
    derived = DerivedModules()
    lock = derived._lock
    assert child_exit_code(lock.acquire, lock.release, lambda: derived.get(nn.Identity(), lambda m: m)) == GOT_THROUGH


@pytest.mark.slow
def test_a_job_in_a_forked_worker_imports_no_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module a thread of the app's process is importing at the fork stays locked in the child, so a worker's
    job that imports it waits forever (seen as a hang, about one test run in six, of the ZeroGPU app's tests).
    Where the GPU calls may fork, the app imports what a job imports on first use before any call
    (`api.gpu_call.GpuCall`, `api.tasks.import_job_modules`): a job in a child forked after that, on the tiny
    checkpoints, imports nothing (before: the pipelines, the samplers, the loaders and the fallback ladder)."""
    import json
    import sys
    import types

    from sd2_app.api.checked import check
    from sd2_app.api.gpu_call import GpuCall
    from sd2_app.api.requests import Sampling, Txt2ImgRequest
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda duration: lambda fn: fn))
    manager = ModelManager("cpu", registry=tiny_registry(ensure_tiny_repos(tiny_dir())), cache_dir=tmp_path)
    service = Service(manager, outputs_dir=None, allowed_repos=())
    GpuCall(service, service.run)  # as the app does when it builds its GPU entries
    request = Txt2ImgRequest("a [red:blue:0.5] hat", checkpoint="sd21-base", width=64, height=64,
                             sampling=Sampling(sampler="Euler", steps=2, cfg_scale=7.5, seed=1))
    checked = check(service, request)
    report = tmp_path / "imported.json"
    before = set(sys.modules)

    def job() -> None:
        assert len(service.run(checked, keep=False).images) == 1
        report.write_text(json.dumps(sorted(set(sys.modules) - before)))

    assert child_exit_code(lambda: None, lambda: None, job, alarm_s=120) == GOT_THROUGH
    assert json.loads(report.read_text()) == []


def test_torch_computes_in_a_child_forked_after_the_parent_ran_it_on_two_threads() -> None:
    """GNU OpenMP, under torch's CPU kernels, is not fork-safe: once the parent ran a parallel region on two
    threads, the child's first region waited forever for a worker thread the fork did not copy (5 of 5 forks
    here). `one_torch_thread_in_forked_child` (registered by `GpuCall` where calls fork) gives the child one."""
    import torch

    from sd2_app.fork_safety import one_torch_thread_in_forked_child

    class Owner:
        pass

    def parallel_work() -> None:  # large enough for torch to split it over its threads
        torch.softmax(torch.randn(4, 256, 256), -1) @ torch.randn(4, 256, 64)

    owner, before = Owner(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parallel_work()
        one_torch_thread_in_forked_child(owner)
        assert child_exit_code(lambda: None, lambda: None, parallel_work, alarm_s=20) == GOT_THROUGH
    finally:
        torch.set_num_threads(before)


def test_a_gpu_call_that_forks_gives_its_workers_one_torch_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from sd2_app.api import gpu_call

    monkeypatch.setattr(gpu_call, "gpu_calls_may_fork", lambda: True)  # as on ZeroGPU
    monkeypatch.setattr(gpu_call, "import_job_modules", lambda: None)
    call = gpu_call.GpuCall(SimpleNamespace(backend=None), lambda *args, **kwargs: None)  # type: ignore[arg-type]

    def one_thread() -> None:
        assert torch.get_num_threads() == 1

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert call.forks and child_exit_code(lambda: None, lambda: None, one_thread) == GOT_THROUGH
        assert torch.get_num_threads() == 2  # the app's process keeps its threads
    finally:
        torch.set_num_threads(before)
