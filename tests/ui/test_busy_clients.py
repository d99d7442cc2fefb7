"""A refused queue join as API clients read it, on app.py's app with --queue-size 1 (tiny checkpoints, served
in-process), its one GPU place held as an A1111 API job holds it (`JobAdmission.take`): gradio_client raises with
the app's busy message (not "400 Bad Request"), the refused join takes no queue place, and a raw HTTP join still
gets HTTP 400 with the message as its detail (what the page's own client shows).
"""

from __future__ import annotations

import httpx
import pytest

from sd2_app.api.job_admission import server_busy_message
from tests.hosting_support import FAST, one_place_app  # noqa: F401
from tests.reliability_support import one_thread  # noqa: F401

pytestmark = pytest.mark.slow  # a served app
gradio_client = pytest.importorskip("gradio_client")


def test_gradio_client_reads_the_busy_message_of_a_refused_join(one_place_app) -> None:
    url, demo = one_place_app
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
