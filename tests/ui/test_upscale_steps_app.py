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


# (sampler, CFG, images per prompt): settings the run's own check refuses, then the tab's defaults (batch count 1)
SETTINGS = [("DDIM", 9, 0), ("DDIM", 9, -3), ("DDIM", 9, 2.5), ("DDIM", 31, 1), ("DDIM", 9, 1)]


def test_settings_the_run_would_refuse_leave_the_steps_alone() -> None:
    """Images per prompt 0 priced a step at nothing: the event failed with ZeroDivisionError (HTTP 500, a traceback
    in the log); -3 was taken as "over the job limit even at 1 step", 2.5 as 2 and CFG 31 as allowed. Settings the run's own check refuses (`task_checks.checked_sampling`) leave Steps and the note as
    they are; the tab's defaults give the 12 steps of a 512x512 image."""
    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    picture = io.BytesIO()
    Image.new("RGB", (512, 512), (9, 90, 9)).save(picture, "PNG")
    answers = []
    with launched(build_ui(service)) as url, httpx.Client(base_url=url, timeout=60) as client:
        fns = {d.get("api_name"): d["id"] for d in client.get("config").json()["dependencies"]}
        path = client.post("gradio_api/upload", files={"files": ("in.png", picture.getvalue(), "image/png")}).json()[0]
        image = {"path": path, "orig_name": "in.png", "meta": {"_type": "gradio.FileData"}}
        for sampler, cfg, batch in SETTINGS:
            answer = client.post("gradio_api/run/predict", json={
                "data": [image, sampler, 50, cfg, batch, 1], "fn_index": fns["upscale_batch_steps_fit"],
                "session_hash": "s"})
            answers.append((answer.status_code, answer.json().get("data")))
    unchanged = [{"__type__": "update"}, {"__type__": "update", "value": "", "visible": False}]
    assert answers == [(200, unchanged)] * (len(SETTINGS) - 1) + [
        (200, [12, {"__type__": "update", "value": NOTE_12, "visible": True}])]
