"""The Upscale tab's steps-that-fit event (`sd2_app.ui.upscale.steps_fit`) through the running app, with raw HTTP
as the page sends it: widget values a visitor can send that the tab's sliders would not."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from sd2_app.api.service import Service
from sd2_app.ui import build_ui
from tests.reliability_support import launched
from tests.ui_doubles import FakeManager

NOTE_12 = ("At most 12 steps fit this server's job limit for this 512x512 image with these settings (Steps is lowered "
           "to 12 when it is higher).")


def test_images_per_prompt_the_run_would_refuse_leave_the_steps_alone() -> None:
    """Images per prompt 0 priced a step at nothing: the event failed with ZeroDivisionError (HTTP 500, a traceback
    in the log); -3 and 2.5 were taken as "over the job limit even at 1 step" and 2. Settings the run's own check
    refuses leave Steps and the note as they are; 1 gives the 12 steps of a 512x512 image."""
    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    picture = io.BytesIO()
    Image.new("RGB", (512, 512), (9, 90, 9)).save(picture, "PNG")
    answers = {}
    with launched(build_ui(service)) as url, httpx.Client(base_url=url, timeout=60) as client:
        fns = {d.get("api_name"): d["id"] for d in client.get("config").json()["dependencies"]}
        path = client.post("gradio_api/upload", files={"files": ("in.png", picture.getvalue(), "image/png")}).json()[0]
        image = {"path": path, "orig_name": "in.png", "meta": {"_type": "gradio.FileData"}}
        for batch in (0, -3, 2.5, 1):
            answer = client.post("gradio_api/run/predict", json={
                "data": [image, "DDIM", 50, 9, batch], "fn_index": fns["upscale_batch_steps_fit"], "session_hash": "s"})
            answers[batch] = (answer.status_code, answer.json().get("data"))
    unchanged = [{"__type__": "update"}, {"__type__": "update", "value": "", "visible": False}]
    assert answers == {0: (200, unchanged), -3: (200, unchanged), 2.5: (200, unchanged),
                       1: (200, [12, {"__type__": "update", "value": NOTE_12, "visible": True}])}
