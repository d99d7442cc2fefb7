"""ZeroGPU runs each GPU call in a worker forked from the app's process (sd2_app/fork_safety.py): a lock another
thread held at the fork must not stay held in the child. Each test holds a lock in a thread, forks for real
(os.fork), and the child does what needs the lock under a 3 s alarm: exit code 0 when it got through, 1 when it
raised, -14 (SIGALRM) when it waited for a lock nobody in the child can release."""

from __future__ import annotations

import gc
import os
import signal
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

GOT_THROUGH, FAILED, WAITED_FOREVER = 0, 1, -signal.SIGALRM


def child_exit_code(hold: Callable[[], Any], release: Callable[[], Any], in_child: Callable[[], Any]) -> int:
    """Fork while a thread is between `hold()` and `release()`; the child runs `in_child()` and exits (0 once
    it returns, 1 when it raised; killed by SIGALRM after 3 s)."""
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
        signal.alarm(3)
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
