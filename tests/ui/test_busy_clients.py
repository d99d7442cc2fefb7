"""A refused queue join as API clients read it, on app.py's app with --queue-size 1 (tiny checkpoints, served
in-process), its one GPU place held as an A1111 API job holds it (`JobAdmission.take`): gradio_client raises with
the app's busy message (not "400 Bad Request"), the refused join takes no queue place, and a raw HTTP join still
gets HTTP 400 with the message as its detail (what the page's own client shows).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sd2_app.api.job_admission import server_busy_message
from tests.reliability_support import one_thread, serve  # noqa: F401

pytestmark = pytest.mark.slow  # a served app
gradio_client = pytest.importorskip("gradio_client")
FAST = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 1.0, "sampler": "Euler", "batch_size": 1}


@pytest.fixture(scope="module")
def full_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--queue-size", "1"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as served:
        yield served


def test_gradio_client_reads_the_busy_message_of_a_refused_join(full_app) -> None:
    url, demo = full_app
    admission = demo.flags.visitors.job_admission  # type: ignore[attr-defined]
    client = gradio_client.Client(url, verbose=False)
    assert admission.take("203.0.113.90") is None  # the app's one place, held as an API job holds it
    try:
        with pytest.raises(gradio_client.exceptions.AppError) as refused:
            client.predict(prompt="a busy day", seed=1, api_name="/txt2img", **FAST)
        assert refused.value.message == server_busy_message(1)
        assert len(demo._queue) == 0 and demo._queue.event_ids_to_events == {}  # type: ignore[attr-defined]
        raw = httpx.post(f"{url}gradio_api/call/txt2img", json={"data": ["raw", *[None] * 30]}, timeout=30)
        assert (raw.status_code, raw.json()) == (400, {"detail": server_busy_message(1)})
    finally:
        admission.release("203.0.113.90")
    _, gallery, info = client.predict(prompt="a free moment", seed=2, api_name="/txt2img", **FAST)
    assert "**Seed** 2" in info and len(gallery) == 1  # the place is free: the same client's job runs
