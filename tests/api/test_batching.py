"""Batching across users through the Service (api/batching.py) on the tiny checkpoints, CPU fp32.

Requests are queued behind a job that holds the GPU gate, so they meet in one group deterministically; each
image is compared with the same request run alone. On CPU the images come within one uint8 level of the solo
runs, not bit-identical: tests/pipelines/test_batch.py shows the batching itself is exact and finds the CPU
kernels that make a row's last bits depend on its batch neighbours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from sd2_app.api.batching import MAX_IMAGES, MAX_WAIT_S, Batcher, batch_key, enable
from sd2_app.api.requests import HiresFix, Img2ImgRequest, InpaintRequest, Sampling, Txt2ImgRequest
from sd2_app.api.results import Result
from sd2_app.api.service import Service
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.run_mode import NonFiniteError
from sd2_app.pipelines.txt2img import prepare_txt2img
from tests.batching_support import Blocker, pixel_gap, wait_until
from tests.reliability_support import make_service, noise_image, one_thread  # noqa: F401  # one_thread: fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def request(prompt: str, seed: int, batch: int = 1, **sampling: Any) -> Txt2ImgRequest:
    settings = {"sampler": "Euler a", "steps": 3, "cfg_scale": 6.0, "seed": seed, "batch_size": batch, **sampling}
    return Txt2ImgRequest(prompt, checkpoint="sd21-base", width=64, height=64, sampling=Sampling(**settings))


FOUR = [request("a red fox", 11), request("a lighthouse at dusk", 22, batch=2), request("a cat", 33),
        request("a bowl of fruit", 44)]


@pytest.fixture(scope="module")
def services() -> tuple[Service, Service]:
    """(batching service, solo service) over one model manager."""
    batched, manager = make_service(watermark=False)
    return batched, Service(manager, outputs_dir=None, allowed_repos=(), watermark=False)


@pytest.fixture()
def service(services: tuple[Service, Service]) -> Iterator[Service]:
    batched = services[0]
    batched.concurrency = 1
    enable(batched)  # a fresh Batcher (counters) per test
    assert batched.concurrency == MAX_IMAGES  # Gradio's GPU queue lets a batch's requests in together
    yield batched


def solo_results(services: tuple[Service, Service], requests: list[Txt2ImgRequest]) -> list[Result]:
    return [services[1].run(r) for r in requests]


class Caller:
    """One user's `service.run` in its own thread, with its own Stop flag and progress log."""

    def __init__(self, service: Service, req: Txt2ImgRequest, on_progress: Callable[..., None] | None = None) -> None:
        self.stop = threading.Event()
        self.progress: list[tuple[int, int]] = []
        self.previews: list[Any] = []
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.ended_at = 0.0

        def report(done: int, total: int, preview: Any) -> None:
            self.progress.append((done, total))
            if preview is not None:
                self.previews.append(preview)
            if on_progress is not None:
                on_progress(done, total, preview)

        def call() -> None:
            try:
                self.result = service.run(req, report, self.stop.is_set)
            except BaseException as error:  # noqa: BLE001  # the test looks at it
                self.error = error
            self.ended_at = time.monotonic()

        self.thread = threading.Thread(target=call, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def arrive(service: Service, callers: list[Caller], req: Txt2ImgRequest, **kwargs: Any) -> None:
    """A caller more, once the batcher has it (so the group's order is the arrival order)."""
    callers.append(Caller(service, req, **kwargs))
    wait_until(lambda: service.batcher._in_flight == len(callers) or callers[-1].error is not None)
    assert callers[-1].error is None, callers[-1].error


def queue_behind_gate(service: Service, requests: list[Txt2ImgRequest]) -> tuple[Blocker, list[Caller]]:
    blocker = Blocker(service)
    callers: list[Caller] = []
    for req in requests:
        arrive(service, callers, req)
    return blocker, callers


def test_four_queued_requests_run_as_one_batch_each_as_alone(
    service: Service, services: tuple[Service, Service]
) -> None:
    blocker, callers = queue_behind_gate(service, FOUR)
    blocker.release.set()
    for caller in callers:
        caller.join()
        assert caller.error is None, caller.error
    assert service.batcher.batches_run == 1
    gaps = [pixel_gap(c.result, alone) for c, alone in zip(callers, solo_results(services, FOUR))]
    print(f"\nuint8 gap per request, batch vs solo: {gaps}")
    assert max(gaps) <= 1  # CPU kernels (module docstring)
    for caller, req in zip(callers, FOUR):
        assert caller.result.seed == req.sampling.seed and len(caller.result.images) == req.sampling.batch_size
        assert f"Seed: {req.sampling.seed}," in caller.result.images[0].info["parameters"]
        assert req.prompt in caller.result.images[0].info["parameters"]
        assert caller.progress[-1] == (3, 3)  # each caller saw its own progress to the end
        assert caller.result.timings["gate"] > 0 and caller.result.timings["run"] > 0


def test_each_member_previews_its_own_images(service: Service, services: tuple[Service, Service]) -> None:
    """Previews every step: each member's preview is its own request's (as its solo run previews it)."""
    solo_service = services[1]
    service.preview_every = solo_service.preview_every = 1
    try:
        blocker, callers = queue_behind_gate(service, FOUR[:3])
        blocker.release.set()
        for caller in callers:
            caller.join()
        alone = []
        for req in FOUR[:3]:
            previews: list[Any] = []
            solo_service.run(req, lambda done, total, preview: previews.append(preview) if preview else None)
            alone.append(previews)
    finally:
        service.preview_every = solo_service.preview_every = 5
    assert service.batcher.batches_run == 1

    def gap(a: Any, b: Any) -> int:
        return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())

    for index, caller in enumerate(callers):
        assert len(caller.previews) == len(alone[index]) == 2  # steps 1 and 2 of 3
        assert all(gap(ours, theirs) <= 1 for ours, theirs in zip(caller.previews, alone[index]))
        others = [alone[other][0] for other in range(3) if other != index]
        assert all(gap(caller.previews[0], other) > 8 for other in others)  # not another member's


