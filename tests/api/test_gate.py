"""The Service's GPU gate: one holder at a time, in arrival order; a waiter can leave without blocking others."""

from __future__ import annotations

import threading
import time

import pytest

from sd2_app.api.gate import GpuGate
from sd2_app.errors import Cancelled


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.005)


def test_jobs_enter_one_at_a_time_in_arrival_order() -> None:
    gate, order, release = GpuGate(poll_s=0.01), [], threading.Event()

    def job(name: str) -> None:
        with gate.enter():
            order.append(name)
            if name == "first":
                release.wait(10)

    threads = []
    for count, name in enumerate(("first", "b", "c", "d", "e"), start=1):
        threads.append(threading.Thread(target=job, args=(name,)))
        threads[-1].start()
        _wait_for(lambda: gate.waiting == count)  # each has taken its ticket before the next arrives
    assert order == ["first"]
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "b", "c", "d", "e"] and gate.waiting == 0


def test_a_waiting_job_stops_and_the_next_still_gets_its_turn() -> None:
    gate, release, stop = GpuGate(poll_s=0.01), threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def holder() -> None:
        with gate.enter():
            release.wait(10)

    def stopped() -> None:
        try:
            with gate.enter(stop.is_set):
                outcome["stopped"] = "entered"
        except Cancelled:
            outcome["stopped"] = "cancelled"

    def last() -> None:
        with gate.enter():
            outcome["last"] = "entered"

    threads = [threading.Thread(target=fn) for fn in (holder, stopped, last)]
    for count, thread in enumerate(threads, start=1):
        thread.start()
        _wait_for(lambda: gate.waiting == count)
    stop.set()
    threads[1].join(5)
    assert outcome == {"stopped": "cancelled"} and gate.waiting == 2  # left at once, the holder still inside
    release.set()
    threads[2].join(5)
    assert outcome["last"] == "entered" and gate.waiting == 0


def test_an_error_inside_releases_the_gate() -> None:
    gate = GpuGate()
    with pytest.raises(RuntimeError):
        with gate.enter():
            raise RuntimeError("pipeline failed")
    with gate.enter():
        assert gate.waiting == 1


def test_a_waiter_is_told_how_many_jobs_are_ahead_of_it() -> None:
    gate, release = GpuGate(poll_s=0.01), threading.Event()
    stops = [threading.Event() for _ in range(3)]
    entered: list[int] = []

    def job(index: int) -> None:
        try:
            with gate.enter(stops[index].is_set):
                entered.append(index)
                if index == 0:
                    release.wait(10)
        except Cancelled:
            pass

    threads = [threading.Thread(target=job, args=(index,)) for index in range(3)]
    for count, thread in enumerate(threads, start=1):
        thread.start()
        _wait_for(lambda: gate.waiting == count)
    assert [gate.ahead_of(stop.is_set) for stop in stops] == [None, 1, 2]  # the first is in: not waiting
    assert gate.ahead_of(threading.Event().is_set) is None  # a callable no waiter passed
    stops[1].set()  # the second leaves the queue: the third moves up
    threads[1].join(5)
    assert [gate.ahead_of(stop.is_set) for stop in stops] == [None, None, 1]
    release.set()
    threads[2].join(5)
    assert entered == [0, 2] and gate.ahead_of(stops[2].is_set) is None
