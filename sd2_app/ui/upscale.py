"""Upscale x4: the low-res image, prompt, noise level; tiling is automatic. Before and after side by side."""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.cost import steps_that_fit
from sd2_app.api.requests import Sampling, UpscaleRequest
from sd2_app.api.task_checks import MAX_NOISE_LEVEL, checked_sampling
from sd2_app.errors import InvalidRequest
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import SAMPLING_NAMES, SamplingControls, to_sampling
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.shown_files import fast_png_file
from sd2_app.ui.result_panel import IMAGE_TARGETS
from sd2_app.ui.tab_frame import ImageTab, TabFrame
from sd2_app.ui.uploads import check_on_upload, upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

SEND_TO = tuple(target for target in IMAGE_TARGETS if target != "upscale")  # an x4 of an x4 is over the input limit


def before_image(result: Result) -> tuple:
    """The input enlarged x4 with bicubic resampling, the fair "before" next to the model's "after"."""
    low = result.request.image
    return (fast_png_file(low.resize((low.width * 4, low.height * 4), Image.Resampling.BICUBIC),
                          f"{result.seed}-upscale-before.png"),)


def build(service: Service, flags: StopFlags, examples: list[list[str]]) -> ImageTab:
    frame = TabFrame(service, "upscale", read=False)  # A1111's extras tab has no ↙ either
    with frame.columns(extra_label="Before (bicubic x4)", send_to=SEND_TO):
        image = upload_image(label="Low-resolution image", type="pil", image_mode=None,
                             sources=["upload", "clipboard"], height=320, elem_id="upscale-image")
        checkpoint = frame.checkpoint()
        noise = gr.Slider(0, MAX_NOISE_LEVEL, UpscaleRequest.noise_level, step=1, label="Noise level",
                          info="noise added to the input; higher lets the model invent more detail")
        controls = frame.sampling()
        steps_note = gr.Markdown(visible=False, elem_id="upscale-steps-note")
        gr.Markdown("Large inputs are split into overlapping tiles automatically.")
        frame.examples(examples, image)
    check_on_upload(image, service.limits.max_upscale_input_pixels)
    _wire_steps_that_fit(service, image, controls, steps_note)
    inputs = [image, checkpoint, frame.prompt, frame.negative, noise, *controls.inputs()]
    names = ("image", "checkpoint", "prompt", "negative_prompt", "noise_level", *SAMPLING_NAMES)
    wire_run(service, flags, frame.panel, inputs, make_request, "upscale", names, finish_extra=before_image,
             styles=frame.styles, eta=controls.eta, batch_count=controls.batch_count)
    return ImageTab(image, frame.prompt, frame.negative, controls, frame.panel, frame.styles)


def make_request(picture: Any, key: str, text: str, negative_text: str, level: float, *sampling: Any) -> UpscaleRequest:
    """Widget values (in the order of the API's parameter names) -> the request."""
    return UpscaleRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                          noise_level=level, sampling=to_sampling(*sampling))  # type: ignore[arg-type]


def steps_fit(service: Service, picture: Any, sampler: Any, steps: Any, cfg: Any, batch: Any,
              count: Any = 1) -> tuple[Any, Any]:
    """The Steps slider and its note for an image in the tab: where this server's job cost cap
    (`Limits.max_job_cost`, sd2_app/api/cost.py) allows fewer steps than Steps says with the other settings,
    Steps comes down to what fits (a 512x512 image at the defaults: 12) and the note says so; it is never raised."""
    if not isinstance(picture, Image.Image):
        return gr.update(), gr.update(value="", visible=False)
    try:  # the settings as the run's check takes them (images per prompt 0 priced a step at nothing)
        sampling = checked_sampling(Sampling(sampler=sampler, steps=1, cfg_scale=cfg, batch_size=batch,
                                             batch_count=count), service.catalog, service.limits)
        fit = steps_that_fit(UpscaleRequest("", picture, sampling=sampling), service.catalog,
                             service.limits.max_job_cost)
    except (TypeError, ValueError, InvalidRequest):  # odd widget values: the run's own check says what is wrong
        fit = None
    if fit is None or fit >= service.limits.max_steps:
        return gr.update(), gr.update(value="", visible=False)
    size = f"{picture.width}x{picture.height}"
    if fit < 1:
        return gr.update(), gr.update(value=f"This {size} image is over this server's job limit even at 1 step; use "
                                            "a smaller image, fewer images per prompt or a lower batch count.",
                                      visible=True)
    # The same note whether this call or an earlier one lowered the steps (an image sent with its settings
    # starts several of these events).
    note = (f"At most {fit} steps fit this server's job limit for this {size} image with these settings (Steps "
            f"is lowered to {fit} when it is higher).")
    lowered = isinstance(steps, (int, float)) and steps > fit
    return (fit if lowered else gr.update()), gr.update(value=note, visible=True)


def _wire_steps_that_fit(service: Service, image: gr.Image, controls: SamplingControls, note: gr.Markdown) -> None:
    """`steps_fit` when an image arrives (an upload, a paste or "Send to upscale") and when the settings the
    cost depends on change."""
    inputs = [image, controls.sampler, controls.steps, controls.cfg, controls.batch, controls.batch_count]
    events = {"image": image.change, "sampler": controls.sampler.change, "cfg": controls.cfg.release,
              "batch": controls.batch.release, "batch_count": controls.batch_count.release}
    for name, event in events.items():
        event(lambda *values: steps_fit(service, *values), inputs, [controls.steps, note],
              api_name=f"upscale_{name}_steps_fit", api_visibility="private", queue=False, show_progress="hidden")