def test_requests_with_different_keys_never_share_a_batch(service: Service) -> None:
    others = [request("a", 1), request("b", 2, steps=4), request("c", 3, sampler="DPM++ 2M"),
              request("d", 4, cfg_scale=5.0), replace(request("e", 5), width=72)]
    blocker, callers = queue_behind_gate(service, others)
    blocker.release.set()
    for caller in callers:
        caller.join()
        assert caller.error is None
    assert service.batcher.batches_run == 0


def test_batch_key_separates_what_the_loop_shares() -> None:
    base = request("a fox", 1)
    same = [replace(base, prompt="a hen", negative_prompt="blurry"),
            replace(base, sampling=replace(base.sampling, seed=9)),
            replace(base, sampling=replace(base.sampling, batch_size=3))]
    assert {batch_key("txt2img", r) for r in [base, *same]} == {batch_key("txt2img", base)}
    different = [replace(base, checkpoint="sd2-base"), replace(base, width=128), replace(base, height=128),
                 *(replace(base, sampling=replace(base.sampling, **change)) for change in (
                     {"sampler": "Euler"}, {"steps": 5}, {"schedule": "Karras"}, {"schedule": "Exponential"}, {"cfg_scale": 7.0},
                     {"guidance_rescale": 0.5}, {"eta": 0.3}))]
    keys = [batch_key("txt2img", r) for r in [base, *different]]
    assert len(set(keys)) == len(keys)
    assert batch_key("txt2img", replace(base, tiling=True)) is None
    assert batch_key("txt2img", replace(base, hires=HiresFix())) is None
    for composable in ("a fox AND a hen", "a fox:1.5", "a fox <lora:x:1> AND a hen"):  # more rows, their own guidance
        assert batch_key("txt2img", replace(base, prompt=composable)) is None
    assert batch_key("txt2img", replace(base, prompt="a fox:1 AND")) is None
    assert batch_key("txt2img", replace(base, prompt="a fox, (hen:1.5)")) == batch_key("txt2img", base)
    assert batch_key("inpaint", InpaintRequest("x", noise_image(), noise_image())) is None  # no `prepare` in its row
    image = Img2ImgRequest("x", noise_image(64, 64), checkpoint="sd21-base")
    assert batch_key("img2img", image) == batch_key("img2img", replace(image, width=64, height=64))
    assert batch_key("img2img", image) != batch_key("img2img", replace(image, strength=0.5))
    assert batch_key("img2img", image) != batch_key("txt2img", base)


def test_stop_of_one_member_ends_its_call_at_once_and_the_others_complete(
    service: Service, services: tuple[Service, Service]
) -> None:
    """The first member's progress holds the batch at step 1; meanwhile the third member is stopped."""
    hold, stopped_at = threading.Event(), []

    def holding(done: int, total: int, preview: Any) -> None:
        if done == 1 and not hold.is_set():
            hold.wait(30)

    blocker, callers = Blocker(service), []
    arrive(service, callers, FOUR[0], on_progress=holding)
    for req in FOUR[1:3]:
        arrive(service, callers, req)
    blocker.release.set()
    wait_until(lambda: callers[0].progress)  # the batch is at step 1, held there
    callers[2].stop.set()
    stopped_at.append(time.monotonic())
    callers[2].join()
    assert isinstance(callers[2].error, Cancelled)
    assert callers[2].ended_at - stopped_at[0] < 1.0 and not hold.is_set()  # while the batch was still held
    hold.set()
    for caller in callers[:2]:
        caller.join()
        assert caller.error is None
    assert service.batcher.batches_run == 1
    assert max(pixel_gap(c.result, a) for c, a in zip(callers[:2], solo_results(services, FOUR[:2]))) <= 1
    assert callers[2].progress == []  # stopped before the batch reported its step 1 to it: nothing after
    assert callers[1].progress[-1] == (3, 3)


