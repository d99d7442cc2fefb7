"""Fresh locks in a forked child process (`renew_in_forked_child`).

ZeroGPU runs each GPU call in a worker process forked from the app's process (the `spaces` package,
spaces/zero/wrappers.py: a `multiprocessing` "fork" context). A fork copies the memory of the forking thread's
process but only that thread: a lock another thread held at that moment stays held in the child, with nobody
left to release it, and the child's first job that needs it waits forever (Python docs, `os.fork`: forking a
process with threads can deadlock the child). `os.register_at_fork(after_in_child=...)` runs a callback in the
child right after the fork; the owner of a lock registers one when it is made, so a child gets new locks (as
CPython's logging does for its handlers' locks: Lib/logging/__init__.py, `_after_at_fork_child_reinit_locks`).
Callbacks cannot be unregistered (Python docs, `os.register_at_fork`), so the callback holds its owner weakly:
the owner can still be freed, and a dead owner's callback does nothing.

The forking thread itself must not hold these locks (its child would release a lock it never took): ZeroGPU
forks from a Gradio handler, outside every job. The threads of a pool outside Python are not copied either, while
its bookkeeping is: torch's OpenMP workers (`one_torch_thread_in_forked_child`).
"""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable


def _in_forked_child(owner: object, act: Callable[[object], None]) -> None:
    """In every child process forked after this call, `act(owner)` right after the fork, as long as `owner` is
    alive (held weakly: callbacks cannot be unregistered). No-op where the platform has no fork."""
    if not hasattr(os, "register_at_fork"):  # Windows
        return
    owner_ref = weakref.ref(owner)

    def after_fork() -> None:
        alive = owner_ref()
        if alive is not None:
            act(alive)

    os.register_at_fork(after_in_child=after_fork)


def renew_in_forked_child(owner: object, **factories: Callable[[], object]) -> None:
    """In every child process forked after this call, set `owner.<name> = factory()` for each of `factories`
    (e.g. `_lock=threading.Lock`), as long as `owner` is alive. No-op where the platform has no fork."""
    def renew(alive: object) -> None:
        for name, factory in factories.items():
            setattr(alive, name, factory())

    _in_forked_child(owner, renew)


def one_torch_thread_in_forked_child(owner: object) -> None:
    """In every child process forked after this call, while `owner` is alive, torch runs on one CPU thread.

    torch's CPU kernels run their parallel regions on GNU OpenMP on Linux, which is not fork-safe: once the parent
    has run one region on its worker threads, a child's first region waits forever for those threads, which the
    fork did not copy (GCC bug 60035; pytorch/pytorch#17199). With one thread every region runs inline on the
    calling thread. A forked ZeroGPU worker computes on the GPU; what it does on the CPU is small. Nothing is done
    in a child whose parent never imported torch (its OpenMP never started)."""
    def one_thread(_: object) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)

    _in_forked_child(owner, one_thread)
