"""`GpuCall` (sd2_app/api/gpu_call.py), the one rule for where a GPU call's result is kept: by the job itself where
the call runs in the app's process, else (a `spaces` package present: ZeroGPU may fork) by the app's process, once,
from what the call gives back. On the fake task functions (tests/ui_doubles.py); `spaces` is a stand-in."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sd2_app.api.checked import check
from sd2_app.api.gpu_call import GpuCall
from sd2_app.api.gpu_time import MIN_SECONDS
from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.api.results import Result
from tests.ui_doubles import fake_service


def _request(seed: int = 3) -> Txt2ImgRequest:
    return Txt2ImgRequest("a kept cat", checkpoint="sd21-base", width=64, height=64,
                          sampling=Sampling(sampler="Euler", steps=2, cfg_scale=7.5, seed=seed))


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A `spaces` whose GPU runs the function here, as it is: each wrap adds an entry, each call its duration."""
    seen: list[int] = []

    def gpu(duration: Callable[..., int]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        seen.append(0)  # one wrap

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                seen.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)

            return call

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    return seen


def _saved(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*.png"))


def test_without_spaces_the_job_keeps_its_result_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` fails: no ZeroGPU
    service = fake_service(tmp_path)
    keeps: list[bool] = []
    run = service.run

    def job(checked: Any, *, owner: str, keep: bool) -> Result:
        keeps.append(keep)
        return run(checked, owner=owner, keep=keep)

    call = GpuCall(service, job)
    assert not call.forks
    result = call.run(check(service, _request()), owner="visitor")
    assert keeps == [True]
    assert [entry.seed for entry in service.history("visitor")] == [3]  # kept once
    assert result.png and _saved(tmp_path) == ["00000-3-txt2img.png"]


def test_where_the_call_may_fork_the_job_runs_unkept_and_the_result_is_kept_here_once(
        tmp_path: Path, wrapped: list[int]) -> None:
    """The stand-in runs the job in this process, so keeping it both in the call and here would show as two
    History entries and two files; keeping it nowhere, as none."""
    service = fake_service(tmp_path)
    call = GpuCall(service, service.run)
    assert call.forks and wrapped == [0]  # wrapped once, when made
    for seed in (3, 4):
        call.run(check(service, _request(seed)), owner="visitor")
    assert wrapped == [0, MIN_SECONDS, MIN_SECONDS]  # each call asked for its checked request's time; no new wrap
    assert [entry.seed for entry in service.history("visitor")] == [4, 3]
    assert service.flush_saves(timeout=10) and _saved(tmp_path) == ["00000-3-txt2img.png", "00001-4-txt2img.png"]


def test_a_streamed_calls_result_is_kept_here_once_and_its_progress_passes_as_it_is(
        tmp_path: Path, wrapped: list[int]) -> None:
    service = fake_service(tmp_path)
    keeps: list[bool] = []

    def job(checked: Any, label: str, *, owner: str, keep: bool) -> Iterator[tuple | Result]:
        keeps.append(keep)
        yield (label, 1)
        yield service.run(checked, owner=owner, keep=keep)
        yield (label, 2)

    items = list(GpuCall(service, job).stream(check(service, _request()), "step", owner="visitor"))
    assert keeps == [False]
    assert items[0] == ("step", 1) and items[2] == ("step", 2)
    assert isinstance(items[1], Result) and items[1].png  # kept (encoded) before it is passed on
    assert [entry.seed for entry in service.history("visitor")] == [3]


def test_closing_the_stream_closes_the_calls_stream(tmp_path: Path, wrapped: list[int]) -> None:
    service = fake_service(tmp_path)
    closed: list[bool] = []

    def job(checked: Any, *, owner: str, keep: bool) -> Iterator[tuple]:
        try:
            yield ("step", 1)
            yield ("step", 2)
        finally:
            closed.append(True)

    stream = GpuCall(service, job).stream(check(service, _request()), owner="visitor")
    assert next(stream) == ("step", 1)
    stream.close()
    assert closed == [True]


def test_in_a_forked_worker_the_result_comes_back_and_is_kept_in_this_process_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forking stand-in (tests/zerogpu_double.py): the job runs in a child process, so only what this process
    keeps is seen here: one History entry and one file."""
    from tests.zerogpu_double import forking_spaces_gpu

    durations: list[int] = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=forking_spaces_gpu(durations)))
    service = fake_service(tmp_path, save_in_background=True)
    result = GpuCall(service, service.run).run(check(service, _request(5)), owner="visitor")
    assert durations == [MIN_SECONDS]
    assert [entry.seed for entry in service.history("visitor")] == [5]
    assert service.flush_saves(timeout=30) and _saved(tmp_path) == ["00000-5-txt2img.png"]
    assert (tmp_path / result.saved[0].relative_to(tmp_path)).read_bytes() == result.png[0]


def test_the_mcp_tools_share_one_gpu_function_wrapped_once(tmp_path: Path, wrapped: list[int]) -> None:
    """Before, each tool call wrapped `Service.run` in `spaces.GPU` again."""
    from sd2_app.ui.mcp_tools import _tools

    service = fake_service(tmp_path)
    tools = _tools(service)
    assert wrapped == [0]
    for seed in (1, 2):
        tools["txt2img"]("a tool's cat", width=64, height=64, steps=2, seed=seed)
    assert wrapped == [0, MIN_SECONDS, MIN_SECONDS]
    assert service.flush_saves(timeout=10) and _saved(tmp_path) == ["00000-1-txt2img.png", "00001-2-txt2img.png"]
