"""A stand-in for the `spaces` package whose `GPU` runs the decorated function as ZeroGPU does (the `spaces`
package, spaces/zero/wrappers.py; the facts are in docs/DESIGN.md, "ZeroGPU"): the duration function is called
with the call's arguments in the app's process, then the function runs in a process forked from the app's
(`multiprocessing`'s "fork" context), its arguments, its result and each of its yields pickled through
`SimpleQueue` pipes. A `gr.Error` raised there comes back as it is, any other exception as "ZeroGPU worker
error" with its class name; closing a streamed call stops the worker's generator at its next yield.

Unlike ZeroGPU, which may keep a worker for later calls, each call forks a worker that exits right after its
result is sent, so nothing the call left to a thread there survives it (on ZeroGPU that may or may not happen).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

FORK = multiprocessing.get_context("fork")
OK, FAILED, END = "ok", "failed", "end"
ABORT_S = 120  # ZeroGPU aborts a call past its duration ("GPU task aborted"); here, a worker silent this long


def forking_spaces_gpu(durations: list[int]) -> Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """`spaces.GPU(duration=fn)` as described above; each call's duration goes into `durations`."""

    def gpu(duration: Callable[..., int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(task: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(task)  # as spaces.GPU does: Gradio reads the handler's annotations
            def streamed(*args: Any, **kwargs: Any) -> Iterator[Any]:
                durations.append(duration(*args, **kwargs))
                yield from _in_worker(task, args, kwargs, streams=True)

            @functools.wraps(task)
            def called(*args: Any, **kwargs: Any) -> Any:
                durations.append(duration(*args, **kwargs))
                return next(_in_worker(task, args, kwargs, streams=False))

            return streamed if inspect.isgeneratorfunction(task) else called

        return wrap

    return gpu


def _in_worker(task: Callable[..., Any], args: tuple, kwargs: dict, streams: bool) -> Iterator[Any]:
    """The worker's results as they come: each yield of a streamed `task`, else its one result."""
    arg_queue, res_queue, stop = FORK.SimpleQueue(), FORK.SimpleQueue(), FORK.Event()
    arg_queue.put((args, kwargs))  # pickled here, as spaces' `Worker.arg_queue.put` does
    worker = FORK.Process(target=_work, args=(task, arg_queue, res_queue, stop, streams), daemon=True)
    worker.start()
    try:
        while True:
            if not res_queue._reader.poll(ABORT_S):  # a stuck worker fails the call instead of the test run
                worker.kill()
                raise gr.Error("GPU task aborted", title="ZeroGPU worker error")
            kind, value = res_queue.get()
            if kind == FAILED:
                raise value
            if kind == END:
                return
            try:
                yield value
            except GeneratorExit:  # spaces: `worker.stop_event.set()`
                stop.set()
                raise
    finally:
        worker.join(timeout=60)


def _work(task: Callable[..., Any], arg_queue: Any, res_queue: Any, stop: Any, streams: bool) -> None:
    args, kwargs = arg_queue.get()
    try:
        if streams:
            stream = task(*args, **kwargs)
            for value in stream:
                if stop.is_set():
                    stream.close()
                    break
                res_queue.put((OK, value))
        else:
            res_queue.put((OK, task(*args, **kwargs)))
    except Exception as error:  # spaces' `exception_result`: only a gr.Error comes back as it is
        res_queue.put((FAILED, error if isinstance(error, gr.Error) else
                       gr.Error(type(error).__name__, title="ZeroGPU worker error")))
    res_queue.put((END, None))
    os._exit(0)  # the worker ends with the call: threads it left behind end too
