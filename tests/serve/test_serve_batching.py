"""Batching across users on a Ray Serve replica (`batch_users`): a local Ray, one tiny-checkpoint CPU replica.

A long job holds the replica's GPU gate while seven more requests with one batch key arrive; they must all
reach the replica's `Batcher` (one thread each: more than the event loop's default executor has for
num_cpus = 1) and run as one batch. Each image is compared with the same request run alone through the same
path; on CPU fp32 the batch's kernels round a few pixels one uint8 level away (tests/pipelines/test_batch.py
shows the batching itself is exact), the comparison tests/api/test_batching.py makes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.errors import Cancelled
from tests.batching_support import image_gap, pixel_gap, wait_until
from tests.reliability_support import fast, txt2img
from tests.serve_support import front_service, local_serve

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow
COMPANIONS = 7  # with the long job, more requests at once than the default executor's 5 threads (num_cpus = 1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # -> (handle, ServeConfig)
    # 10 ongoing: the long job, the seven companions, and room for the test's `stats` calls meanwhile
    with local_serve(tmp_path_factory, num_gpus=0.0, num_cpus=1.0, batch_users=True,
                     max_ongoing_requests=10) as served:
        yield served


@pytest.fixture(scope="module")
def front(cluster):  # -> Service whose jobs run on the replica
    return front_service(cluster)


def companion(index: int) -> Txt2ImgRequest:
    sampling = Sampling(sampler="Euler a", steps=3, cfg_scale=6.0, seed=100 + index)
    return Txt2ImgRequest(f"a lighthouse number {index}", checkpoint="sd21-base", width=64, height=64,
                          sampling=sampling)


def stats(cluster) -> dict:
    handle, _ = cluster
    return handle.stats.remote().result(timeout_s=30)


@contextmanager
def long_job_holding_the_gate(front, cluster, waiting: int) -> Iterator[Callable[[list[Callable[[], None]]], None]]:
    """A long job of its own batch key runs on the replica; `arrive(calls)` starts each call on a thread of its own
    and returns once the replica has all `waiting` of them besides the long job. On leaving, the long job is
    stopped (the waiting requests then get their turn) and every call is joined."""
    started, stop_long = threading.Event(), threading.Event()
    stopped: list[Cancelled] = []

    def long_job() -> None:
        try:
            front.run(replace(txt2img(seed=5), width=256, height=256, sampling=fast(5, steps=150)),
                      lambda done, total, preview: started.set(), stop_long.is_set)
        except Cancelled as error:
            stopped.append(error)

    holder = threading.Thread(target=long_job)
    holder.start()
    assert started.wait(60)
    threads: list[threading.Thread] = []

    def arrive(calls: list[Callable[[], None]]) -> None:
        threads.extend(threading.Thread(target=call) for call in calls)
        for thread in threads:
            thread.start()
        # every one of them (and the long job) inside the replica's Batcher
        wait_until(lambda: stats(cluster)["batch_in_flight"] == waiting + 1, timeout=60)
        assert holder.is_alive()  # they arrived while the long job held the gate

    yield arrive
    stop_long.set()
    holder.join(60)
    for thread in threads:
        thread.join(120)
    assert len(stopped) == 1


def test_the_front_lets_a_batch_worth_of_requests_through(front, cluster) -> None:
    _, config = cluster
    assert config.max_ongoing_requests == 10 and front.concurrency == 10  # one replica x 10
    assert stats(cluster)["batch_groups"] is not None  # the replica's Service has a batcher


def test_concurrent_requests_run_as_one_batch_each_as_alone(front, cluster) -> None:
    front.run(companion(0))  # the checkpoint is loaded before the timing below
    before = Counter(stats(cluster)["batch_groups"])
    with long_job_holding_the_gate(front, cluster, waiting=COMPANIONS) as arrive:
        results: dict[int, object] = {}
        arrive([lambda i=i: results.__setitem__(i, front.run(companion(i))) for i in range(1, COMPANIONS + 1)])
    assert len(results) == COMPANIONS
    ran = Counter(stats(cluster)["batch_groups"]) - before
    assert ran == Counter({1: 1, COMPANIONS: 1}), ran  # the stopped long job alone, the seven as one batch
    solo = {i: front.run(companion(i)) for i in results}  # the same requests one at a time: groups of one
    assert Counter(stats(cluster)["batch_groups"]) - before == Counter({1: 1 + COMPANIONS, COMPANIONS: 1})
    gaps = [pixel_gap(results[i], solo[i]) for i in sorted(results)]
    print(f"\nuint8 gap per request, batch vs solo on the replica: {gaps}")
    assert max(gaps) <= 1  # CPU kernels (module docstring)
    first, second = (np.asarray(results[i].images[0]) for i in (1, 2))
    assert not np.array_equal(first, second)  # the requests really differ
    for i, result in results.items():
        assert result.seed == 100 + i and f"Seed: {100 + i}," in result.parameters


def test_app_users_share_a_batch_on_the_replica_and_get_their_own_images(
    front, cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python app.py --serve` with a config of `batch_users = true`: three gradio_client users at once run as one
    batch on the replica; each gets its own images, within one uint8 level of the same request alone."""
    from gradio_client import Client
    from PIL import Image

    from sd2_app import webapp
    from sd2_app.app_flags import parse_args
    from tests.reliability_support import free_port

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # webapp.build lowers it; restored after
    _, config = cluster
    toml = tmp_path / "serve.toml"
    toml.write_text(f'[serve]\napp_name = "{config.app_name}"\nbatch_users = true\nmax_ongoing_requests = 10\n')
    demo = webapp.build(parse_args(["--serve", "auto", "--serve-config", str(toml), "--no-save", "--no-watermark"]))
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "gpu"} == {10}
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    users = [("user one: a red fox", 101, 1), ("user two: a lighthouse", 202, 2), ("user three: a cat", 303, 1)]
    got: dict[int, tuple[list[Image.Image], str]] = {}

    def generate(index: int) -> None:
        prompt, seed, batch = users[index]
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        _, gallery, info = client.predict(prompt=prompt, seed=seed, batch_size=batch, width=64, height=64, steps=3,
                                          cfg_scale=6.0, sampler="Euler a", api_name="/txt2img")
        got[index] = [Image.open(item["image"]).convert("RGB") for item in gallery], info

    try:
        front.run(companion(0))
        before = Counter(stats(cluster)["batch_groups"])
        with long_job_holding_the_gate(front, cluster, waiting=len(users)) as arrive:
            arrive([lambda i=i: generate(i) for i in range(len(users))])
    finally:
        demo.close()
    assert Counter(stats(cluster)["batch_groups"]) - before == Counter({1: 1, len(users): 1})
    solo_front = front_service(cluster, watermark=False)
    for index, (prompt, seed, batch) in enumerate(users):
        images, info = got[index]
        alone = solo_front.run(Txt2ImgRequest(prompt, checkpoint="sd21-base", width=64, height=64, sampling=Sampling(
            sampler="Euler a", steps=3, cfg_scale=6.0, seed=seed, batch_size=batch)))
        assert len(images) == batch
        assert info.startswith(f"**Seed** {seed} ·" if batch == 1 else f"**Seeds** {seed}–{seed + batch - 1} ·")
        assert image_gap(images, alone.images) <= 1  # CPU kernels (module docstring)