def test_stop_while_queued_leaves_the_batch_to_the_others(service: Service) -> None:
    blocker, callers = queue_behind_gate(service, FOUR[:3])
    callers[1].stop.set()
    callers[1].join()
    assert isinstance(callers[1].error, Cancelled)
    blocker.release.set()
    for caller in (callers[0], callers[2]):
        caller.join()
        assert caller.error is None
    assert service.batcher.batches_run == 1 and callers[1].progress == []


def test_jobs_ahead_of_a_member_of_a_full_group_and_of_an_open_one(service: Service) -> None:
    """A full group (no longer the one its key's requests join) still tells its members their place."""
    enable(service, max_images=2)
    blocker, callers = queue_behind_gate(service, FOUR[:1] + FOUR[2:])  # 1 + 1 images: full; then 1 more
    wait_until(lambda: service.gate.waiting == 3)  # the blocker inside, both groups waiting behind it
    ahead = [service.jobs_ahead(caller.stop.is_set) for caller in callers]
    assert None not in ahead, ahead  # every member is waiting: each has a place
    assert ahead[0] == ahead[1] and sorted({ahead[0], ahead[2]}) == [1, 2]  # one group in front of the other
    blocker.release.set()
    for caller in callers:
        caller.join()
        assert caller.error is None, caller.error
    assert service.jobs_ahead(callers[0].stop.is_set) is None and service.batcher._groups == []


def test_stop_of_every_member_while_queued_frees_the_gate(service: Service) -> None:
    blocker, callers = queue_behind_gate(service, FOUR[:2])
    for caller in callers:
        caller.stop.set()
        caller.join()
        assert isinstance(caller.error, Cancelled)
    blocker.release.set()
    wait_until(lambda: service.gate.waiting == 0)  # the group left the gate's queue
    assert service.batcher.batches_run == 0


