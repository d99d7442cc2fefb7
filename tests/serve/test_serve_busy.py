"""Ray Serve's back pressure reaches the visitor as "busy", not as a lost worker.

One tiny-checkpoint replica on a local Ray (CPU) runs one job at once, and Serve keeps at most one more waiting
for it (`max_ongoing_requests = 1`, `max_queued_requests = 1`). Three front ends share the deployment: two
`Service`s with `ServeBackend` (as two other `app.py --serve` processes would be) and `app.py --serve --api`
served in-process. While the first's job runs and the second's waits, Serve turns the app's jobs away before
any replica takes them: the web UI says the server is busy, and the A1111 API answers 503 with the same words.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sd2_app.errors import Cancelled, InvalidRequest
from tests.reliability_support import fast, free_port, txt2img
from tests.serve_support import front_service, local_serve

ray = pytest.importorskip("ray")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow  # a local Ray with a Serve replica
SETTINGS = {"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 1}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # -> (handle, ServeConfig)
    with local_serve(tmp_path_factory, num_gpus=0.0, num_cpus=1.0, **SETTINGS) as served:
        yield served


@pytest.fixture()
def app_url(cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`app.py --serve auto --serve-config TOML --no-save --api` on the cluster's deployment, in-process."""
    import app
    from sd2_app import webapp

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # webapp.build lowers it
    _, config = cluster
    toml = tmp_path / "serve.toml"
    toml.write_text(f'[serve]\napp_name = "{config.app_name}"\n' + "".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    args = app.parse_args(["--serve", "auto", "--serve-config", str(toml), "--no-save", "--api"])
    demo = webapp.build(args)
    settings = {**webapp.launch_settings(args, demo), "server_port": free_port(), "prevent_thread_lock": True,
                "quiet": True}
    _, url, _ = demo.launch(**settings)
    try:
        yield url
    finally:
        demo.close()


def _request(seed: int, steps: int = 2):
    return replace(txt2img(seed=seed), checkpoint="sd21-base", sampling=fast(seed, steps=steps))


def _api_txt2img(url: str, seed: int) -> httpx.Response:
    body = {"prompt": "x", "seed": seed, "sampler_name": "Euler", "steps": 2, "cfg_scale": 1.0, "width": 64,
            "height": 64, "override_settings": {"sd_model_checkpoint": "sd21-base"}}
    return httpx.post(f"{url}sdapi/v1/txt2img", json=body, timeout=120)


def test_a_job_beyond_the_deployments_queue_is_refused_as_busy(cluster, app_url: str) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from sd2_app.serve.backend import WORKERS_BUSY

    fronts = [front_service(cluster) for _ in range(2)]
    assert fronts[0].run(_request(1)).seed == 1  # the replica has the checkpoint loaded
    started, stop = threading.Event(), threading.Event()
    outcomes: dict[int, object] = {}

    def run(index: int) -> None:
        job = replace(_request(10 + index, steps=150), width=128, height=128)
        try:
            outcomes[index] = fronts[index].run(job, lambda done, total, preview: started.set(), stop.is_set)
        except (Cancelled, InvalidRequest) as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    threads[0].start()
    assert started.wait(60)  # the first front end's job runs on the replica
    threads[1].start()
    time.sleep(1.0)  # the second's waits in Serve's queue for the busy replica
    client = Client(app_url, verbose=False)
    try:
        with pytest.raises(AppError) as refused:
            client.predict(prompt="x", checkpoint="sd21-base", width=64, height=64, sampler="Euler", steps=2,
                           cfg_scale=1.0, seed=3, api_name="/txt2img")
        api = _api_txt2img(app_url, 4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert str(refused.value) == WORKERS_BUSY
    assert (api.status_code, api.json().get("detail")) == (503, WORKERS_BUSY), api.text
    assert all(isinstance(outcomes[index], Cancelled) for index in range(2)), outcomes  # Stop ended them
    assert _api_txt2img(app_url, 5).status_code == 200  # with room again, the app's jobs run
