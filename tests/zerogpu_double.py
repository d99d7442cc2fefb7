"""A stand-in for the `spaces` package whose `GPU` runs the decorated function as ZeroGPU does (the `spaces`
package, spaces/zero/wrappers.py; the facts are in docs/DESIGN.md, "ZeroGPU"): the duration function is called
with the call's arguments in the app's process, then the function runs in a process forked from the app's
(`multiprocessing`'s "fork" context), its arguments, its result and each of its yields pickled through
`SimpleQueue` pipes. A `gr.Error` raised there comes back as it is, any other exception as "ZeroGPU worker
error" with its class name; closing a streamed call stops the worker's generator at its next yield.

By default, unlike ZeroGPU, which may keep a worker for later calls, each call forks a worker that exits right
after its result is sent, so nothing the call left to a thread there survives it (on ZeroGPU that may or may not
happen). With `reuse=True` a worker whose call ended normally serves the next call of the same function, as
ZeroGPU's idle worker does: a process forked before that call came, with the memory it had then.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

FORK = multiprocessing.get_context("fork")
OK, FAILED, END = "ok", "failed", "end"
ABORT_S = 120  # ZeroGPU aborts a call past its duration ("GPU task aborted"); here, a worker silent this long


def forking_spaces_gpu(durations: list[int],
                       reuse: bool = False) -> Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """`spaces.GPU(duration=fn)` as described above; each call's duration goes into `durations`."""

    def gpu(duration: Callable[..., int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(task: Callable[..., Any]) -> Callable[..., Any]:
            workers = _Workers(task, inspect.isgeneratorfunction(task), reuse)

            @functools.wraps(task)  # as spaces.GPU does: Gradio reads the handler's annotations
            def streamed(*args: Any, **kwargs: Any) -> Iterator[Any]:
                durations.append(duration(*args, **kwargs))
                yield from workers.call(args, kwargs)

            @functools.wraps(task)
            def called(*args: Any, **kwargs: Any) -> Any:
                durations.append(duration(*args, **kwargs))
                [result] = workers.call(args, kwargs)  # read to its end: the worker is free for the next call
                return result

            return streamed if workers.streams else called

        return wrap

    return gpu


class _Worker:
    """One worker process and its pipes (spaces' `Worker`); started by the first call that gets it."""

    def __init__(self, task: Callable[..., Any], streams: bool, reuse: bool) -> None:
        self.args, self.results, self.stop = FORK.SimpleQueue(), FORK.SimpleQueue(), FORK.Event()
        self.process = FORK.Process(target=_serve, args=(task, self.args, self.results, self.stop, streams, reuse),
                                    daemon=True)


class _Workers:
    """The workers of one decorated function: a call takes an idle one (`reuse`) or forks a new one."""

    def __init__(self, task: Callable[..., Any], streams: bool, reuse: bool) -> None:
        self.task, self.streams, self.reuse = task, streams, reuse
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def call(self, args: tuple, kwargs: dict) -> Iterator[Any]:
        """The worker's results as they come: each yield of a streamed task, else its one result."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None or not worker.process.is_alive():
            worker = _Worker(self.task, self.streams, self.reuse)
        worker.stop.clear()
        try:
            worker.args.put((args, kwargs))  # pickled here, as spaces' `Worker.arg_queue.put` does
        except BaseException:  # not picklable: nothing was sent, so an idle worker stays idle
            if worker.process.pid is not None:
                self._after(worker, ended=True)
            raise
        if worker.process.pid is None:
            worker.process.start()
        ended = False
        try:
            while True:
                if not worker.results._reader.poll(ABORT_S):  # a stuck worker fails the call, not the test run
                    worker.process.kill()
                    raise gr.Error("GPU task aborted", title="ZeroGPU worker error")
                kind, value = worker.results.get()
                if kind == FAILED:
                    raise value
                if kind == END:
                    ended = True
                    return
                try:
                    yield value
                except GeneratorExit:  # spaces: `worker.stop_event.set()`
                    worker.stop.set()
                    raise
        finally:
            self._after(worker, ended)

    def _after(self, worker: _Worker, ended: bool) -> None:
        if ended and self.reuse:
            with self._lock:
                self._idle.append(worker)
            return
        if self.reuse:  # stopped or failed midway: not reused (its pipe may still hold the rest); it ends
            worker.args.put(None)
        worker.process.join(timeout=60)


def _serve(task: Callable[..., Any], arg_queue: Any, res_queue: Any, stop: Any, streams: bool, reuse: bool) -> None:
    while (call := arg_queue.get()) is not None:
        args, kwargs = call
        _work(task, args, kwargs, res_queue, stop, streams)
        if not reuse:
            break
    os._exit(0)  # the worker ends: threads its calls left behind end too


def _work(task: Callable[..., Any], args: tuple, kwargs: dict, res_queue: Any, stop: Any, streams: bool) -> None:
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