def test_a_request_failing_in_the_batch_fails_alone(service: Service, services: tuple[Service, Service],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An over-long prompt fails its own preparation: only it fails (its rerun alone gives the message); the
    other two still run as one batch. (The Service refuses such a prompt when it validates it,
    tests/api/test_prompt_refused_early.py; that check is off here, so the prompt reaches the pipeline's.)"""
    monkeypatch.setattr(service._prompt_tools, "check", lambda checked: None)
    too_long = request(", ".join(["a very detailed landscape"] * 30), 5)
    blocker, callers = queue_behind_gate(service, [FOUR[0], too_long, FOUR[2]])
    blocker.release.set()
    for caller in callers:
        caller.join()
    assert isinstance(callers[1].error, InvalidRequest) and "too long" in str(callers[1].error)
    assert service.batcher.batches_run == 1  # the two others, together
    for caller, alone in zip([callers[0], callers[2]], solo_results(services, [FOUR[0], FOUR[2]])):
        assert caller.error is None and pixel_gap(caller.result, alone) <= 1  # MKL's row blocks (module docstring)


def test_a_member_whose_decode_fails_reruns_alone(service: Service, services: tuple[Service, Service]) -> None:
    """A NaN decode in one member's finish (the fallback ladder's case): that member runs again alone."""
    def prepare(task: str) -> Any:
        def flaky(components: Any, req: Txt2ImgRequest, mode: Any) -> Any:
            prepared = prepare_txt2img(components, req, mode)
            if req.sampling.seed == 33:
                def broken(latents: Any) -> Any:
                    raise NonFiniteError("image")

                prepared.finish = broken
            return prepared

        return flaky

    service.batcher = Batcher(service.gate, service.run_on_gpu, service.use_checkpoint, prepare=prepare)
    blocker, callers = queue_behind_gate(service, FOUR[:3])
    blocker.release.set()
    for caller in callers:
        caller.join()
        assert caller.error is None
    assert service.batcher.batches_run == 1
    assert pixel_gap(callers[2].result, solo_results(services, [FOUR[2]])[0]) == 0  # its rerun alone


def test_a_batch_out_of_memory_runs_each_alone_and_caps_later_batches(
    service: Service, services: tuple[Service, Service]
) -> None:
    """The first batch (4 images) runs out of memory: each request runs alone; that key's batches hold 3 from now."""
    import torch

    failed: list[str] = []

    def prepare(task: str) -> Any:
        def out_of_memory_once(components: Any, req: Txt2ImgRequest, mode: Any) -> Any:
            if not failed:
                failed.append(req.prompt)
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return prepare_txt2img(components, req, mode)

        return out_of_memory_once

    service.batcher = Batcher(service.gate, service.run_on_gpu, service.use_checkpoint, prepare=prepare)
    blocker, callers = queue_behind_gate(service, FOUR[:3])  # 1 + 2 + 1 images
    blocker.release.set()
    for caller, alone in zip(callers, solo_results(services, FOUR[:3])):
        caller.join()
        assert caller.error is None and pixel_gap(caller.result, alone) == 0  # run alone: exactly as solo
    assert service.batcher.batches_run == 0 and service.batcher._caps == {batch_key("txt2img", FOUR[0]): 3}
    blocker, callers = queue_behind_gate(service, FOUR)  # 5 images: a group of 3, then one of 2
    blocker.release.set()
    for caller in callers:
        caller.join()
        assert caller.error is None
    # requests per group: the failed one (3), then two of 2 requests (1 + 2 images, 1 + 1 images)
    assert service.batcher.batches_run == 2 and dict(service.batcher.group_sizes) == {3: 1, 2: 2}


# ---- the wait for companions, with a stand-in for the GPU run ------------------------------------------------
class FakeRun:
    """The service's solo run: records when each request started and can hold one until released."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.release: dict[str, threading.Event] = {}

    def __call__(self, task: str, req: Txt2ImgRequest, on_step: Any, timings: dict[str, float]) -> str:
        self.started[req.prompt] = time.monotonic()
        if req.prompt in self.release:
            self.release[req.prompt].wait(30)
        return req.prompt  # type: ignore[return-value]


def fake_batcher(max_wait_s: float) -> tuple[Batcher, FakeRun]:
    from sd2_app.api.gate import GpuGate

    run = FakeRun()
    return Batcher(GpuGate(), run, lambda checkpoint: None, max_wait_s=max_wait_s), run  # type: ignore[arg-type]


def test_a_lone_request_on_an_idle_service_does_not_wait() -> None:
    batcher, run = fake_batcher(max_wait_s=5.0)
    batcher._last_arrival = time.monotonic() - 10  # nothing arrived for a while
    arrived = time.monotonic()
    assert batcher.run("txt2img", request("alone", 1), lambda *a: None, {}) == "alone"
    assert run.started["alone"] - arrived < 1.0  # far below the 5 s it would wait for companions


def test_a_busy_service_waits_for_companions_at_most_max_wait() -> None:
    batcher, run = fake_batcher(max_wait_s=0.3)
    other = threading.Event()
    run.release["busy"] = other
    busy = threading.Thread(target=batcher.run, args=("txt2img", request("busy", 1, steps=9), lambda *a: None, {}))
    busy.start()
    wait_until(lambda: "busy" in run.started)  # another request is in flight: the service is busy
    arrived = time.monotonic()
    lone = threading.Thread(target=batcher.run, args=("txt2img", request("waits", 2), lambda *a: None, {}))
    lone.start()
    other.set()  # the gate frees; the new group waits for companions that never come
    lone.join(10)
    busy.join(10)
    waited = run.started["waits"] - arrived
    print(f"\nwaited {waited:.3f} s for companions (max_wait_s 0.3)")
    assert 0.3 <= waited < 0.3 + 1.0
    assert MAX_WAIT_S == 0.1  # the app's bound (docs/DESIGN.md)


def test_the_app_flag_turns_batching_on_except_on_zerogpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    import app
    from sd2_app import webapp
    from sd2_app.api import gpu_time
    from sd2_app.api.engine_settings import ready

    assert app.parse_args([]).batch_users is False  # off by default
    assert app.parse_args(["--batch-users"]).batch_users is True
    assert app.parse_args(["--batch-users", "--no-batch-users"]).batch_users is False
    monkeypatch.setattr(gpu_time, "on_zerogpu", lambda: False)
    service = ready(Service(None, outputs_dir=None, allowed_repos=()),
                    replace(webapp.engine_settings(app.parse_args(["--batch-users"])), import_pipelines=False))
    assert service.batcher is not None and service.concurrency == MAX_IMAGES
    monkeypatch.setattr(gpu_time, "on_zerogpu", lambda: True)
    on_zerogpu = ready(Service(None, outputs_dir=None, allowed_repos=()),
                       replace(webapp.engine_settings(app.parse_args(["--batch-users"])), import_pipelines=False))
    assert on_zerogpu.batcher is None and on_zerogpu.concurrency == 1
