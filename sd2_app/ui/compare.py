"""Compare samplers: one prompt, seed and step count through several samplers; each image captioned and timed."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sd2_app.api.requests import CompareRequest, Sampling, Txt2ImgRequest
from sd2_app.ui.common import EXAMPLE_PROMPTS, ResultPanel, result_panel, run_buttons, wire_run, wire_seed_buttons
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.txt2img import prompt_boxes

MOST_USED = CompareRequest.__dataclass_fields__["samplers"].default  # the six defaults of CompareRequest


def build(service: Any, flags: StopFlags) -> ResultPanel:
    sampler_names = service.samplers()
    choices = service.checkpoints("txt2img")
    default = "sd21-base" if any(key == "sd21-base" for _, key in choices) else choices[0][1]
    side = service.resolution(default)
    with gr.Row():
        with gr.Column(scale=5):
            checkpoint = gr.Dropdown(choices, value=default, label="Checkpoint")
            prompt, negative = prompt_boxes("compare", EXAMPLE_PROMPTS[1])
            samplers = gr.CheckboxGroup(sampler_names, value=[n for n in MOST_USED if n in sampler_names],
                                        label="Samplers", elem_id="compare-samplers")
            with gr.Row():
                steps = gr.Slider(1, 150, 25, step=1, label="Steps")
                cfg = gr.Slider(0, 30, 7.5, step=0.5, label="Guidance scale (CFG)")
            karras = gr.Checkbox(False, label="Karras sigmas (where offered)")
            with gr.Row():
                width = gr.Slider(64, service.limits.max_side, side, step=8, label="Width")
                height = gr.Slider(64, service.limits.max_side, side, step=8, label="Height")
            with gr.Row():
                seed = gr.Number(-1, label="Seed (-1 = random, then shared by all samplers)", precision=0, scale=3)
                randomize = gr.Button("Random seed", scale=1, size="sm")
                reuse = gr.Button("Reuse last seed", scale=1, size="sm")
            run, stop = run_buttons("compare")
        with gr.Column(scale=6):
            panel = result_panel("compare", run, stop)
    panel.gallery.columns = 3
    wire_seed_buttons(randomize, reuse, seed, panel.last_seed, "compare")

    def make_request(key: str, text: str, negative_text: str, chosen: list[str], n_steps: float, scale: float,
                     use_karras: bool, w: float, h: float, seed_value: Any) -> CompareRequest:
        sampling = Sampling(sampler=(chosen or sampler_names)[0], steps=n_steps,  # type: ignore[arg-type]
                            use_karras=use_karras,
                            cfg_scale=scale, seed=None if seed_value is None else seed_value)
        base = Txt2ImgRequest(prompt=text, negative_prompt=negative_text, checkpoint=key, width=w, height=h,  # type: ignore[arg-type]
                              sampling=sampling)
        return CompareRequest(base=base, samplers=tuple(chosen or ()))

    inputs = [checkpoint, prompt, negative, samplers, steps, cfg, karras, width, height, seed]
    names = ("checkpoint", "prompt", "negative_prompt", "samplers", "steps", "cfg_scale", "use_karras", "width", "height",
             "seed")
    wire_run(service, flags, panel, inputs, make_request, "compare", names)
    return panel
