"""`python app.py --batch-users` served in-process: concurrent gradio_client users share one batch, and each gets
its own images (its prompt, its seed, its batch size), within one uint8 level of the same request run alone.

The app's service is caught as webapp.build enables batching, so the test can hold its GPU gate while the users'
requests arrive: they meet in one group deterministically, whatever the machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.api import batching  # noqa: E402
from sd2_app.api.requests import Sampling, Txt2ImgRequest  # noqa: E402
from sd2_app.api.service import Service  # noqa: E402
from tests.batching_support import Blocker, image_gap, wait_until  # noqa: E402
from tests.reliability_support import make_service, one_thread, serve  # noqa: E402,F401

pytestmark = pytest.mark.slow  # a served app

SETTINGS = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 6.0, "sampler": "Euler a"}
USERS = [("user one: a red fox", 101, 1), ("user two: a lighthouse", 202, 2), ("user three: a cat", 303, 1),
         ("user four: fruit", 404, 1)]


@pytest.fixture(scope="module")
def batching_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Service]]:
    caught: list[Service] = []
    enable = batching.enable

    def catching(service: Service, **options: float) -> batching.Batcher:
        caught.append(service)
        return enable(service, **options)  # type: ignore[arg-type]

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(batching, "enable", catching)
    try:
        with serve(["--tiny", "--device", "cpu", "--no-save", "--no-watermark", "--batch-users", "--mcp"],
                   tmp_path_factory.mktemp("app-cache")) as (url, demo):
            # Gradio gives events that share a concurrency id the lowest limit among them: every GPU event
            # (the tabs, the Models tab's, the MCP tools') must allow a batch's requests in together.
            # (gradio/queueing.py, Queue.create_event_queue_for_fn).
            limits = {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "gpu"}
            assert limits == {batching.MAX_IMAGES}
            yield url, caught[0]
    finally:
        monkeypatch.undo()


def _generate(url: str, prompt: str, seed: int, batch: int) -> tuple[list[Image.Image], str]:
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    _, gallery, info = client.predict(prompt=prompt, seed=seed, batch_size=batch, api_name="/txt2img", **SETTINGS)
    return [Image.open(item["image"]) for item in gallery], info


def test_concurrent_users_share_a_batch_and_get_their_own_images(batching_app: tuple[str, Service]) -> None:
    url, service = batching_app
    assert service.batcher is not None and service.concurrency == batching.MAX_IMAGES
    blocker = Blocker(service)
    with ThreadPoolExecutor(max_workers=len(USERS)) as pool:
        futures = [pool.submit(_generate, url, *user) for user in USERS]
        wait_until(lambda: service.batcher._in_flight == len(USERS), timeout=120)  # all four queued together
        blocker.release.set()
        results = [future.result(timeout=300) for future in futures]
    assert service.batcher.batches_run == 1

    solo, _ = make_service(watermark=False)
    for (prompt, seed, batch), (images, info) in zip(USERS, results):
        assert len(images) == batch and all(image.size == (64, 64) for image in images)
        parameters = images[0].info["parameters"]
        assert parameters.startswith(prompt + "\n") and f"Seed: {seed}," in parameters
        assert info.startswith(f"**Seed** {seed} ·" if batch == 1 else f"**Seeds** {seed}–{seed + batch - 1} ·")
        sampling = Sampling(sampler="Euler a", steps=3, cfg_scale=6.0, seed=seed, batch_size=batch)
        alone = solo.run(Txt2ImgRequest(prompt, checkpoint="sd21-base", width=64, height=64, sampling=sampling))
        assert image_gap(images, alone.images) <= 1  # CPU kernels are not batch-invariant (tests/pipelines/test_batch.py)


def test_a_lone_user_runs_alone(batching_app: tuple[str, Service]) -> None:
    url, service = batching_app
    before = service.batcher.batches_run
    images, _ = _generate(url, "alone", 5, 1)
    assert len(images) == 1 and service.batcher.batches_run == before


def _infos(job: object) -> list[str]:
    return [output[2] for output in job.outputs()]  # type: ignore[attr-defined]  # every yield's info line


def test_a_waiting_user_sees_the_place_in_the_queue(batching_app: tuple[str, Service]) -> None:
    """With batching, Gradio's queue lets a batch's requests in together and they wait at the GPU gate, where
    Gradio shows no position: the info line says how many jobs are ahead, as the place changes."""
    url, service = batching_app
    blocker = Blocker(service)  # one job on the GPU
    users = [Client(url, verbose=False) for _ in range(3)]
    first = users[0].submit(prompt="first", seed=1, api_name="/txt2img", **SETTINGS)
    wait_until(lambda: "Queued: 1 job ahead of yours…" in _infos(first), timeout=60)
    # Same settings as the first: it joins the first one's group and shares its place.
    joined = users[1].submit(prompt="joined", seed=3, api_name="/txt2img", **SETTINGS)
    wait_until(lambda: "Queued: 1 job ahead of yours…" in _infos(joined), timeout=60)
    # Different steps: another batch, which waits behind the first one's group.
    other = users[2].submit(prompt="other", seed=2, api_name="/txt2img", **{**SETTINGS, "steps": 4})
    wait_until(lambda: "Queued: 2 jobs ahead of yours…" in _infos(other), timeout=60)
    # The first group's users press Stop: the group leaves the queue and the other moves up.
    for user in users[:2]:
        assert user.predict(api_name="/txt2img_stop") == "Stopped before sampling began."  # the info line: the one text output
    wait_until(lambda: _infos(other)[-1] == "Queued: 1 job ahead of yours…", timeout=60)
    blocker.release.set()
    _, gallery, info = other.result(timeout=120)
    assert len(gallery) == 1 and info.startswith("**Seed** 2")
    infos = _infos(other)  # its first step replaced the place ("Starting…" first while its model loads, if slow)
    after = infos[infos.index("Queued: 1 job ahead of yours…") + 1:]
    assert after[0] in ("Starting…", "Step 1/4") and not any(i.startswith("Queued") for i in after), infos


def test_a_waiting_plot_sees_its_place_in_the_queue_until_its_first_step(batching_app: tuple[str, Service]) -> None:
    """An X/Y/Z plot waiting at the GPU gate says how many jobs are ahead, like a single request; its first step
    replaces the place for good (its cells, one after another, never show it again)."""
    url, service = batching_app
    blocker = Blocker(service)  # one job on the GPU
    plot = Client(url, verbose=False).submit(prompt="plotted", x_type="seed", x_values="1, 2", seed=1,
                                             api_name="/xyz_plot", **{**SETTINGS, "steps": 2})
    wait_until(lambda: "Queued: 1 job ahead of yours…" in _infos(plot), timeout=60)
    blocker.release.set()
    _, gallery, info, _ = plot.result(timeout=180)
    assert len(gallery) == 1 + 2 and "**Seeds** 1–2 · " in info  # the cells' seeds (a Seed axis)
    infos = _infos(plot)
    after = infos[infos.index("Queued: 1 job ahead of yours…") + 1:]
    assert after and not any(i.startswith("Queued") for i in after), infos
