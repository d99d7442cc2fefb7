"""The sampling settings every generation tab shares: sampler, schedule type, steps, CFG, rescale, eta, the seed
row and the batch sliders (`sampling_controls`: A1111's Batch count beside its Batch size, "Images per prompt"),
their values as a `Sampling` (`to_sampling`), and the checkpoint list of a task (`checkpoint_dropdown`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import ETA_SAMPLERS, Sampling
from sd2_app.api.tasks import TASKS, default_checkpoint
from sd2_app.samplers.registry import AUTOMATIC, SCHEDULES
from sd2_app.ui.result_panel import seed_of

if TYPE_CHECKING:
    from sd2_app.api.service import Service

SAMPLING_NAMES = ("sampler", "schedule_type", "steps", "cfg_scale", "guidance_rescale", "seed", "batch_size")
# Eta and then the batch count came later: they are each tab's last API parameters, in this order
# (`run_events.wire_run`), so the positions above stay.
ETA_NAME = "eta"
BATCH_COUNT_NAME = "batch_count"
EXAMPLE_PROMPTS = ("High quality photo of an astronaut riding a horse in space", "two tigers", "a white cat")


@dataclass
class SamplingControls:
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Slider
    rescale: gr.Slider
    seed: gr.Number
    batch: gr.Slider
    eta: gr.Slider  # not in `inputs`: the run takes it after the rest (ETA_NAME)
    batch_count: gr.Slider  # not in `inputs` either: the run's last (BATCH_COUNT_NAME)

    def inputs(self) -> list[gr.components.Component]:
        return [self.sampler, self.schedule, self.steps, self.cfg, self.rescale, self.seed, self.batch]


def to_sampling(sampler: str, schedule: str, steps: float, cfg: float, rescale: float, seed: Any,
                batch: float) -> Sampling:
    """Widget values -> Sampling; the service validates every field (the API bypasses the sliders)."""
    return Sampling(
        sampler=sampler,
        steps=steps,  # type: ignore[arg-type]  # validated (and made int) by the service
        schedule=schedule,
        cfg_scale=cfg,
        guidance_rescale=rescale,
        seed=None if seed is None or seed == "" else seed,
        batch_size=batch,  # type: ignore[arg-type]
    )


def checkpoint_dropdown(service: Service, task: str, **kwargs: Any) -> gr.Dropdown:
    """The checkpoints that can run `task`, the task table's default preselected."""
    choices = service.checkpoints(task)
    default = default_checkpoint(task, [key for _, key in choices])
    return gr.Dropdown(choices, value=default, label="Checkpoint", **kwargs)


def sampling_controls(
    service: Service, prefix: str, *, batch: bool = True, task: str | None = None, eta: bool = True
) -> tuple[SamplingControls, gr.Button, gr.Button]:
    """The sampler settings, seed row and batch slider, set to the defaults of `task` (default: `prefix`) in
    the task table; returns them with the (randomize, reuse) seed buttons. The Eta slider shows while the sampler
    is one that takes it (`ETA_SAMPLERS`); `eta=False` keeps it hidden (a tab whose run does not read it)."""
    spec = TASKS[task or prefix]
    sampler, steps, cfg = spec.sampler, spec.steps, spec.cfg_scale
    names = service.samplers()
    with gr.Row(elem_classes=["phone-stack"]):  # on a phone the schedule goes under the sampler (app.css)
        sampler_box = gr.Dropdown(names, value=sampler if sampler in names else names[0], label="Sampler", scale=3,
                                  elem_id=f"{prefix}-sampler")
        # A1111's "Schedule type" beside its sampler: the sigmas' spacing, where the sampler offers a choice
        schedule = gr.Dropdown(list(SCHEDULES), value=AUTOMATIC, label="Schedule type", scale=2,
                               interactive=service.offers_schedules(sampler), elem_id=f"{prefix}-schedule")
    with gr.Row():
        steps_slider = gr.Slider(1, 150, steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        cfg_slider = gr.Slider(0, 30, cfg, step=0.5, label="Guidance scale (CFG)")
    with gr.Accordion("More sampling options", open=False, elem_id=f"{prefix}-more-sampling"):
        rescale = gr.Slider(0, 1, 0, step=0.05, label="Guidance rescale", info="0.7 helps the 768-v models; 0 = off")
        # A1111's "Eta for DDIM" (its settings' Sampler parameters), written as "Eta DDIM" in the parameters text.
        eta_slider = gr.Slider(0, 1, 0, step=0.01, label="Eta (DDIM)", info="noise added back each step; 0 = off",
                               visible=eta and sampler in ETA_SAMPLERS, elem_id=f"{prefix}-eta")
    with gr.Row(elem_classes=["seed-row"]):  # static/app.css lines the buttons up with the seed box
        seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, scale=3, elem_id=f"{prefix}-seed")
        randomize = gr.Button("Random seed", scale=1, size="sm", elem_id=f"{prefix}-random-seed")
        reuse = gr.Button("Reuse last seed", scale=1, size="sm", elem_id=f"{prefix}-reuse-seed")
    with gr.Row(visible=batch):  # A1111's order: Batch count, then Batch size
        count_slider = gr.Slider(1, service.limits.max_images, 1, step=1, label="Batch count", visible=batch,
                                 elem_id=f"{prefix}-batch-count")  # batches one after another
        batch_slider = gr.Slider(1, service.limits.max_batch, 1, step=1, label="Images per prompt", visible=batch,
                                 elem_id=f"{prefix}-batch-size")

    def offered(name: str) -> tuple[Any, Any]:
        """The schedule types where the sampler offers them (else Automatic), Eta where the sampler takes it."""
        schedule_box = (gr.update(interactive=True) if service.offers_schedules(name)
                        else gr.update(interactive=False, value=AUTOMATIC))
        return schedule_box, gr.update(visible=eta and name in ETA_SAMPLERS)

    sampler_box.change(offered, sampler_box, [schedule, eta_slider], api_name=f"{prefix}_schedules_offered",
                       api_visibility="private", queue=False)
    controls = SamplingControls(sampler_box, schedule, steps_slider, cfg_slider, rescale, seed, batch_slider, eta_slider,
                                count_slider)
    return controls, randomize, reuse


def wire_seed_buttons(randomize: gr.Button, reuse: gr.Button, seed: gr.Number, last_seeds: gr.State,
                      selected: gr.State, prefix: str) -> None:
    randomize.click(lambda: -1, None, seed, api_name=f"{prefix}_random_seed", api_visibility="private", queue=False)
    reuse.click(last_result_seed, [last_seeds, selected], seed, api_name=f"{prefix}_reuse_seed",
                api_visibility="private")


def last_result_seed(last_seeds: Any, selected: Any) -> Any:
    """"Reuse last seed": the seed of the image picked in the tab's last result (the first where none is picked).
    Before any result the seed box keeps what the visitor typed and a warning says why nothing changed (queued,
    so the message reaches the page, as "Send to" does; a warning rather than an error, which would cover the
    seed box with Gradio's "Error" badge)."""
    seed = seed_of(last_seeds, selected)
    if seed is None:
        gr.Warning("Generate an image first.")
        return gr.skip()
    return seed
